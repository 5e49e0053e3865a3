"""What pyfetch tells the user when the server's name does not resolve, what -v shows about a
TLS handshake, and how an untrusted certificate can be trusted.

Checked against fetchmail 6.4.37 side by side where fetchmail has words for it:

- a poll name or `via` under `.invalid` (RFC 6761: never resolves) ends the poll with exit 11
  and "couldn't find canonical DNS name of POLLNAME (QUERYNAME): REASON";
- after each handshake, -v shows fetchmail's lines about the certificate and the cipher, and
  pyfetch adds the SHA-256 fingerprint, which pasted into `sslfingerprint` is accepted;
- a certificate that does not verify is followed by how to trust it (pyfetch's own words).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import ROOT
from fakes.imap import FakeImapServer
from fakes.pop3 import FakePop3Server
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import FETCHMAIL, private_pidfile_args
from servers.certs import TestCA, fingerprint

from fetcher import tls, trace
from fetcher.drivers.auto import AutoDriver
from fetcher.drivers.endpoint import read_line
from fetcher.drivers.imap import ImapDriver
from fetcher.drivers.pop3 import Pop3Driver
from fetcher.errors import DNSError, ServerConnectionError, TLSError
from fetcher.exitcodes import ExitCode
from fetcher.model import ServerOptions, UserOptions

if TYPE_CHECKING:
    from servers.dovecot import Dovecot

UNRESOLVABLE = "mail.example.invalid"  # RFC 6761: .invalid never resolves
PASSWORD = "hidden"  # bob's, in the test Dovecot
MESSAGE = b"From: alice@example.org\r\nSubject: hello\r\n\r\nHello Bob.\r\n"


def resolver_says(name: str) -> str:
    """What getaddrinfo says about `name` here ("Name or service not known" with a resolver
    that answers, something else without one): the reason both programs print."""
    try:
        socket.getaddrinfo(name, 110, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        return err.strerror or str(err)
    pytest.fail(f"{name} resolves here, which RFC 6761 says it never does")


@pytest.fixture
def trace_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger=trace.TRACE_LOGGER):
        yield caplog


def trace_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == trace.TRACE_LOGGER]


# -- running both programs ---------------------------------------------------------------------


def write_rcfile(home: Path, text: str) -> Path:
    path = home / ".fetchmailrc"
    path.write_text(text)
    path.chmod(0o600)
    return path


def run_pyfetch(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m fetcher` on home/.fetchmailrc, with HOME=home and a private pidfile."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LC_ALL": "C",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "fetcher", "--pidfile", str(home / "pyfetch.pid"), *args],
        env=env, cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        errors="replace", timeout=120, check=False,
    )  # fmt: skip


def run_fetchmail(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real fetchmail on the same rcfile, with a private FETCHMAILHOME and pidfile."""
    assert FETCHMAIL is not None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "FETCHMAILHOME": str(home),
        "LC_ALL": "C",
    }
    argv = [FETCHMAIL, "-f", str(home / ".fetchmailrc"),
            *private_pidfile_args(home / "fetchmail-run"), *args]  # fmt: skip
    return subprocess.run(
        argv, env=env, cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        errors="replace", timeout=120, check=False,
    )  # fmt: skip


def unprefixed(output: str, program: str) -> list[str]:
    """The lines of `output` with the program's `NAME: ` prefix taken off where there is one."""
    prefix = f"{program}: "
    return [line.removeprefix(prefix) for line in output.splitlines()]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


# -- 1. a name that does not resolve: exit 11 ----------------------------------------------------


def unresolvable_driver(
    protocol: str, pollname: str = UNRESOLVABLE, via: str | None = None, *, dns: bool = True
) -> Pop3Driver | ImapDriver | AutoDriver:
    server = ServerOptions(pollname=pollname, via=via, protocol=protocol, timeout=10, dns=dns)
    user = UserOptions(remote="bob", password=PASSWORD)
    if protocol == "POP3":
        return Pop3Driver(server, user)
    if protocol == "IMAP":
        return ImapDriver(server, user)
    return AutoDriver(server, user, folder=None, read_only=False)


@pytest.mark.parametrize("protocol", ["POP3", "IMAP", "auto"])
def test_a_poll_name_that_does_not_resolve_is_exit_11(protocol: str) -> None:
    d = unresolvable_driver(protocol)
    with pytest.raises(DNSError) as info:
        d.connect()
    d.close()
    reason = resolver_says(UNRESOLVABLE)
    assert str(info.value) == (
        f"couldn't find canonical DNS name of {UNRESOLVABLE} ({UNRESOLVABLE}): {reason}"
    )
    assert info.value.exit_code is ExitCode.DNS
    assert int(info.value.exit_code) == 11


@pytest.mark.parametrize("protocol", ["POP3", "IMAP", "auto"])
def test_a_via_name_that_does_not_resolve_is_exit_11(protocol: str) -> None:
    via = "box.example.invalid"
    d = unresolvable_driver(protocol, "mail.isp.example", via)
    with pytest.raises(DNSError) as info:
        d.connect()
    d.close()
    assert str(info.value) == (
        f"couldn't find canonical DNS name of mail.isp.example ({via}): {resolver_says(via)}"
    )
    assert info.value.exit_code is ExitCode.DNS


@pytest.mark.parametrize("protocol", ["POP3", "IMAP"])
def test_with_no_dns_it_is_a_failed_connect_as_in_fetchmail(protocol: str) -> None:
    # fetchmail 6.4.37 looks the name up first only with `dns` (the default); with `no dns`
    # the connect fails on it, a socket error: exit 2.
    d = unresolvable_driver(protocol, dns=False)
    with pytest.raises(ServerConnectionError) as info:
        d.connect()
    d.close()
    assert not isinstance(info.value, DNSError)
    assert info.value.exit_code is ExitCode.SOCKET
    port = 110 if protocol == "POP3" else 143
    assert str(info.value) == (
        f"connection to {UNRESOLVABLE}:{port} failed: {resolver_says(UNRESOLVABLE)}"
    )


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize(
    ("entry", "pollname", "queryname"),
    [
        (f"poll {UNRESOLVABLE} proto pop3", UNRESOLVABLE, UNRESOLVABLE),
        (f"poll {UNRESOLVABLE} proto imap", UNRESOLVABLE, UNRESOLVABLE),
        (f"poll {UNRESOLVABLE}", UNRESOLVABLE, UNRESOLVABLE),  # proto auto
        ("poll mail.isp.example via box.example.invalid proto pop3", "mail.isp.example",
         "box.example.invalid"),
    ],
    ids=["pop3", "imap", "auto", "via"],
)
def test_the_program_says_what_fetchmail_says_and_exits_11(
    home: Path, entry: str, pollname: str, queryname: str
) -> None:
    write_rcfile(home, f"{entry}\n  user bob is bob here password hidden\n")
    ours = run_pyfetch(home)
    theirs = run_fetchmail(home)
    line = (
        f"couldn't find canonical DNS name of {pollname} ({queryname}): "
        f"{resolver_says(queryname)}"
    )
    assert theirs.returncode == 11, theirs.stderr
    assert line in unprefixed(theirs.stderr, "fetchmail")
    assert ours.returncode == 11, ours.stderr
    assert f"pyfetch: {line}" in ours.stderr.splitlines()
    assert ours.stdout == ""  # nothing was fetched, nothing else to say without -v


# -- 2. -v shows the certificate and the cipher ---------------------------------------------------

TLS_ROUTES = {
    # id: (protocol, rcfile port key, implicit TLS)
    "pop3-stls": ("pop3", "pop3", False),
    "imap-starttls": ("imap", "imap", False),
    "pop3s": ("pop3", "pop3s", True),
    "imaps": ("imap", "imaps", True),
}


def tls_block(output: str, program: str) -> list[str]:
    """The -v lines from "Server certificate:" to the cipher line, and "upgrade to TLS
    succeeded." after it if it is there."""
    lines = unprefixed(output, program)
    start = lines.index("Server certificate:")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("SSL/TLS: using "))
    if end + 1 < len(lines) and lines[end + 1].endswith(": upgrade to TLS succeeded."):
        end += 1
    return lines[start : end + 1]


def dovecot_entry(
    dovecot: Dovecot, route: str, *, trust: str = "", pollname: str = "localhost"
) -> str:
    protocol, port_key, implicit = TLS_ROUTES[route]
    return (
        f"poll {pollname} service {dovecot.ports[port_key]} proto {protocol}\n"
        f"  user bob is bob here password {PASSWORD} keep\n"
        f"  {'ssl ' if implicit else ''}{trust}\n"
    )


def expected_certificate_lines(ca: TestCA, label: str) -> list[str]:
    return [
        "Server certificate:",
        "Issuer Organization: pyfetch tests",
        "Issuer CommonName: pyfetch test CA",
        "Subject CommonName: localhost",
        "Subject Alternative Name: localhost",
        f"{label} key fingerprint: {ca.server_md5}",
        f"{label} key fingerprint (SHA-256): {ca.server_sha256}",
    ]


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize("route", list(TLS_ROUTES))
def test_verbose_tls_lines_are_fetchmails_plus_the_sha256_fingerprint(
    dovecot: Dovecot, test_ca: TestCA, home: Path, route: str
) -> None:
    dovecot.seed("bob", [MESSAGE])
    write_rcfile(home, dovecot_entry(dovecot, route, trust=f"sslcertfile {test_ca.ca_cert}"))
    theirs = run_fetchmail(home, "-v", "-c")
    ours = run_pyfetch(home, "-v", "-c")
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert ours.returncode == 0, ours.stdout + ours.stderr
    fetchmails = tls_block(theirs.stdout, "fetchmail")
    pyfetchs = tls_block(ours.stdout, "pyfetch")
    sha256 = f"localhost key fingerprint (SHA-256): {test_ca.server_sha256}"
    assert sha256 in pyfetchs
    # Word for word what fetchmail prints, with the SHA-256 line after its MD5 one.
    assert [line for line in pyfetchs if line != sha256] == fetchmails
    assert pyfetchs[:7] == expected_certificate_lines(test_ca, "localhost")
    stls = not TLS_ROUTES[route][2]
    assert (pyfetchs[-1] == "localhost: upgrade to TLS succeeded.") is stls


def dovecot_driver(
    dovecot: Dovecot, route: str, *, pollname: str = "localhost", **user: Any
) -> Pop3Driver | ImapDriver:
    protocol, port_key, implicit = TLS_ROUTES[route]
    server = ServerOptions(
        pollname=pollname, via=dovecot.host, protocol=protocol.upper(),
        service=str(dovecot.ports[port_key]), timeout=10,
    )  # fmt: skip
    options = UserOptions(remote="bob", password=PASSWORD, ssl=implicit, **user)
    if protocol == "pop3":
        return Pop3Driver(server, options)
    return ImapDriver(server, options)


@pytest.mark.parametrize("route", list(TLS_ROUTES))
def test_verbose_tls_lines_of_the_drivers(
    dovecot: Dovecot, test_ca: TestCA, trace_log: pytest.LogCaptureFixture, route: str
) -> None:
    d = dovecot_driver(dovecot, route, pollname="mail.isp.example",
                       sslcertfile=str(test_ca.ca_cert))  # fmt: skip
    d.connect()
    d.login()
    d.close()
    lines = trace_lines(trace_log)
    start = lines.index("Server certificate:")
    # The poll name labels the fingerprints, as in fetchmail, not the `via` name.
    assert lines[start : start + 7] == expected_certificate_lines(test_ca, "mail.isp.example")
    assert re.fullmatch(
        r"SSL/TLS: using protocol TLSv1\.[23], cipher [A-Z0-9_-]+, (\d+)/\1 secret/processed bits",
        lines[start + 7],
    )
    stls = not TLS_ROUTES[route][2]
    after = lines[start + 8] if stls else None
    assert after == ("mail.isp.example: upgrade to TLS succeeded." if stls else None)
    assert lines.count("Server certificate:") == 1
    assert not any(line.startswith("mail.isp.example fingerprints") for line in lines)


def test_verbose_shows_that_a_pin_matched(
    dovecot: Dovecot, test_ca: TestCA, trace_log: pytest.LogCaptureFixture
) -> None:
    d = dovecot_driver(dovecot, "pop3s", sslfingerprint=test_ca.server_md5)
    d.connect()
    d.close()
    lines = trace_lines(trace_log)
    start = lines.index("Server certificate:")
    assert lines[start : start + 7] == expected_certificate_lines(test_ca, "localhost")
    assert lines[start + 7] == "localhost fingerprints match."  # fetchmail's words
    assert lines[start + 8].startswith("SSL/TLS: using protocol ")


def test_without_verbose_nothing_is_shown(
    dovecot: Dovecot, test_ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=trace.TRACE_LOGGER):
        d = dovecot_driver(dovecot, "pop3-stls", sslcertfile=str(test_ca.ca_cert))
        d.connect()
        d.close()
    assert trace_lines(caplog) == []


def test_verbose_shows_which_certificate_a_wrong_pin_was_about(
    dovecot: Dovecot, test_ca: TestCA, trace_log: pytest.LogCaptureFixture
) -> None:
    d = dovecot_driver(dovecot, "pop3s", sslfingerprint=fingerprint(test_ca.untrusted_cert))
    with pytest.raises(TLSError, match="fingerprints do not match"):
        d.connect()
    d.close()
    lines = trace_lines(trace_log)
    start = lines.index("Server certificate:")
    assert lines[start : start + 7] == expected_certificate_lines(test_ca, "localhost")
    assert not any(line.startswith("SSL/TLS: ") for line in lines)


# -- 3. the SHA-256 fingerprint, pasted into sslfingerprint ----------------------------------------


@pytest.mark.parametrize("route", ["pop3-stls", "imaps"])
def test_the_printed_fingerprint_pasted_into_the_rcfile_makes_the_run_work(
    dovecot: Dovecot, test_ca: TestCA, home: Path, route: str
) -> None:
    dovecot.seed("bob", [MESSAGE])
    # No sslcertfile: the system's trust store knows nothing of the test CA.
    rcfile = write_rcfile(home, dovecot_entry(dovecot, route))
    refused = run_pyfetch(home, "-c")
    assert refused.returncode == 2, refused.stderr
    pasted = [line for line in refused.stderr.splitlines() if "  sslfingerprint " in line]
    assert pasted == [f'pyfetch:   sslfingerprint "{test_ca.server_sha256}"']
    with rcfile.open("a") as out:
        out.write(pasted[0].removeprefix("pyfetch:") + "\n")
    accepted = run_pyfetch(home, "-c", "-v")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr  # -c: mail is waiting
    assert "1 message for bob at localhost" in accepted.stdout
    assert "pyfetch: localhost fingerprints match." in accepted.stdout.splitlines()
    verbose = unprefixed(accepted.stdout, "pyfetch")
    sha256 = verbose[verbose.index("Server certificate:") + 6]
    assert sha256 == f"localhost key fingerprint (SHA-256): {test_ca.server_sha256}"


# -- 4. an untrusted certificate: how to trust it ------------------------------------------------


def advice_for_an_untrusted_ca(label: str, sha256: str) -> list[str]:
    return [
        f'{label} presented a certificate for localhost issued by "pyfetch test CA", which '
        "pyfetch does not trust.",
        f"To trust it, add to the poll entry of {label} either the certificate of the CA that "
        "issued it (a PEM file):",
        "  sslcertfile /path/to/ca.pem",
        f"or this very certificate, once whoever runs {label} has confirmed its SHA-256 "
        "fingerprint:",
        f'  sslfingerprint "{sha256}"',
    ]


@pytest.mark.parametrize("route", list(TLS_ROUTES))
def test_an_untrusted_certificate_says_how_to_trust_it(
    dovecot: Dovecot, test_ca: TestCA, trace_log: pytest.LogCaptureFixture, route: str
) -> None:
    # The trust store holds another certificate only, so nothing vouches for Dovecot's.
    d = dovecot_driver(dovecot, route, sslcertfile=str(test_ca.untrusted_cert))
    with pytest.raises(TLSError) as info:
        d.connect()
    d.close()
    upgrade = "upgrade to TLS failed: " if not TLS_ROUTES[route][2] else ""
    assert str(info.value).split("\npyfetch: ") == [
        f"localhost: {upgrade}Server certificate verification error: unable to get local "
        "issuer certificate",
        *advice_for_an_untrusted_ca("localhost", test_ca.server_sha256),
    ]
    assert info.value.exit_code is ExitCode.SOCKET
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    # With -v, the certificate it was about, as fetchmail shows it before refusing it.
    lines = trace_lines(trace_log)
    start = lines.index("Server certificate:")
    assert lines[start - 1] == (
        "localhost: connecting again only to read the certificate it presents"
    )
    assert lines[start : start + 7] == expected_certificate_lines(test_ca, "localhost")


def test_the_program_shows_the_advice_after_the_error(
    dovecot: Dovecot, test_ca: TestCA, home: Path
) -> None:
    write_rcfile(home, dovecot_entry(dovecot, "pop3-stls"))
    result = run_pyfetch(home)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    first = lines.index(
        "pyfetch: localhost: upgrade to TLS failed: Server certificate verification error: "
        "unable to get local issuer certificate"
    )
    advice = advice_for_an_untrusted_ca("localhost", test_ca.server_sha256)
    assert lines[first + 1 : first + 6] == [f"pyfetch: {line}" for line in advice]


def test_a_self_signed_certificate_over_stls_sends_no_credential(test_ca: TestCA) -> None:
    untrusted = test_ca.server_context(untrusted=True)
    with FakePop3Server(password=PASSWORD, tls_context=untrusted) as fake:
        server = ServerOptions(pollname="127.0.0.1", protocol="POP3", service=str(fake.port),
                               timeout=5)  # fmt: skip
        d = Pop3Driver(server, UserOptions(remote="bob", password=PASSWORD))
        with pytest.raises(TLSError) as info:
            d.connect()
        d.close()
    sha256 = fingerprint(test_ca.untrusted_cert, "sha256")
    assert str(info.value).split("\npyfetch: ") == [
        "127.0.0.1: upgrade to TLS failed: Server certificate verification error: self-signed "
        "certificate",
        "127.0.0.1 presented a self-signed certificate for localhost, which pyfetch does not "
        "trust.",
        "To trust it, add to the poll entry of 127.0.0.1 either a copy of that certificate "
        "(a PEM file):",
        "  sslcertfile /path/to/its-certificate.pem",
        "or this very certificate, once whoever runs 127.0.0.1 has confirmed its SHA-256 "
        "fingerprint:",
        f'  sslfingerprint "{sha256}"',
    ]
    # The session, then the connection that only read the certificate: STLS on each, no
    # credential on either.
    assert fake.verbs == ["CAPA", "STLS", "STLS"]


def test_a_self_signed_certificate_over_imaps(test_ca: TestCA) -> None:
    with FakeImapServer(tls_context=test_ca.server_context(untrusted=True)) as fake:
        server = ServerOptions(pollname="127.0.0.1", protocol="IMAP", service=str(fake.port),
                               timeout=5)  # fmt: skip
        d = ImapDriver(server, UserOptions(remote="bob", password=PASSWORD, ssl=True))
        with pytest.raises(TLSError) as info:
            d.connect()
        d.close()
    assert fake.received == []
    lines = str(info.value).split("\npyfetch: ")
    assert lines[0] == "127.0.0.1: Server certificate verification error: self-signed certificate"
    assert lines[-1] == f'  sslfingerprint "{fingerprint(test_ca.untrusted_cert, "sha256")}"'


def test_a_name_mismatch_says_which_name_the_certificate_carries(
    dovecot: Dovecot, test_ca: TestCA
) -> None:
    d = dovecot_driver(dovecot, "imap-starttls", pollname="mail.isp.example",
                       sslcertfile=str(test_ca.ca_cert), sslcommonname="mail.isp.example")
    with pytest.raises(TLSError) as info:
        d.connect()
    d.close()
    assert str(info.value).split("\npyfetch: ") == [
        "mail.isp.example: upgrade to TLS failed: Server certificate verification error: "
        "Hostname mismatch, certificate is not valid for 'mail.isp.example'.",
        "The certificate of mail.isp.example is made out to localhost, not to "
        "mail.isp.example.",
        "To accept it all the same, add to the poll entry of mail.isp.example either the name "
        "it carries, if this is the right server:",
        "  sslcommonname localhost",
        "or this very certificate, once whoever runs mail.isp.example has confirmed its "
        "SHA-256 fingerprint:",
        f'  sslfingerprint "{test_ca.server_sha256}"',
    ]


def verification_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    err = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    err.verify_code = code
    err.verify_message = message
    return err


def test_advice_for_an_expired_certificate(test_ca: TestCA) -> None:
    der = ssl.PEM_cert_to_DER_cert(test_ca.server_cert.read_text())
    err = verification_error(10, "certificate has expired")
    assert tls.trust_advice(err, "mail.isp.net", "mail.isp.net", der) == [
        "The certificate of mail.isp.net has expired: whoever runs mail.isp.net must renew it "
        "(or this computer's clock is wrong).",
        "To accept it all the same, add to the poll entry of mail.isp.net this very certificate, "
        "once whoever runs mail.isp.net has confirmed its SHA-256 fingerprint:",
        f'  sslfingerprint "{test_ca.server_sha256}"',
    ]


def test_advice_when_the_certificate_could_not_be_read_again() -> None:
    err = verification_error(20, "unable to get local issuer certificate")
    assert tls.trust_advice(err, "mail.isp.net", "mail.isp.net", None) == [
        "mail.isp.net presented a certificate, which pyfetch does not trust.",
        "To trust it, add to the poll entry of mail.isp.net the certificate of the CA that "
        "issued it (a PEM file):",
        "  sslcertfile /path/to/ca.pem",
        "(pyfetch could not read the certificate of mail.isp.net again to show the "
        "sslfingerprint that would accept it.)",
    ]


def test_a_server_that_refuses_the_second_connection_still_gets_the_error(
    test_ca: TestCA,
) -> None:
    """The advice needs a second connection; when that fails the error is still said, without
    the fingerprint, and within the timeout."""

    class OneShot(Pop3Driver):
        def _ask_for_tls(self, sock: socket.socket, deadline: float) -> bool:
            return False  # as a server that refuses STLS the second time

    with FakePop3Server(password=PASSWORD, tls_context=test_ca.server_context()) as fake:
        server = ServerOptions(pollname="127.0.0.1", protocol="POP3", service=str(fake.port),
                               timeout=5)  # fmt: skip
        d = OneShot(server, UserOptions(remote="bob", password=PASSWORD))
        with pytest.raises(TLSError) as info:
            d.connect()
        d.close()
    lines = str(info.value).split("\npyfetch: ")
    assert lines[0] == (
        "127.0.0.1: upgrade to TLS failed: Server certificate verification error: unable to get "
        "local issuer certificate"
    )
    assert lines[-1].startswith("(pyfetch could not read the certificate of 127.0.0.1 again")
    assert not any("sslfingerprint \"" in line for line in lines)


# -- 5. an smtphost that does not resolve: still exit 10, with the resolver's reason ------------


def test_an_unresolvable_smtphost_is_a_listener_failure_with_its_reason(
    dovecot: Dovecot, test_ca: TestCA, home: Path
) -> None:
    dovecot.seed("bob", [MESSAGE])
    smtphost = "smtp.example.invalid"
    write_rcfile(home, dovecot_entry(dovecot, "pop3-stls", trust=f"sslcertfile {test_ca.ca_cert}")
                 + f"  smtphost {smtphost}\n")  # fmt: skip
    result = run_pyfetch(home)
    assert result.returncode == 10, result.stderr  # fetchmail 6.4.37 too: an SMTP failure
    reason = resolver_says(smtphost)
    assert f"pyfetch: SMTP connect to {smtphost} failed ({reason})" in result.stderr.splitlines()
    assert "Unknown error" not in result.stderr


# -- 6. reading the names in a certificate -------------------------------------------------------


def test_names_read_from_der_are_what_a_verified_handshake_reports(
    dovecot: Dovecot, test_ca: TestCA
) -> None:
    """With verification on, getpeercert() decodes the certificate too: the oracle."""
    context = test_ca.client_context()
    with socket.create_connection((dovecot.host, dovecot.pop3s), timeout=10) as sock, \
            context.wrap_socket(sock, server_hostname="localhost") as tls_sock:  # fmt: skip
        decoded = tls_sock.getpeercert()
        der = tls_sock.getpeercert(binary_form=True)
    assert der is not None and decoded
    names = tls.certificate_names(der)
    assert names is not None

    def first(field: str, key: str) -> object:
        return next(v for rdn in decoded[field] for k, v in rdn if k == key)

    assert names.issuer_organization == first("issuer", "organizationName")
    assert names.issuer_common_name == first("issuer", "commonName")
    assert names.subject_common_name == first("subject", "commonName")
    assert names.dns_names == tuple(v for k, v in decoded["subjectAltName"] if k == "DNS")


def test_names_of_a_certificate_made_by_openssl(tmp_path: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-utf8", "-keyout", str(tmp_path / "k.pem"),
         "-out", str(tmp_path / "c.pem"), "-subj", "/C=DE/O=Müller & Söhne/CN=mail.müller.example",
         "-addext",
         "subjectAltName=email:postmaster@example.org,DNS:mail.example.org,IP:127.0.0.1,"
         "DNS:*.example.net"],
        check=True, capture_output=True,
    )  # fmt: skip
    der = ssl.PEM_cert_to_DER_cert((tmp_path / "c.pem").read_text())
    assert tls.certificate_names(der) == tls.CertificateNames(
        issuer_organization="Müller & Söhne",
        issuer_common_name="mail.müller.example",
        subject_common_name="mail.müller.example",
        dns_names=("mail.example.org", "*.example.net"),
    )


def tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


CN, O_ = b"\x55\x04\x03", b"\x55\x04\x0a"
UTF8, PRINTABLE, T61, BMP, UNIVERSAL, OCTETS = 0x0C, 0x13, 0x14, 0x1E, 0x1C, 0x04


def name(*rdns: list[tuple[bytes, int, bytes]]) -> bytes:
    return seq(*(
        tlv(0x31, b"".join(seq(tlv(0x06, oid), tlv(tag, value)) for oid, tag, value in rdn))
        for rdn in rdns
    ))  # fmt: skip


def san(*entries: tuple[int, bytes], critical: bool = False) -> bytes:
    flag = tlv(0x01, b"\xff") if critical else b""
    value = seq(*(tlv(tag, data) for tag, data in entries))
    return seq(tlv(0x06, b"\x55\x1d\x11"), flag, tlv(0x04, value))


def certificate(
    issuer: bytes, subject: bytes, extensions: list[bytes] | None = None, *, v1: bool = False
) -> bytes:
    """A certificate's structure, with placeholders where the reader looks at nothing."""
    algorithm = seq(tlv(0x06, b"\x2a\x86\x48\xce\x3d\x04\x03\x02"))
    version = b"" if v1 else tlv(0xA0, tlv(0x02, b"\x02"))
    validity = seq(tlv(0x17, b"260101000000Z"), tlv(0x17, b"270101000000Z"))
    spki = seq(algorithm, tlv(0x03, b"\x00\x04"))
    other = tlv(0xA3, seq(*extensions)) if extensions is not None else b""
    tbs = seq(version, tlv(0x02, b"\x01"), algorithm, issuer, validity, subject, spki, other)
    return seq(tbs, algorithm, tlv(0x03, b"\x00"))


def test_names_in_every_string_type() -> None:
    der = certificate(
        name([(O_, T61, "Société".encode("latin-1"))],
             [(CN, BMP, "Ünïcode CA".encode("utf-16-be"))]),
        name([(CN, UNIVERSAL, "mäil.example".encode("utf-32-be"))]),
        [san((0x82, b"a.example"), (0x87, b"\x7f\x00\x00\x01"), critical=True)],
    )  # fmt: skip
    assert tls.certificate_names(der) == tls.CertificateNames(
        "Société", "Ünïcode CA", "mäil.example", ("a.example",)
    )


def test_the_first_of_several_names_counts_as_in_openssl() -> None:
    der = certificate(
        name([(O_, PRINTABLE, b"First Org"), (CN, PRINTABLE, b"first")], [(CN, UTF8, b"second")]),
        name([(O_, UTF8, b"no common name here")]),
        v1=True,
    )
    assert tls.certificate_names(der) == tls.CertificateNames(
        "First Org", "first", None, ()
    )
    assert tls.certificate_lines(der, "h")[1:4] == [
        "Issuer Organization: First Org",
        "Issuer CommonName: first",
        "Unknown Server CommonName",  # fetchmail's words when the subject has no CN
    ]


def test_what_the_server_wrote_reaches_the_terminal_harmless() -> None:
    der = certificate(
        name([(CN, UTF8, "evil\x1b[2J\x1b]0;title\x07CA\u202egpj.exe".encode())]),
        name([(CN, UTF8, b"x" * 300)]),
        [san(*[(0x82, f"n{i}.example".encode()) for i in range(150)])],
    )
    lines = tls.certificate_lines(der, "h")
    assert lines[1:4] == [
        "Unknown Organization",
        "Issuer CommonName: evil?[2J?]0;title?CA?gpj.exe",
        f"Subject CommonName: {'x' * 256}...",
    ]
    shown = [line for line in lines if line.startswith("Subject Alternative Name: ")]
    assert len(shown) == 100
    assert "(50 more Subject Alternative Names)" in lines


def test_an_unreadable_certificate_still_shows_its_fingerprints() -> None:
    der = b"\x30\x03\x02\x01\x01"
    assert tls.certificate_names(der) is None
    assert tls.certificate_lines(der, "h") == [
        "Server certificate:",
        "Unknown Organization",
        "Unknown Issuer CommonName",
        "Unknown Server CommonName",
        f"h key fingerprint: {tls.fingerprint(der, 'md5')}",
        f"h key fingerprint (SHA-256): {tls.fingerprint(der, 'sha256')}",
    ]


def test_a_long_length_and_a_high_tag_number_are_read() -> None:
    high_tag = b"\xbf\x81\x00\x01\x00"  # [128] constructed, in the extension list's place
    der = certificate(
        name([(CN, UTF8, b"c" * 200)]),  # a two-octet length (0x81 0xC8)
        name([(CN, UTF8, b"s")]),
        [seq(tlv(0x06, b"\x2a\x03"), tlv(0x04, high_tag)), san((0x82, b"d.example"))],
    )
    assert tls.certificate_names(der) == tls.CertificateNames(None, "c" * 200, "s", ("d.example",))


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30",
        b"\x30\x80\x00\x00",  # BER's indefinite length
        b"\x30\x85\x01\x00\x00\x00\x00",  # a length of more than 4 octets
        b"\x30\x04\x30\x02\x02\x05",  # a length past the end
        certificate(name(), name())[:-1],
        seq(seq(tlv(0x02, b"\x01"))),  # too few fields
        certificate(tlv(0x31, b""), name()),  # the issuer is not a SEQUENCE
        certificate(name([(CN, UTF8, b"x")]), name(), [seq(tlv(0x06, b"\x55\x1d\x11"),
                                                           tlv(OCTETS, b"\x04\x00"))]),
    ],
)
def test_malformed_certificates_are_unreadable(der: bytes) -> None:
    assert tls.certificate_names(der) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_are_read_or_refused(der: bytes) -> None:
    names = tls.certificate_names(der)
    assert names is None or isinstance(names, tls.CertificateNames)
    assert tls.certificate_lines(der, "h")[0] == "Server certificate:"


REAL = certificate(
    name([(O_, PRINTABLE, b"pyfetch tests"), (CN, UTF8, b"pyfetch test CA")]),
    name([(CN, UTF8, b"localhost")]),
    [san((0x82, b"localhost"), (0x87, b"\x7f\x00\x00\x01"))],
)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(REAL) - 1), st.integers(0, 255), st.integers(0, len(REAL)))
def test_damaged_certificates_are_read_or_refused(where: int, octet: int, cut: int) -> None:
    damaged = (REAL[:where] + bytes([octet]) + REAL[where + 1 :])[:cut]
    names = tls.certificate_names(damaged)
    assert names is None or isinstance(names, tls.CertificateNames)
    tls.certificate_lines(damaged, "h")  # never raises


def test_reading_a_line_takes_nothing_after_it() -> None:
    """The connection that reads a certificate reads the greeting and the answer to STLS an
    octet at a time: what follows them is the server's side of the TLS handshake."""
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"+OK ready\r\nHANDSHAKE")
        assert read_line(right, deadline=time.monotonic() + 5) == b"+OK ready\r\n"
        assert right.recv(100) == b"HANDSHAKE"
        left.sendall(b"no end of line")
        with pytest.raises(TimeoutError):
            read_line(right, deadline=time.monotonic() + 0.2)
        left.sendall(b"x" * 10000)
        assert len(read_line(right, deadline=time.monotonic() + 5)) == 8192
