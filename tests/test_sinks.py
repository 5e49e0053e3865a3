"""The sinks against real listeners: aiosmtpd for SMTP and LMTP, real /bin/sh MDAs, real files.

A scripted listener (tests/fakes/listener.py) stands in only where aiosmtpd cannot misbehave on
demand: a connection dropped in the middle of DATA, an idle connection the listener closed,
a reply that never comes, a garbled greeting.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import signal
import socket
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import UnixSocketController
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from fakes.listener import Conn, ScriptedListener
from servers import ipv6_loopback
from servers.fixtures import unavailable
from servers.smtp import ClosedPort, Fault, RecordingHandler, RecordingLMTP, SMTPServer

from fetcher.errors import BsmtpError, ConfigError, ListenerUnavailableError, LocalError
from fetcher.exitcodes import ExitCode
from fetcher.sinks import smtp as smtp_module
from fetcher.sinks.base import Delivery, Envelope, Message, Outcome
from fetcher.sinks.bsmtp import BsmtpSink
from fetcher.sinks.mda import MdaSink
from fetcher.sinks.smtp import CHUNK_SIZE, SmtpSink, SmtpTimeouts, parse_hunt_entry

FAST = SmtpTimeouts(
    connect=5, greeting=5, command=5, data_init=5, data_block=5, data_end=5, idle=300
)
ANTISPAM = (571, 550, 501, 554)  # fetchmail's default list
DEADLINE = 10.0  # seconds to wait for something that should happen at once; only a failure waits

HEADER = (
    b"Return-Path: <alice@example.org>\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: dots and bytes\r\n"
    b"\r\n"
)
# Lines that dot-stuffing must survive, a lone "." that would end DATA if unstuffed, 8-bit bytes
# and an empty line.
BODY = (
    b"Hello Bob,\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b".leading dot\r\n"
    b"\r\n"
    b"caf\xc3\xa9 and a raw \xff byte\r\n"
    b"last line\r\n"
)
SECRET = "s3cr3t-Pa55"


def message(header: bytes = HEADER, body: bytes = BODY) -> Message:
    return Message(header=header, body=io.BytesIO(body))


def envelope(
    *recipients: str, sender: str = "alice@example.org", body: str = "", size: int = 0
) -> Envelope:
    rcpts = list(recipients) or ["bob@localhost"]
    return Envelope(
        sender=sender, recipients=rcpts, size=size or len(HEADER) + len(BODY), body=body
    )


def sink_for(*entries: str, **kwargs: Any) -> SmtpSink:
    kwargs.setdefault("helo_name", "pyfetch.test")
    kwargs.setdefault("timeouts", FAST)
    return SmtpSink(list(entries), **kwargs)


def entry(server: SMTPServer | ClosedPort) -> str:
    return f"{server.host}/{server.port}"


def deliver_all(
    sink: SmtpSink | MdaSink | BsmtpSink, *items: tuple[Envelope, Message]
) -> list[Delivery]:
    async def run() -> list[Delivery]:
        try:
            return [await sink.deliver(env, msg) for env, msg in items]
        finally:
            await sink.close()

    return asyncio.run(run())


@pytest.fixture
def smtpd() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


@pytest.fixture
def trace_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="pyfetch.trace")
    return caplog


def trace_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pyfetch.trace"]


def steps(server: SMTPServer) -> list[str]:
    return [step for step, _ in server.events]


# -- SMTP: what arrives -------------------------------------------------------------------------


def test_message_arrives_byte_for_byte(smtpd: SMTPServer) -> None:
    [result] = deliver_all(sink_for(entry(smtpd)), (envelope(body="8BITMIME"), message()))
    assert result.outcome is Outcome.ACCEPTED
    assert result.reply.startswith("250")
    assert result.refused == {}
    [txn] = smtpd.transactions
    assert txn.data == HEADER + BODY
    assert txn.mail_from == "alice@example.org"
    assert txn.rcpt_tos == ["bob@localhost"]
    assert txn.helo == "pyfetch.test"


def test_body_without_final_line_end_gets_one(smtpd: SMTPServer) -> None:
    [result] = deliver_all(sink_for(entry(smtpd)), (envelope(), message(body=b"no newline")))
    assert result.outcome is Outcome.ACCEPTED
    assert smtpd.messages == [HEADER + b"no newline\r\n"]


def test_size_and_body_parameters_when_offered(smtpd: SMTPServer) -> None:
    size = len(HEADER) + len(BODY)
    deliver_all(
        sink_for(entry(smtpd)),
        (envelope(body="8BITMIME"), message()),
        (envelope(body="7BIT"), message()),
        (envelope(), message()),
        (envelope(size=-1), message()),
    )
    first, second, third, fourth = smtpd.transactions
    assert first.mail_options == ["BODY=8BITMIME", f"SIZE={size}"]
    assert second.mail_options == ["BODY=7BIT", f"SIZE={size}"]
    assert third.mail_options == [f"SIZE={size}"]
    assert fourth.mail_options == []  # no size known: none declared, as fetchmail


def test_no_parameters_when_not_offered() -> None:
    # No data_size_limit: no SIZE; decode_data: no 8BITMIME (and aiosmtpd then refuses BODY=).
    ascii_body = b"plain 7-bit text\r\n.\r\n"
    with SMTPServer(data_size_limit=None, decode_data=True) as server:
        [result] = deliver_all(
            sink_for(entry(server)), (envelope(body="8BITMIME"), message(body=ascii_body))
        )
        assert result.outcome is Outcome.ACCEPTED
        [txn] = server.transactions
        assert txn.mail_options == []
        assert txn.data == HEADER + ascii_body


def test_null_sender_is_sent_as_empty_path(trace_log: pytest.LogCaptureFixture) -> None:
    async def script(conn: Conn) -> None:
        await conn.hello()
        await conn.envelope()
        await conn.data()
        await conn.reply("250 OK")
        await conn.expect("QUIT", "221 bye")

    async def run() -> Delivery:
        async with ScriptedListener(script) as listener:
            sink = sink_for(listener.entry)
            result = await sink.deliver(envelope(sender=""), message())
            await sink.close()
            assert listener.errors == []
            assert listener.connections[0].transcript[1].startswith("MAIL FROM:<> ")
            return result

    assert asyncio.run(run()).outcome is Outcome.ACCEPTED


def test_connection_is_reused_and_quit_at_close(smtpd: SMTPServer) -> None:
    results = deliver_all(sink_for(entry(smtpd)), *[(envelope(), message()) for _ in range(3)])
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 3
    assert steps(smtpd).count("connect") == 1
    assert steps(smtpd)[-1] == "quit"


def test_nothing_is_opened_without_a_message(smtpd: SMTPServer) -> None:
    deliver_all(sink_for(entry(smtpd)))
    assert smtpd.events == []


def test_bare_line_ends_go_out_as_crlf_lines(smtpd: SMTPServer) -> None:
    """A server that breaks the RFC sends bare LFs; a listener reads CRLF lines. The dots are
    stuffed by those lines: none is added to, or taken from, what is delivered."""
    body = b"one\ntwo\n.\n..two dots\n.one dot\rmac\rend"
    deliver_all(sink_for(entry(smtpd)), (envelope(), message(body=body)))
    assert smtpd.messages == [
        HEADER + b"one\r\ntwo\r\n.\r\n..two dots\r\n.one dot\r\nmac\r\nend\r\n"
    ]


# -- SMTP: the trace ------------------------------------------------------------------------------


def test_trace_shows_the_dialogue_but_not_the_message(
    smtpd: SMTPServer, trace_log: pytest.LogCaptureFixture
) -> None:
    deliver_all(sink_for(entry(smtpd)), (envelope(), message()))
    lines = trace_lines(trace_log)
    size = len(HEADER) + len(BODY)
    assert f"Trying to connect to {entry(smtpd)}...connected." in lines
    assert any(line.startswith("SMTP< 220 ") for line in lines)
    assert "SMTP> EHLO pyfetch.test" in lines
    assert any(line.startswith("SMTP< 250-") for line in lines)  # each EHLO line is echoed
    assert f"SMTP> MAIL FROM:<alice@example.org> SIZE={size}" in lines
    assert "SMTP> RCPT TO:<bob@localhost>" in lines
    assert "SMTP> DATA" in lines
    assert any(line.startswith("SMTP< 354") for line in lines)
    eom = lines.index("SMTP>. (EOM)")
    assert lines[eom + 1].startswith("SMTP< 250")
    assert lines[-2:][0] == "SMTP> QUIT"
    text = "\n".join(lines)
    for fragment in ("Hello Bob", "dots and bytes", "last line"):
        assert fragment not in text


def _authenticator(
    server: SMTP, session: Any, envelope: Any, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data == (b"bob", SECRET.encode())
    return AuthResult(success=ok, handled=False)


def test_auth_plain_is_traced_without_the_secret(trace_log: pytest.LogCaptureFixture) -> None:
    with SMTPServer(authenticator=_authenticator, auth_require_tls=False) as server:
        sink = sink_for(entry(server), esmtp_name="bob", esmtp_password=SECRET)
        [result] = deliver_all(sink, (envelope(), message()))
        assert result.outcome is Outcome.ACCEPTED
    lines = trace_lines(trace_log)
    assert "SMTP> AUTH PLAIN *" in lines
    assert any(line.startswith("SMTP< 235") for line in lines)
    assert all(SECRET not in line for line in lines)
    assert all(SECRET not in r.getMessage() for r in trace_log.records)


def test_refused_auth_falls_back_to_helo_like_fetchmail(
    trace_log: pytest.LogCaptureFixture,
) -> None:
    with SMTPServer(authenticator=_authenticator, auth_require_tls=False) as server:
        sink = sink_for(entry(server), esmtp_name="bob", esmtp_password="wrong")
        [result] = deliver_all(sink, (envelope(), message()))
        assert result.outcome is Outcome.ACCEPTED
        assert steps(server)[:4] == ["connect", "ehlo", "connect", "helo"]
    assert all("wrong" not in line for line in trace_lines(trace_log))


# -- SMTP: finding a listener -------------------------------------------------------------------


def test_hunt_list_skips_a_closed_port(
    smtpd: SMTPServer, trace_log: pytest.LogCaptureFixture
) -> None:
    with ClosedPort() as closed:
        [result] = deliver_all(sink_for(entry(closed), entry(smtpd)), (envelope(), message()))
        assert result.outcome is Outcome.ACCEPTED
        assert len(smtpd.messages) == 1
        warnings = [r.getMessage() for r in trace_log.records if r.levelno == logging.WARNING]
        assert any(f"connection to {entry(closed)} failed" in w for w in warnings)


def test_no_listener_is_exit_10() -> None:
    with ClosedPort() as one, ClosedPort() as two:
        sink = sink_for(entry(one), entry(two))
        with pytest.raises(ListenerUnavailableError) as info:
            deliver_all(sink, (envelope(), message()))
    err = info.value
    assert err.exit_code is ExitCode.SMTP
    assert int(err.exit_code) == 10
    assert f"SMTP connect to {entry(one)} failed" in err.message
    assert f"SMTP connect to {entry(two)} failed" in err.message


def test_a_refused_greeting_moves_on_to_the_next_host(smtpd: SMTPServer) -> None:
    with SMTPServer([Fault("connect", 554, "go away")]) as grumpy:
        [result] = deliver_all(sink_for(entry(grumpy), entry(smtpd)), (envelope(), message()))
        assert result.outcome is Outcome.ACCEPTED
        assert grumpy.transactions == []
        # EHLO, then HELO on a fresh connection, as fetchmail tries before giving up on a host
        assert steps(grumpy).count("connect") == 2
    assert len(smtpd.messages) == 1


def test_refused_ehlo_falls_back_to_helo_on_a_fresh_connection() -> None:
    with SMTPServer([Fault("ehlo", 502, "no ESMTP here", times=1)]) as server:
        [result] = deliver_all(sink_for(entry(server)), (envelope(body="8BITMIME"), message()))
        assert result.outcome is Outcome.ACCEPTED
        assert steps(server)[:4] == ["connect", "ehlo", "connect", "helo"]
        [txn] = server.transactions
        assert txn.mail_options == []  # HELO: no extensions, so no SIZE and no BODY
        assert txn.data == HEADER + BODY


def test_garbled_greeting_is_no_listener() -> None:
    async def garbled(conn: Conn) -> None:
        await conn.reply("hello, I am not an SMTP server")
        await conn.linger()

    async def run() -> None:
        async with ScriptedListener(garbled, garbled) as listener:
            await sink_for(listener.entry).deliver(envelope(), message())

    with pytest.raises(ListenerUnavailableError, match="malformed reply"):
        asyncio.run(run())


def test_silent_listener_times_out() -> None:
    async def silent(conn: Conn) -> None:
        await conn.linger()

    timeouts = SmtpTimeouts(connect=1, greeting=0.2, command=0.2)

    async def run() -> None:
        async with ScriptedListener(silent, silent) as listener:
            await sink_for(listener.entry, timeouts=timeouts).deliver(envelope(), message())

    with pytest.raises(ListenerUnavailableError, match=r"timeout after 0\.2 seconds"):
        asyncio.run(run())


def test_ipv6_literal_in_brackets() -> None:
    if not ipv6_loopback():
        unavailable("no IPv6 loopback (::1) here")

    async def script(conn: Conn) -> None:
        await conn.hello()
        await conn.envelope()
        await conn.data()
        await conn.reply("250 OK")

    async def run() -> Delivery:
        async with ScriptedListener(script, host="::1") as listener:
            assert listener.entry.startswith("[::1]/")
            return await sink_for(listener.entry).deliver(envelope(), message())

    assert asyncio.run(run()).outcome is Outcome.ACCEPTED


@pytest.mark.parametrize(
    ("text", "lmtp", "host", "port", "path", "is_lmtp"),
    [
        ("localhost", False, "localhost", 25, None, False),
        ("127.0.0.1/2525", False, "127.0.0.1", 2525, None, False),
        ("[::1]/2525", False, "::1", 2525, None, False),
        ("::1", False, "::1", 25, None, False),
        ("127.0.0.1/smtp", False, "127.0.0.1", 25, None, False),
        ("127.0.0.1/2003", True, "127.0.0.1", 2003, None, True),
        ("/run/dovecot/lmtp", False, None, None, "/run/dovecot/lmtp", True),
    ],
)
def test_hunt_entries(
    text: str, lmtp: bool, host: str | None, port: int | None, path: str | None, is_lmtp: bool
) -> None:
    address = parse_hunt_entry(text, lmtp=lmtp)
    assert (address.host, address.port, address.path, address.lmtp) == (host, port, path, is_lmtp)
    assert address.entry == text


@pytest.mark.parametrize("text", ["localhost", "localhost/25", "localhost/smtp"])
def test_lmtp_over_tcp_needs_a_port_other_than_25(text: str) -> None:
    with pytest.raises(ConfigError, match="LMTP can't use default SMTP port"):
        parse_hunt_entry(text, lmtp=True)


@pytest.mark.parametrize("text", ["host/0", "host/99999", "host/no-such-service", "[]/25"])
def test_bad_hunt_entries(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hunt_entry(text, lmtp=False)


def test_default_timeouts_are_the_rfc_5321_minimums() -> None:
    t = SmtpTimeouts()
    waits = (t.greeting, t.command, t.data_init, t.data_block, t.data_end)
    assert waits == (300, 300, 120, 180, 600)


def test_bad_helo_name() -> None:
    with pytest.raises(ConfigError):
        SmtpSink(["localhost"], helo_name="two words")


# -- SMTP: refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "code", "outcome"),
    [
        ("mail", 451, Outcome.TEMPFAIL),
        ("mail", 553, Outcome.PERMFAIL),
        ("mail", 530, Outcome.TEMPFAIL),  # fetchmail: "requires STARTTLS, keeping message"
        ("rcpt", 450, Outcome.TEMPFAIL),
        ("rcpt", 553, Outcome.PERMFAIL),
        ("data", 451, Outcome.TEMPFAIL),
        ("data", 503, Outcome.PERMFAIL),
        ("eom", 452, Outcome.TEMPFAIL),
        ("eom", 552, Outcome.PERMFAIL),
    ],
)
def test_refusal_at_each_step(step: str, code: int, outcome: Outcome) -> None:
    fault = Fault(step, code, "injected", times=1)  # type: ignore[arg-type]
    with SMTPServer([fault]) as server:
        first, second = deliver_all(
            sink_for(entry(server), antispam=ANTISPAM),
            (envelope(), message()),
            (envelope(), message()),
        )
        assert first.outcome is outcome
        assert first.reply == f"{code} injected"
        assert first.antispam is False
        if step == "rcpt":
            assert first.refused == {"bob@localhost": f"{code} injected"}
        # RSET after the refusal, and the same connection carries the next message
        events = steps(server)
        assert "rset" in events
        assert second.outcome is Outcome.ACCEPTED
        assert events.count("connect") == 1
        assert server.messages == [HEADER + BODY]


@pytest.mark.parametrize(("code", "antispam"), [(571, True), (554, True), (553, False)])
def test_antispam_codes_at_mail_from(code: int, antispam: bool) -> None:
    with SMTPServer([Fault("mail", code, "spam")]) as server:
        [result] = deliver_all(sink_for(entry(server), antispam=ANTISPAM), (envelope(), message()))
    assert result.outcome is Outcome.PERMFAIL
    assert result.antispam is antispam


def test_antispam_code_at_end_of_data(smtpd: SMTPServer) -> None:
    # fetchmail's handle_smtp_report checks the antispam list at end of data too
    smtpd.add_fault(Fault("eom", 554, "looks like spam"))
    [result] = deliver_all(sink_for(entry(smtpd), antispam=ANTISPAM), (envelope(), message()))
    assert (result.outcome, result.antispam) == (Outcome.PERMFAIL, True)


def test_some_recipients_refused_the_rest_get_it() -> None:
    with SMTPServer([Fault("rcpt", 550, "no such user", recipient="ghost@localhost")]) as server:
        [result] = deliver_all(
            sink_for(entry(server)), (envelope("bob@localhost", "ghost@localhost"), message())
        )
        assert result.outcome is Outcome.ACCEPTED
        assert result.refused == {"ghost@localhost": "550 no such user"}
        [txn] = server.transactions
        assert txn.rcpt_tos == ["bob@localhost"]


def test_one_transient_recipient_makes_the_message_transient() -> None:
    with SMTPServer([Fault("rcpt", 452, "full", recipient="carol@localhost")]) as server:
        [result] = deliver_all(
            sink_for(entry(server)), (envelope("bob@localhost", "carol@localhost"), message())
        )
        assert result.outcome is Outcome.TEMPFAIL
        assert result.refused == {"carol@localhost": "452 full"}
        assert server.transactions == []
        assert "data" not in steps(server)


def test_all_recipients_refused() -> None:
    with SMTPServer([Fault("rcpt", 550, "unknown")]) as server:
        [result] = deliver_all(
            sink_for(entry(server), antispam=ANTISPAM),
            (envelope("a@localhost", "b@localhost"), message()),
        )
    assert result.outcome is Outcome.PERMFAIL
    assert set(result.refused) == {"a@localhost", "b@localhost"}
    assert result.antispam is True  # 550 is in fetchmail's default antispam list


def test_control_characters_in_an_address_are_never_sent(smtpd: SMTPServer) -> None:
    evil = "alice@example.org>\r\nRCPT TO:<victim@example.org"
    [result] = deliver_all(sink_for(entry(smtpd)), (envelope(sender=evil), message()))
    assert result.outcome is Outcome.PERMFAIL
    assert smtpd.events == []


@pytest.mark.parametrize("step", ["mail", "rcpt", "data", "eom"])
def test_connection_lost_then_next_message_on_a_new_connection(step: str) -> None:
    fault = Fault(step, drop=True, times=1)  # type: ignore[arg-type]
    with SMTPServer([fault]) as server:
        first, second = deliver_all(
            sink_for(entry(server)), (envelope(), message()), (envelope(), message())
        )
        assert first.outcome is Outcome.TEMPFAIL
        assert "closed" in first.reply or "lost" in first.reply
        assert second.outcome is Outcome.ACCEPTED
        assert steps(server).count("connect") == 2
        assert server.accepted[-1].data == HEADER + BODY


def test_disconnect_in_the_middle_of_data() -> None:
    big = message(body=(b"y" * 998 + b"\r\n") * 2000)

    async def drops_mid_data(conn: Conn) -> None:
        await conn.hello()
        await conn.envelope()
        await conn.data(stop_after=100_000)
        conn.drop()

    async def behaves(conn: Conn) -> None:
        await conn.hello()
        await conn.envelope()
        await conn.data()
        await conn.reply("250 OK")
        await conn.expect("QUIT", "221 bye")

    async def run() -> list[Delivery]:
        async with ScriptedListener(drops_mid_data, behaves) as listener:
            sink = sink_for(listener.entry)
            first = await sink.deliver(envelope(), big)
            second = await sink.deliver(envelope(), message())
            await sink.close()
            assert listener.errors == []
            assert len(listener.connections) == 2
            return [first, second]

    first, second = asyncio.run(run())
    assert first.outcome is Outcome.TEMPFAIL
    assert second.outcome is Outcome.ACCEPTED


def test_no_reply_after_data_times_out() -> None:
    async def never_answers(conn: Conn) -> None:
        await conn.hello()
        await conn.envelope()
        await conn.data()
        await conn.linger()

    timeouts = SmtpTimeouts(connect=5, greeting=5, command=5, data_end=0.3)

    async def run() -> Delivery:
        async with ScriptedListener(never_answers) as listener:
            sink = sink_for(listener.entry, timeouts=timeouts)
            result = await sink.deliver(envelope(), message())
            await sink.close()
            return result

    result = asyncio.run(run())
    assert result.outcome is Outcome.TEMPFAIL
    assert "timeout after 0.3 seconds" in result.reply


def test_listener_that_dropped_an_idle_connection_costs_nothing() -> None:
    async def serves_one_then_hangs_up(conn: Conn) -> None:
        await conn.hello()
        await conn.envelope()
        await conn.data()
        await conn.reply("250 OK")
        await conn.expect("MAIL FROM:")  # gone by the time the next message comes
        conn.drop()

    async def behaves(conn: Conn) -> None:
        await conn.hello()
        await conn.envelope()
        await conn.data()
        await conn.reply("250 OK")
        await conn.expect("QUIT", "221 bye")

    async def run() -> list[Delivery]:
        async with ScriptedListener(serves_one_then_hangs_up, behaves) as listener:
            sink = sink_for(listener.entry)
            results = [await sink.deliver(envelope(), message()) for _ in range(2)]
            await sink.close()
            assert listener.errors == []
            return results

    assert [r.outcome for r in asyncio.run(run())] == [Outcome.ACCEPTED, Outcome.ACCEPTED]


def test_idle_connection_is_closed_and_reopened() -> None:
    with SMTPServer() as server:
        sink = sink_for(entry(server), timeouts=SmtpTimeouts(idle=0))
        results = deliver_all(sink, (envelope(), message()), (envelope(), message()))
        assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2
        events = steps(server)
        assert events.count("connect") == 2
        assert events.index("quit") < events.index("connect", 1)


# -- SMTP: streaming ----------------------------------------------------------------------------


def test_two_megabytes_stream_in_bounded_writes(
    smtpd: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = b"0123456789" * 9 + b"abcdefg\r\n"  # 99 octets
    body = line * (2 * 1024 * 1024 // len(line)) + b".\r\n" + b"..\r\n"
    writes: list[int] = []
    tails: list[bytes] = []
    nodelay: list[int] = []
    original = smtp_module._Wire.write

    async def recording_write(self: Any, data: bytes, timeout: float) -> None:
        writes.append(len(data))
        tails.append(data[-5:])
        sock = self.writer.get_extra_info("socket")
        nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        await original(self, data, timeout)

    monkeypatch.setattr(smtp_module._Wire, "write", recording_write)
    [result] = deliver_all(
        sink_for(entry(smtpd)), (envelope(size=len(HEADER) + len(body)), message(body=body))
    )
    assert result.outcome is Outcome.ACCEPTED
    assert smtpd.messages == [HEADER + body]
    assert max(writes) <= CHUNK_SIZE + len(b".\r\n")  # never the whole message at once
    # the terminator rides with the last data, never in a tiny write of its own
    assert b".\r\n" not in tails
    assert tails.count(b"\r\n.\r\n") == 1
    assert sum(1 for n in writes if n == CHUNK_SIZE) >= len(body) // CHUNK_SIZE
    assert all(nodelay)


# -- LMTP -----------------------------------------------------------------------------------------


def lmtp_sink(server: SMTPServer, **kwargs: Any) -> SmtpSink:
    return sink_for(entry(server), lmtp=True, **kwargs)


def test_lmtp_delivers_with_lhlo(trace_log: pytest.LogCaptureFixture) -> None:
    with SMTPServer(lmtp=True) as server:
        [result] = deliver_all(
            lmtp_sink(server), (envelope("bob@localhost", "carol@localhost"), message())
        )
        assert result.outcome is Outcome.ACCEPTED
        assert server.messages == [HEADER + BODY]
    lines = trace_lines(trace_log)
    assert "LMTP> LHLO pyfetch.test" in lines
    assert "LMTP>. (EOM)" in lines
    eom = lines.index("LMTP>. (EOM)")
    # both per-recipient replies are read, though they arrive in one segment
    assert [line[:9] for line in lines[eom + 1 : eom + 3]] == ["LMTP< 250"] * 2


@pytest.mark.parametrize(
    ("faults", "outcome", "refused"),
    [
        ([Fault("eom", 452, "quota", recipient="carol@localhost")], Outcome.TEMPFAIL, ["carol"]),
        # fetchmail bounces the failures and deletes: keeping it would deliver it to bob again
        ([Fault("eom", 552, "too big", recipient="carol@localhost")], Outcome.ACCEPTED, ["carol"]),
        (
            [
                Fault("eom", 552, "too big", recipient="carol@localhost"),
                Fault("eom", 451, "later", recipient="bob@localhost"),
            ],
            Outcome.TEMPFAIL,
            ["bob", "carol"],
        ),
        ([Fault("eom", 552, "too big", times=2)], Outcome.PERMFAIL, ["bob", "carol"]),
    ],
)
def test_lmtp_per_recipient_replies(
    faults: list[Fault], outcome: Outcome, refused: list[str]
) -> None:
    with SMTPServer(faults, lmtp=True) as server:
        first, second = deliver_all(
            lmtp_sink(server, antispam=ANTISPAM),
            (envelope("bob@localhost", "carol@localhost"), message()),
            (envelope("dave@localhost"), message()),
        )
        assert first.outcome is outcome
        assert sorted(first.refused) == [f"{name}@localhost" for name in refused]
        assert first.antispam is False
        assert second.outcome is Outcome.ACCEPTED  # the connection is still in step
        assert steps(server).count("connect") == 1


def test_lmtp_antispam_at_end_of_data() -> None:
    with SMTPServer([Fault("eom", 554, "spam")], lmtp=True) as server:
        [result] = deliver_all(lmtp_sink(server, antispam=ANTISPAM), (envelope(), message()))
    assert (result.outcome, result.antispam) == (Outcome.PERMFAIL, True)


class _LmtpSocketController(UnixSocketController):
    def factory(self) -> SMTP:
        return RecordingLMTP(self.handler, **self.SMTP_kwargs)


def test_lmtp_over_a_unix_socket(tmp_path: Path, trace_log: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "lmtp.sock"
    handler = RecordingHandler(lmtp=True)
    controller = _LmtpSocketController(handler, unix_socket=path)
    controller.start()
    handler.armed = True
    try:
        # no `lmtp` flag: a socket path implies LMTP, as in fetchmail
        [result] = deliver_all(sink_for(str(path)), (envelope(), message()))
    finally:
        controller.stop()
    assert result.outcome is Outcome.ACCEPTED
    assert [t.data for t in handler.transactions] == [HEADER + BODY]
    assert "LMTP> LHLO pyfetch.test" in trace_lines(trace_log)


def test_lmtp_socket_missing_is_exit_10(tmp_path: Path) -> None:
    with pytest.raises(ListenerUnavailableError, match=r"LMTP connect to .* failed"):
        deliver_all(sink_for(str(tmp_path / "nothing.sock")), (envelope(), message()))


# -- MDA ------------------------------------------------------------------------------------------


def test_mda_gets_the_message_with_crs_stripped(tmp_path: Path) -> None:
    out = tmp_path / "delivered"
    sink = MdaSink(f"cat > {out}", stripcr=True)
    [result] = deliver_all(sink, (envelope(), message()))
    assert result.outcome is Outcome.ACCEPTED
    # no dot-stuffing for an MDA, and CRLF -> LF
    assert out.read_bytes() == (HEADER + BODY).replace(b"\r\n", b"\n")


def test_mda_without_stripcr_keeps_crlf(tmp_path: Path) -> None:
    out = tmp_path / "delivered"
    [result] = deliver_all(MdaSink(f"cat > {out}", stripcr=False), (envelope(), message()))
    assert result.outcome is Outcome.ACCEPTED
    assert out.read_bytes() == HEADER + BODY


def test_mda_with_forcecr_gets_crlf_for_every_bare_lf(tmp_path: Path) -> None:
    out = tmp_path / "delivered"
    bare = Message(b"Subject: bare\n\n", io.BytesIO(b"one\ntwo\r\nthree\n"))
    [result] = deliver_all(MdaSink(f"cat > {out}", stripcr=False, forcecr=True), (envelope(), bare))
    assert result.outcome is Outcome.ACCEPTED
    assert out.read_bytes() == b"Subject: bare\r\n\r\none\r\ntwo\r\nthree\r\n"


def test_mda_gets_sender_and_recipients(tmp_path: Path) -> None:
    out = tmp_path / "args"
    sink = MdaSink(f'cat > /dev/null; for word in %F %T; do echo "[$word]"; done > {out}')
    deliver_all(sink, (envelope("bob", "carol"), message()))
    assert out.read_text() == "[alice@example.org]\n[bob]\n[carol]\n"


@pytest.mark.parametrize(
    ("script", "reply"),
    [
        ("exit 75", "MDA returned nonzero status 75"),
        ("exit 3", "MDA returned nonzero status 3"),
        ("kill -9 $$", "MDA died of signal 9"),
    ],
)
def test_mda_failures_keep_the_message(script: str, reply: str) -> None:
    [result] = deliver_all(MdaSink(f"cat > /dev/null; {script}"), (envelope(), message()))
    assert result.outcome is Outcome.TEMPFAIL
    assert result.reply == reply


def test_mda_that_stops_reading_keeps_the_message() -> None:
    big = message(body=(b"z" * 998 + b"\r\n") * 4000)  # far more than a pipe holds
    [result] = deliver_all(MdaSink("exit 0"), (envelope(), big))
    assert result.outcome is Outcome.TEMPFAIL
    assert result.reply.startswith("Error writing to MDA")


@pytest.mark.parametrize(
    "sender",
    [
        "$(touch {dir}/pwned)@example.org",
        "`touch {dir}/pwned`@example.org",
        "x'$(touch {dir}/pwned)'@example.org",
        "x'; touch {dir}/pwned; '@example.org",
    ],
)
def test_hostile_sender_runs_nothing(tmp_path: Path, sender: str) -> None:
    hostile = sender.format(dir=tmp_path)
    out = tmp_path / "sender"
    sink = MdaSink(f"cat > /dev/null; echo %F > {out}")
    [result] = deliver_all(sink, (envelope(sender=hostile), message()))
    assert result.outcome is Outcome.ACCEPTED
    assert not (tmp_path / "pwned").exists()
    assert out.read_text() == hostile.replace("'", "_") + "\n"


def test_mda_template_that_quotes_an_expansion_is_refused() -> None:
    with pytest.raises(ConfigError):
        MdaSink("procmail -d '%T'")


def test_mda_that_cannot_start_is_exit_6() -> None:
    sink = MdaSink("cat", shell="/nonexistent/sh")
    with pytest.raises(LocalError) as info:
        deliver_all(sink, (envelope(), message()))
    assert info.value.exit_code is ExitCode.IOERR
    assert int(info.value.exit_code) == 6
    assert "MDA open failed" in info.value.message


def _running(pid: int) -> bool:
    """Whether process `pid` still runs; one that was killed but not reaped yet does not."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat_line.rpartition(")")[2].split()[0] not in ("Z", "X")  # zombie, dead


def test_cancelled_delivery_kills_the_whole_mda(tmp_path: Path) -> None:
    """A delivery given up on (SIGTERM, a poll abandoned) stops every process the MDA started,
    not just its shell: a pipeline child left running could still deliver the message that
    pyfetch leaves on the server, and the next poll would deliver it again."""
    go = tmp_path / "go"
    os.mkfifo(go)
    child_pid = tmp_path / "child.pid"
    # The child would deliver once `go` is opened; until then it waits in open() (`read` is a
    # shell builtin, so the child is this one process). The shell waits for it, so the delivery
    # is still under way when it is cancelled, however slow the machine.
    sink = MdaSink(
        f"(read line < {go}; touch {tmp_path}/delivered-anyway) & "
        f"echo $! > {child_pid}.new && mv {child_pid}.new {child_pid}; cat > /dev/null; wait"
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(sink.deliver(envelope(), message()))
        deadline = loop.time() + DEADLINE
        while not child_pid.exists():
            if task.done():
                pytest.fail(f"the MDA ended before its child started: {task.result()}")
            if loop.time() > deadline:
                pytest.fail(f"the MDA's child did not start within {DEADLINE} s")
            await asyncio.sleep(0.01)
        child = int(child_pid.read_text())
        try:
            assert _running(child)
            assert not task.done()  # cancelled in the middle of the delivery
            task.cancel()
            await asyncio.wait({task}, timeout=DEADLINE)
            assert task.done(), f"the delivery did not end within {DEADLINE} s of its cancel"
            with pytest.raises(asyncio.CancelledError):
                await task
            deadline = loop.time() + DEADLINE
            while _running(child):
                if loop.time() > deadline:
                    pytest.fail(
                        f"the MDA's child {child} still runs {DEADLINE} s after the delivery "
                        "was cancelled: it would deliver the message anyway"
                    )
                await asyncio.sleep(0.01)
        finally:
            if _running(child):  # a broken sink's leftover; once it is gone the shell ends
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            await asyncio.wait({task}, timeout=DEADLINE)

    asyncio.run(run())
    # Nothing is left that could deliver: no process has the child's pipe open any more.
    with pytest.raises(OSError) as no_reader:
        os.open(go, os.O_WRONLY | os.O_NONBLOCK)
    assert no_reader.value.errno == errno.ENXIO
    assert not (tmp_path / "delivered-anyway").exists()


def test_mda_streams_two_megabytes(tmp_path: Path) -> None:
    out = tmp_path / "big"
    body = (b"w" * 98 + b"\r\n") * 21000
    [result] = deliver_all(MdaSink(f"cat > {out}"), (envelope(), message(body=body)))
    assert result.outcome is Outcome.ACCEPTED
    assert out.read_bytes() == (HEADER + body).replace(b"\r\n", b"\n")


# -- BSMTP ----------------------------------------------------------------------------------------

STUFFED_BODY = (
    b"Hello Bob,\r\n"
    b"..\r\n"
    b"...two dots\r\n"
    b"..leading dot\r\n"
    b"\r\n"
    b"caf\xc3\xa9 and a raw \xff byte\r\n"
    b"last line\r\n"
)


def test_bsmtp_file_content_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    results = deliver_all(
        BsmtpSink(str(path)),
        (envelope("bob@localhost", "carol@localhost", body="8BITMIME"), message()),
        (envelope(sender=""), message(body=b"short\r\n")),
    )
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2
    assert path.read_bytes() == (
        b"MAIL FROM:<alice@example.org> BODY=8BITMIME\r\n"
        b"RCPT TO:<bob@localhost>\r\n"
        b"RCPT TO:<carol@localhost>\r\n"
        b"DATA\r\n" + HEADER + STUFFED_BODY + b".\r\n"
        b"MAIL FROM:<>\r\n"
        b"RCPT TO:<bob@localhost>\r\n"
        b"DATA\r\n" + HEADER + b"short\r\n.\r\n"
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_bsmtp_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(b"EARLIER\r\n")
    deliver_all(BsmtpSink(str(path)), (envelope(), message(body=b"x\r\n")))
    assert path.read_bytes().startswith(b"EARLIER\r\nMAIL FROM:<alice@example.org>\r\n")


def test_bsmtp_to_standard_output(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    [result] = deliver_all(BsmtpSink("-"), (envelope(), message(body=b".\r\n")))
    assert result.outcome is Outcome.ACCEPTED
    assert capfdbinary.readouterr().out == (
        b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n"
        + HEADER
        + b"..\r\n.\r\n"
    )


def test_bsmtp_unopenable_file_is_exit_12(tmp_path: Path) -> None:
    sink = BsmtpSink(str(tmp_path / "no" / "such" / "dir" / "batch"))
    with pytest.raises(BsmtpError) as info:
        deliver_all(sink, (envelope(), message()))
    assert info.value.exit_code is ExitCode.BSMTP
    assert int(info.value.exit_code) == 12
    assert info.value.message.startswith("BSMTP file open failed: No such file or directory")


def test_bsmtp_refuses_an_address_that_would_inject_a_record(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    evil = "bob@localhost>\r\nRCPT TO:<victim@example.org"
    [result] = deliver_all(BsmtpSink(str(path)), (envelope(evil), message()))
    assert result.outcome is Outcome.PERMFAIL
    assert not path.exists()


# -- all sinks ------------------------------------------------------------------------------------


def test_close_is_safe_to_repeat(tmp_path: Path) -> None:
    async def run() -> None:
        for sink in (
            sink_for("127.0.0.1/9"),
            MdaSink("cat > /dev/null"),
            BsmtpSink(str(tmp_path / "b")),
        ):
            await sink.close()
            await sink.close()

    asyncio.run(run())
    assert not os.path.exists(tmp_path / "b")


def test_bsmtp_declares_7bit_as_fetchmail_does(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    deliver_all(BsmtpSink(str(path)), (envelope(body="7BIT", size=99), message(body=b"x\r\n")))
    assert path.read_bytes().startswith(b"MAIL FROM:<alice@example.org> BODY=7BIT\r\n")


def test_the_body_filter_applies_to_every_sink(smtpd: SMTPServer, tmp_path: Path) -> None:
    """What `mimedecode` hands on is what each sink delivers, line ends and dots included."""

    def decoded(chunks: Iterable[bytes]) -> Iterator[bytes]:
        return (chunk.replace(b"=2E", b".") for chunk in chunks)

    def filtered() -> Message:
        return Message(HEADER, io.BytesIO(b"=2E\r\n=2Edot\r\n"), decoded)

    deliver_all(sink_for(entry(smtpd)), (envelope(), filtered()))
    assert smtpd.messages == [HEADER + b".\r\n.dot\r\n"]  # stuffed on the wire, and undone
    out = tmp_path / "mda"
    deliver_all(MdaSink(f"cat > {out}", stripcr=False), (envelope(), filtered()))
    assert out.read_bytes() == HEADER + b".\r\n.dot\r\n"
    batch = tmp_path / "batch"
    deliver_all(BsmtpSink(str(batch)), (envelope(), filtered()))
    assert batch.read_bytes().endswith(b"\r\n\r\n..\r\n..dot\r\n.\r\n")
