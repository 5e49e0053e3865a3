"""The IMAP driver against the real Dovecot of tests/servers, and a scripted fake for faults."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from fakes.imap import FakeImapServer
from servers.certs import TestCA

from fetcher import trace
from fetcher.drivers.base import MailboxDriver, MessageInfo
from fetcher.drivers.imap import ImapDriver, quote
from fetcher.errors import (
    AuthenticationError,
    ProtocolError,
    ServerConnectionError,
    ServerTimeoutError,
    TLSError,
)
from fetcher.exitcodes import ExitCode
from fetcher.model import ServerOptions, UserOptions

if TYPE_CHECKING:
    from servers.dovecot import Dovecot

PASSWORD = "hidden"  # servers.dovecot.DEFAULT_USERS
SEEDED = [
    b"From: one@example.org\r\nSubject: first\r\n\r\nHello.\r\n",
    b"From: two@example.org\r\nSubject: big\r\n\r\n.\r\n..two\r\n"
    + b"L" * 200_000
    + b"\r\nend\r\n",
    b"From: three@example.org\r\nSubject: third\r\n\r\nBye.\r\n",
]


@pytest.fixture
def trace_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger=trace.TRACE_LOGGER):
        yield caplog


def trace_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == trace.TRACE_LOGGER]


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def imap_driver(
    dovecot: Dovecot | int, ca: TestCA | None, *, implicit: bool = False, auth: str = "password",
    folder: str | None = None, read_only: bool = False, timeout: int = 10, **user: Any,
) -> ImapDriver:  # fmt: skip
    port = dovecot if isinstance(dovecot, int) else dovecot.imaps if implicit else dovecot.imap
    options = ServerOptions(
        pollname="127.0.0.1", protocol="IMAP", service=str(port), timeout=timeout, auth=auth
    )
    user.setdefault("remote", "bob")
    user.setdefault("password", PASSWORD)
    if ca is not None:
        user.setdefault("sslcertfile", str(ca.ca_cert))
    return ImapDriver(
        options, UserOptions(ssl=implicit, **user), folder=folder, read_only=read_only
    )


def session(d: ImapDriver) -> list[MessageInfo]:
    d.connect()
    d.login()
    return d.list_messages()


def test_is_a_mailbox_driver() -> None:
    d: MailboxDriver = imap_driver(143, None)
    assert d.protocol == "IMAP"


def test_quote() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'


@pytest.mark.parametrize(
    ("implicit", "options"),
    [
        (False, {"sslproto": ""}),
        (False, {}),  # the 6.4 default: STARTTLS, verified against the test CA
        (True, {}),
    ],
    ids=["plain", "starttls", "imaps"],
)
def test_login(dovecot: Dovecot, test_ca: TestCA, implicit: bool, options: dict[str, Any]) -> None:
    dovecot.seed("bob", SEEDED[:1])
    d = imap_driver(dovecot, test_ca, implicit=implicit, **options)
    assert len(session(d)) == 1
    assert d.tls_active == (options.get("sslproto") != "")
    assert d.peer_address == "127.0.0.1"
    d.commit()


@pytest.mark.parametrize("auth", ["any", "cram-md5", "password"])
def test_auth_methods(
    dovecot: Dovecot, test_ca: TestCA, auth: str, trace_log: pytest.LogCaptureFixture
) -> None:
    d = imap_driver(dovecot, test_ca, auth=auth)
    d.connect()
    d.login()
    d.commit()
    lines = trace_lines(trace_log)
    sent = [line for line in lines if line.startswith("IMAP> ")]
    if auth == "password":
        assert any(line.endswith(' LOGIN "bob" *') for line in sent)
    else:
        assert any(line.endswith(" AUTHENTICATE CRAM-MD5") for line in sent)
        assert "IMAP> *" in lines  # the CRAM-MD5 response is redacted
    assert PASSWORD not in trace_log.text


def test_trace_hides_the_password(
    dovecot: Dovecot, test_ca: TestCA, trace_log: pytest.LogCaptureFixture
) -> None:
    d = imap_driver(dovecot, test_ca, sslproto="")
    session(d)
    d.commit()
    lines = trace_lines(trace_log)
    assert any(line.startswith("IMAP< * OK") for line in lines)  # the greeting
    login = [line for line in lines if " LOGIN " in line]
    assert len(login) == 1
    assert login[0].startswith("IMAP> ") and login[0].endswith(' LOGIN "bob" *')
    assert PASSWORD not in trace_log.text


def test_wrong_password(dovecot: Dovecot, test_ca: TestCA) -> None:
    d = imap_driver(dovecot, test_ca, password="not-the-password")
    d.connect()
    with pytest.raises(AuthenticationError) as info:
        d.login()
    d.close()
    assert info.value.exit_code == ExitCode.AUTHFAIL
    assert "Authentication failed" in str(info.value)
    assert "not-the-password" not in str(info.value)


def test_list_retrieve_peek(dovecot: Dovecot, test_ca: TestCA) -> None:
    dovecot.seed("bob", SEEDED)
    d = imap_driver(dovecot, test_ca)
    listing = session(d)
    assert [m.size for m in listing] == [len(crlf(m)) for m in SEEDED]
    assert [m.number for m in listing] == sorted(m.number for m in listing)
    assert all(m.uid == str(m.number) for m in listing)
    assert d.seen_uids == set()
    assert isinstance(d.uidvalidity, int)
    for info, expected in zip(listing, SEEDED, strict=True):
        out = io.BytesIO()
        assert d.retrieve(info.number, out, peek=False) == len(out.getvalue())
        assert crlf(out.getvalue()) == crlf(expected)
    d.commit()
    assert dovecot.flags("bob") == ["", "", ""]  # BODY.PEEK[]: nothing marked read


@pytest.mark.parametrize("piece", [10, 1000])  # 1000: one message is a whole number of parts
def test_large_message_is_fetched_in_parts(
    dovecot: Dovecot, test_ca: TestCA, trace_log: pytest.LogCaptureFixture, piece: int
) -> None:
    """Memory stays flat: a message larger than `piece` arrives in parts, byte for byte, and
    is still not marked read."""
    header = b"Subject: big\r\n\r\n"
    messages = [header + b"x" * (3000 - len(header) - 2) + b"\r\n",
                header + b"line\n" * 500]  # LF in the file: Dovecot's offsets count CRLF
    dovecot.seed("bob", messages)
    d = imap_driver(dovecot, test_ca)
    d.piece = piece
    listing = session(d)
    assert listing[0].size == 3000
    for info, expected in zip(listing, messages, strict=True):
        out = io.BytesIO()
        assert d.retrieve(info.number, out, peek=False) == info.size
        assert out.getvalue() == crlf(expected)
    d.commit()
    partial = [line for line in trace_lines(trace_log) if "BODY.PEEK[]<" in line]
    assert len(partial) >= 3000 // piece * 2
    assert dovecot.flags("bob") == ["", ""]


def test_small_fetch_blocks(dovecot: Dovecot, test_ca: TestCA) -> None:
    dovecot.seed("bob", SEEDED)
    d = imap_driver(dovecot, test_ca, fetchsizelimit=2)
    assert len(session(d)) == 3
    d.close()


def test_delete_and_mark_seen(
    dovecot: Dovecot, test_ca: TestCA, trace_log: pytest.LogCaptureFixture
) -> None:
    dovecot.seed("bob", SEEDED)
    d = imap_driver(dovecot, test_ca)
    first, second, _third = session(d)
    d.delete(second.number)
    d.mark_seen(first.number)
    d.commit()
    sent = [line for line in trace_lines(trace_log) if line.startswith("IMAP> ")]
    assert any(line.endswith(f" UID EXPUNGE {second.number}") for line in sent)  # UIDPLUS
    assert [crlf(m) for m in dovecot.messages("bob")] == [crlf(SEEDED[0]), crlf(SEEDED[2])]
    assert dovecot.flags("bob") == ["S", ""]

    again = imap_driver(dovecot, test_ca)
    listing = session(again)
    assert [m.uid for m in listing] == [first.uid, _third.uid]
    assert again.seen_uids == {first.uid}
    again.close()


def test_close_does_not_expunge(dovecot: Dovecot, test_ca: TestCA) -> None:
    dovecot.seed("bob", SEEDED[:1])
    d = imap_driver(dovecot, test_ca)
    (info,) = session(d)
    d.delete(info.number)
    d.close()
    d.close()  # twice is harmless
    assert len(dovecot.messages("bob")) == 1


def test_read_only_examine(dovecot: Dovecot, test_ca: TestCA) -> None:
    dovecot.seed("bob", SEEDED[:1])
    d = imap_driver(dovecot, test_ca, read_only=True)
    (info,) = session(d)
    with pytest.raises(RuntimeError, match="read-only"):
        d.delete(info.number)
    out = io.BytesIO()
    d.retrieve(info.number, out, peek=False)
    d.commit()
    assert crlf(out.getvalue()) == crlf(SEEDED[0])
    assert dovecot.flags("bob") == [""]


def test_folder(dovecot: Dovecot, test_ca: TestCA) -> None:
    dovecot.seed("bob", SEEDED[:1])
    dovecot.seed("bob", SEEDED[2:], folder="Archive")
    d = imap_driver(dovecot, test_ca, folder="Archive")
    (info,) = session(d)
    out = io.BytesIO()
    d.retrieve(info.number, out, peek=True)
    assert crlf(out.getvalue()) == crlf(SEEDED[2])
    d.delete(info.number)
    d.commit()
    assert dovecot.messages("bob", folder="Archive") == []
    assert len(dovecot.messages("bob")) == 1


def test_missing_folder(dovecot: Dovecot, test_ca: TestCA) -> None:
    d = imap_driver(dovecot, test_ca, folder="NoSuchFolder")
    d.connect()
    d.login()
    with pytest.raises(ProtocolError, match="SELECT"):
        d.list_messages()
    d.close()


def test_uidvalidity_changes(dovecot: Dovecot, test_ca: TestCA) -> None:
    dovecot.seed("bob", SEEDED[:2])
    d = imap_driver(dovecot, test_ca)
    session(d)
    before = d.uidvalidity
    d.commit()
    dovecot.change_uidvalidity("bob")
    again = imap_driver(dovecot, test_ca)
    assert len(session(again)) == 2
    again.commit()
    assert before is not None and again.uidvalidity is not None
    assert again.uidvalidity != before


def test_certificate_not_trusted(dovecot: Dovecot) -> None:
    d = imap_driver(dovecot, None)
    with pytest.raises(TLSError):
        d.connect()
    d.close()
    implicit = imap_driver(dovecot, None, implicit=True)
    with pytest.raises(TLSError):
        implicit.connect()


# -- a scripted fake server ------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        {"greeting": "* PREAUTH logged in already"},
        {"capabilities": "IMAP4rev1 LOGINDISABLED"},  # STARTTLS stripped
        {"capabilities": "IMAP4rev1 STARTTLS LOGINDISABLED"},  # STARTTLS refused
    ],
    ids=["preauth", "no-starttls", "starttls-refused"],
)
def test_no_credentials_without_required_tls(
    test_ca: TestCA, script: dict[str, str], trace_log: pytest.LogCaptureFixture
) -> None:
    with FakeImapServer(**script) as server:
        d = imap_driver(server.port, test_ca)  # STARTTLS required (sslcertck)
        with pytest.raises(TLSError) as info:
            d.connect()
        with pytest.raises(RuntimeError, match="not connected"):
            d.login()  # a caller ignoring the error still sends nothing
        d.close()
    assert info.value.exit_code == ExitCode.SOCKET
    assert not any(
        verb in line.upper() for line in server.received for verb in ("LOGIN", "AUTHENTICATE")
    )
    assert PASSWORD not in " ".join(server.received)


def test_preauth_without_tls_required_skips_login() -> None:
    with FakeImapServer(greeting="* PREAUTH hello") as server:
        d = imap_driver(server.port, None, sslproto="")
        d.connect()
        d.login()
        d.close()
    assert not any("LOGIN" in line.upper() for line in server.received)


def test_logindisabled_uses_plain_over_tls(
    test_ca: TestCA, trace_log: pytest.LogCaptureFixture
) -> None:
    script = {"capabilities": "IMAP4rev1 LOGINDISABLED AUTH=PLAIN"}
    with FakeImapServer(tls_context=test_ca.server_context(), **script) as server:
        d = imap_driver(server.port, test_ca, implicit=True, auth="any")
        d.connect()
        d.login()
        d.close()
    blob = base64.b64encode(f"\0bob\0{PASSWORD}".encode()).decode()
    at = next(i for i, line in enumerate(server.received) if "AUTHENTICATE" in line)
    assert server.received[at].endswith(" AUTHENTICATE PLAIN")
    assert server.received[at + 1] == blob
    assert not any(" LOGIN " in line for line in server.received)
    assert "IMAP> *" in trace_lines(trace_log)
    assert blob not in trace_log.text and PASSWORD not in trace_log.text


def test_logindisabled_without_tls_sends_nothing() -> None:
    with FakeImapServer(capabilities="IMAP4rev1 LOGINDISABLED AUTH=PLAIN") as server:
        d = imap_driver(server.port, None, sslproto="")
        d.connect()
        with pytest.raises(AuthenticationError, match="not encrypted") as info:
            d.login()
        d.close()
    assert info.value.exit_code == ExitCode.AUTHFAIL
    assert not any("LOGIN" in line or "AUTHENTICATE" in line for line in server.received)


def test_connection_dropped_during_login() -> None:
    with FakeImapServer(capabilities="IMAP4rev1", drop_on="LOGIN") as server:
        d = imap_driver(server.port, None, sslproto="")
        d.connect()
        with pytest.raises(ServerConnectionError, match="lost") as info:
            d.login()
        d.close()
    assert info.value.exit_code == ExitCode.SOCKET
    assert PASSWORD not in str(info.value)


def test_timeout() -> None:
    with FakeImapServer(capabilities="IMAP4rev1", silent_on="LOGIN") as server:
        d = imap_driver(server.port, None, sslproto="", timeout=1)
        d.connect()
        with pytest.raises(ServerTimeoutError, match="timeout after 1 seconds"):
            d.login()
        d.close()


@pytest.mark.parametrize("capabilities", ["IMAP4rev1", "IMAP4rev1 STARTTLS"])
def test_opportunistic_tls_goes_on_in_plaintext(capabilities: str) -> None:
    # Neither `ssl`, `sslproto` nor `sslcertck`: fetchmail's opportunistic STARTTLS.
    with FakeImapServer(capabilities=capabilities) as server:
        d = imap_driver(server.port, None, sslcertck=False)
        d.connect()
        d.login()
        d.close()
        assert not d.tls_active
    assert any(line.endswith(f' LOGIN "bob" "{PASSWORD}"') for line in server.received)
