"""Servers that misbehave at one chosen step, on real 127.0.0.1 sockets, one thread per
connection: a POP3 server, an IMAP server and an SMTP listener for the hostile-server suite
(tests/test_hostile_suite.py).

Without a fault each behaves like an honest server: the POP3 server speaks CAPA, USER/PASS,
STAT, LIST, UIDL, TOP, RETR, DELE, RSET, NOOP and QUIT, and its deletions become final only
when it answers QUIT with +OK; the IMAP server (plain IMAP4rev1, one folder) speaks CAPABILITY
(UIDPLUS and IDLE on request), LOGIN, SELECT/EXAMINE, UID SEARCH, UID FETCH (RFC822.SIZE,
FLAGS, BODY.PEEK[] and BODY.PEEK[]<o.n>), UID STORE, EXPUNGE, UID EXPUNGE, CLOSE, NOOP, IDLE
and LOGOUT, its flags change when a STORE is answered and its deletions become final only
when an EXPUNGE is; the listener takes a message only when it answers the final dot with 250,
and keeps what it took in `delivered`.

After `set_fault(Fault(step, kind))` the step misbehaves in the way `kind` says, every time it
comes, until `set_fault(None)`. The steps that happen once per message (POP3 fetch and delete,
IMAP fetch and store, SMTP mail, rcpt, data and end of data) misbehave from the second message
on, so that the first one goes through and the run fails part-way, with something delivered
and not yet deleted. Which faults make sense at which step is said in POP3_MATRIX, IMAP_MATRIX
and SMTP_MATRIX, and why the others were left out in POP3_LEFT_OUT, IMAP_LEFT_OUT and
SMTP_LEFT_OUT.
"""
from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO, Self

HOST = "127.0.0.1"
LONG = 2 * 1024 * 1024  # the length of a `long` reply line
HUGE = "99999999999999999999"  # more than 64 bits can hold
# Past Python's default limit for int() of a decimal string (4300 digits), yet well within a
# 8 KiB reply line: a parser that checks only isdigit() then fails with a ValueError.
GIANT = "9" * 4400
# Not POP3, not SMTP: what a web server, or a TLS port, might say. The escape sequence (clear
# the screen) is there to see that no message shows a server's bytes raw to the terminal.
GARBAGE = b"HTTP/1.1 400 Bad Request \x1b[2J\x00\xff\xfe\x16\x03\x01\r\n"

POP3_STEPS = ("greeting", "capa", "auth", "list", "uidl", "fetch", "delete", "quit")
# sizes is the UID FETCH of RFC822.SIZE and FLAGS, fetch the UID FETCH of a message's text
IMAP_STEPS = (
    "greeting", "capability", "login", "select", "search", "sizes", "fetch", "store", "expunge",
    "logout",
)
SMTP_STEPS = ("greeting", "ehlo", "mail", "rcpt", "data", "eom")


@dataclass(frozen=True)
class Fault:
    step: str
    kind: str


# (step, kind) pairs the POP3 server knows. What each kind does:
#   silent        no answer at all, the connection left open: the client's timeout must fire
#   reset         the connection closed with a TCP reset instead of an answer
#   garbage       GARBAGE instead of the status line; in the LIST and UIDL listings, whose
#                 lines have a syntax to check, instead of the listing's second line
#   long          a 2 MiB line ended by CRLF (the status line, or a listing's second line)
#   long-nocrlf   the same 2 MiB without CRLF, then nothing more, the connection left open
#   number        numbers made huge (HUGE, GIANT) or negative
#   lie           what the server says contradicts what it does (see each step)
POP3_MATRIX: tuple[tuple[str, str], ...] = (
    *((step, kind) for step in POP3_STEPS
      for kind in ("silent", "reset", "garbage", "long", "long-nocrlf")),
    ("capa", "number"),  # LOGIN-DELAY of 20 digits, EXPIRE -1
    ("capa", "lie"),  # TOP offered, then refused
    ("list", "number"),  # STAT with 20-digit count and total, LIST sizes of 20 and 4400 digits
    ("list", "lie"),  # LIST sizes that differ from what TOP/RETR send, both ways
    ("uidl", "number"),  # a UIDL line whose message number has 4400 digits
    ("uidl", "lie"),  # UIDs duplicated in this session, and one changed from the next
    ("fetch", "number"),  # "+OK -1 octets" to TOP/RETR
)
POP3_LEFT_OUT: dict[tuple[str, str], str] = {
    ("greeting", "number"): "a greeting carries no number (an APOP stamp only with APOP)",
    ("greeting", "lie"): "nothing in a plain USER/PASS greeting can be contradicted",
    ("auth", "number"): "no number in a USER or PASS reply is read",
    ("auth", "lie"): "a false +OK to PASS shows as the next command failing: list/garbage",
    ("fetch", "lie"): "list/lie is the same contradiction: listed sizes the text does not keep",
    ("delete", "number"): "no number in a DELE reply is read",
    ("delete", "lie"): "DELE +OK and then no deletion at QUIT is quit/lie",
    ("quit", "number"): "no number in a QUIT reply is read",
    ("quit", "lie"): (
        "+OK to QUIT and the messages kept breaks RFC 1939's promise; what was delivered is "
        "then new again to any client, and fetching it again is better than losing it"
    ),
}

# (step, kind) pairs the IMAP server knows; the kinds are the POP3 server's. garbage, long and
# long-nocrlf replace the first line of the answer, its untagged data where there is some (the
# EXISTS of SELECT, the SEARCH, the CAPABILITY, the BYE of LOGOUT), or the tagged status; in
# the size listing the second FETCH line, in a text's FETCH its first line (with the literal).
IMAP_MATRIX: tuple[tuple[str, str], ...] = (
    *((step, kind) for step in IMAP_STEPS
      for kind in ("silent", "reset", "garbage", "long", "long-nocrlf")),
    ("select", "number"),  # EXISTS of 4400 digits, UIDVALIDITY of 20
    ("search", "number"),  # UIDs of 20 and 4400 digits after the real ones
    # RFC822.SIZE of 20 digits for messages 1 and 2: fetched in parts, the text far short of
    # it. (With 4400 digits there the listing is refused whole, exit 4, before any size is used.)
    ("sizes", "number"),
    ("fetch", "number"),  # a literal of 4400 digits announced for the text
    # "* <4400 digits> EXPUNGE" for each message expunged; the suite has the server offer no
    # UIDPLUS here, so that the plain EXPUNGE, whose untagged lines are parsed, meets them
    ("expunge", "number"),
    ("capability", "lie"),  # UIDPLUS offered, then UID EXPUNGE refused with BAD
    # The server goes down (BYE) at the second message's text and comes back with another
    # UIDVALIDITY for the same UIDs: message 1, delivered and flagged \Seen \Deleted under the
    # old one, is still there for the runs after.
    ("select", "lie"),
    # RFC822.SIZE larger than the text for message 1, smaller for message 2, and an unsolicited
    # FETCH without UID that calls message 3 \Seen \Deleted and 10 octets long
    ("sizes", "lie"),
    # before the text asked for, an unsolicited FETCH without UID of a forged text for
    # message 3 (with message 3's Message-ID)
    ("fetch", "lie"),
    # OK to the UID STORE of the second message on, and nothing flagged (as a server may
    # answer for a flag the user has no right to set)
    ("store", "lie"),
)
IMAP_LEFT_OUT: dict[tuple[str, str], str] = {
    ("greeting", "number"): "a plain OK greeting carries no number",
    ("greeting", "lie"): (
        "nothing in a plain OK greeting can be contradicted (a PREAUTH one, which can, is "
        "tests/test_imap.py's)"
    ),
    ("capability", "number"): (
        "no number in a CAPABILITY list is read (APPENDLIMIT= is for APPEND, never sent)"
    ),
    ("login", "number"): "no number in a LOGIN reply is read",
    ("login", "lie"): (
        "a false OK to LOGIN shows as the next command refused with a tagged NO: an ordinary "
        "refusal, nothing the client could check"
    ),
    ("search", "lie"): "UIDs the SEARCH names and the FETCH does not answer: search/number",
    ("store", "number"): "no number in a UID STORE .SILENT reply is read (no FETCH comes back)",
    ("expunge", "lie"): (
        "an OK to EXPUNGE and the messages kept: they stay \\Seen \\Deleted, which fetchmail and "
        "pyfetch alike skip (nothing lost, nothing twice) until a poll that deletes something "
        "sends a plain EXPUNGE; with UIDPLUS pyfetch never does, as select/lie shows already"
    ),
    ("logout", "number"): "no number in a LOGOUT reply is read",
    ("logout", "lie"): "the deletions were final at EXPUNGE: nothing at LOGOUT to contradict",
}

# The listener's kinds are silent, reset, garbage, long and long-nocrlf as above, and
#   4xx, 5xx      a temporary or permanent refusal at that step
SMTP_MATRIX: tuple[tuple[str, str], ...] = tuple(
    (step, kind) for step in SMTP_STEPS
    for kind in ("reset", "garbage", "long", "long-nocrlf", "4xx", "5xx")
)
SMTP_LEFT_OUT: dict[tuple[str, str], str] = {
    (step, "silent"): (
        "the listener's timeouts are RFC 5321's minimums (fetcher/sinks/smtp.py SmtpTimeouts, "
        "300 s and more) and no option or environment variable shortens them for a run"
    )
    for step in SMTP_STEPS
}

_REFUSALS = {
    "greeting": ("421 4.3.2 service not available, try later", "554 5.3.2 no service here"),
    "ehlo": ("451 4.3.0 EHLO failed, try later", "502 5.5.2 EHLO not understood"),
    "mail": ("451 4.3.0 sender check failed, try later", "550 5.7.1 sender refused"),
    "rcpt": ("450 4.2.1 mailbox busy", "550 5.1.1 no such user"),
    "data": ("451 4.3.0 no DATA now", "554 5.3.4 DATA refused"),
    "eom": ("452 4.3.1 insufficient storage", "554 5.6.0 message refused"),
}
_NORMAL_SMTP = {
    "greeting": "220 hostile.smtp.test ESMTP",
    "mail": "250 2.1.0 sender ok",
    "rcpt": "250 2.1.5 recipient ok",
    "data": "354 go ahead",
}
_TRANSACTION = frozenset({"STAT", "LIST", "UIDL", "TOP", "RETR", "DELE", "RSET", "NOOP"})
EHLO_LINES = ("250-hostile.smtp.test", "250-8BITMIME", "250-SIZE 100000000", "250 HELP")


def _long_line(prefix: bytes, *, crlf: bool) -> bytes:
    return prefix + b"x" * (LONG - len(prefix)) + (b"\r\n" if crlf else b"")


class _Conn:
    """One accepted connection: buffered reads, whole writes, and the ways of ending it."""

    def __init__(self, sock: socket.socket, stopping: threading.Event) -> None:
        self.sock = sock
        self.rfile: BinaryIO = sock.makefile("rb")
        self._stopping = stopping

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def lines(self, *lines: str) -> None:
        self.send("".join(f"{line}\r\n" for line in lines).encode())

    def readline(self, limit: int = 1 << 20) -> bytes:
        """A line without its CRLF; EOFError when the client has gone."""
        raw = self.rfile.readline(limit)
        if not raw:
            raise EOFError
        return raw.rstrip(b"\r\n")

    def reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send a RST, as a crashed server's
        # kernel would, rather than an orderly FIN.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def hang(self) -> None:
        """Say nothing more, read what comes, until the client gives up (or the test ends)."""
        with contextlib.suppress(OSError):
            while not self._stopping.is_set() and self.sock.recv(65536):
                pass


class _ThreadedServer:
    """Accepts on 127.0.0.1 and serves each connection on a thread of its own."""

    name = "hostile"

    def __init__(self) -> None:
        self.fault: Fault | None = None
        self.connections = 0
        self.errors: list[BaseException] = []  # surprises in the fake itself, for the test
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    def set_fault(self, fault: Fault | None) -> None:
        with self._lock:
            self.fault = fault
            self._fault_changed()

    def _fault_changed(self) -> None:
        """A subclass resets its per-run counters here."""

    def _kind_at(self, step: str) -> str | None:
        fault = self.fault
        return fault.kind if fault is not None and fault.step == step else None

    def __enter__(self) -> Self:
        self._listener.listen(16)
        self._spawn(self._accept_loop)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        # shutdown() wakes a thread blocked in accept() or recv(); close() alone would not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=self.name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._socks.append(sock)
            self._spawn(self._run, sock)

    def _run(self, sock: socket.socket) -> None:
        conn = _Conn(sock, self._stopping)
        try:
            self._serve(conn)
        except (OSError, EOFError, ValueError):
            pass  # the client went away, or we reset it: both are what these servers are for
        except BaseException as err:  # a bug in the fake: the test shows it
            self.errors.append(err)
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _serve(self, conn: _Conn) -> None:
        raise NotImplementedError

    def _misbehave(self, conn: _Conn, kind: str, prefix: bytes) -> bool:
        """The kinds every step has; True if the session may go on (the client decides)."""
        if kind == "silent":
            conn.hang()
            return False
        if kind == "reset":
            conn.reset()
            return False
        if kind == "garbage":
            conn.send(GARBAGE)
            return True
        if kind == "long":
            conn.send(_long_line(prefix, crlf=True))
            return True
        if kind == "long-nocrlf":
            conn.send(_long_line(prefix, crlf=False))
            conn.hang()
            return False
        raise ValueError(f"{self.name}: no fault {kind!r} at this step")


# -- POP3 ------------------------------------------------------------------------------------


@dataclass(eq=False)
class StoredMessage:
    uid: str
    data: bytes


class HostilePop3Server(_ThreadedServer):
    """`with HostilePop3Server(messages) as pop:` then `pop.set_fault(Fault("uidl", "lie"))`.

    `mailbox` is what the server holds: a session works on the messages there when it logged
    in, and removes those it deleted when it answers QUIT with +OK."""

    name = "hostile-pop3"
    user = "bob"
    password = "secret"

    def __init__(self, messages: Iterable[bytes]) -> None:
        super().__init__()
        self.mailbox = [StoredMessage(f"uid-{n:04d}", data) for n, data in enumerate(messages, 1)]

    def set_fault(self, fault: Fault | None) -> None:
        if fault is not None and (fault.step, fault.kind) not in POP3_MATRIX:
            raise ValueError(f"not in POP3_MATRIX: {fault}")
        super().set_fault(fault)

    def remaining(self) -> list[bytes]:
        with self._lock:
            return [m.data for m in self.mailbox]

    def _serve(self, conn: _Conn) -> None:
        kind = self._kind_at("greeting")
        if kind is not None and not self._misbehave(conn, kind, b"+OK "):
            return
        if kind is None:
            conn.lines("+OK hostile POP3 server ready")
        session = _Pop3Session(self, conn)
        while session.dispatch(conn.readline(4096).decode("utf-8", "replace")):
            pass


class _Pop3Session:
    """The state of one POP3 connection, and its answers."""

    def __init__(self, server: HostilePop3Server, conn: _Conn) -> None:
        self.server = server
        self.conn = conn
        self.user: str | None = None
        self.messages: list[StoredMessage] | None = None  # the maildrop, once logged in
        self.deleted: set[int] = set()

    def dispatch(self, command: str) -> bool:
        """Answer one command; False ends the session."""
        verb, _, arg = command.partition(" ")
        verb = verb.upper()
        handler = getattr(self, f"_{verb.lower()}", None)
        if handler is None:
            self.conn.lines("-ERR unknown command")
            return True
        if verb in _TRANSACTION and self.messages is None:
            self.conn.lines("-ERR not logged in")
            return True
        result: bool = handler(arg)
        return result

    def _at(self, step: str, *, number: int | None = None) -> str | None:
        kind = self.server._kind_at(step)
        if kind is not None and number is not None and number < 2:
            return None  # the first message goes through, so that the run fails part-way
        return kind

    def _misbehave(self, kind: str, prefix: bytes = b"+OK ") -> bool:
        return self.server._misbehave(self.conn, kind, prefix)

    def _listing(self, status: str, lines: list[str], kind: str | None) -> bool:
        """A multi-line reply; garbage, long and long-nocrlf replace its second line."""
        if kind in ("silent", "reset"):
            return self._misbehave(kind)
        head = f"{status}\r\n".encode()
        body = [f"{'.' + line if line.startswith('.') else line}\r\n".encode() for line in lines]
        if kind == "garbage":
            body[1] = GARBAGE
        elif kind == "long":
            body[1] = _long_line(body[1].split(b" ")[0] + b" ", crlf=True)
        elif kind == "long-nocrlf":
            self.conn.send(head + body[0] + _long_line(b"2 ", crlf=False))
            self.conn.hang()
            return False
        self.conn.send(head + b"".join(body) + b".\r\n")
        return True

    def _live(self) -> list[int]:
        assert self.messages is not None
        return [n for n in range(1, len(self.messages) + 1) if n not in self.deleted]

    def _number(self, arg: str) -> int | None:
        try:
            number = int(arg.split()[0])
        except (ValueError, IndexError):
            self.conn.lines("-ERR bad message number")
            return None
        if number not in self._live():
            self.conn.lines("-ERR no such message")
            return None
        return number

    def _message(self, number: int) -> StoredMessage:
        assert self.messages is not None
        return self.messages[number - 1]

    # -- the commands --------------------------------------------------------------------

    def _capa(self, arg: str) -> bool:
        kind = self._at("capa")
        capabilities = ["TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING"]
        if kind == "number":
            capabilities += [f"LOGIN-DELAY {HUGE}", "EXPIRE -1"]
        elif kind is not None and kind != "lie":
            # capability lines have no syntax to break: every kind hits the status line
            return self._misbehave(kind)
        return self._listing("+OK Capability list follows", capabilities, None)

    def _user(self, arg: str) -> bool:
        self.user = arg
        self.conn.lines("+OK")
        return True

    def _pass(self, arg: str) -> bool:
        kind = self._at("auth")
        if kind is not None:
            return self._misbehave(kind)
        if self.user != self.server.user or arg != self.server.password:
            self.conn.lines("-ERR [AUTH] Authentication failed.")
            return True
        with self.server._lock:
            self.messages = list(self.server.mailbox)
        self.conn.lines("+OK Logged in.")
        return True

    def _stat(self, arg: str) -> bool:
        kind = self._at("list")
        if kind in ("silent", "reset"):
            return self._misbehave(kind)
        live = self._live()
        if kind == "number":
            self.conn.lines(f"+OK {HUGE} {HUGE}")
        else:
            total = sum(len(self._message(n).data) for n in live)
            self.conn.lines(f"+OK {len(live)} {total}")
        return True

    def _size(self, number: int, kind: str | None) -> str:
        size = len(self._message(number).data)
        if kind == "number":
            return {1: HUGE, 2: GIANT}.get(number, str(size))
        if kind == "lie":
            return str({1: size + 100, 2: size - 10}.get(number, size))
        return str(size)

    def _list(self, arg: str) -> bool:
        kind = self._at("list")
        if arg.strip():  # "LIST n": one line
            number = self._number(arg)
            if number is not None:
                self.conn.lines(f"+OK {number} {self._size(number, kind)}")
            return True
        lines = [f"{n} {self._size(n, kind)}" for n in self._live()]
        if kind not in ("garbage", "long", "long-nocrlf"):
            kind = None  # silent and reset hit STAT, which comes first; the others are sizes
        return self._listing(f"+OK {len(lines)} messages", lines, kind)

    def _uidl(self, arg: str) -> bool:
        kind = self._at("uidl")
        live = self._live()
        uids = {n: self._message(n).uid for n in live}
        if kind == "lie":
            # 1 and 2 share a UID, and 3's differs from what every other session says
            uids.update({1: "uid-same", 2: "uid-same", 3: "uid-changed"})
        lines = [f"{n} {uids[n]}" for n in live]
        if kind == "number":
            lines[1] = f"{GIANT} {uids[2]}"
        return self._listing("+OK", lines, None if kind in ("number", "lie") else kind)

    def _retr(self, arg: str) -> bool:
        return self._fetch(arg, None)

    def _top(self, arg: str) -> bool:
        parts = arg.split()
        if len(parts) != 2 or not parts[1].isdigit():
            self.conn.lines("-ERR bad TOP arguments")
            return True
        if self.server._kind_at("capa") == "lie":
            self.conn.lines("-ERR unknown command")  # offered in CAPA, all the same
            return True
        return self._fetch(parts[0], int(parts[1]))

    def _fetch(self, arg: str, lines: int | None) -> bool:
        number = self._number(arg)
        if number is None:
            return True
        data = self._message(number).data
        if lines is not None:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                data = head + sep + b"\r\n".join(body.split(b"\r\n")[:lines])
        text = b"".join(
            (b"." + line if line.startswith(b".") else line) + b"\r\n"
            for line in data.removesuffix(b"\r\n").split(b"\r\n")
        )
        kind = self._at("fetch", number=number)
        if kind == "number":
            self.conn.send(b"+OK -1 octets\r\n" + text + b".\r\n")
            return True
        if kind == "reset":
            # the +OK and half the text, then the reset: a message cut short
            self.conn.send(f"+OK {len(data)} octets\r\n".encode() + text[: len(text) // 2])
            self.conn.reset()
            return False
        if kind is not None:
            return self._misbehave(kind)
        self.conn.send(f"+OK {len(data)} octets\r\n".encode() + text + b".\r\n")
        return True

    def _dele(self, arg: str) -> bool:
        number = self._number(arg)
        if number is None:
            return True
        kind = self._at("delete", number=number)
        if kind is not None:
            return self._misbehave(kind)  # and the message is not marked
        self.deleted.add(number)
        self.conn.lines(f"+OK message {number} deleted")
        return True

    def _noop(self, arg: str) -> bool:
        self.conn.lines("+OK")
        return True

    def _rset(self, arg: str) -> bool:
        self.deleted.clear()
        self.conn.lines("+OK")
        return True

    def _quit(self, arg: str) -> bool:
        kind = self._at("quit")
        if kind is not None:
            self._misbehave(kind)  # and nothing deleted: only a +OK makes deletions final
            return False
        if self.messages is not None and self.deleted:
            gone = {id(self._message(n)) for n in self.deleted}
            with self.server._lock:
                self.server.mailbox = [m for m in self.server.mailbox if id(m) not in gone]
        self.conn.lines("+OK Bye")
        return False


# -- IMAP ------------------------------------------------------------------------------------


@dataclass(eq=False)
class ImapMessage:
    uid: int
    data: bytes
    flags: set[str] = field(default_factory=set)


_QUOTED_OR_ATOM = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_PARTIAL = re.compile(r"BODY\.PEEK\[\]<(\d+)\.(\d+)>", re.IGNORECASE)
_BEYOND = 1 << 64  # what a number too long to be one stands for: a UID no message has
# A forged text for the unsolicited FETCH of fetch/lie: it carries message 3's Message-ID, so
# that taking it for a message shows as hostile-3 delivered twice, or as another one lost.
FORGED = (
    b"From: mallory@example.org\r\nTo: bob@example.org\r\nSubject: forged\r\n"
    b"Message-ID: <hostile-3@example.org>\r\n\r\nNot the message asked for.\r\n"
)


_IMAP_COMMANDS = frozenset({
    "CAPABILITY", "NOOP", "LOGIN", "SELECT", "EXAMINE", "UID_SEARCH", "UID_FETCH", "UID_STORE",
    "EXPUNGE", "UID_EXPUNGE", "IDLE", "CLOSE", "LOGOUT",
})  # each answered by _ImapSession's method of that name, in lower case


def _imap_number(text: str) -> int:
    """A number of a client's command, however long (int() refuses more than 4300 digits)."""
    return int(text) if len(text) <= 30 else _BEYOND


class HostileImapServer(_ThreadedServer):
    """`with HostileImapServer(messages) as imap:` then `imap.set_fault(Fault("sizes", "lie"))`.

    One folder, INBOX, with UIDs 1, 2, ... in order. Flags are the server's as soon as a STORE
    is answered (as in IMAP); a message goes only when an EXPUNGE (or UID EXPUNGE, with
    UIDPLUS) answered OK removes it. `mailbox` keeps what is left between sessions."""

    name = "hostile-imap"
    user = "bob"
    password = "secret"

    def __init__(
        self, messages: Iterable[bytes], *, uidplus: bool = True, idle: bool = False,
        uidvalidity: int = 1000,
    ) -> None:
        super().__init__()
        self.mailbox = [ImapMessage(n, data) for n, data in enumerate(messages, 1)]
        self.uidvalidity = uidvalidity
        self.capabilities = ["IMAP4rev1"] + ["UIDPLUS"] * uidplus + ["IDLE"] * idle

    def set_fault(self, fault: Fault | None) -> None:
        if fault is not None and (fault.step, fault.kind) not in IMAP_MATRIX:
            raise ValueError(f"not in IMAP_MATRIX: {fault}")
        super().set_fault(fault)

    def remaining(self) -> list[bytes]:
        with self._lock:
            return [m.data for m in self.mailbox]

    def _serve(self, conn: _Conn) -> None:
        kind = self._kind_at("greeting")
        if kind is not None and not self._misbehave(conn, kind, b"* OK "):
            return
        if kind is None:
            conn.lines("* OK hostile IMAP server ready")
        session = _ImapSession(self, conn)
        while session.dispatch(conn.readline(1 << 16).decode("utf-8", "replace")):
            pass


class _ImapSession:
    """The state of one IMAP connection, and its answers."""

    def __init__(self, server: HostileImapServer, conn: _Conn) -> None:
        self.server = server
        self.conn = conn
        self.tag = "*"
        self.logged_in = False
        self.selected = False
        self.read_only = False

    def dispatch(self, line: str) -> bool:
        """Answer one command; False ends the session."""
        self.tag, _, rest = line.partition(" ")
        verb, _, args = rest.partition(" ")
        verb = verb.upper()
        if verb == "UID":
            verb, _, args = args.partition(" ")
            verb = f"UID_{verb.upper()}"
        if verb not in _IMAP_COMMANDS:
            self.conn.lines(f"{self.tag} BAD unknown command")
            return True
        handler = getattr(self, f"_{verb.lower()}")
        if verb not in ("CAPABILITY", "LOGIN", "LOGOUT", "NOOP") and not self.logged_in:
            self.conn.lines(f"{self.tag} BAD not logged in")
            return True
        if (verb.startswith("UID_") or verb == "EXPUNGE") and not self.selected:
            self.conn.lines(f"{self.tag} BAD no folder selected")
            return True
        result: bool = handler(args)
        return result

    def _at(self, step: str, *, position: int | None = None) -> str | None:
        kind = self.server._kind_at(step)
        if kind is not None and position is not None and position < 2:
            return None  # the first message goes through, so that the run fails part-way
        return kind

    def _answer(
        self, kind: str | None, untagged: list[bytes], status: str, *, hit: int = 0
    ) -> bool:
        """Untagged lines (each without its CRLF) and the tagged status. garbage, long and
        long-nocrlf replace line `hit` (counting the tagged one last); silent and reset hit the
        whole answer."""
        if kind in ("silent", "reset"):
            return self.server._misbehave(self.conn, kind, b"")
        lines = [line + b"\r\n" for line in untagged] + [f"{self.tag} {status}\r\n".encode()]
        hit = min(hit, len(lines) - 1)
        prefix = b" ".join(lines[hit].split(b" ")[:2]) + b" "
        if kind == "garbage":
            lines[hit] = GARBAGE
        elif kind == "long":
            lines[hit] = _long_line(prefix, crlf=True)
        elif kind == "long-nocrlf":
            self.conn.send(b"".join(lines[:hit]) + _long_line(prefix, crlf=False))
            self.conn.hang()
            return False
        elif kind is not None:
            raise ValueError(f"{self.server.name}: no fault {kind!r} here")
        self.conn.send(b"".join(lines))
        return True

    def _messages(self) -> list[ImapMessage]:
        with self.server._lock:
            return list(self.server.mailbox)

    def _uid_set(self, spec: str) -> list[tuple[int, ImapMessage]]:
        """(sequence number, message) of each message whose UID the set names."""
        messages = self._messages()
        highest = messages[-1].uid if messages else 0
        wanted: list[tuple[int, int]] = []
        for part in spec.split(","):
            low, _, high = part.partition(":")
            first = highest if low == "*" else _imap_number(low)
            last = first if not high else highest if high == "*" else _imap_number(high)
            wanted.append((min(first, last), max(first, last)))
        return [
            (position, m) for position, m in enumerate(messages, 1)
            if any(low <= m.uid <= high for low, high in wanted)
        ]

    # -- the commands --------------------------------------------------------------------

    def _capability(self, args: str) -> bool:
        kind = self._at("capability")
        capabilities = list(self.server.capabilities)
        if kind == "lie":
            capabilities += [] if "UIDPLUS" in capabilities else ["UIDPLUS"]
            kind = None  # offered here, refused at UID EXPUNGE
        line = "* CAPABILITY " + " ".join(capabilities)
        return self._answer(kind, [line.encode()], "OK CAPABILITY completed")

    def _noop(self, args: str) -> bool:
        return self._answer(None, [], "OK NOOP completed")

    def _login(self, args: str) -> bool:
        words = [q.replace('\\"', '"').replace("\\\\", "\\") if q else a
                 for q, a in _QUOTED_OR_ATOM.findall(args)]
        kind = self._at("login")
        if kind is not None:
            return self._answer(kind, [], "OK LOGIN completed")
        if words != [self.server.user, self.server.password]:
            return self._answer(None, [], "NO [AUTHENTICATIONFAILED] Authentication failed.")
        self.logged_in = True
        return self._answer(None, [], "OK Logged in.")

    def _select(self, args: str, *, read_only: bool = False) -> bool:
        if args.strip().strip('"').upper() != "INBOX":
            return self._answer(None, [], "NO [NONEXISTENT] no such folder")
        kind = self._at("select")
        messages = self._messages()
        exists, validity = str(len(messages)), str(self.server.uidvalidity)
        if kind == "number":
            exists, validity = GIANT, HUGE
        untagged = [
            f"* {exists} EXISTS".encode(),
            b"* 0 RECENT",
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
            f"* OK [UIDVALIDITY {validity}] UIDs valid".encode(),
            f"* OK [UIDNEXT {messages[-1].uid + 1 if messages else 1}] Predicted next UID".encode(),
        ]
        mode = "READ-ONLY" if read_only else "READ-WRITE"
        answered = self._answer(
            None if kind in ("number", "lie") else kind, untagged, f"OK [{mode}] Select completed"
        )
        self.selected, self.read_only = answered, read_only
        return answered

    def _examine(self, args: str) -> bool:
        return self._select(args, read_only=True)

    def _uid_search(self, args: str) -> bool:
        kind = self._at("search")
        uids = [str(m.uid) for m in self._messages()]
        if kind == "number":
            uids += [HUGE, GIANT]
        line = " ".join(["* SEARCH", *uids]).encode()
        return self._answer(kind if kind != "number" else None, [line], "OK Search completed")

    def _uid_fetch(self, args: str) -> bool:
        spec, _, items = args.partition(" ")
        if "BODY" in items.upper():
            return self._fetch_text(spec, items)
        kind = self._at("sizes")
        untagged: list[bytes] = []
        for position, m in self._uid_set(spec):
            size = str(len(m.data))
            if kind == "number" and position <= 2:
                size = HUGE
            elif kind == "lie":
                size = str({1: len(m.data) + 100, 2: len(m.data) - 10}.get(position, size))
            flags = " ".join(sorted(m.flags))
            untagged.append(
                f"* {position} FETCH (UID {m.uid} RFC822.SIZE {size} FLAGS ({flags}))".encode()
            )
            if kind == "lie" and position == 1:
                # for another message, without its UID: not a listing of message 3
                untagged.append(b"* 3 FETCH (RFC822.SIZE 10 FLAGS (\\Seen \\Deleted))")
        if kind in ("number", "lie"):
            kind = None
        return self._answer(kind, untagged, "OK Fetch completed", hit=1)

    def _fetch_text(self, spec: str, items: str) -> bool:
        partial = _PARTIAL.search(items)
        for position, m in self._uid_set(spec):
            text, item = m.data, "BODY[]"
            if partial is not None:
                offset, length = int(partial.group(1)), int(partial.group(2))
                text, item = text[offset : offset + length], f"BODY[]<{offset}>"
            if self.server._kind_at("select") == "lie" and position >= 2:
                # The server goes down; it comes back with another UIDVALIDITY, UIDs unchanged.
                with self.server._lock:
                    self.server.uidvalidity += 1
                self.conn.lines("* BYE server shutting down")
                return False
            kind = self._at("fetch", position=position)
            head = f"* {position} FETCH (UID {m.uid} {item} {{{len(text)}}}".encode()
            if kind == "number":
                head = f"* {position} FETCH (UID {m.uid} {item} {{{GIANT}}}".encode()
            elif kind == "reset":
                # the head and half the text, then the reset: a message cut short
                self.conn.send(head + b"\r\n" + text[: len(text) // 2])
                self.conn.reset()
                return False
            elif kind == "lie":
                # for another message (sequence number 3), without its UID, before the real one
                self.conn.send(b"* 3 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(FORGED), FORGED))
            elif kind is not None:
                return self._answer(kind, [head], "OK Fetch completed")
            self.conn.send(head + b"\r\n" + text + b")\r\n")
        return self._answer(None, [], "OK Fetch completed")

    def _uid_store(self, args: str) -> bool:
        spec, _, rest = args.partition(" ")
        mode, _, flag_list = rest.partition(" ")
        flags = flag_list.strip().strip("()").split()
        if self.read_only:
            return self._answer(None, [], "NO [READ-ONLY] folder is read-only")
        untagged: list[bytes] = []
        for position, m in self._uid_set(spec):
            kind = self._at("store", position=position)
            if kind == "lie":
                continue  # answered OK below, all the same
            if kind is not None:
                return self._answer(kind, [], "OK Store completed")  # and nothing flagged
            with self.server._lock:
                if mode.upper().startswith("+"):
                    m.flags.update(flags)
                elif mode.upper().startswith("-"):
                    m.flags.difference_update(flags)
                else:
                    m.flags = set(flags)
            if not mode.upper().endswith(".SILENT"):
                shown = " ".join(sorted(m.flags))
                untagged.append(f"* {position} FETCH (UID {m.uid} FLAGS ({shown}))".encode())
        return self._answer(None, untagged, "OK Store completed")

    def _expunge(self, args: str, spec: str | None = None) -> bool:
        kind = self._at("expunge")
        if kind not in (None, "number"):
            return self._answer(kind, [], "OK Expunge completed")  # and nothing expunged
        chosen = None if spec is None else {id(m) for _, m in self._uid_set(spec)}
        untagged: list[bytes] = []
        with self.server._lock:
            for position in range(len(self.server.mailbox), 0, -1):
                m = self.server.mailbox[position - 1]
                if "\\Deleted" in m.flags and (chosen is None or id(m) in chosen):
                    del self.server.mailbox[position - 1]
                    number = GIANT if kind == "number" else str(position)
                    untagged.append(f"* {number} EXPUNGE".encode())
        return self._answer(None, untagged, "OK Expunge completed")

    def _uid_expunge(self, args: str) -> bool:
        if "UIDPLUS" not in self.server.capabilities or self._at("capability") == "lie":
            return self._answer(None, [], "BAD unknown command")  # offered, all the same
        return self._expunge("", args.strip())

    def _idle(self, args: str) -> bool:
        if "IDLE" not in self.server.capabilities:
            return self._answer(None, [], "BAD unknown command")
        self.conn.lines("+ idling")
        while self.conn.readline(4096).strip().upper() != b"DONE":
            pass
        return self._answer(None, [], "OK IDLE terminated")

    def _close(self, args: str) -> bool:
        """What EXPUNGE does, silently (RFC 3501 6.4.2), then the folder is left."""
        if not self.read_only:
            with self.server._lock:
                kept = [m for m in self.server.mailbox if "\\Deleted" not in m.flags]
                self.server.mailbox = kept
        self.selected = False
        return self._answer(None, [], "OK Close completed")

    def _logout(self, args: str) -> bool:
        kind = self._at("logout")
        self._answer(kind, [b"* BYE Logging out"], "OK Logout completed")
        return False


# -- SMTP ------------------------------------------------------------------------------------


class HostileSmtpListener(_ThreadedServer):
    """`with HostileSmtpListener() as smtp:`; the messages it took are in `delivered`."""

    name = "hostile-smtp"

    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[bytes] = []
        self._transactions = 0  # MAIL FROMs since the fault was set

    def set_fault(self, fault: Fault | None) -> None:
        if fault is not None and (fault.step, fault.kind) not in SMTP_MATRIX:
            raise ValueError(f"not in SMTP_MATRIX: {fault}")
        super().set_fault(fault)

    def _fault_changed(self) -> None:
        self._transactions = 0

    def _at(self, step: str) -> str | None:
        kind = self._kind_at(step)
        if kind is not None and step in ("mail", "rcpt", "data", "eom"):
            with self._lock:
                if self._transactions < 2:
                    return None  # the first message goes through
        return kind

    def _reply(self, conn: _Conn, step: str, normal: str) -> bool:
        """`normal`, or the step's fault; True if the client's next command is to be read."""
        kind = self._at(step)
        if kind is None:
            conn.lines(normal)
            return True
        if kind in ("4xx", "5xx"):
            conn.lines(_REFUSALS[step][kind == "5xx"])
            return step != "greeting"  # a listener that refuses to greet hangs up
        # At the end of data a long line is a refusal too: the listener did not take it.
        code = "451" if step == "eom" else normal[:3]
        return self._misbehave(conn, kind, f"{code} ".encode())

    def _serve(self, conn: _Conn) -> None:
        if not self._reply(conn, "greeting", _NORMAL_SMTP["greeting"]):
            return
        while True:
            line = conn.readline(4096).decode("utf-8", "replace")
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                if self._at("ehlo") is None:
                    conn.lines(*EHLO_LINES)
                elif not self._reply(conn, "ehlo", EHLO_LINES[-1]):
                    return
            elif verb in ("HELO", "LHLO"):
                conn.lines("250 hostile.smtp.test")  # the fallback from a failed EHLO
            elif verb == "MAIL":
                with self._lock:
                    self._transactions += 1
                if not self._reply(conn, "mail", _NORMAL_SMTP["mail"]):
                    return
            elif verb == "RCPT":
                if not self._reply(conn, "rcpt", _NORMAL_SMTP["rcpt"]):
                    return
            elif verb == "DATA":
                kind = self._at("data")
                if not self._reply(conn, "data", _NORMAL_SMTP["data"]):
                    return
                if kind is None and not self._message(conn):
                    return
            elif verb in ("RSET", "NOOP"):
                conn.lines("250 2.0.0 OK")
            elif verb == "QUIT":
                conn.lines("221 2.0.0 bye")
                return
            else:
                conn.lines("502 5.5.2 command not recognized")

    def _message(self, conn: _Conn) -> bool:
        lines: list[bytes] = []
        while (line := conn.readline()) != b".":
            lines.append(line[1:] if line.startswith(b".") else line)
        if not self._reply(conn, "eom", "250 2.0.0 queued"):
            return False
        if self._at("eom") is None:
            with self._lock:
                self.delivered.append(b"\r\n".join(lines) + b"\r\n")
        return True
