"""The POP3 driver against the scripted fake server (tests/fakes/pop3.py) on 127.0.0.1.

The fake can do what real servers will not do on request: strip STLS, refuse it, inject data,
drop the line mid-message, or never answer.
"""

from __future__ import annotations

import hashlib
import io
import logging
import poplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
from fakes.pop3 import SILENT_GREETING, SILENT_HANDSHAKE, FakePop3Server
from servers.certs import TestCA, fingerprint
from servers.fixtures import unavailable

from fetcher import trace
from fetcher.drivers.base import MailboxDriver, MessageInfo
from fetcher.drivers.pop3 import (
    MAX_LINE,
    READ_BUFFER,
    Pop3Driver,
    _TlsRecords,
    apop_timestamp,
    reader_of,
)
from fetcher.errors import (
    AuthenticationError,
    ConfigError,
    LockBusyError,
    ProtocolError,
    RemoteError,
    ServerConnectionError,
    ServerTimeoutError,
    TLSError,
)
from fetcher.exitcodes import ExitCode
from fetcher.model import ServerOptions, UserOptions

if TYPE_CHECKING:
    from servers.dovecot import Dovecot

PASSWORD = "s3cr3t-pw"
MSG1 = b"From: a@example.org\r\nSubject: one\r\n\r\nbody one\r\n"
MSG2 = b"From: b@example.org\r\nSubject: two\r\n\r\nbody two\r\nsecond line\r\n"





@pytest.fixture(scope="session")
def pki(test_ca: TestCA) -> TestCA:
    """The session's test CA; Dovecot presents its server certificate too."""
    return test_ca


def fake(pki: TestCA | None = None, *, untrusted: bool = False, **kwargs: Any) -> FakePop3Server:
    kwargs.setdefault("messages", [MSG1, MSG2])
    kwargs.setdefault("uids", ["uid-aaa", "uid-bbb"])
    kwargs.setdefault("password", PASSWORD)
    if pki is not None:
        kwargs.setdefault("tls_context", pki.server_context(untrusted=untrusted))
    return FakePop3Server(**kwargs)


def driver(
    server: FakePop3Server | int, pki: TestCA | None = None, *, auth: str = "any",
    protocol: str = "POP3", timeout: int = 5, **user: Any,
) -> Pop3Driver:  # fmt: skip
    """A driver for the fake server; with `pki`, the test CA is the trust store."""
    port = server if isinstance(server, int) else server.port
    options = ServerOptions(
        pollname="127.0.0.1", protocol=protocol, service=str(port), timeout=timeout, auth=auth
    )
    user.setdefault("remote", "bob")
    user.setdefault("password", PASSWORD)
    if pki is not None:
        user.setdefault("sslcertfile", str(pki.ca_cert))
    return Pop3Driver(options, UserOptions(**user))


@pytest.fixture
def trace_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger=trace.TRACE_LOGGER):
        yield caplog


def trace_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == trace.TRACE_LOGGER]


def session(d: Pop3Driver) -> list[MessageInfo]:
    d.connect()
    d.login()
    return d.list_messages()


# -- a whole session ---------------------------------------------------------------------------


def test_plain_session_when_starttls_is_off() -> None:
    with fake() as server:
        pop = driver(server, sslproto="")
        d: MailboxDriver = pop  # mypy checks that the protocol is met
        d.connect()
        d.login()
        listing = d.list_messages()
        assert listing == [
            MessageInfo(1, len(MSG1), "uid-aaa"),
            MessageInfo(2, len(MSG2), "uid-bbb"),
        ]
        out = io.BytesIO()
        assert d.retrieve(2, out, peek=False) == len(MSG2)
        assert out.getvalue() == MSG2
        d.delete(2)
        d.commit()
        d.close()  # after commit: harmless
    assert server.verbs == ["CAPA", "USER", "PASS", "STAT", "LIST", "UIDL", "RETR", "DELE", "QUIT"]
    assert server.remaining() == [MSG1]
    assert d.peer_address == "127.0.0.1"
    assert not pop.tls_active


def test_uids_are_stable_across_sessions() -> None:
    with fake(messages=[MSG1, MSG2, MSG1], uids=["u1", "u2", "u3"]) as server:
        first = driver(server, sslproto="")
        assert [m.uid for m in session(first)] == ["u1", "u2", "u3"]
        first.delete(1)
        first.commit()
        second = driver(server, sslproto="")
        assert [(m.number, m.uid) for m in session(second)] == [(1, "u2"), (2, "u3")]
        second.close()


def test_empty_mailbox_skips_list_and_uidl() -> None:
    with fake(messages=[], uids=[]) as server:
        d = driver(server, sslproto="")
        assert session(d) == []
        d.commit()
    assert "LIST" not in server.verbs and "UIDL" not in server.verbs


def test_without_uidl_the_uids_are_none() -> None:
    with fake(uids=None, capabilities=["TOP", "USER"]) as server:
        d = driver(server, sslproto="")
        assert [m.uid for m in session(d)] == [None, None]
        d.close()
    assert "UIDL" not in server.verbs  # CAPA did not offer it


def test_without_capa_uidl_is_still_tried() -> None:
    with fake(capa=False) as server:
        d = driver(server, sslproto="")
        assert [m.uid for m in session(d)] == ["uid-aaa", "uid-bbb"]
        assert not d.capa_supported and d.capabilities == {}
        d.close()


def test_capabilities_are_exposed() -> None:
    with fake(cram_md5=True) as server:
        d = driver(server, sslproto="", auth="password")
        d.connect()
        assert d.capa_supported
        assert d.capabilities == {
            "TOP": (),
            "UIDL": (),
            "USER": (),
            "RESP-CODES": (),
            "SASL": ("CRAM-MD5",),
        }
        d.close()


# -- STLS and the downgrade attacks (CVE-2006-5867, CVE-2021-39272) ---------------------------


def test_stripped_and_refused_stls_fails_before_any_credential(pki: TestCA) -> None:
    # A man in the middle removes STLS from CAPA and answers -ERR to it: the 6.4 default
    # (sslcertck) must stop there, before USER/PASS.
    with fake(advertise_stls=False, tls_context=None) as server:
        d = driver(server, pki)
        with pytest.raises(TLSError) as info:
            d.connect()
        assert str(info.value) == "127.0.0.1: upgrade to TLS failed."
        assert info.value.exit_code == ExitCode.SOCKET
        with pytest.raises(TLSError):
            d.login()  # a caller that carries on anyway still sends nothing
        d.close()
    assert server.verbs == ["CAPA", "STLS"]
    assert not any(PASSWORD in c for c in server.commands)


def test_required_stls_is_sent_even_when_capa_hides_it(pki: TestCA) -> None:
    # Stripping STLS from CAPA alone gains an attacker nothing (fetchmail >= 6.3.19 does this).
    with fake(pki, advertise_stls=False) as server:
        d = driver(server, pki)
        session(d)
        d.close()
    assert server.verbs[:3] == ["CAPA", "STLS", "CAPA"]
    assert all(r.tls for r in server.received if r.verb in ("USER", "PASS"))


@pytest.mark.parametrize(
    "options",
    [{}, {"sslproto": "tls1.2+"}, {"sslproto": "auto", "sslcertck": False}],
    ids=["default", "tls1.2+", "auto-nocertck"],
)
def test_stls_upgrade_then_login_over_tls(pki: TestCA, options: dict[str, Any]) -> None:
    with fake(pki) as server:
        d = driver(server, pki, **options)
        session(d)
        assert d.tls_active
        assert "STLS" not in d.capabilities  # the capabilities are the ones read over TLS
        d.close()
    assert server.verbs[:6] == ["CAPA", "STLS", "CAPA", "USER", "PASS", "STAT"]
    assert [r.tls for r in server.received[:4]] == [False, False, True, True]


def test_stls_with_an_untrusted_certificate_fails_before_login(pki: TestCA) -> None:
    with fake(pki, untrusted=True) as server:
        d = driver(server, pki)
        with pytest.raises(TLSError, match=r"upgrade to TLS failed.*certificate verification") as e:
            d.connect()
        assert e.value.exit_code == ExitCode.SOCKET
        d.close()
    assert "USER" not in server.verbs and "PASS" not in server.verbs


def test_stls_name_mismatch_fails(pki: TestCA) -> None:
    with fake(pki) as server:
        d = driver(server, pki, sslcommonname="mail.example.org")
        with pytest.raises(TLSError, match="Hostname mismatch"):
            d.connect()
        d.close()


def test_stls_with_a_pinned_self_signed_certificate(pki: TestCA) -> None:
    with fake(pki, untrusted=True) as server:
        d = driver(server, sslfingerprint=fingerprint(pki.untrusted_cert, "md5"))
        session(d)
        assert d.tls_active
        d.close()


def test_stls_with_a_wrong_pin_fails(pki: TestCA) -> None:
    with fake(pki) as server:
        d = driver(server, pki, sslfingerprint=fingerprint(pki.untrusted_cert, "sha256"))
        with pytest.raises(TLSError, match="fingerprints do not match"):
            d.connect()
        d.close()
    assert "PASS" not in server.verbs


def test_plaintext_injected_after_stls_is_refused(pki: TestCA) -> None:
    # The STARTTLS command injection of the "NO STARTTLS" paper: bytes sent before the
    # handshake must never be read as if they had come over TLS.
    with fake(pki, inject_after_stls=b"+OK injected\r\n") as server:
        d = driver(server, pki)
        with pytest.raises(TLSError, match="injected"):
            d.connect()
        d.close()
    assert "USER" not in server.verbs


def test_opportunistic_without_stls_logs_in_in_plaintext() -> None:
    with fake(tls_context=None) as server:
        d = driver(server, sslcertck=False)
        session(d)
        assert not d.tls_active
        d.close()
    assert "STLS" not in server.verbs and "PASS" in server.verbs


def test_opportunistic_with_stls_upgrades_without_checking(pki: TestCA) -> None:
    with fake(pki, untrusted=True) as server:
        d = driver(server, sslcertck=False)
        session(d)
        assert d.tls_active
        d.close()
    assert all(r.tls for r in server.received if r.verb == "PASS")


def test_opportunistic_stls_refused_carries_on(pki: TestCA) -> None:
    with fake(advertise_stls=True, tls_context=None) as server:
        d = driver(server, sslcertck=False)
        session(d)
        d.close()
    assert server.verbs[:4] == ["CAPA", "STLS", "USER", "PASS"]


def test_implicit_tls(pki: TestCA) -> None:
    with fake(pki, implicit_tls=True) as server:
        d = driver(server, pki, ssl=True)
        listing = session(d)
        out = io.BytesIO()
        d.retrieve(1, out, peek=True)
        d.commit()
    assert len(listing) == 2 and out.getvalue() == MSG1
    assert d.tls_active and d.peer_address == "127.0.0.1"
    assert all(r.tls for r in server.received)
    assert "STLS" not in server.verbs


def test_implicit_tls_verifies_the_certificate(pki: TestCA) -> None:
    with fake(pki, untrusted=True, implicit_tls=True) as server:
        d = driver(server, pki, ssl=True)
        with pytest.raises(TLSError, match="certificate verification error") as info:
            d.connect()
        assert info.value.exit_code == ExitCode.SOCKET


# -- authentication ----------------------------------------------------------------------------


def test_wrong_password(trace_log: pytest.LogCaptureFixture) -> None:
    with fake() as server:
        d = driver(server, sslproto="", password="wrong-password")
        d.connect()
        with pytest.raises(AuthenticationError) as info:
            d.login()
        d.close()
    assert info.value.exit_code == ExitCode.AUTHFAIL
    assert "[AUTH] Authentication failed." in str(info.value)
    assert "wrong-password" not in str(info.value)
    assert "POP3> PASS *" in trace_lines(trace_log)


@pytest.mark.parametrize(
    "reply",
    [
        "-ERR [IN-USE] Mailbox is locked by another POP3 session",
        "-ERR unable to lock maildrop",
        "-ERR [LOGIN-DELAY] wait a few minutes",
    ],
)
def test_lock_busy_is_exit_9(reply: str) -> None:
    with fake(replies={"PASS": reply}) as server:
        d = driver(server, sslproto="")
        d.connect()
        with pytest.raises(LockBusyError, match="lock busy") as info:
            d.login()
        d.close()
    assert int(info.value.exit_code) == 9


def test_lock_busy_in_the_greeting() -> None:
    with fake(greeting="-ERR maildrop already locked") as server, pytest.raises(LockBusyError):
        driver(server, sslproto="").connect()


def test_service_unavailable_is_server_busy() -> None:
    with fake(replies={"USER": "-ERR Service temporarily unavailable"}) as server:
        d = driver(server, sslproto="")
        d.connect()
        with pytest.raises(RemoteError) as info:
            d.login()
        d.close()
    assert info.value.exit_code == ExitCode.SERVBUSY


def test_cram_md5_is_preferred_with_auth_any(trace_log: pytest.LogCaptureFixture) -> None:
    with fake(cram_md5=True) as server:
        d = driver(server, sslproto="")
        session(d)
        d.close()
    assert "AUTH" in server.verbs and "PASS" not in server.verbs and "USER" not in server.verbs
    lines = trace_lines(trace_log)
    assert "POP3> AUTH CRAM-MD5" in lines
    assert "POP3> *" in lines  # the base64 answer is hidden like a password


def test_cram_md5_refused_falls_back_to_user_pass_with_auth_any() -> None:
    with fake(cram_md5=True, replies={"AUTH": "-ERR mechanism disabled"}) as server:
        d = driver(server, sslproto="")
        session(d)
        d.close()
    assert server.verbs[:4] == ["CAPA", "AUTH", "USER", "PASS"]


def test_auth_cram_md5_is_forced_and_does_not_fall_back() -> None:
    with fake(cram_md5=True) as server:
        d = driver(server, sslproto="", auth="cram-md5", password="wrong")
        d.connect()
        with pytest.raises(AuthenticationError):
            d.login()
        d.close()
    assert "USER" not in server.verbs and "PASS" not in server.verbs


def test_auth_password_ignores_cram_md5() -> None:
    with fake(cram_md5=True) as server:
        d = driver(server, sslproto="", auth="password")
        session(d)
        d.close()
    assert server.verbs[:3] == ["CAPA", "USER", "PASS"]


STAMP = "<1896.697170952@dbc.mtview.ca.us>"  # RFC 1939's example


def test_apop(trace_log: pytest.LogCaptureFixture) -> None:
    with fake(apop_stamp=STAMP) as server:
        d = driver(server, sslproto="", protocol="APOP")
        session(d)
        d.close()
    digest = hashlib.md5((STAMP + PASSWORD).encode()).hexdigest()
    assert f"APOP bob {digest}" in server.commands
    assert "USER" not in server.verbs
    assert "POP3> APOP bob *" in trace_lines(trace_log)
    assert digest not in trace_log.text


def test_apop_rfc1939_example_digest() -> None:
    digest = hashlib.md5((STAMP + "tanstaaf").encode()).hexdigest()
    assert digest == "c4c9334bac560ecc979e58001b3e22fb"


@pytest.mark.parametrize(
    ("greeting", "message"),
    [
        ("+OK ready", "Required APOP timestamp not found in greeting"),
        ("+OK ready <1234.5678@host", "Timestamp syntax error in greeting"),
        ("+OK ready <>", "Timestamp syntax error in greeting"),
        ("+OK ready <1234.5678>", "Invalid APOP timestamp."),  # no @
        ("+OK ready <12\x0134@host>", "Invalid APOP timestamp."),  # control character
        ("+OK ready <12\u00e934@host>", "Invalid APOP timestamp."),  # not ASCII
        ("+OK ready <12 34@host>", "Invalid APOP timestamp."),
        ("+OK ready <@host>", "Invalid APOP timestamp."),
        ("+OK ready <a@>", "Invalid APOP timestamp."),
    ],
)
def test_apop_timestamp_is_validated_strictly(greeting: str, message: str) -> None:
    with pytest.raises(AuthenticationError, match=f"^{message}$".replace(".", r"\.")) as info:
        apop_timestamp(greeting)
    assert info.value.exit_code == ExitCode.AUTHFAIL


@pytest.mark.parametrize(
    "stamp",
    [STAMP, '<"quoted local"@host>', "<a.b@[127.0.0.1]>", "<x@y.z> trailing"],
)
def test_apop_timestamp_accepts_valid_msgids(stamp: str) -> None:
    assert apop_timestamp(f"+OK POP3 ready {stamp}") == stamp.split(" trailing")[0]


def test_apop_with_a_bad_timestamp_sends_nothing() -> None:
    with fake(apop_stamp="<no-at-sign>") as server:
        d = driver(server, sslproto="", protocol="APOP")
        d.connect()
        with pytest.raises(AuthenticationError, match="Invalid APOP timestamp"):
            d.login()
        d.close()
    assert server.verbs == ["CAPA"]


def test_line_breaks_in_credentials_are_refused() -> None:
    with fake() as server:
        d = driver(server, sslproto="", password="pw\r\nDELE 1")
        d.connect()
        with pytest.raises(ConfigError) as info:
            d.login()
        d.close()
    assert "DELE" not in server.verbs and "PASS" not in server.verbs
    assert "pw" not in str(info.value).replace("pyfetch", "")


def test_unsupported_auth_is_refused() -> None:
    with fake() as server:
        d = driver(server, sslproto="", auth="ntlm")
        d.connect()
        with pytest.raises(ConfigError, match="ntlm"):
            d.login()
        d.close()


# -- retrieval ---------------------------------------------------------------------------------


class RecordingFile(io.BytesIO):
    """Counts write() calls, to show the message arrives line by line."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.largest = 0

    def write(self, data: Any) -> int:
        self.writes += 1
        self.largest = max(self.largest, len(data))
        return super().write(data)


def test_large_message_with_long_lines_is_streamed() -> None:
    line = b"x" * (100 * 1024)
    body = b"".join(b"%06d" % i + line + b"\r\n" for i in range(52))
    big = b"Subject: big\r\n\r\n" + body
    assert len(big) > 5 * 1024 * 1024
    with fake(messages=[big], uids=["big"]) as server:
        d = driver(server, sslproto="")
        assert session(d) == [MessageInfo(1, len(big), "big")]
        out = RecordingFile()
        assert d.retrieve(1, out, peek=False) == len(big)
        d.close()
    assert out.getvalue() == big
    # written as it arrives, a read buffer's worth of whole lines at a time (a 100 KB line
    # once its end is in); never the whole message
    assert out.writes >= len(big) // READ_BUFFER
    assert len(line) + 8 <= out.largest <= READ_BUFFER + len(line) + 8


def test_a_tls_read_takes_every_record_already_in_but_waits_for_none_more(
    test_ca: TestCA,
) -> None:
    """A TLS read gives one record (16 KB at most); the connection's reader takes all those
    that have come in, so that a large message is worked on in large blocks. It must not
    wait for a record the server has not sent: that could be past the end of the reply."""
    listener = socket.create_server(("127.0.0.1", 0))
    sent = threading.Event()
    more = threading.Event()
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with test_ca.server_context().wrap_socket(conn, server_side=True) as tls_conn:
            for _ in range(12):
                tls_conn.sendall(b"z" * 10_000)  # a record each
            sent.set()
            more.wait(5)  # the next record only once the reader has had the first twelve
            tls_conn.sendall(b"end")
            done.wait(5)

    server = threading.Thread(target=serve)
    server.start()
    try:
        sock = socket.create_connection(listener.getsockname(), timeout=2)
        with test_ca.client_context().wrap_socket(sock, server_hostname="localhost") as tls:
            reader = reader_of(tls)
            assert sent.wait(5)
            time.sleep(0.1)  # every record is in the socket's buffer
            # twelve records in one read, which did not wait for a thirteenth (a read that
            # had waited would have timed out, and the next read would raise)
            assert len(reader.peek(1)) == 120_000
            assert reader.read(120_000) == b"z" * 120_000
            more.set()
            assert reader.read(3) == b"end"
    finally:
        more.set()
        done.set()
        server.join()
        listener.close()


def test_a_tls_read_failing_after_some_records_hands_those_over_first() -> None:
    """The octets read before an error are the reply's: they are used, and the error comes
    with the next read (as it would have, one record at a time)."""

    class Failing:
        def __init__(self) -> None:
            self.pair = socket.socketpair()
            self.reads = 0

        def fileno(self) -> int:
            return self.pair[0].fileno()

        def pending(self) -> int:
            return 1  # another record seems to be there

        def recv_into(self, view: memoryview) -> int:
            self.reads += 1
            if self.reads > 1:
                raise ConnectionResetError(104, "Connection reset by peer")
            view[:5] = b"first"
            return 5

    sock = Failing()
    reader = io.BufferedReader(_TlsRecords(sock))  # type: ignore[arg-type]
    assert reader.read1(100) == b"first"
    with pytest.raises(ConnectionResetError):
        reader.read1(100)
    for end in sock.pair:
        end.close()


def test_dot_stuffing_is_undone() -> None:
    tricky = (
        b"Subject: dots\r\n\r\n"
        b".\r\n"  # a line holding one dot: on the wire "..", not the end
        b"..two dots\r\n"
        b".leading dot\r\n"
        b"middle . dot\r\n"
        b"\r\n"
        b"last\r\n"
    )
    with fake(messages=[tricky], uids=["t"]) as server:
        d = driver(server, sslproto="")
        session(d)
        out = io.BytesIO()
        assert d.retrieve(1, out, peek=True) == len(tricky)
        d.close()
    assert out.getvalue() == tricky


def test_peek_uses_top_and_not_peek_uses_retr() -> None:
    with fake() as server:
        d = driver(server, sslproto="")
        session(d)
        d.retrieve(1, io.BytesIO(), peek=True)
        d.retrieve(2, io.BytesIO(), peek=False)
        d.close()
    assert "TOP 1 99999999" in server.commands and "RETR 2" in server.commands


def test_force_retr_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FETCHMAIL_POP3_FORCE_RETR", "")  # set at all, even empty, counts
    with fake() as server:
        d = driver(server, sslproto="")
        session(d)
        d.retrieve(1, io.BytesIO(), peek=True)
        d.close()
    assert "RETR 1" in server.commands and "TOP" not in server.verbs


def test_peek_without_top_in_capa_uses_retr() -> None:
    with fake(capabilities=["UIDL", "USER"]) as server:
        d = driver(server, sslproto="")
        session(d)
        d.retrieve(1, io.BytesIO(), peek=True)
        d.close()
    assert "RETR 1" in server.commands


def test_a_line_longer_than_what_is_held_at_once_is_delivered_whole() -> None:
    """fetchmail delivers a message with a line of any length; so do we, streaming it in
    parts (a line over 1 MiB once blocked the whole mailbox)."""
    huge = b"Subject: huge\r\n\r\n" + b"y" * (MAX_LINE + 10) + b"\r\n"
    with fake(messages=[huge], uids=["h"]) as server:
        d = driver(server, sslproto="")
        session(d)
        out = io.BytesIO()
        d.retrieve(1, out, peek=False)
        d.close()
    assert out.getvalue() == huge


def test_line_of_exactly_max_length_is_fine() -> None:
    edge = b"Subject: edge\r\n\r\n" + b"z" * MAX_LINE + b"\r\n"
    with fake(messages=[edge], uids=["e"]) as server:
        d = driver(server, sslproto="")
        session(d)
        out = io.BytesIO()
        d.retrieve(1, out, peek=False)
        d.close()
    assert out.getvalue() == edge


def test_connection_dropped_mid_retr() -> None:
    with fake(drop_in_retr_after=30) as server:
        d = driver(server, sslproto="")
        session(d)
        with pytest.raises(ServerConnectionError, match="lost") as info:
            d.retrieve(1, io.BytesIO(), peek=False)
        assert info.value.exit_code == ExitCode.SOCKET
        d.close()


def test_retr_refused_is_a_protocol_error() -> None:
    with fake(replies={"RETR": "-ERR message vanished"}) as server:
        d = driver(server, sslproto="")
        session(d)
        with pytest.raises(ProtocolError, match="message vanished"):
            d.retrieve(1, io.BytesIO(), peek=False)
        d.close()


@pytest.mark.parametrize(
    ("verb", "reply"),
    [
        ("STAT", "+OK lots"),
        ("STAT", "+OK -1 100"),
        ("LIST", "+OK\r\n-1 100\r\n."),
        ("LIST", "+OK\r\n3 100\r\n."),  # message 3 of 2
        ("LIST", "+OK\r\n1 100\r\n1 100\r\n."),
        ("LIST", "+OK\r\n1 100\r\n2 100\r\n3 100\r\n."),  # more lines than STAT said
        ("UIDL", "+OK\r\n1 " + "u" * 600 + "\r\n."),  # CVE-2005-2335
        ("UIDL", "+OK\r\n1\r\n."),
        ("STAT", "Hello there"),
    ],
)
def test_garbage_listings_are_protocol_errors(verb: str, reply: str) -> None:
    with fake(replies={verb: reply}) as server:
        d = driver(server, sslproto="")
        d.connect()
        d.login()
        with pytest.raises(ProtocolError) as info:
            d.list_messages()
        assert info.value.exit_code == ExitCode.PROTOCOL
        d.close()


def test_quit_refused_is_reported() -> None:
    with fake(replies={"QUIT": "-ERR some deleted messages not removed"}) as server:
        d = driver(server, sslproto="")
        session(d)
        d.delete(1)
        with pytest.raises(ProtocolError, match="not removed"):
            d.commit()
        d.close()


# -- the trace ---------------------------------------------------------------------------------


def test_trace(trace_log: pytest.LogCaptureFixture) -> None:
    with fake() as server:
        d = driver(server, sslproto="")
        session(d)
        d.retrieve(1, io.BytesIO(), peek=False)
        d.commit()
    lines = trace_lines(trace_log)
    assert lines[:4] == [
        f"Trying to connect to 127.0.0.1/{server.port}...connected.",
        "POP3< +OK fake POP3 server ready",
        "POP3> CAPA",
        "POP3< +OK Capability list follows",
    ]
    assert "POP3> USER bob" in lines
    assert "POP3> PASS *" in lines
    uidl = lines.index("POP3> UIDL")
    assert lines[uidl + 1 : uidl + 5] == [
        "POP3< +OK",
        "POP3< 1 uid-aaa",
        "POP3< 2 uid-bbb",
        "POP3< .",
    ]
    retr = lines.index("POP3> RETR 1")
    assert lines[retr + 1] == f"POP3< +OK {len(MSG1)} octets"
    assert lines[retr + 2] == "POP3> QUIT"  # the message text is never traced
    assert PASSWORD not in trace_log.text
    assert "body one" not in trace_log.text


# -- timeouts and connection errors ------------------------------------------------------------


def test_no_greeting_times_out() -> None:
    with fake(silent=[SILENT_GREETING]) as server:
        d = driver(server, sslproto="", timeout=1)
        with pytest.raises(ServerTimeoutError) as info:
            d.connect()
    assert str(info.value) == "timeout after 1 seconds waiting for server 127.0.0.1."
    assert info.value.exit_code == ExitCode.SOCKET  # fetchmail 6.4.37: a socket error, 2


def test_no_reply_times_out() -> None:
    with fake(silent=["STAT"]) as server:
        d = driver(server, sslproto="", timeout=1)
        d.connect()
        d.login()
        with pytest.raises(ServerTimeoutError):
            d.list_messages()
        d.close()


def test_stalled_stls_handshake_times_out(pki: TestCA) -> None:
    # CVE-2011-1947: no timeout during STLS negotiation hung fetchmail for days.
    with fake(pki, silent=[SILENT_HANDSHAKE]) as server:
        d = driver(server, pki, timeout=1)
        with pytest.raises(ServerTimeoutError):
            d.connect()
        d.close()
    assert "USER" not in server.verbs


def test_stalled_message_times_out() -> None:
    with fake(silent=["RETR"]) as server:
        d = driver(server, sslproto="", timeout=1)
        session(d)
        with pytest.raises(ServerTimeoutError):
            d.retrieve(1, io.BytesIO(), peek=False)
        d.close()


def test_timeout_zero_means_the_default() -> None:
    assert driver(1, timeout=0).timeout == 300


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_connection_refused_names_the_server() -> None:
    port = closed_port()
    with pytest.raises(ServerConnectionError) as info:
        driver(port, sslproto="").connect()
    assert str(info.value) == f"connection to 127.0.0.1:{port} failed: Connection refused"
    assert info.value.exit_code == ExitCode.SOCKET


def test_server_closing_before_greeting() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        d = driver(port, sslproto="", timeout=2)

        def accept_and_close() -> None:
            conn, _ = listener.accept()
            conn.close()

        t = threading.Thread(target=accept_and_close)
        t.start()
        with pytest.raises(ServerConnectionError, match="closed it before greeting"):
            d.connect()
        t.join()
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("service", "ssl_on", "port"),
    [
        (None, False, 110),
        (None, True, 995),
        ("pop3", False, 110),
        ("pop3s", True, 995),
        ("1234", False, 1234),
    ],
)
def test_ports(service: str | None, ssl_on: bool, port: int) -> None:
    d = Pop3Driver(ServerOptions(pollname="h", service=service), UserOptions(ssl=ssl_on))
    if service and not service.isdigit():
        try:
            socket.getservbyname(service, "tcp")
        except OSError:
            unavailable(f"no {service} in /etc/services (the netbase package provides it)")
    assert d._resolve_port() == port


def test_unknown_service_is_a_connection_error() -> None:
    d = Pop3Driver(ServerOptions(pollname="h", service="no-such-service-x"), UserOptions())
    with pytest.raises(ServerConnectionError, match="no-such-service-x"):
        d.connect()


def test_close_never_raises() -> None:
    d = driver(closed_port())
    d.close()
    d.close()
    with fake() as server:
        d = driver(server, sslproto="")
        d.connect()
        assert d._conn is not None
        d._conn.sock.close()  # the socket is already gone underneath
        d.close()
        d.close()


def test_connect_factory_can_be_replaced() -> None:
    calls: list[tuple[str, int, float, ssl.SSLContext | None]] = []

    def factory(
        host: str, port: int, *, timeout: float, context: ssl.SSLContext | None,
        opener: object,
    ) -> poplib.POP3:
        calls.append((host, port, timeout, context))
        return poplib.POP3(host, port, timeout)  # the stock class works too

    with fake() as server:
        options = ServerOptions(pollname="127.0.0.1", service=str(server.port), timeout=7)
        d = Pop3Driver(options, UserOptions(remote="bob", password=PASSWORD, sslproto=""),
                       connect_factory=factory)  # fmt: skip
        session(d)
        d.commit()
    assert calls == [("127.0.0.1", server.port, 7.0, None)]


def test_via_is_where_we_connect_and_pollname_is_the_label() -> None:
    port = closed_port()
    options = ServerOptions(pollname="mail.isp.net", via="127.0.0.1", service=str(port))
    d = Pop3Driver(options, UserOptions(sslproto=""))
    with pytest.raises(ServerConnectionError, match=f"connection to 127.0.0.1:{port} failed"):
        d.connect()


def test_tls_error_message_uses_the_poll_name(pki: TestCA) -> None:
    with fake(tls_context=None) as server:
        options = ServerOptions(pollname="mail.isp.net", via="127.0.0.1", service=str(server.port))
        d = Pop3Driver(options, replace(UserOptions(), remote="bob", password=PASSWORD))
        with pytest.raises(TLSError, match=r"^mail\.isp\.net: upgrade to TLS failed\.$"):
            d.connect()
        d.close()


# -- against a real Dovecot (tests/servers) ----------------------------------------------------

DOVECOT_PASSWORD = "hidden"  # servers.dovecot.DEFAULT_USERS
SEEDED = [
    b"From: one@example.org\r\nSubject: first\r\n\r\nHello.\r\n",
    b"From: two@example.org\r\nSubject: dots\r\n\r\n.\r\n..two\r\n.x\r\n"
    + b"L" * 200_000
    + b"\r\nend\r\n",
    b"From: three@example.org\r\nSubject: third\r\n\r\nBye.\r\n",
]


def dovecot_driver(
    dovecot: Dovecot, ca: TestCA | None, *, implicit: bool = False, auth: str = "password",
    protocol: str = "POP3", **user: Any,
) -> Pop3Driver:  # fmt: skip
    port = dovecot.pop3s if implicit else dovecot.pop3
    options = ServerOptions(
        pollname=dovecot.host, protocol=protocol, service=str(port), timeout=10, auth=auth
    )
    user.setdefault("remote", "bob")
    user.setdefault("password", DOVECOT_PASSWORD)
    if ca is not None:
        user.setdefault("sslcertfile", str(ca.ca_cert))
    return Pop3Driver(options, UserOptions(ssl=implicit, **user))


@pytest.mark.parametrize(
    ("implicit", "options"),
    [
        (False, {"sslproto": ""}),
        (False, {}),  # the 6.4 default: STLS, verified against the test CA
        (False, {"sslproto": "tls1.2+", "sslcommonname": "localhost"}),
        (True, {}),
        (True, {"sslproto": "tls1.3+"}),
    ],
    ids=["plain", "stls", "stls-tls1.2+-commonname", "pop3s", "pop3s-tls1.3+"],
)
def test_dovecot_login(
    dovecot: Dovecot, pki: TestCA, implicit: bool, options: dict[str, Any]
) -> None:
    dovecot.seed("bob", SEEDED[:1])
    d = dovecot_driver(dovecot, pki, implicit=implicit, **options)
    assert len(session(d)) == 1
    assert d.tls_active == (options.get("sslproto") != "")
    assert d.peer_address == "127.0.0.1"
    d.commit()


@pytest.mark.parametrize(
    ("auth", "command"),
    [("any", "POP3> AUTH CRAM-MD5"), ("cram-md5", "POP3> AUTH CRAM-MD5"),
     ("password", "POP3> PASS *")],
)
def test_dovecot_auth_methods(
    dovecot: Dovecot, pki: TestCA, trace_log: pytest.LogCaptureFixture, auth: str, command: str
) -> None:
    dovecot.seed("bob", SEEDED[:1])
    d = dovecot_driver(dovecot, pki, auth=auth)
    d.connect()
    assert "CRAM-MD5" in d.capabilities.get("SASL", ())
    d.login()
    assert [m.size for m in d.list_messages()] == [len(SEEDED[0])]  # logged in as bob
    d.commit()
    lines = trace_lines(trace_log)
    assert command in lines
    assert ("POP3> PASS *" in lines) == (auth == "password")  # any: the stronger CRAM-MD5
    assert DOVECOT_PASSWORD not in trace_log.text


def test_dovecot_apop(dovecot: Dovecot, pki: TestCA, trace_log: pytest.LogCaptureFixture) -> None:
    # Dovecot's greeting carries a real APOP challenge: our strict check must accept it.
    dovecot.seed("bob", SEEDED[:1])
    d = dovecot_driver(dovecot, pki, protocol="APOP")
    d.connect()
    stamp = apop_timestamp(d.greeting)
    assert stamp.startswith("<") and stamp.endswith(">") and stamp in d.greeting
    d.login()
    assert [m.size for m in d.list_messages()] == [len(SEEDED[0])]  # logged in as bob
    d.commit()
    lines = trace_lines(trace_log)
    assert "POP3> APOP bob *" in lines
    assert not any(line.startswith(("POP3> USER", "POP3> PASS")) for line in lines)


def test_dovecot_round_trip(dovecot: Dovecot, pki: TestCA) -> None:
    dovecot.seed("bob", SEEDED)
    first = dovecot_driver(dovecot, pki)
    listing = session(first)
    assert [m.size for m in listing] == [len(m) for m in SEEDED]
    uids = [m.uid for m in listing]
    assert all(uids) and len(set(uids)) == 3
    for info, expected in zip(listing, SEEDED, strict=True):
        out = io.BytesIO()
        assert first.retrieve(info.number, out, peek=True) == len(expected)
        assert out.getvalue() == expected
    first.delete(2)
    first.commit()

    second = dovecot_driver(dovecot, pki)
    again = session(second)
    second.commit()
    assert [m.uid for m in again] == [uids[0], uids[2]]  # UIDs survive the renumbering
    assert dovecot.messages("bob") == [SEEDED[0], SEEDED[2]]

    third = dovecot_driver(dovecot, pki)
    assert [m.uid for m in session(third)] == [uids[0], uids[2]]
    third.close()


def test_dovecot_top_leaves_messages_unseen(dovecot: Dovecot, pki: TestCA) -> None:
    dovecot.seed("bob", SEEDED[:2])
    d = dovecot_driver(dovecot, pki)
    session(d)
    d.retrieve(1, io.BytesIO(), peek=True)
    d.retrieve(2, io.BytesIO(), peek=False)
    d.commit()
    assert dovecot.flags("bob") == ["", "S"]


def test_dovecot_wrong_password(dovecot: Dovecot, pki: TestCA) -> None:
    d = dovecot_driver(dovecot, pki, password="not-the-password")
    d.connect()
    with pytest.raises(AuthenticationError) as info:
        d.login()
    d.close()
    assert info.value.exit_code == ExitCode.AUTHFAIL
    assert "Authentication failed" in str(info.value)
    assert "not-the-password" not in str(info.value)


def test_dovecot_certificate_not_trusted_by_the_system(dovecot: Dovecot) -> None:
    d = dovecot_driver(dovecot, None)  # the system trust store: the test CA is not in it
    with pytest.raises(TLSError, match="certificate verification error"):
        d.connect()
    d.close()
    implicit = dovecot_driver(dovecot, None, implicit=True)
    with pytest.raises(TLSError, match="certificate verification error"):
        implicit.connect()


def test_auth_plain_when_the_server_turned_user_off(trace_log: pytest.LogCaptureFixture) -> None:
    with fake(capabilities=("TOP", "UIDL", "SASL PLAIN")) as server:
        d = driver(server, sslproto="")
        session(d)
        d.commit()
        verbs = [r.verb for r in server.received]
    assert "USER" not in verbs and "PASS" not in verbs
    assert "POP3> AUTH PLAIN *" in trace_lines(trace_log)
    assert PASSWORD not in trace_log.text
