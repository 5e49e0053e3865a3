"""A hostile IMAP server against the real ImapDriver (the scripted fake of tests/fakes/imap.py).

Three promises are held against it:
- the bytes delivered for a UID are the text the server sent with that UID, never what an
  unsolicited FETCH without one carried;
- what is read from the network is bounded (literals, lines, the parts of a large message),
  and what exceeds a bound is refused before it is read, with the connection dropped;
- nothing the server echoes back puts the password, a token or a base64 SASL string into an
  error message or the -v trace.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.imap import FakeImapServer, oauth_string
from servers.certs import TestCA
from servers.dovecot import Dovecot
from test_imap_faults import RecordingSink, poll

from fetcher import trace
from fetcher.drivers.base import MessageInfo
from fetcher.drivers.imap import ImapDriver
from fetcher.errors import AuthenticationError, ProtocolError, PyfetchError
from fetcher.exitcodes import ExitCode
from fetcher.model import ServerOptions, UserOptions

MESSAGES = [
    b"From: one@example.org\r\nSubject: first\r\nMessage-ID: <one@example.org>\r\n\r\n"
    + b"Hello, this is the first message.\r\n",
    b"From: two@example.org\r\nSubject: second\r\nMessage-ID: <two@example.org>\r\n\r\n"
    + b"And this is the second one, a little longer.\r\n" * 4,
]
FORGED = b"From: mallory@example.org\r\nSubject: forged\r\n\r\nNot the message asked for.\r\n"
BIG = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 200  # 3216 octets, 4 parts of 1000
HUGE = b"Subject: huge\r\n\r\n" + b"0123456789abcdef" * 6250  # 100,017 octets
# The distinctive core of a password that needs escaping both in an IMAP quoted string and in
# Python's repr of bytes: no rendition of it may show the core.
CORE = "Tr0ub4dor"
PASSWORD = CORE + '\\"&3'
MB = 1 << 20


def imap_driver(
    port: int, *, password: str = PASSWORD, auth: str = "password", piece: int | None = None,
    ca: TestCA | None = None, **user: Any,
) -> ImapDriver:  # fmt: skip
    options = ServerOptions(
        pollname="127.0.0.1", protocol="IMAP", service=str(port), timeout=5, auth=auth
    )
    if ca is not None:
        user.update(ssl=True, sslcertfile=str(ca.ca_cert))
    else:
        user.setdefault("sslproto", "")
    d = ImapDriver(options, UserOptions(remote="bob", password=password, **user))
    if piece is not None:
        d.piece = piece
    return d


def session(d: ImapDriver) -> list[MessageInfo]:
    d.connect()
    d.login()
    return d.list_messages()


class CappedOutput(io.BytesIO):
    """An output that fails the test instead of letting an endless message fill memory."""

    def __init__(self, limit: int = MB) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self.limit:
            raise AssertionError(f"more than {self.limit} octets written for one message")
        return super().write(data)


@pytest.fixture
def trace_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger=trace.TRACE_LOGGER):
        yield caplog


# -- 1. delivered bytes are tied to the UID asked for ----------------------------------------


@pytest.mark.parametrize("piece", [None, 100], ids=["whole", "in-parts"])
@pytest.mark.parametrize("where", ["before", "after"])
def test_an_unsolicited_fetch_without_uid_is_not_delivered(where: str, piece: int | None) -> None:
    """`* 2 FETCH (BODY[] ...)` without UID, while UID 2 is fetched: sequence number 2 is not
    UID 2, and the text delivered is the one the server sent with `UID 2`."""
    spoofing = FakeImapServer(messages=MESSAGES, spoof_uid=2, spoof_where=where, spoof_text=FORGED)
    with spoofing as server:
        d = imap_driver(server.port, piece=piece)
        session(d)
        out = CappedOutput(4096)
        written = d.retrieve(2, out, peek=True)
        d.close()
    assert out.getvalue() == MESSAGES[1]
    assert written == len(MESSAGES[1])


def test_a_text_without_its_uid_is_refused() -> None:
    """The server answers UID FETCH 2 with only a text numbered 2 and no UID: nothing proves
    it is message 2, so nothing is written."""
    spoofing = FakeImapServer(messages=MESSAGES, spoof_uid=2, spoof_where="instead")
    with spoofing as server:
        d = imap_driver(server.port)
        session(d)
        out = io.BytesIO()
        with pytest.raises(ProtocolError) as info:
            d.retrieve(2, out, peek=True)
        d.close()
    assert info.value.exit_code == ExitCode.PROTOCOL
    assert "127.0.0.1" in str(info.value) and "UID 2" in str(info.value)
    assert out.getvalue() == b""


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_listing_takes_sizes_and_flags_only_from_the_uid(where: str) -> None:
    """An unsolicited `* 1 FETCH (RFC822.SIZE .. FLAGS (\\Seen))` without UID changes neither
    the size nor the seen state of UID 1 (with `keep`, a seen message is not fetched)."""
    spoofing = FakeImapServer(
        messages=MESSAGES, spoof_uid=1, spoof_where=where, spoof_listing=True, spoof_text=FORGED
    )
    with spoofing as server:
        d = imap_driver(server.port)
        listing = session(d)
        d.close()
    assert [(m.number, m.size, m.seen) for m in listing] == [
        (1, len(MESSAGES[0]), False), (2, len(MESSAGES[1]), False),
    ]  # fmt: skip
    assert d.seen_uids == set()


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_poll_delivers_and_deletes_the_message_asked_for(where: str, tmp_path: Path) -> None:
    sink = RecordingSink()
    spoofing = FakeImapServer(messages=MESSAGES, spoof_uid=2, spoof_where=where, spoof_text=FORGED)
    with spoofing as server:
        result = poll(server, sink, tmp_path / "fetchids")
    assert result.status is ExitCode.SUCCESS
    assert sink.subjects == ["first", "second"]
    assert server.mailbox == {}


def test_a_poll_keeps_a_message_whose_text_came_without_its_uid(tmp_path: Path) -> None:
    """Message 1 is delivered and recorded (its deletion waits for the next poll, which finds
    it delivered before); message 2, whose text never came with its UID, is neither delivered
    nor touched, and the poll fails saying so."""
    sink = RecordingSink()
    spoofing = FakeImapServer(messages=MESSAGES, spoof_uid=2, spoof_where="instead")
    with spoofing as server, pytest.raises(ProtocolError) as info:
        poll(server, sink, tmp_path / "fetchids")
    assert info.value.exit_code == ExitCode.PROTOCOL
    assert "127.0.0.1" in str(info.value) and "UID 2" in str(info.value)
    assert sink.subjects == ["first"]
    assert 2 in server.mailbox and server.flags[2] == set()
    again = RecordingSink()
    with FakeImapServer(messages=MESSAGES) as server:
        poll(server, again, tmp_path / "fetchids")
    assert again.subjects == ["second"]  # message 1 not again
    assert server.mailbox == {}


# -- 2. what is read from the network is bounded ---------------------------------------------


def test_a_terabyte_literal_is_refused_unread() -> None:
    """`{1000000000000}` for a message of a few hundred octets: refused before any of it is
    read (no MemoryError, no growth), and the connection dropped."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with FakeImapServer(messages=MESSAGES, body_size_claim=10**12) as server:
        d = imap_driver(server.port)
        session(d)
        out = io.BytesIO()
        started = time.monotonic()
        with pytest.raises(ProtocolError) as info:
            d.retrieve(1, out, peek=True)
        elapsed = time.monotonic() - started
        assert server.hung_up.wait(5)  # dropped at once, without waiting for d.close()
        d.close()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    message = str(info.value)
    assert info.value.exit_code == ExitCode.PROTOCOL
    assert "127.0.0.1" in message and "1000000000000" in message
    assert out.getvalue() == b""
    assert elapsed < 4  # not a read that ran into the timeout
    assert grown < 100 * 1024


def test_a_text_larger_than_its_listed_size_is_refused() -> None:
    """The listing said a few hundred octets; a literal of 100 MiB for it is not read (a size
    estimate may be off, even twice over, but not by that much; announced, never sent)."""
    with FakeImapServer(messages=MESSAGES, body_size_claim=100 * MB) as server:
        d = imap_driver(server.port)
        listing = session(d)
        out = CappedOutput()
        with pytest.raises(ProtocolError) as info:
            d.retrieve(1, out, peek=True)
        assert server.hung_up.wait(5)
        d.close()
    assert listing[0].size == len(MESSAGES[0])
    assert str(100 * MB) in str(info.value) and "127.0.0.1" in str(info.value)
    assert out.getvalue() == b""


def test_a_part_larger_than_asked_is_refused() -> None:
    """Asked for 1000 octets of a large message, the server announces 1001."""
    with FakeImapServer(messages=[BIG], body_size_claim=1001) as server:
        d = imap_driver(server.port, piece=1000)
        session(d)
        out = CappedOutput()
        with pytest.raises(ProtocolError) as info:
            d.retrieve(1, out, peek=True)
        assert server.hung_up.wait(5)
        d.close()
    assert "1001" in str(info.value)
    assert out.getvalue() == b""


def test_parts_that_never_end_are_refused() -> None:
    """Every part comes back full, past the end of the message: the parts stop being read once
    well past the size the listing gave (twice it, and at least 8 MiB), instead of filling the
    disk."""
    with FakeImapServer(messages=[HUGE], body_size_claim=32768) as server:
        d = imap_driver(server.port, piece=32768)
        session(d)
        out = CappedOutput(limit=16 * MB)
        with pytest.raises(ProtocolError) as info:
            d.retrieve(1, out, peek=True)
        d.close()
    assert "UID 1" in str(info.value) and str(len(HUGE)) in str(info.value)
    assert 8 * MB <= len(out.getvalue()) <= 8 * MB + 2 * 32768


def test_a_large_message_still_comes_in_parts() -> None:
    with FakeImapServer(messages=[BIG, MESSAGES[0]]) as server:
        d = imap_driver(server.port, piece=1000)
        listing = session(d)
        outs = [io.BytesIO(), io.BytesIO()]
        for info, out in zip(listing, outs, strict=True):
            assert d.retrieve(info.number, out, peek=True) == info.size
        d.close()
    assert [out.getvalue() for out in outs] == [BIG, MESSAGES[0]]
    parts = [line for line in server.received if "BODY.PEEK[]<" in line]
    assert len(parts) == 4  # 3216 octets in parts of 1000; the small one whole


def test_an_endless_line_is_refused() -> None:
    """A response line of 2,000,000 octets: refused plainly, and the connection dropped."""
    with FakeImapServer(messages=MESSAGES, long_line_on="SELECT") as server:
        d = imap_driver(server.port)
        d.connect()
        d.login()
        with pytest.raises(ProtocolError) as info:
            d.list_messages()
        assert server.hung_up.wait(5)
        d.close()
    message = str(info.value)
    assert info.value.exit_code == ExitCode.PROTOCOL
    assert "127.0.0.1" in message and "line" in message and "1000000" in message
    assert len(message) < 300


# -- 3. no secret in an error or the trace ---------------------------------------------------


def renditions(secret: str) -> list[str]:
    """`secret` as it could show: itself, base64, and (for a password) its distinctive core."""
    found = [secret, base64.b64encode(secret.encode()).decode()]
    return [*found, CORE] if CORE in secret else found


def assert_hidden(err: PyfetchError, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    lines = [r.getMessage() for r in caplog.records if r.name == trace.TRACE_LOGGER]
    for secret in secrets:
        for shown in renditions(secret):
            assert shown not in str(err)
            assert not any(shown in line for line in lines)


@pytest.fixture(params=[False, True], ids=["quiet", "verbose"])
def maybe_traced(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[pytest.LogCaptureFixture]:
    """With and without -v: the trace, when on, is checked too."""
    level = logging.INFO if request.param else logging.WARNING
    with caplog.at_level(level, logger=trace.TRACE_LOGGER):
        yield caplog


@pytest.mark.parametrize("refusal", ["NO", "BAD"])
def test_login_echoed_back_shows_no_password(
    refusal: str, maybe_traced: pytest.LogCaptureFixture
) -> None:
    with FakeImapServer(capabilities="IMAP4rev1", echo_refusal=refusal) as server:
        d = imap_driver(server.port)
        d.connect()
        with pytest.raises(AuthenticationError) as info:
            d.login()
        d.close()
    assert any(CORE in line for line in server.received)  # the echo did carry it
    assert info.value.exit_code == ExitCode.AUTHFAIL
    assert "127.0.0.1" in str(info.value) and 'LOGIN "bob" *' in str(info.value)
    assert_hidden(info.value, maybe_traced, PASSWORD)


def sasl_setup(mechanism: str) -> tuple[str, str]:
    """(capabilities, auth) that make the driver use `mechanism`."""
    if mechanism == "PLAIN":  # only where LOGIN is disabled, and only over TLS
        return "IMAP4rev1 LOGINDISABLED AUTH=PLAIN", "password"
    return f"IMAP4rev1 AUTH={mechanism}", mechanism.lower()


def sasl_secrets(mechanism: str, port: int) -> list[str]:
    """The client's SASL response before base64 (its base64 is checked by renditions())."""
    if mechanism == "PLAIN":
        return [f"\0bob\0{PASSWORD}"]
    if mechanism == "CRAM-MD5":
        mac = hmac.new(PASSWORD.encode(), b"", hashlib.md5).hexdigest()
        return [f"bob {mac}"]
    return [oauth_string(mechanism, "bob", PASSWORD, port)]


@pytest.mark.parametrize("refusal", ["NO", "BAD"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER"])
def test_sasl_response_echoed_back_shows_no_secret(
    test_ca: TestCA, mechanism: str, refusal: str, maybe_traced: pytest.LogCaptureFixture
) -> None:
    capabilities, auth = sasl_setup(mechanism)
    echoing = FakeImapServer(
        capabilities=capabilities, echo_refusal=refusal, tls_context=test_ca.server_context()
    )
    with echoing as server:
        d = imap_driver(server.port, auth=auth, ca=test_ca)
        d.connect()
        with pytest.raises(AuthenticationError) as info:
            d.login()
        d.close()
    secrets = sasl_secrets(mechanism, server.port)
    blob = base64.b64encode(secrets[0].encode()).decode()
    assert blob in server.received  # and the server echoed it back
    assert info.value.exit_code == ExitCode.AUTHFAIL
    assert "127.0.0.1" in str(info.value)
    assert_hidden(info.value, maybe_traced, PASSWORD, *secrets)


@pytest.mark.parametrize("mechanism", ["PLAIN", "CRAM-MD5"])
def test_a_server_that_asks_again_gets_the_credentials_once(
    test_ca: TestCA, mechanism: str, trace_log: pytest.LogCaptureFixture
) -> None:
    """A server that answers our response with another challenge (here, our response echoed)
    is not sent the credentials again: the exchange is cancelled with `*`."""
    capabilities, auth = sasl_setup(mechanism)
    asking = FakeImapServer(
        capabilities=capabilities, challenge_again=3, tls_context=test_ca.server_context()
    )
    with asking as server:
        d = imap_driver(server.port, auth=auth, ca=test_ca)
        d.connect()
        with pytest.raises(AuthenticationError) as info:
            d.login()
        d.close()
    at = next(i for i, line in enumerate(server.received) if " AUTHENTICATE " in line)
    blob = base64.b64encode(sasl_secrets(mechanism, server.port)[0].encode()).decode()
    assert server.received[at + 1 :] == [blob, "*"]
    assert_hidden(info.value, trace_log, PASSWORD, blob)


@pytest.mark.parametrize("mechanism", ["PLAIN", "CRAM-MD5"])
def test_a_challenge_that_is_not_base64_ends_the_session(test_ca: TestCA, mechanism: str) -> None:
    """`+ abc` cannot be decoded: a protocol error naming the server, nothing answered, and
    the connection dropped (the command is still open)."""
    capabilities, auth = sasl_setup(mechanism)
    garbling = FakeImapServer(
        capabilities=capabilities, challenge="abc", tls_context=test_ca.server_context()
    )
    with garbling as server:
        d = imap_driver(server.port, auth=auth, ca=test_ca)
        d.connect()
        with pytest.raises(ProtocolError) as info:
            d.login()
        assert server.hung_up.wait(5)
        d.close()
    assert info.value.exit_code == ExitCode.PROTOCOL
    message = str(info.value)
    assert "127.0.0.1" in message and mechanism in message and "not base64" in message
    assert server.received[-1].endswith(f" AUTHENTICATE {mechanism}")


# -- 4. `no sslcertck`: said before the password goes out ----------------------------------


def _warnings(log: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in log.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "imaps"])
@pytest.mark.parametrize("trusted", [False, True], ids=["unverified", "verified"])
def test_no_sslcertck_warns_as_fetchmail_when_the_certificate_does_not_verify(
    dovecot: Dovecot, test_ca: TestCA, trace_log: pytest.LogCaptureFixture,
    implicit: bool, trusted: bool,
) -> None:
    """Dovecot's certificate is signed by the test CA: without sslcertfile it does not verify
    (the system store does not know that CA), and fetchmail then warns and goes on."""
    port = dovecot.ports["imaps" if implicit else "imap"]
    options = ServerOptions(pollname="localhost", via="127.0.0.1", protocol="IMAP",
                            service=str(port), timeout=10)
    user = UserOptions(remote="bob", password="hidden", ssl=implicit, sslcertck=False,
                       sslcertfile=str(test_ca.ca_cert) if trusted else None)
    d = ImapDriver(options, user)
    d.connect()
    warned = _warnings(trace_log)
    d.login()  # works either way: the connection is made, as fetchmail makes it
    d.close()
    if trusted:
        assert warned == []
    else:
        assert warned[-1] == (
            "Warning: the connection is insecure, continuing anyways. (Better use --sslcertck!)"
        )
        assert any("certificate" in line for line in warned[:-1])
    login = [r.getMessage() for r in trace_log.records if "LOGIN" in r.getMessage()]
    assert login and "hidden" not in login[0]
