"""Real SMTP and LMTP listeners (aiosmtpd) that record what they receive and misbehave on demand.

:class:`SMTPServer` runs aiosmtpd's threaded ``Controller`` on 127.0.0.1 with a kernel-chosen
port.  Every transaction that reaches the end of DATA is kept as a :class:`Transaction`: the
envelope, the ESMTP parameters, and the message bytes exactly as aiosmtpd hands them over (CRLF
line ends, dot-stuffing removed, nothing else touched).  :attr:`SMTPServer.events` keeps the
order of commands across connections, for tests about what a client sent after an error.

Faults (:class:`Fault`) replace the server's answer at one step - ``connect`` (the greeting),
``ehlo`` (EHLO/HELO/LHLO), ``mail``, ``rcpt``, ``data`` (the DATA command, before 354) or ``eom``
(after the final dot) - with a given reply, or close the connection without replying.  A fault
can be limited to one recipient and to the first N times it matches, so a test can say "the
first delivery attempt gets 451, the retry succeeds".

The LMTP variant (``lmtp=True``) answers after the final dot once per accepted recipient, as
RFC 2033 requires; an ``eom`` fault with ``recipient=`` changes just that recipient's reply.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING as MISSING_STATUS  # a hook returning it means "the default"
from aiosmtpd.smtp import SMTP, Envelope, Session

from . import HOST, ClosedPort

__all__ = ["ClosedPort", "Fault", "SMTPServer", "Transaction"]

Step = Literal["connect", "ehlo", "mail", "rcpt", "data", "eom"]
STEPS: tuple[Step, ...] = ("connect", "ehlo", "mail", "rcpt", "data", "eom")


@dataclass
class Fault:
    """Answer ``code text`` (or close the connection, if ``drop``) at ``step``.

    ``recipient`` limits a ``rcpt`` fault (and an LMTP ``eom`` fault) to that address
    (case-insensitive).  ``times`` limits how often the fault fires; ``None`` means always.
    A 2xx/3xx ``code`` at ``mail``/``rcpt`` still accepts the address, with the given text.
    """

    step: Step
    code: int | None = None
    text: str = ""
    drop: bool = False
    recipient: str | None = None
    times: int | None = None

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise ValueError(f"unknown step {self.step!r}; expected one of {STEPS}")
        if self.drop == (self.code is not None):
            raise ValueError("give exactly one of code=... or drop=True")
        if self.recipient is not None and self.step not in ("rcpt", "eom"):
            raise ValueError("recipient= only makes sense at the rcpt or eom step")

    @property
    def reply(self) -> str:
        text = self.text or ("Error injected by the test" if (self.code or 0) >= 400 else "OK")
        # A multi-line text becomes a proper multi-line reply (code-text ... code text).
        lines = text.splitlines() or [""]
        head = [f"{self.code}-{line}" for line in lines[:-1]]
        return "\r\n".join([*head, f"{self.code} {lines[-1]}"])

    def matches(self, step: str, recipient: str | None) -> bool:
        if step != self.step or self.times == 0:
            return False
        return self.recipient is None or (
            recipient is not None and recipient.lower() == self.recipient.lower()
        )


@dataclass
class Transaction:
    """One MAIL ... DATA exchange that reached the final dot."""

    helo: str | None
    """The EHLO/HELO/LHLO argument of the connection."""
    mail_from: str
    mail_options: list[str]
    """ESMTP MAIL parameters, upper-cased by aiosmtpd, e.g. ["SIZE=12", "BODY=8BITMIME"]."""
    rcpt_tos: list[str]
    """Recipients the server accepted."""
    rcpt_options: list[str]
    data: bytes
    replies: list[str] = field(default_factory=list)
    """What the server answered after the dot: one reply, or one per recipient for LMTP;
    empty if an ``eom`` fault dropped the connection."""
    peer: Any = None

    @property
    def accepted(self) -> bool:
        return any(r.startswith("2") for r in self.replies)

    def reply_for(self, recipient: str) -> str:
        """LMTP: the reply given for ``recipient`` (same order as ``rcpt_tos``)."""
        index = [r.lower() for r in self.rcpt_tos].index(recipient.lower())
        return self.replies[index] if len(self.replies) > 1 else self.replies[0]


class RecordingHandler:
    """aiosmtpd handler: records everything and consults the fault list at every step."""

    def __init__(self, faults: Iterable[Fault] = (), *, lmtp: bool = False) -> None:
        self.faults: list[Fault] = list(faults)
        self.lmtp = lmtp
        self.transactions: list[Transaction] = []
        self.events: list[tuple[str, str]] = []
        self.rejected_rcpts: list[str] = []
        # Off while the Controller pokes the port to check that the server is up, so that its
        # probe neither shows up in events nor uses up a fault limited by times=.
        self.armed = False
        self._lock = threading.Lock()

    # -- helpers used by the protocol classes below -----------------------------------------

    def take_fault(self, step: str, recipient: str | None = None) -> Fault | None:
        if not self.armed:
            return None
        with self._lock:
            for fault in self.faults:
                if fault.matches(step, recipient):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def record(self, step: str, arg: str = "") -> None:
        if self.armed:
            with self._lock:
                self.events.append((step, arg))

    # -- aiosmtpd hooks ----------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.record("lhlo" if self.lmtp else "ehlo", hostname)
        session.host_name = hostname
        fault = self.take_fault("ehlo")
        if fault is None:
            return responses
        if fault.drop:
            await _drop(server)
        return [fault.reply]

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        self.record("helo", hostname)
        session.host_name = hostname
        fault = self.take_fault("ehlo")
        if fault is None:
            return f"250 {server.hostname}"
        if fault.drop:
            await _drop(server)
        return fault.reply

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> object:
        self.record("mail", " ".join([f"<{address}>", *mail_options]))
        fault = self.take_fault("mail")
        if fault is None:
            return MISSING_STATUS
        if fault.drop:
            await _drop(server)
        if (fault.code or 0) < 400:
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return fault.reply

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> object:
        self.record("rcpt", " ".join([f"<{address}>", *rcpt_options]))
        fault = self.take_fault("rcpt", address)
        if fault is None:
            return MISSING_STATUS
        if fault.drop:
            await _drop(server)
        if (fault.code or 0) < 400:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        else:
            with self._lock:
                self.rejected_rcpts.append(address)
        return fault.reply

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> object:
        self.record("rset")
        return MISSING_STATUS

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> object:
        self.record("noop", arg or "")
        return MISSING_STATUS

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> object:
        self.record("quit")
        return MISSING_STATUS

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.record("eom")
        data = envelope.original_content or b""
        txn = Transaction(
            helo=session.host_name,
            mail_from=envelope.mail_from or "",
            mail_options=list(envelope.mail_options),
            rcpt_tos=list(envelope.rcpt_tos),
            rcpt_options=list(envelope.rcpt_options),
            data=bytes(data),
            peer=session.peer,
        )
        with self._lock:
            self.transactions.append(txn)
        if self.lmtp:
            replies = []
            for rcpt in envelope.rcpt_tos:
                fault = self.take_fault("eom", rcpt)
                if fault is not None and fault.drop:
                    await _drop(server)
                replies.append(fault.reply if fault else f"250 2.0.0 <{rcpt}> delivered")
        else:
            fault = self.take_fault("eom")
            if fault is not None and fault.drop:
                await _drop(server)
            replies = [fault.reply if fault else "250 2.0.0 OK queued"]
        txn.replies = replies
        # aiosmtpd writes one status string; for LMTP several reply lines joined by CRLF are
        # exactly the per-recipient replies RFC 2033 asks for.
        return "\r\n".join(replies)


async def _drop(server: SMTP) -> None:
    """Close the connection without a reply, then wait to be cancelled.

    Closing makes asyncio call connection_lost, which cancels aiosmtpd's session task - the
    task this hook runs in - so the reply the caller would send next is never written.
    """
    if server.transport is not None:
        server.transport.close()
    await asyncio.sleep(3600)


# aiosmtpd has no handler hook for two of the steps, the greeting and the DATA command itself;
# the protocol subclasses below call these first.


async def _fault_at_connect(server: SMTP) -> bool:
    handler: RecordingHandler = server.event_handler
    if server.session is not None:
        handler.record("connect", str(server.session.peer))
    fault = handler.take_fault("connect")
    if fault is None:
        return False
    if not fault.drop:
        await server.push(fault.reply)
    if server.transport is not None:
        server.transport.close()
    return True


async def _fault_at_data(server: SMTP, arg: str | None) -> bool:
    handler: RecordingHandler = server.event_handler
    handler.record("data", arg or "")
    if server.envelope is None or not server.envelope.rcpt_tos:
        return False  # let aiosmtpd give its own 503: a protocol error is not a fault
    fault = handler.take_fault("data")
    if fault is None:
        return False
    if fault.drop:
        if server.transport is not None:
            server.transport.close()
        return True
    await server.push(fault.reply)
    return True


class RecordingSMTP(SMTP):
    async def _handle_client(self) -> None:
        if await _fault_at_connect(self):
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str) -> None:
        if await _fault_at_data(self, arg):
            return
        await super().smtp_DATA(arg)


class RecordingLMTP(LMTP):
    async def _handle_client(self) -> None:
        if await _fault_at_connect(self):
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str) -> None:
        if await _fault_at_data(self, arg):
            return
        await super().smtp_DATA(arg)


class _Controller(Controller):
    """aiosmtpd's Controller, but on a kernel-chosen port and with the recording protocol."""

    def __init__(self, handler: RecordingHandler, *, lmtp: bool, **smtp_kwargs: Any) -> None:
        super().__init__(handler, hostname=HOST, port=0, **smtp_kwargs)
        self._lmtp = lmtp

    def factory(self) -> SMTP:
        cls = RecordingLMTP if self._lmtp else RecordingSMTP
        return cls(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Controller connects to self.port to check readiness; with port 0 that is only known
        # once the listening socket exists.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class SMTPServer:
    """A recording SMTP (or LMTP) server on 127.0.0.1.

    ``smtp_kwargs`` go to aiosmtpd's SMTP class, e.g. ``data_size_limit=1000`` (the SIZE it
    advertises and enforces), ``tls_context=`` for STARTTLS, ``enable_SMTPUTF8=False``.
    """

    def __init__(
        self, faults: Sequence[Fault] = (), *, lmtp: bool = False, **smtp_kwargs: Any
    ) -> None:
        self.lmtp = lmtp
        self.handler = RecordingHandler(faults, lmtp=lmtp)
        smtp_kwargs.setdefault("ident", "pyfetch-test LMTP" if lmtp else "pyfetch-test ESMTP")
        self._controller = _Controller(self.handler, lmtp=lmtp, **smtp_kwargs)
        self.host = HOST
        self.port = 0

    def start(self) -> SMTPServer:
        self._controller.start()
        self.port = self._controller.port
        self.handler.armed = True
        return self

    def stop(self) -> None:
        self.handler.armed = False
        self._controller.stop(no_assert=True)

    def __enter__(self) -> SMTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests look at -----------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def transactions(self) -> list[Transaction]:
        """Every transaction that reached the final dot, accepted or not."""
        with self.handler._lock:
            return list(self.handler.transactions)

    @property
    def accepted(self) -> list[Transaction]:
        """Transactions the server answered with 2xx (for LMTP: for at least one recipient)."""
        return [t for t in self.transactions if t.accepted]

    @property
    def messages(self) -> list[bytes]:
        """The bytes of each accepted message, in arrival order."""
        return [t.data for t in self.accepted]

    @property
    def events(self) -> list[tuple[str, str]]:
        """(step, argument) for every command, across connections: connect, ehlo/helo/lhlo,
        mail, rcpt, data, eom, rset, noop, quit."""
        with self.handler._lock:
            return list(self.handler.events)

    @property
    def rejected_rcpts(self) -> list[str]:
        with self.handler._lock:
            return list(self.handler.rejected_rcpts)

    def add_fault(self, fault: Fault) -> None:
        """Add a fault while running (markers are usually easier)."""
        with self.handler._lock:
            self.handler.faults.append(fault)

    def clear(self) -> None:
        """Forget what was recorded (faults stay)."""
        with self.handler._lock:
            self.handler.transactions.clear()
            self.handler.events.clear()
            self.handler.rejected_rcpts.clear()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Transaction]:
        """Wait until ``count`` transactions reached the final dot (for clients in other
        threads or processes that do not wait for the reply themselves)."""
        deadline = time.monotonic() + timeout
        while len(self.transactions) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(self.transactions)} of {count} transactions after {timeout} s; "
                    f"events: {self.events}"
                )
            time.sleep(0.01)
        return self.transactions
