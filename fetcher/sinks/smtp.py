"""Hand messages to an SMTP or LMTP listener, as fetchmail does by default.

The dialogue is fetchmail 6.4's (reference sections 4.6-4.8, 4.10, 4.13): the listener is
opened at the first message and reused for the rest of the poll; every command and reply line
goes to the -v trace. Where fetchmail waits for each reply in turn, we send MAIL FROM, every
RCPT TO and DATA in one write when the listener allows it (RFC 2920 PIPELINING; an LMTP server
always does, RFC 2033 section 5), and read their replies in order: two round trips per
message (the envelope, then the data) instead of three and one per recipient, with the same
outcome for every reply as the lockstep dialogue.

The wire is a small asyncio stream client of our own rather than aiosmtplib's `SMTP` class:
aiosmtplib has no LMTP, and its protocol object cannot read the several replies an LMTP server
sends in one segment after the final dot (it parses one response per `data_received`), its
`data()` wants the whole message in memory, and it gives no hook to trace each reply line. We
still use its pure helpers for the ESMTP keyword parser and the SASL encodings.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from aiosmtplib.auth import auth_crammd5_verify, auth_login_encode, auth_plain_encode
from aiosmtplib.errors import SMTPAuthenticationError
from aiosmtplib.esmtp import parse_esmtp_extensions

from fetcher import plugin, trace
from fetcher.errors import ConfigError, ListenerUnavailableError
from fetcher.message import DataStuffer
from fetcher.sinks.base import Delivery, Envelope, Message, Outcome, through
from fetcher.spool import still_growing

CHUNK_SIZE = 65536  # bytes per DATA write; large writes are what keep Nagle out of the way
STREAM_PULL_OCTETS = 1 << 20  # stuffed octets per hop to a thread while a body still arrives
SMTP_PORT = 25
_LINE_LIMIT = 65536  # longest reply line we buffer; a bound, since the peer is not trusted
_MAX_REPLY_LINES = 1000  # same, for the continuation lines of one reply
_REPLY_CODE = re.compile(r"[1-5][0-9][0-9]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # CR/LF in an address would inject commands

# The -v channel: the runner prints it with the `pyfetch: ` prefix at INFO when verbose and at
# WARNING otherwise, so a dead listener in the hunt list is reported even without -v.


@dataclass(frozen=True)
class SmtpTimeouts:
    """Seconds to wait at each step.

    The defaults are the RFC 5321 section 4.5.3.2 minimums that fetchmail uses and does not let
    the user shorten; they are a parameter only so that tests need not wait minutes.
    """

    connect: float = 300.0  # fetchmail guards the connect with the server timeout (300 s)
    greeting: float = 300.0  # initial 220
    command: float = 300.0  # EHLO/LHLO/HELO, AUTH, MAIL, RCPT, RSET, QUIT
    data_init: float = 120.0  # DATA -> 354
    data_block: float = 180.0  # each write of message data
    data_end: float = 600.0  # the reply(s) after the final dot
    idle: float = 300.0  # reopen a listener connection unused this long, as fetchmail does


@dataclass(frozen=True)
class ListenerAddress:
    """One entry of the smtphost hunt list, parsed."""

    entry: str  # as written in the configuration; used in messages, as fetchmail does
    host: str | None  # None for a Unix socket
    port: int | None
    path: str | None  # a Unix socket path
    lmtp: bool
    service: str = "smtp"  # the port as written ("smtp" when none is): a plugout's `%p`

    @property
    def protocol(self) -> str:
        return "LMTP" if self.lmtp else "SMTP"

    @property
    def where(self) -> str:
        """`host/port` as fetchmail's `Trying to connect to ...` line shows it."""
        return self.path if self.path is not None else f"{self.host}/{self.port}"


def parse_hunt_entry(entry: str, *, lmtp: bool) -> ListenerAddress:
    """`host`, `host/port`, `host/service`, `[v6addr]/port` or `/path/to/socket`.

    An absolute path is a Unix socket and always speaks LMTP (fetchmail: a socket implies
    LMTP). LMTP over TCP needs an explicit port other than 25, as fetchmail insists.
    """
    if entry.startswith("/"):
        return ListenerAddress(entry, None, None, entry, True)
    host, slash, port_text = entry.rpartition("/")
    if not slash:
        host, port_text = entry, ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 literal in brackets, as in `[::1]/2525`
    if not host:
        raise ConfigError(f"invalid smtphost entry {entry!r}")
    port: int | None = None
    if port_text:
        if port_text.isdigit():
            port = int(port_text)
        else:
            try:
                port = socket.getservbyname(port_text, "tcp")
            except OSError:
                raise ConfigError(f"unknown service {port_text!r} in smtphost {entry!r}") from None
        if not 0 < port < 65536:
            raise ConfigError(f"invalid port in smtphost {entry!r}")
    if lmtp and port in (None, SMTP_PORT):
        raise ConfigError(f"{entry}: LMTP can't use default SMTP port")
    port = SMTP_PORT if port is None else port
    return ListenerAddress(entry, host, port, None, lmtp, port_text or "smtp")


class _Broken(Exception):
    """The connection can no longer be trusted: closed, reset, timed out or garbled."""

    def __init__(self, reason: str, *, stale: bool = False) -> None:
        super().__init__(reason)
        # True when it broke at MAIL FROM on a connection kept from an earlier message: the
        # listener probably dropped an idle connection, which says nothing about this message.
        self.stale = stale


class _Unreachable(_Broken):
    """No connection could be made at all, so a HELO retry on a fresh one is pointless."""


@dataclass(frozen=True)
class _Reply:
    code: int
    lines: tuple[str, ...]  # as received, without the line end

    @property
    def last(self) -> str:
        """What fetchmail keeps as `smtp_response` and prints in `SMTP error: ...`."""
        return self.lines[-1]

    @property
    def text(self) -> str:
        """The lines without their codes, newline-joined: what aiosmtplib's parser expects."""
        return "\n".join(line[4:].strip() for line in self.lines)


def _outcome_of(code: int) -> Outcome:
    # 530 is a 5xx, but fetchmail keeps the message ("SMTP server requires STARTTLS, keeping
    # message."): refusing it for good would drop every message sent to such a listener.
    if code // 100 == 5 and code != 530:
        return Outcome.PERMFAIL
    return Outcome.TEMPFAIL  # 4xx, and anything a listener should not have said here


class _Wire:
    """One listener connection: commands (one at a time or a pipelined group) and their
    replies, each line traced."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: ListenerAddress,
        process: plugin.PluginProcess | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.address = address
        self.process = process  # the plugout command this connection goes through, if any
        self.protocol = address.protocol
        self.extensions: dict[str, str] = {}
        self.auth_methods: list[str] = []
        self.transactions = 0  # MAIL FROMs answered on this connection
        self.last_used = time.monotonic()

    @classmethod
    async def open(
        cls, address: ListenerAddress, timeout: float, plugout: str | None = None
    ) -> _Wire:
        if plugout is not None and address.host is not None:
            return await cls._through(plugout, address)
        try:
            async with asyncio.timeout(timeout):
                if address.path is not None:
                    reader, writer = await asyncio.open_unix_connection(
                        address.path, limit=_LINE_LIMIT
                    )
                else:
                    reader, writer = await asyncio.open_connection(
                        address.host, address.port, limit=_LINE_LIMIT
                    )
        except TimeoutError:
            raise _Unreachable(f"timeout after {timeout:g} seconds") from None
        except socket.gaierror as exc:
            # A name that does not resolve: its number is getaddrinfo's (EAI_*), which
            # os.strerror() calls "Unknown error -2"; its text is getaddrinfo's own. Still exit
            # 10, not 11: fetchmail 6.4.37 reports an unknown smtphost as a failed SMTP connect.
            raise _Unreachable(exc.strerror or str(exc)) from None
        except OSError as exc:
            # asyncio's text ("Connect call failed (...)") hides the reason; the errno has it
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise _Unreachable(reason) from None
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Without it, the small final ".\r\n" after a large write can wait ~40 ms for a
            # delayed ACK (the per-message cost measured on fetchmail). asyncio sets it on TCP
            # transports already; we say it here because the throughput depends on it.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, address)

    @classmethod
    async def _through(cls, command: str, address: ListenerAddress) -> _Wire:
        """The connection through a `plugout` command: its standard input and output (see
        fetcher.plugin), timed and traced as a socket. A socket path never takes one, as in
        fetchmail."""
        assert address.host is not None
        trace.note(plugin.describe(command, address.host, address.service))
        try:
            sock, process = plugin.start("plugout", command, address.host, address.service)
        except OSError as exc:
            raise _Unreachable(str(exc)) from None
        try:
            sock.setblocking(False)
            reader, writer = await asyncio.open_connection(sock=sock, limit=_LINE_LIMIT)
        except BaseException:
            sock.close()
            process.finish_in_background()
            raise
        return cls(reader, writer, address, process)

    async def _closed_note(self) -> str:
        """How the plugout command ended, when the connection was closed under us."""
        if self.process is None:
            return ""
        return await asyncio.to_thread(self.process.exit_note)

    def _timed_out(self, timeout: float) -> _Broken:
        where = self.address.entry
        return _Broken(f"timeout after {timeout:g} seconds waiting for listener {where}")

    async def write(self, data: bytes, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                self.writer.write(data)
                await self.writer.drain()  # backpressure: at most one chunk waits in our buffer
        except TimeoutError:
            raise self._timed_out(timeout) from None
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, ...
            raise _Broken(f"connection to listener lost: {exc}") from None

    async def send(self, line: str, timeout: float, *secrets: str | None) -> None:
        trace.sent(self.protocol, line, *secrets)
        await self.write(line.encode("utf-8") + b"\r\n", timeout)

    async def reply(self, timeout: float) -> _Reply:
        lines: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await self.reader.readuntil(b"\n")
                    line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                    trace.received(self.protocol, line)
                    if not _REPLY_CODE.fullmatch(line[:3]) or line[3:4] not in ("", " ", "-"):
                        raise _Broken(f"malformed reply from listener: {line[:80]!r}")
                    lines.append(line)
                    if line[3:4] != "-":
                        break
                    if len(lines) >= _MAX_REPLY_LINES:
                        raise _Broken("listener reply has too many lines")
        except TimeoutError:
            raise self._timed_out(timeout) from None
        except asyncio.IncompleteReadError:
            raise _Broken(f"listener closed the connection{await self._closed_note()}") from None
        except asyncio.LimitOverrunError:
            raise _Broken("listener reply line too long") from None
        except OSError as exc:
            raise _Broken(f"connection to listener lost: {exc}") from None
        self.last_used = time.monotonic()
        return _Reply(int(lines[-1][:3]), tuple(lines))

    async def command(self, line: str, timeout: float, *secrets: str | None) -> _Reply:
        await self.send(line, timeout, *secrets)
        return await self.reply(timeout)

    def send_group(self, lines: Sequence[str]) -> None:
        """RFC 2920: several commands in one write, their replies to be read afterwards.

        No drain: RFC 2920 section 3.1 warns a client not to block in writing while the listener
        waits for it to read replies, which with many recipients could fill both sides' buffers
        until a timeout. What waits in the transport's buffer is the envelope, already in memory;
        a failed write shows as a lost connection when the first reply is read.
        """
        for line in lines:
            trace.sent(self.protocol, line)
        try:
            self.writer.write(b"".join(line.encode("utf-8") + b"\r\n" for line in lines))
        except (OSError, RuntimeError) as exc:  # RuntimeError: the transport is closing
            raise _Broken(f"connection to listener lost: {exc}") from None

    @property
    def pipelining(self) -> bool:
        return self.address.lmtp or "pipelining" in self.extensions

    def learn(self, hello: _Reply) -> None:
        self.extensions, self.auth_methods = parse_esmtp_extensions(hello.text)

    def at_eof(self) -> bool:
        return self.reader.at_eof() or self.writer.is_closing()

    def abort(self) -> None:
        """Drop the connection at once: its state is unknown, so nothing more is said."""
        self.writer.transport.abort()
        if self.process is not None:
            self.process.finish_in_background()

    async def quit(self, timeout: float) -> None:
        with contextlib.suppress(_Broken):
            await self.command("QUIT", timeout)
        self.writer.close()
        try:
            async with asyncio.timeout(timeout):
                await self.writer.wait_closed()
        except (TimeoutError, OSError):
            pass
        if self.process is not None:
            await asyncio.to_thread(self.process.finish)


async def _recipient_replies(
    recipients: Sequence[str], reply_for: Callable[[str], Awaitable[_Reply]]
) -> tuple[list[str], dict[str, str], list[_Reply]]:
    """The RCPT TO replies, one recipient after the other (sent one by one, or read after a
    pipelined group): the recipients accepted, those refused with the listener's words, and
    the refusals. A 421 ends it, as the last refusal: the listener is closing."""
    accepted: list[str] = []
    refused: dict[str, str] = {}
    refusals: list[_Reply] = []
    for recipient in recipients:
        reply = await reply_for(recipient)
        if reply.code in (250, 251):
            accepted.append(recipient)
            continue
        refused[recipient] = reply.last
        refusals.append(reply)
        if reply.code == 421:
            break
    return accepted, refused, refusals


def _envelope_verdict(accepted: Sequence[str], refusals: Sequence[_Reply]) -> _Reply | None:
    """The RCPT refusal that stops the message, or None if it goes on to DATA."""
    transient = [r for r in refusals if _outcome_of(r.code) is Outcome.TEMPFAIL]
    if transient:
        # fetchmail: one transient refusal makes the whole message transient, so that a
        # multidrop message is never delivered to some recipients and lost for others.
        return transient[0]
    if not accepted:
        return refusals[-1]
    return None


def _trace_eom(protocol: str) -> None:
    # fetchmail prints the terminator without the space the other lines have: `SMTP>. (EOM)`.
    if trace.enabled():
        trace.note(f"{protocol}>. (EOM)")


class SmtpSink:
    """Deliver over SMTP (or LMTP) to the first listener of the hunt list that answers."""

    def __init__(
        self,
        hunt: Sequence[str],
        *,
        lmtp: bool = False,
        helo_name: str,
        esmtp_name: str | None = None,
        esmtp_password: str | None = None,
        antispam: Iterable[int] = (),
        timeouts: SmtpTimeouts | None = None,
        chunk_size: int = CHUNK_SIZE,
        plugout: str | None = None,
    ) -> None:
        if not helo_name or _CONTROL.search(helo_name) or " " in helo_name:
            raise ConfigError(f"invalid name for EHLO: {helo_name!r}")
        entries = list(hunt) or ["localhost"]  # fetchmail's implicit smtphost
        self._addresses = [parse_hunt_entry(entry, lmtp=lmtp) for entry in entries]
        self._helo_name = helo_name
        self._esmtp_name = esmtp_name
        self._esmtp_password = esmtp_password
        self._antispam = frozenset(antispam)
        self._timeouts = timeouts or SmtpTimeouts()
        self._chunk_size = chunk_size
        self._plugout = plugout  # a command to reach each host/port listener through
        self._wire: _Wire | None = None
        self._lock = asyncio.Lock()  # one transaction at a time on the one connection

    # -- the Sink protocol ---------------------------------------------------------------------

    async def deliver(self, envelope: Envelope, message: Message) -> Delivery:
        if not envelope.recipients:
            raise ValueError("an envelope needs at least one recipient")
        for address in (envelope.sender, *envelope.recipients):
            if _CONTROL.search(address):
                return Delivery(Outcome.PERMFAIL, reply=f"invalid address {address!r}")
        async with self._lock:
            wire = await self._connection()
            try:
                return await self._transaction(wire, envelope, message)
            except _Broken as exc:
                self._discard(wire)
                if not exc.stale:
                    return Delivery(Outcome.TEMPFAIL, reply=str(exc))
            # The listener dropped the connection we kept from the last message: once more on
            # a fresh one. Nothing of the message has been read yet, so it can be sent again.
            wire = await self._connection()
            try:
                return await self._transaction(wire, envelope, message)
            except _Broken as exc:
                self._discard(wire)
                return Delivery(Outcome.TEMPFAIL, reply=str(exc))

    async def close(self) -> None:
        async with self._lock:
            wire, self._wire = self._wire, None
            if wire is None:
                return
            try:
                await wire.quit(self._timeouts.command)
            except Exception:  # close() promises not to raise; the connection is gone anyway
                wire.abort()

    # -- connecting ----------------------------------------------------------------------------

    async def _connection(self) -> _Wire:
        wire = self._wire
        if wire is not None:
            if wire.at_eof():
                self._discard(wire)
            elif time.monotonic() - wire.last_used > self._timeouts.idle:
                # fetchmail closes a listener connection idle longer than its timeout rather
                # than find out at MAIL FROM that the listener has timed it out.
                self._wire = None
                await wire.quit(self._timeouts.command)
            else:
                return wire
        self._wire = await self._open()
        return self._wire

    async def _open(self) -> _Wire:
        failures: list[str] = []
        for address in self._addresses:
            try:
                wire = await self._open_one(address)
            except _Broken as exc:
                trace.warning(f"connection to {address.where} failed: {exc}.")
                through = ""
                if self._plugout is not None and address.path is None:
                    through = f' through plugout "{self._plugout}"'
                failures.append(
                    f"{address.protocol} connect to {address.entry}{through} failed ({exc})"
                )
                continue
            return wire
        raise ListenerUnavailableError("; ".join(failures))

    async def _open_one(self, address: ListenerAddress) -> _Wire:
        if address.lmtp:
            return await self._hello(address, f"LHLO {self._helo_name}")
        try:
            return await self._hello(address, f"EHLO {self._helo_name}")
        except _Unreachable:
            raise
        except _Broken:
            pass
        # RFC 1869 warns that some listeners hang up on a failed EHLO, so fetchmail tries HELO
        # on a fresh connection rather than on the old one.
        return await self._hello(address, f"HELO {self._helo_name}")

    async def _hello(self, address: ListenerAddress, hello: str) -> _Wire:
        wire = await _Wire.open(address, self._timeouts.connect, self._plugout)
        if wire.process is None:
            trace.note(f"Trying to connect to {address.where}...connected.")
        try:
            greeting = await wire.reply(self._timeouts.greeting)
            if greeting.code // 100 != 2:
                raise _Broken(f"greeting {greeting.last}")
            reply = await wire.command(hello, self._timeouts.command)
            if reply.code != 250:
                raise _Broken(f"{hello.split()[0]} refused: {reply.last}")
            if not hello.startswith("HELO"):
                wire.learn(reply)
                await self._authenticate(wire)
        except BaseException:
            wire.abort()
            raise
        return wire

    async def _authenticate(self, wire: _Wire) -> None:
        """SMTP AUTH with esmtpname/esmtppassword, in fetchmail's order of mechanisms."""
        user, password = self._esmtp_name, self._esmtp_password
        if not user or password is None or "auth" not in wire.extensions:
            return  # fetchmail authenticates only when asked to and offered
        refusal: _Reply | None = None
        for mechanism in ("cram-md5", "plain", "login"):
            if mechanism in wire.auth_methods:
                reply = await self._auth_exchange(wire, mechanism, user, password)
                if reply.code == 235:
                    return
                refusal = reply
        if refusal is not None:
            # Like a refused EHLO in fetchmail: the caller goes on to HELO, unauthenticated.
            raise _Broken(f"AUTH refused: {refusal.last}")

    async def _auth_exchange(self, wire: _Wire, mechanism: str, user: str, password: str) -> _Reply:
        timeout = self._timeouts.command
        if mechanism == "plain":
            blob = auth_plain_encode(user, password).decode("ascii")
            return await wire.command(f"AUTH PLAIN {blob}", timeout, blob, password)
        if mechanism == "login":
            user_blob, password_blob = (b.decode() for b in auth_login_encode(user, password))
            reply = await wire.command("AUTH LOGIN", timeout)
            if reply.code != 334:
                return reply
            reply = await wire.command(user_blob, timeout)
            if reply.code != 334:
                return reply
            return await wire.command(password_blob, timeout, password_blob, password)
        reply = await wire.command("AUTH CRAM-MD5", timeout)
        if reply.code != 334:
            return reply
        try:
            answer = auth_crammd5_verify(user, password, reply.last[4:].strip()).decode("ascii")
        except SMTPAuthenticationError:
            return await wire.command("*", timeout)  # RFC 4954: cancel the exchange
        return await wire.command(answer, timeout, answer, password)

    def _discard(self, wire: _Wire) -> None:
        wire.abort()
        if self._wire is wire:
            self._wire = None

    # -- one message ---------------------------------------------------------------------------

    async def _transaction(self, wire: _Wire, envelope: Envelope, message: Message) -> Delivery:
        try:
            return await self._dialogue(wire, envelope, message)
        except _Broken:
            raise
        except BaseException:
            # Cancelled, or the message file failed to read mid-DATA: the listener is in an
            # unknown state, so the connection must not carry another message.
            self._discard(wire)
            raise

    async def _dialogue(self, wire: _Wire, envelope: Envelope, message: Message) -> Delivery:
        t = self._timeouts
        params = ""
        # fetchmail's parameters: BODY= (8BITMIME or 7BIT) only to a listener that offers
        # 8BITMIME, SIZE= the size the server listed, when there is one
        if envelope.body and "8bitmime" in wire.extensions:
            params += f" BODY={envelope.body}"
        if "size" in wire.extensions and envelope.size > 0:
            params += f" SIZE={envelope.size}"
        mail = f"MAIL FROM:<{envelope.sender}>{params}"
        if wire.pipelining:
            return await self._pipelined(wire, envelope, message, mail)

        reused = wire.transactions > 0
        try:
            reply = await wire.command(mail, t.command)
        except _Broken as exc:
            raise _Broken(str(exc), stale=reused) from None
        if reply.code == 421 and reused:
            raise _Broken(reply.last, stale=True)  # it timed out our idle connection
        wire.transactions += 1
        if reply.code != 250:
            return await self._refusal(wire, reply)

        accepted, refused, refusals = await _recipient_replies(
            envelope.recipients, lambda rcpt: wire.command(f"RCPT TO:<{rcpt}>", t.command)
        )
        if refusals and refusals[-1].code == 421:
            return await self._refusal(wire, refusals[-1], refused)
        verdict = _envelope_verdict(accepted, refusals)
        if verdict is not None:
            return await self._refusal(wire, verdict, refused, refusals)

        reply = await wire.command("DATA", t.data_init)
        if reply.code != 354:
            return await self._refusal(wire, reply, refused)
        return await self._data(wire, message, accepted, refused)

    async def _pipelined(
        self, wire: _Wire, envelope: Envelope, message: Message, mail: str
    ) -> Delivery:
        """MAIL FROM, every RCPT TO and DATA in one write, then their replies in order.

        Every reply means what it means in the lockstep dialogue above and leads to the same
        Delivery; what differs is that the listener has also seen the commands that the lockstep
        dialogue would not have sent after a refusal. Their replies are read (and traced) to keep
        the connection in step, and say nothing about the message.
        """
        t = self._timeouts
        reused = wire.transactions > 0
        recipients = envelope.recipients
        try:
            wire.send_group([mail, *(f"RCPT TO:<{rcpt}>" for rcpt in recipients), "DATA"])
            reply = await wire.reply(t.command)
        except _Broken as exc:
            raise _Broken(str(exc), stale=reused) from None
        if reply.code == 421 and reused:
            raise _Broken(reply.last, stale=True)  # it timed out our idle connection
        wire.transactions += 1
        if reply.code == 421:
            return await self._refusal(wire, reply)  # closing: no more replies will come
        if reply.code != 250:
            return await self._unwanted(wire, reply, {}, (), unread=len(recipients))

        accepted, refused, refusals = await _recipient_replies(
            recipients, lambda _rcpt: wire.reply(t.command)
        )
        if refusals and refusals[-1].code == 421:
            return await self._refusal(wire, refusals[-1], refused)
        verdict = _envelope_verdict(accepted, refusals)
        if verdict is not None:
            return await self._unwanted(wire, verdict, refused, refusals, accepted=bool(accepted))

        reply = await wire.reply(t.data_init)
        if reply.code != 354:
            return await self._refusal(wire, reply, refused)
        return await self._data(wire, message, accepted, refused)

    async def _unwanted(
        self,
        wire: _Wire,
        verdict: _Reply,
        refused: dict[str, str],
        refusals: Sequence[_Reply],
        *,
        unread: int = 0,
        accepted: bool = False,
    ) -> Delivery:
        """The message is refused, but replies to pipelined commands are still due: read them,
        stop a DATA the listener said yes to, then report `verdict` as the lockstep dialogue
        does. A connection that fails meanwhile is dropped; the verdict stands."""
        t = self._timeouts
        try:
            for _ in range(unread):  # RCPTs after a refused MAIL: usually 503, bad sequence
                reply = await wire.reply(t.command)
                accepted = accepted or reply.code in (250, 251)
                if reply.code == 421:
                    raise _Broken(reply.last)
            data = await wire.reply(t.data_init)
            if data.code == 421:
                raise _Broken(data.last)
            if data.code == 354:
                await self._cancel_data(wire, accepted=accepted)
        except _Broken:
            self._discard(wire)
            return self._refused(verdict, refused, refusals)
        return await self._refusal(wire, verdict, refused, refusals)

    async def _cancel_data(self, wire: _Wire, *, accepted: bool) -> None:
        """End a DATA that got 354 for a message that must not be sent; raise _Broken if the
        connection cannot go on."""
        if accepted or wire.address.lmtp:
            # RFC 2920 lets a client end such a DATA with an empty message, but a listener that
            # accepted a recipient would deliver that empty message to them. Dropping the
            # connection instead makes the listener discard the unfinished transaction, and
            # nobody gets anything; the next message opens a new connection. An LMTP server
            # that says 354 with no recipient accepted breaks RFC 2033, so the number of
            # replies it would send after the dot is unknown: dropped too.
            raise _Broken("DATA accepted for a refused message")
        # No recipient was accepted: the empty message goes to nobody.
        await wire.write(b".\r\n", self._timeouts.data_block)
        _trace_eom(wire.protocol)
        reply = await wire.reply(self._timeouts.data_end)
        if reply.code == 421:
            raise _Broken(reply.last)

    async def _data(
        self, wire: _Wire, message: Message, accepted: list[str], refused: dict[str, str]
    ) -> Delivery:
        """After 354: the message, then the reply (LMTP: one per accepted recipient)."""
        t = self._timeouts
        await self._send_message(wire, message)
        _trace_eom(wire.protocol)
        if wire.address.lmtp:
            return await self._lmtp_replies(wire, accepted, refused)
        reply = await wire.reply(t.data_end)
        if reply.code == 250:
            # Some recipients may have been refused at RCPT: like fetchmail, deliver to the
            # others and report the refused ones (the caller bounces them).
            return Delivery(Outcome.ACCEPTED, reply=reply.last, refused=refused)
        return await self._refusal(wire, reply, refused)

    async def _send_message(self, wire: _Wire, message: Message) -> None:
        """Stream header and body, dot-stuffed, in writes of at most `chunk_size` bytes."""
        limit = self._chunk_size
        pending: list[bytes | memoryview] = []
        size = 0
        async for chunk in self._stuffed_async(message):
            view = memoryview(chunk)
            while view:
                if size >= limit:
                    await wire.write(b"".join(pending), self._timeouts.data_block)
                    pending.clear()
                    size = 0
                piece, view = view[: limit - size], view[limit - size :]
                pending.append(piece)
                size += len(piece)
        # The terminator rides with the last chunk: a separate tiny write is what meets the
        # delayed ACK.
        pending.append(b".\r\n")
        await wire.write(b"".join(pending), self._timeouts.data_block)

    async def _stuffed_async(self, message: Message) -> AsyncIterator[bytes]:
        """The stuffed chunks; while the body is still arriving from the server (a large
        message is streamed, fetcher/spool.py), they are read off the event loop's thread, a
        megabyte at a time, so that waiting for the server holds up no other poll."""
        chunks = self._stuffed(message)
        while still_growing(message.body):
            batch = await asyncio.to_thread(_pull, chunks, STREAM_PULL_OCTETS)
            if not batch:
                return
            for chunk in batch:
                yield chunk
        for chunk in chunks:
            yield chunk

    def _stuffed(self, message: Message) -> Iterator[bytes]:
        # The header goes through the same line-end handling and stuffing as the body: with
        # `bad-header accept` a header line could start with a dot too. Every line end becomes
        # CRLF whatever stripcr or forcecr say: they are for MDAs; SMTP and LMTP take CRLF.
        # What the driver found to be DATA already goes as it is (fetcher/spool.py).
        stuffer = DataStuffer()

        def stuffed(marked: tuple[bytes, bool]) -> bytes:
            chunk, plain = marked
            return stuffer.pass_plain(chunk) if plain else stuffer.feed(chunk)

        chunks = itertools.chain([(message.header, False)], message.marked_chunks(self._chunk_size))
        return through(chunks, stuffed, stuffer.end)

    async def _lmtp_replies(
        self, wire: _Wire, accepted: list[str], refused: dict[str, str]
    ) -> Delivery:
        """RFC 2033: one reply per accepted recipient, in RCPT order."""
        replies = [(rcpt, await wire.reply(self._timeouts.data_end)) for rcpt in accepted]
        failed = [(rcpt, reply) for rcpt, reply in replies if reply.code != 250]
        refused.update((rcpt, reply.last) for rcpt, reply in failed)
        if any(reply.code == 421 for _, reply in failed):
            self._discard(wire)
        if not failed:
            return Delivery(Outcome.ACCEPTED, reply=replies[-1][1].last, refused=refused)
        transient = [reply for _, reply in failed if _outcome_of(reply.code) is Outcome.TEMPFAIL]
        if transient:
            # Kept for the next poll, which must not deliver it again to those who have it.
            have_it = tuple(rcpt for rcpt, reply in replies if reply.code == 250)
            return Delivery(
                Outcome.TEMPFAIL, reply=transient[0].last, refused=refused, delivered_to=have_it
            )
        if len(failed) < len(replies):
            # Some recipients have the message already. fetchmail bounces the failures and
            # deletes it: keeping it would deliver it again to those who got it, every poll.
            return Delivery(Outcome.ACCEPTED, reply=failed[0][1].last, refused=refused)
        codes = [reply.code for _, reply in failed]
        return Delivery(
            Outcome.PERMFAIL,
            reply=failed[-1][1].last,
            refused=refused,
            antispam=all(code in self._antispam for code in codes),
        )

    async def _refusal(
        self,
        wire: _Wire,
        reply: _Reply,
        refused: dict[str, str] | None = None,
        refusals: Sequence[_Reply] = (),
    ) -> Delivery:
        """The listener said no: reset the transaction, keep the connection, report why."""
        if reply.code == 421:
            self._discard(wire)  # RFC 5321 3.8: the listener is closing the channel
        else:
            await self._reset(wire)
        return self._refused(reply, refused, refusals)

    def _refused(
        self, reply: _Reply, refused: dict[str, str] | None = None, refusals: Sequence[_Reply] = ()
    ) -> Delivery:
        outcome = _outcome_of(reply.code)
        codes = [r.code for r in refusals] or [reply.code]
        antispam = outcome is Outcome.PERMFAIL and all(c in self._antispam for c in codes)
        return Delivery(outcome, reply=reply.last, refused=dict(refused or {}), antispam=antispam)

    async def _reset(self, wire: _Wire) -> None:
        try:
            reply = await wire.command("RSET", self._timeouts.command)
        except _Broken:
            self._discard(wire)
            return
        if reply.code != 250:
            self._discard(wire)


def _pull(chunks: Iterator[bytes], octets: int) -> list[bytes]:
    """Chunks from `chunks` until they add up to `octets` or there are no more (a thread's
    work: reading a body still arriving waits for it)."""
    batch: list[bytes] = []
    size = 0
    for chunk in chunks:
        batch.append(chunk)
        size += len(chunk)
        if size >= octets:
            break
    return batch
