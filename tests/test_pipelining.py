"""SMTP/LMTP PIPELINING (RFC 2920; LMTP always allows it, RFC 2033): MAIL FROM, every RCPT TO
and DATA go out in one write, and every reply leads to the same Delivery as the lockstep
dialogue would.

The listeners are real where they can be: Postfix advertises PIPELINING; in front of it a
transparent relay records how the client's bytes arrived and, on demand, hides PIPELINING from
the EHLO reply, so the same refusal meets both dialogues. aiosmtpd 1.4 reads one command line
at a time from a buffered stream, so it answers a pipelined group in order as RFC 2920 asks,
but does not advertise the extension: an `ehlo` fault with aiosmtpd's own EHLO lines plus
PIPELINING makes it say so. A scripted listener plays what neither will do on demand: a 354
for a message whose envelope was refused, as some old listeners say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from fakes.listener import EHLO_LINES, Conn, ScriptedListener, ServedConnections
from servers import HOST
from servers.postfix import Postfix, strip_added_headers
from servers.smtp import Fault, SMTPServer
from test_sinks import ANTISPAM, BODY, HEADER, entry, envelope, message, sink_for, steps

from fetcher.sinks.base import Delivery, Envelope, Message, Outcome

# What Postfix stores of HEADER: its cleanup drops a Return-Path: the message brings along.
STORED_HEADER = HEADER.removeprefix(b"Return-Path: <alice@example.org>\r\n")
DEADLINE = 10.0  # seconds for what should happen at once; only a failure waits this long

# aiosmtpd's own EHLO reply (SIZE is its default data_size_limit), with PIPELINING added.
ADVERTISE_PIPELINING = Fault(
    "ehlo", 250, "pyfetch-test\nPIPELINING\nSIZE 33554432\n8BITMIME\nSMTPUTF8\nHELP"
)
PIPELINING_EHLO = ("250-fake.test", "250-PIPELINING", *EHLO_LINES[1:])


def run_sink(entry_: str, *items: tuple[Envelope, Message], **kwargs: Any) -> list[Delivery]:
    """Deliver `items` in turn through one sink, then close it, in an event loop of its own."""

    async def run() -> list[Delivery]:
        return await deliver(entry_, *items, **kwargs)

    return asyncio.run(run())


async def deliver(entry_: str, *items: tuple[Envelope, Message], **kwargs: Any) -> list[Delivery]:
    kwargs.setdefault("antispam", ANTISPAM)
    sink = sink_for(entry_, **kwargs)
    try:
        return [await sink.deliver(env, msg) for env, msg in items]
    finally:
        await sink.close()


@pytest.fixture
def trace_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="pyfetch.trace")
    return caplog


def trace_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pyfetch.trace"]


def dialogue(lines: list[str], protocol: str = "SMTP") -> list[str]:
    """The trace from MAIL FROM to the end of the first message, commands and replies."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{protocol}> MAIL"))
    end = lines.index(f"{protocol}>. (EOM)", start)
    return lines[start : end + 2]


# -- a relay in front of a real listener ----------------------------------------------------------


class Relay(ServedConnections):
    """A TCP relay to a listener on 127.0.0.1: passes bytes both ways, records each read of what
    the client sent (per connection), and hides PIPELINING from the EHLO reply if asked to."""

    def __init__(self, port: int, *, hide_pipelining: bool = False) -> None:
        self.target = port
        self.hide_pipelining = hide_pipelining
        self.port = 0
        super().__init__()
        self.reads: list[list[bytes]] = []

    @property
    def entry(self) -> str:
        return f"{HOST}/{self.port}"

    @property
    def connections(self) -> int:
        return len(self.reads)

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = self._track()
        reads: list[bytes] = []
        self.reads.append(reads)
        server_r, server_w = await asyncio.open_connection(HOST, self.target)

        async def upstream() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await client_r.read(65536):
                    reads.append(data)
                    server_w.write(data)
                    await server_w.drain()
            # A client that dropped the connection mid-DATA: the listener must see it cut short.
            server_w.transport.abort()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError):
                while line := await server_r.readline():
                    if self.hide_pipelining and line.upper().startswith(b"250-PIPELINING"):
                        continue
                    client_w.write(line)
                    await client_w.drain()
            client_w.close()

        try:
            await asyncio.gather(upstream(), downstream())
        finally:
            server_w.transport.abort()
            client_w.close()
            self._tasks.discard(task)


# -- Postfix --------------------------------------------------------------------------------------


def test_postfix_gets_mail_rcpt_and_data_in_one_write(
    postfix: Postfix, trace_log: pytest.LogCaptureFixture
) -> None:
    env = envelope("bob@localhost", "carol@localhost")

    async def run() -> tuple[list[Delivery], list[list[bytes]]]:
        async with Relay(postfix.port) as relay:
            results = await deliver(relay.entry, (env, message()), (env, message()))
            return results, relay.reads

    results, reads = asyncio.run(run())
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2
    assert [r.refused for r in results] == [{}, {}]
    group = (
        f"MAIL FROM:<alice@example.org> SIZE={env.size}\r\n"
        "RCPT TO:<bob@localhost>\r\nRCPT TO:<carol@localhost>\r\nDATA\r\n"
    ).encode()
    [connection] = reads  # both messages on one connection
    assert connection.count(group) == 2  # the whole envelope in one segment, each time
    delivered = postfix.wait_for_delivery(4)  # two messages, two recipients each
    assert {strip_added_headers(m) for m in delivered} == {STORED_HEADER + BODY}

    # -v shows every command and every reply, in the order of the wire
    lines = dialogue(trace_lines(trace_log))
    assert lines[:-1] == [
        f"SMTP> MAIL FROM:<alice@example.org> SIZE={env.size}",
        "SMTP> RCPT TO:<bob@localhost>",
        "SMTP> RCPT TO:<carol@localhost>",
        "SMTP> DATA",
        "SMTP< 250 2.1.0 Ok",
        "SMTP< 250 2.1.5 Ok",
        "SMTP< 250 2.1.5 Ok",
        "SMTP< 354 End data with <CR><LF>.<CR><LF>",
        "SMTP>. (EOM)",
    ]
    assert lines[-1].startswith("SMTP< 250 2.0.0 Ok: queued as ")


# Refusals Postfix gives on its own (soft_bounce turns its 5xx into 4xx): a malformed address
# at MAIL or RCPT, and more recipients than smtpd_recipient_limit (1000).
BAD = "a b@localhost"
MANY = [f"u{i}@localhost" for i in range(1001)]


@dataclass
class PostfixCase:
    sender: str
    recipients: list[str]
    delivery: Delivery
    drop: bool = False  # DATA got 354 with a recipient accepted: pipelining must drop


SYNTAX_RCPT = "401 4.1.3 Bad recipient address syntax"
POSTFIX_CASES = {
    "mail refused": PostfixCase(
        BAD,
        ["bob@localhost"],
        Delivery(Outcome.TEMPFAIL, reply="401 4.1.7 Bad sender address syntax"),
    ),
    "one recipient deferred": PostfixCase(
        "alice@example.org",
        ["bob@localhost", BAD],
        Delivery(Outcome.TEMPFAIL, reply=SYNTAX_RCPT, refused={BAD: SYNTAX_RCPT}),
        drop=True,
    ),
    "every recipient deferred": PostfixCase(
        "alice@example.org",
        [BAD, "@"],
        Delivery(Outcome.TEMPFAIL, reply=SYNTAX_RCPT, refused={BAD: SYNTAX_RCPT, "@": SYNTAX_RCPT}),
    ),
    "too many recipients": PostfixCase(
        "alice@example.org",
        MANY,
        Delivery(
            Outcome.TEMPFAIL,
            reply="452 4.5.3 Error: too many recipients",
            refused={MANY[-1]: "452 4.5.3 Error: too many recipients"},
        ),
        drop=True,
    ),
}


@pytest.mark.parametrize("case", list(POSTFIX_CASES))
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
def test_postfix_refusals_are_the_same_with_and_without_pipelining(
    postfix: Postfix, case: str, pipelining: bool
) -> None:
    c = POSTFIX_CASES[case]
    refused = Envelope(sender=c.sender, recipients=c.recipients, size=len(HEADER) + len(BODY))
    good_body = b"the next message\r\n"

    async def run() -> tuple[list[Delivery], list[list[bytes]]]:
        async with Relay(postfix.port, hide_pipelining=not pipelining) as relay:
            results = await deliver(
                relay.entry, (refused, message()), (envelope(), message(body=good_body))
            )
            return results, relay.reads

    (first, second), reads = asyncio.run(run())
    assert first == c.delivery
    assert second.outcome is Outcome.ACCEPTED
    # Only the next message arrives: the refused one reached nobody, not even empty.
    assert [strip_added_headers(m) for m in postfix.wait_for_delivery(1)] == [
        STORED_HEADER + good_body
    ]
    pipelined = any(b"\r\nDATA\r\n" in read for conn in reads for read in conn)
    assert pipelined is pipelining
    # A DATA that Postfix said 354 to for a refused message is cut short by dropping the
    # connection, and the next message opens a new one; otherwise RSET keeps it.
    assert len(reads) == (2 if pipelining and c.drop else 1)


# -- aiosmtpd: every fault, with and without PIPELINING --------------------------------------------

FAULTS: dict[str, list[Fault]] = {
    "mail 451": [Fault("mail", 451, "later", times=1)],
    "mail 553": [Fault("mail", 553, "no such sender", times=1)],
    "mail 530": [Fault("mail", 530, "STARTTLS first", times=1)],
    "mail 571 antispam": [Fault("mail", 571, "spam", times=1)],
    "mail 421": [Fault("mail", 421, "closing", times=1)],
    "rcpt 450 for one": [Fault("rcpt", 450, "busy", recipient="carol@localhost", times=1)],
    "rcpt 553 for one": [Fault("rcpt", 553, "no such user", recipient="carol@localhost")],
    "rcpt 550 for all": [Fault("rcpt", 550, "unknown", times=2)],
    "rcpt 550 and 451": [
        Fault("rcpt", 550, "unknown", recipient="bob@localhost", times=1),
        Fault("rcpt", 451, "later", recipient="carol@localhost", times=1),
    ],
    "rcpt 421": [Fault("rcpt", 421, "closing", recipient="bob@localhost", times=1)],
    "data 451": [Fault("data", 451, "later", times=1)],
    "data 554": [Fault("data", 554, "no", times=1)],
    "data 421": [Fault("data", 421, "closing", times=1)],
    "eom 452": [Fault("eom", 452, "full", times=1)],
    "eom 554 antispam": [Fault("eom", 554, "spam", times=1)],
    "drop at mail": [Fault("mail", drop=True, times=1)],
    "drop at rcpt": [Fault("rcpt", drop=True, times=1)],
    "drop at data": [Fault("data", drop=True, times=1)],
    "drop at eom": [Fault("eom", drop=True, times=1)],
}


@dataclass(frozen=True)
class Seen:
    """What a user sees of two messages through one listener, the first one meeting a fault."""

    first: Delivery
    second: Delivery
    # (recipients, data) of what aiosmtpd accepted; the scripted listener keeps its own record
    messages: list[tuple[list[str], bytes]]
    connections: int


def through_aiosmtpd(faults: list[Fault], *, pipelining: bool, lmtp: bool = False) -> Seen:
    extra = [ADVERTISE_PIPELINING] if pipelining and not lmtp else []
    # copies: a fault counts down its `times` as it fires, and each run needs them whole
    with SMTPServer([replace(f) for f in (*extra, *faults)], lmtp=lmtp) as server:
        first, second = run_sink(
            entry(server),
            (envelope("bob@localhost", "carol@localhost"), message()),
            (envelope("dave@localhost"), message(body=b"second\r\n")),
            lmtp=lmtp,
        )
        return Seen(
            first,
            second,
            [(t.rcpt_tos, t.data) for t in server.accepted],
            steps(server).count("connect"),
        )


# The one fault above where DATA gets 354 for a refused message (bob accepted, carol deferred):
# pipelining drops that connection, and the next message needs one more.
DROPPED = {"rcpt 450 for one"}


def comparable(delivery: Delivery) -> Delivery:
    """A lost connection is said as "closed the connection" or "connection ... lost: reset",
    whichever the kernel reports first; the rest must be equal."""
    if "closed the connection" in delivery.reply or "connection to listener lost" in delivery.reply:
        return replace(delivery, reply="(connection lost)")
    return delivery


@pytest.mark.parametrize("fault", list(FAULTS))
def test_aiosmtpd_faults_give_the_same_delivery_pipelined(
    fault: str, trace_log: pytest.LogCaptureFixture
) -> None:
    pipelined = through_aiosmtpd(FAULTS[fault], pipelining=True)
    lines = trace_lines(trace_log)
    trace_log.clear()
    lockstep = through_aiosmtpd(FAULTS[fault], pipelining=False)
    assert comparable(pipelined.first) == comparable(lockstep.first)
    assert pipelined.second.outcome is lockstep.second.outcome is Outcome.ACCEPTED
    assert pipelined.messages == lockstep.messages  # the same messages, to the same people
    assert pipelined.connections == lockstep.connections + (fault in DROPPED)
    # the pipelined run did pipeline: DATA went out before MAIL's reply was read
    mail = next(i for i, line in enumerate(lines) if line.startswith("SMTP> MAIL"))
    assert lines[mail + 1 : mail + 4] == [
        "SMTP> RCPT TO:<bob@localhost>",
        "SMTP> RCPT TO:<carol@localhost>",
        "SMTP> DATA",
    ]


def test_aiosmtpd_without_pipelining_gets_the_lockstep_dialogue(
    trace_log: pytest.LogCaptureFixture,
) -> None:
    seen = through_aiosmtpd([], pipelining=False)
    assert (seen.first.outcome, seen.second.outcome) == (Outcome.ACCEPTED, Outcome.ACCEPTED)
    assert seen.messages == [
        (["bob@localhost", "carol@localhost"], HEADER + BODY),
        (["dave@localhost"], HEADER + b"second\r\n"),
    ]
    verbs = [line.split()[0:2] for line in dialogue(trace_lines(trace_log))]
    # each command waits for its reply, as fetchmail does
    assert verbs == [
        ["SMTP>", "MAIL"],
        ["SMTP<", "250"],
        ["SMTP>", "RCPT"],
        ["SMTP<", "250"],
        ["SMTP>", "RCPT"],
        ["SMTP<", "250"],
        ["SMTP>", "DATA"],
        ["SMTP<", "354"],
        ["SMTP>.", "(EOM)"],
        ["SMTP<", "250"],
    ]


def test_a_deferred_recipient_gets_nothing_though_data_was_accepted() -> None:
    """aiosmtpd says 354 to the pipelined DATA, since bob was accepted: the message must not
    reach bob while carol's copy waits, so the connection is dropped, not ended with a dot."""
    faults = [ADVERTISE_PIPELINING, Fault("rcpt", 452, "full", recipient="carol@localhost")]
    with SMTPServer(faults) as server:
        first, second = run_sink(
            entry(server),
            (envelope("bob@localhost", "carol@localhost"), message()),
            (envelope("dave@localhost"), message()),
        )
        assert first == Delivery(
            Outcome.TEMPFAIL, reply="452 full", refused={"carol@localhost": "452 full"}
        )
        assert second.outcome is Outcome.ACCEPTED
        assert [(t.rcpt_tos, t.data) for t in server.transactions] == [
            (["dave@localhost"], HEADER + BODY)
        ]
        assert steps(server).count("connect") == 2


# -- a listener that says 354 to a refused envelope -----------------------------------------------


@dataclass
class Table:
    """How the scripted listener answers: a reply per command, per recipient where given."""

    mail: str = "250 OK"
    rcpt: dict[str, str] = field(default_factory=dict)  # recipient -> reply; others 250
    data: str | None = None  # None: 354 if a recipient was accepted, else 554 (RFC 2920)
    eom: str = "250 queued"


def unstuffed(data: bytes) -> bytes:
    """DATA as the scripted listener read it, without the dot-stuffing."""
    lines = data.splitlines(keepends=True)
    return b"".join(line[1:] if line.startswith(b".") else line for line in lines)


@dataclass
class Took:
    """What the scripted listener received after each 354: who it was for and the data."""

    recipients: tuple[str, ...]
    data: bytes


def table_listener(table: Table, took: list[Took], *, pipelining: bool) -> Any:
    """A listener that answers each command as it reads it, from `table` for the first
    transaction (across connections) and as a plain listener after that."""
    plain = Table()
    mails = 0

    async def script(conn: Conn) -> None:
        nonlocal mails
        await conn.hello(*(PIPELINING_EHLO if pipelining else EHLO_LINES))
        now = plain
        mail_ok = False
        accepted: list[str] = []
        while True:
            line = await conn.command()
            verb = line[:4].upper()
            if verb == "MAIL":
                mails += 1
                now = table if mails == 1 else plain
                mail_ok = now.mail.startswith("2")
                accepted = []
                await conn.reply(now.mail)
            elif verb == "RCPT":
                rcpt = line.partition("<")[2].rstrip(">")
                reply = now.rcpt.get(rcpt, "250 OK" if mail_ok else "503 need MAIL")
                if reply.startswith("2"):
                    accepted.append(rcpt)
                await conn.reply(reply)
            elif verb == "DATA":
                data = now.data or ("354 go ahead" if accepted else "554 no valid recipients")
                await conn.reply(data)
                if data.startswith("354"):
                    took.append(Took(tuple(accepted), unstuffed(await conn.data())))
                    await conn.reply(now.eom if accepted else "554 no valid recipients")
                accepted = []
            elif verb == "RSET":
                accepted = []
                await conn.reply("250 OK")
            elif verb == "QUIT":
                await conn.reply("221 bye")
                return
            else:
                await conn.reply("502 what?")

    return script


OLD_354 = "354 go ahead"  # what an old listener says to DATA whatever the envelope
TABLES: dict[str, tuple[Table, bool]] = {
    # name: (table, whether pipelining drops the connection where the lockstep dialogue keeps
    # it: DATA got 354 with a recipient accepted for a message that must not be sent)
    "mail refused, 354": (Table(mail="550 no such sender", data=OLD_354), False),
    "mail refused, rcpt accepted anyway, 354": (
        Table(mail="550 no such sender", rcpt={"bob@localhost": "250 OK"}, data=OLD_354),
        True,
    ),
    "every rcpt refused, 354": (
        Table(rcpt={"bob@localhost": "550 unknown", "carol@localhost": "553 no"}, data=OLD_354),
        False,
    ),
    "one rcpt deferred, 354": (Table(rcpt={"carol@localhost": "452 full"}, data=OLD_354), True),
    "one rcpt deferred, one refused, 354": (
        Table(rcpt={"bob@localhost": "550 unknown", "carol@localhost": "451 later"}, data=OLD_354),
        False,
    ),
    "rcpt 421": (Table(rcpt={"bob@localhost": "421 closing"}), False),
    "data 421": (Table(data="421 closing"), False),
    "eom 421": (Table(eom="421 closing"), False),
    "some rcpt refused": (Table(rcpt={"carol@localhost": "550 unknown"}), False),
}


def through_table(table: Table, *, pipelining: bool) -> tuple[Seen, list[Took]]:
    took: list[Took] = []
    script = table_listener(table, took, pipelining=pipelining)

    async def run() -> Seen:
        async with ScriptedListener(script, script, script) as listener:
            first, second = await deliver(
                listener.entry,
                (envelope("bob@localhost", "carol@localhost"), message()),
                (envelope("dave@localhost"), message(body=b"second\r\n")),
            )
            assert listener.errors == []
            return Seen(first, second, [], len(listener.connections))

    return asyncio.run(run()), took


@pytest.mark.parametrize("name", list(TABLES))
def test_every_refusal_gives_the_same_delivery_pipelined(name: str) -> None:
    table, drops = TABLES[name]
    pipelined, pipelined_took = through_table(table, pipelining=True)
    lockstep, lockstep_took = through_table(table, pipelining=False)
    assert pipelined.first == lockstep.first  # outcome, reply, refused, antispam
    assert pipelined.second.outcome is lockstep.second.outcome is Outcome.ACCEPTED
    # The same data reached the same recipients; what else the listener took after a 354 is
    # an empty message for nobody (pipelining's lone dot).
    assert [t for t in pipelined_took if t.recipients] == lockstep_took
    assert [t for t in pipelined_took if not t.recipients] in ([], [Took((), b"")])
    if table.data == OLD_354:
        # 354 for a refused message: only the next message reached anyone
        assert lockstep_took == [Took(("dave@localhost",), HEADER + b"second\r\n")]
    assert pipelined.connections == lockstep.connections + drops


def test_every_rcpt_refused_and_354_ends_data_with_an_empty_dot() -> None:
    """RFC 2920 section 3.1: with no recipient accepted, the client ends the DATA it did not
    want with a lone dot; the listener gets an empty message for nobody and goes on."""
    took: list[Took] = []
    table = Table(
        rcpt={"bob@localhost": "550 unknown", "carol@localhost": "550 unknown"}, data=OLD_354
    )

    async def run() -> list[Delivery]:
        script = table_listener(table, took, pipelining=True)
        async with ScriptedListener(script) as listener:
            results = await deliver(
                listener.entry,
                (envelope("bob@localhost", "carol@localhost"), message()),
                (envelope("dave@localhost"), message()),
            )
            assert listener.errors == []
            assert [line.split(":")[0] for line in listener.connections[0].transcript[1:6]] == [
                "MAIL FROM", "RCPT TO", "RCPT TO", "DATA", "RSET"
            ]  # fmt: skip
            return results

    first, second = asyncio.run(run())
    assert first == Delivery(
        Outcome.PERMFAIL,
        reply="550 unknown",
        refused={"bob@localhost": "550 unknown", "carol@localhost": "550 unknown"},
        antispam=True,
    )
    assert second.outcome is Outcome.ACCEPTED
    assert took == [Took((), b""), Took(("dave@localhost",), HEADER + BODY)]


def test_the_listener_can_read_the_whole_envelope_before_it_answers() -> None:
    """MAIL, both RCPTs and DATA are all there to be read before the first reply is written:
    a client waiting for MAIL's reply would make this script wait in vain."""

    async def script(conn: Conn) -> None:
        await conn.hello(*PIPELINING_EHLO)
        async with asyncio.timeout(DEADLINE):
            group = [await conn.command() for _ in range(4)]
        assert [line.split(":")[0] for line in group] == ["MAIL FROM", "RCPT TO", "RCPT TO", "DATA"]
        await conn.reply("250 sender OK", "250 bob OK", "250 carol OK", "354 go ahead")
        assert unstuffed(await conn.data()) == HEADER + BODY
        await conn.reply("250 queued")
        await conn.expect("QUIT", "221 bye")

    async def run() -> Delivery:
        async with ScriptedListener(script) as listener:
            [result] = await deliver(
                listener.entry, (envelope("bob@localhost", "carol@localhost"), message())
            )
            assert listener.errors == []
            return result

    result = asyncio.run(run())
    assert result == Delivery(Outcome.ACCEPTED, reply="250 queued")


def test_a_dropped_idle_connection_is_retried_on_a_new_one() -> None:
    """A kept connection the listener closed meanwhile fails at MAIL's reply: the message goes
    again on a fresh connection, as in the lockstep dialogue, and arrives once."""

    async def one_then_hang_up(conn: Conn) -> None:
        await conn.hello(*PIPELINING_EHLO)
        await conn.envelope()
        await conn.data()
        await conn.reply("250 queued")
        await conn.expect("MAIL FROM:")
        conn.drop()

    bodies: list[bytes] = []

    async def behaves(conn: Conn) -> None:
        await conn.hello(*PIPELINING_EHLO)
        await conn.envelope()
        bodies.append(await conn.data())
        await conn.reply("250 queued")
        await conn.expect("QUIT", "221 bye")

    async def run() -> list[Delivery]:
        async with ScriptedListener(one_then_hang_up, behaves) as listener:
            results = await deliver(
                listener.entry, (envelope(), message()), (envelope(), message(body=b"two\r\n"))
            )
            assert listener.errors == []
            return results

    assert [r.outcome for r in asyncio.run(run())] == [Outcome.ACCEPTED] * 2
    assert bodies == [HEADER + b"two\r\n"]


# -- LMTP -----------------------------------------------------------------------------------------


def test_lmtp_pipelines_and_reads_a_reply_per_recipient(
    trace_log: pytest.LogCaptureFixture,
) -> None:
    faults = [Fault("eom", 452, "4.2.2 over quota", recipient="carol@localhost", times=1)]
    seen = through_aiosmtpd(faults, pipelining=True, lmtp=True)
    assert seen.first == Delivery(
        Outcome.TEMPFAIL,
        reply="452 4.2.2 over quota",
        refused={"carol@localhost": "452 4.2.2 over quota"},
        delivered_to=("bob@localhost",),
    )
    assert seen.second.outcome is Outcome.ACCEPTED
    assert seen.connections == 1
    lines = dialogue(trace_lines(trace_log), "LMTP")
    assert [line[:9] for line in lines[:8]] == [
        "LMTP> MAI", "LMTP> RCP", "LMTP> RCP", "LMTP> DAT",
        "LMTP< 250", "LMTP< 250", "LMTP< 250", "LMTP< 354",
    ]  # fmt: skip
    eom = trace_lines(trace_log).index("LMTP>. (EOM)")
    assert [line[:9] for line in trace_lines(trace_log)[eom + 1 : eom + 3]] == [
        "LMTP< 250",
        "LMTP< 452",
    ]


def test_lmtp_deferred_recipient_gets_nothing() -> None:
    faults = [Fault("rcpt", 452, "4.2.2 full", recipient="carol@localhost", times=1)]
    seen = through_aiosmtpd(faults, pipelining=True, lmtp=True)
    assert seen.first == Delivery(
        Outcome.TEMPFAIL, reply="452 4.2.2 full", refused={"carol@localhost": "452 4.2.2 full"}
    )
    assert seen.second.outcome is Outcome.ACCEPTED
    assert seen.messages == [(["dave@localhost"], HEADER + b"second\r\n")]
    assert seen.connections == 2  # DATA had 354 for bob: dropped, not ended
