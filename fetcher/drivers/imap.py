"""The IMAP driver: imapclient for the dialogue, our own transport under it.

imapclient (over imaplib) parses the responses. The transport below it is ours because:
- imaplib verifies no certificate unless handed a context, and imapclient builds a context of its
  own when given none; every context here comes from fetcher.tls;
- imapclient turns imaplib's debug log on, which would log LOGIN with the password; our
  transport traces each line through fetcher.trace instead, with secrets redacted, and never
  the contents of a literal (message text).

Order of a session (fetchmail's):
greeting, CAPABILITY, STARTTLS per TlsMode (CAPABILITY again over TLS), LOGIN or AUTHENTICATE,
SELECT (EXAMINE when read-only), UID SEARCH ALL, UID FETCH RFC822.SIZE FLAGS in blocks,
UID FETCH BODY.PEEK[] (nothing is marked read before delivery), UID STORE +FLAGS, EXPUNGE (UID
EXPUNGE with UIDPLUS), LOGOUT.

A PREAUTH greeting, or a server offering no STARTTLS, while TLS is required ends the session
before any credential is sent (fetchmail CVE-2021-39272).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import imaplib
import re
import select
import socket
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, cast

from imapclient import IMAPClient  # type: ignore[import-untyped]
from imapclient.response_parser import gen_parsed_response  # type: ignore[import-untyped]

from fetcher import tls, trace
from fetcher.drivers.base import MessageInfo
from fetcher.drivers.endpoint import Endpoint, SocketOpener, peer_address, read_line
from fetcher.drivers.sasl import (
    OAUTH_MECHANISMS,
    oauth_error_status,
    oauth_refused,
    oauth_response,
)
from fetcher.errors import (
    AuthenticationError,
    ConfigError,
    CredentialsError,
    LockBusyError,
    ProtocolError,
    RemoteError,
    ServerConnectionError,
    TLSError,
    UnsupportedFeatureError,
)
from fetcher.model import ServerOptions, UserOptions

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

PROTO = "IMAP"
DEFAULT_PORT = 143
DEFAULT_SSL_PORT = 993
SERVICE = "imap"  # fetchmail's names for them: what a plugin's `%p` stands for by default
SSL_SERVICE = "imaps"
DEFAULT_FOLDER = "INBOX"
SEEN = b"\\Seen"
DELETED = b"\\Deleted"
_FORBIDDEN_IN_COMMANDS = ("\r", "\n", "\0")
_LITERAL = re.compile(rb"\{(\d+)\}$")
# imaplib reads a literal ({n} then n octets) whole into memory, so every literal is checked
# against a bound before it is read. Only a message's text is large, and for that the bound is
# set from what was asked (see ImapDriver.retrieve); everything else (a greeting, a folder
# name, an ENVELOPE) is far below this.
MAX_LITERAL = 1 << 20
# Octets in one response line, literals apart: imaplib's own limit (imaplib._MAXLINE), which
# a UID SEARCH of some 100,000 messages still fits.
MAX_LINE = 1_000_000
# Characters of a server's text quoted in an error message: enough to say what it said.
_MAX_SHOWN = 200
# fetchmail's tags, A0001, A0002, ...: a -v trace reads as theirs does
_TAGGED = re.compile(rb"(?P<tag>A\d{4,}) (?P<type>[A-Z]+) (?P<data>.*)", re.ASCII)


def _text_bound(size: int) -> int:
    """The largest text accepted for a message listed with RFC822.SIZE `size`.

    Twice what is listed, and at least 8 MiB: servers that store LF line ends may count them
    so and send CRLF, and some (Exchange) only estimate the size. A message refused here stops
    the session, so the bound is there against a server that would never stop sending, not to
    hold a server to its estimate; memory stays bounded either way (a whole message is read
    only when listed at no more than a piece)."""
    return max(2 * size + (64 << 10), 8 << 20)


class _Refused(ProtocolError):
    """The server sent, or announced, more than a bound allows; nothing of it was read.

    Raised by the transport, which does not know the server's label: ImapDriver words it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TracedIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 on a stream we open (TCP with TCP_NODELAY, or a plugin; our TLS
    context), tracing each line.

    Lines sent are traced when complete; lines received are traced as read. Literals (message
    text) are read with read(), which is not traced. A line longer than MAX_LINE, or a literal
    larger than `max_literal`, is refused before it is read.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        context: ssl.SSLContext | None,
        opener: SocketOpener,
    ) -> None:
        self._context = context
        self._opener = opener
        self.trace_secrets: list[str] = []
        self._pending = b""
        self.max_literal = MAX_LITERAL
        # A -v line to say once TLS is up, before the CAPABILITY imaplib sends at once after
        # STARTTLS's handshake: fetchmail says the upgrade worked first.
        self.after_starttls: str | None = None
        super().__init__(host, port, timeout)

    def capability(self) -> tuple[str, list[Any]]:
        if self.after_starttls is not None and isinstance(self.sock, ssl.SSLSocket):
            trace.note(self.after_starttls)
            self.after_starttls = None
        return super().capability()

    def _create_socket(self, timeout: float | None) -> socket.socket:
        assert timeout is not None  # _Client always gives one: no socket waits for ever
        sock = self._opener(timeout)
        try:
            if self._context is not None:
                # The socket's timeout also bounds the handshake (CVE-2011-1947).
                return self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    @property  # type: ignore[override]
    def tagre(self) -> re.Pattern[bytes]:
        return _TAGGED

    @tagre.setter
    def tagre(self, value: re.Pattern[bytes]) -> None:
        """imaplib makes a pattern for a random tag prefix of its own; ours is fixed."""

    def _new_tag(self) -> bytes:
        self.tagnum += 1
        tag = b"A%04d" % self.tagnum
        self.tagged_commands[tag] = None
        return tag

    def send(self, data: ReadableBuffer) -> None:
        if trace.enabled():
            self._pending += bytes(data)
            while b"\r\n" in self._pending:
                line, _, self._pending = self._pending.partition(b"\r\n")
                trace.sent(PROTO, line.decode("utf-8", "replace"), *self.trace_secrets)
        super().send(data)

    def read(self, size: int) -> bytes:
        # imaplib calls this with the size a literal announced, and file.read() would allocate
        # it all at once: 10**12 octets are a MemoryError, 1 GB are 2 GB of memory.
        if size > self.max_literal:
            bound = self.max_literal
            raise _Refused(
                f"the server announced {size} octets where at most {bound} were expected"
            )
        return super().read(size)

    def readline(self) -> bytes:
        # imaplib's own check raises IMAP4.error, which reads as a refused command and leaves
        # the rest of the line unread; this one drops the connection.
        line = cast(bytes, self.file.readline(MAX_LINE + 1))  # imaplib's file is binary
        if len(line) > MAX_LINE:
            raise _Refused(f"the server sent a response line longer than {MAX_LINE} octets")
        if trace.enabled():
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            trace.received(PROTO, text, *self.trace_secrets)
        return line


class _Client(IMAPClient):  # type: ignore[misc]
    """IMAPClient on our transport; `ssl=False` so that it never builds a context itself."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        context: ssl.SSLContext | None,
        opener: SocketOpener,
    ) -> None:
        self._our_context = context
        self._opener = opener
        super().__init__(host, port, use_uid=True, ssl=False, timeout=timeout)
        # imapclient sets imaplib's debug level to 5, which logs LOGIN's arguments verbatim.
        self._imap.debug = 0

    def _create_IMAP4(self) -> imaplib.IMAP4:
        return _TracedIMAP4(
            self.host, self.port, self._timeout.connect, self._our_context, self._opener
        )


class ConnectFactory(Protocol):
    """Opens an IMAP connection and reads the greeting and capabilities; tests pass their own.

    `opener` makes the stream (a TCP connection, or a plugin's pipe: Endpoint._connect_socket).
    With a context, TLS is negotiated before the greeting (implicit TLS, port 993). The result
    is an imapclient.IMAPClient made with use_uid=True.
    """

    def __call__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        context: ssl.SSLContext | None,
        opener: SocketOpener,
    ) -> Any: ...


def open_connection(
    host: str,
    port: int,
    *,
    timeout: float,
    context: ssl.SSLContext | None,
    opener: SocketOpener,
) -> Any:
    """The default ConnectFactory."""
    return _Client(host, port, timeout=timeout, context=context, opener=opener)


def quote(text: str) -> str:
    """An IMAP quoted string (RFC 3501): backslash and double quote escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(err: BaseException) -> str:
    arg = err.args[0] if err.args else ""
    if isinstance(arg, bytes):
        return arg.decode("utf-8", "replace")
    return str(arg)


def _escaped(secret: str) -> list[str]:
    """`secret` as it reads inside the repr() of bytes, which imaplib puts into some of its
    error texts (`LOGIN command error: BAD [b'...']`): backslashes doubled, octets outside
    ASCII as \\xNN, and a single quote escaped or not, as the text around it decides."""
    raw = secret.encode("utf-8", "replace")
    # With both quote characters in it, repr() quotes with ' and escapes every ' inside.
    forms = [repr(raw + b"'\"")[2:-4]]
    if b'"' not in raw:
        forms.append(repr(raw + b"'")[2:-2])  # quoted with ", ' as it is
    return [form for form in forms if form != secret]


class ImapDriver(Endpoint):
    """A MailboxDriver for IMAP (see fetcher.drivers.base for the contract).

    Message numbers are UIDs. After list_messages(), `uidvalidity` holds the folder's
    UIDVALIDITY and `seen_uids` the UIDs (as strings) flagged \\Seen on the server.
    """

    protocol = PROTO
    piece = 4 << 20  # octets: larger messages are fetched in parts of this size
    DEFAULT_PORT = DEFAULT_PORT
    DEFAULT_SSL_PORT = DEFAULT_SSL_PORT
    SERVICE = SERVICE
    SSL_SERVICE = SSL_SERVICE

    def __init__(
        self,
        server: ServerOptions,
        user: UserOptions,
        *,
        folder: str | None = None,
        read_only: bool = False,
        connect_factory: ConnectFactory | None = None,
    ) -> None:
        super().__init__(server, user)
        self.folder = folder or DEFAULT_FOLDER
        self.read_only = read_only
        self.greeting = ""
        self.preauth = False
        self.capabilities: frozenset[str] = frozenset()
        self.uidvalidity: int | None = None
        self.seen_uids: set[str] = set()
        self._connect_factory: ConnectFactory = connect_factory or open_connection
        self._conn: Any = None
        self._sizes: dict[int, int] = {}  # UID -> RFC822.SIZE, from the listing
        self._deleted: set[int] = set()
        self._secrets: list[str] = []
        if user.password:
            # The quoted form first, so that LOGIN traces as `LOGIN "bob" *`.
            self._secrets += [quote(user.password), user.password]

    # -- MailboxDriver -------------------------------------------------------------------

    def connect(self) -> None:
        port = self._resolve_port()
        self.port = port
        if self.tls_mode is tls.TlsMode.IMPLICIT:
            self._open_implicit(port)
        else:
            self._open(port, None)
        if self.tls_mode in (tls.TlsMode.STARTTLS, tls.TlsMode.OPPORTUNISTIC):
            self._starttls(port)

    def login(self) -> None:
        self._require_connection()
        if self.tls_mode.required and not self.tls_active:
            raise TLSError(f"{self.label}: upgrade to TLS failed.")
        if self.preauth:
            trace.note(f"{self.label}: the server greeted with PREAUTH; no login needed")
            self._refresh_capabilities()
            return
        auth = self.server.auth
        if auth == "ssh":
            return  # the tunnel authenticated us; fetchmail sends no credentials either
        if auth in OAUTH_MECHANISMS:
            self._oauth(OAUTH_MECHANISMS[auth])
            self._refresh_capabilities()
            return
        if auth not in ("any", "password", "cram-md5"):
            raise UnsupportedFeatureError(
                f"{self.label}: authentication '{auth}' is not supported for IMAP"
            )
        self._check_credentials()
        if auth == "cram-md5":
            self._cram_md5(may_fall_back=False)
        elif auth == "any" and "AUTH=CRAM-MD5" in self.capabilities:
            if not self._cram_md5(may_fall_back=True):
                self._password_login()
        else:
            self._password_login()
        self._refresh_capabilities()

    def list_messages(self) -> list[MessageInfo]:
        conn = self._require_connection()
        with self._wire("EXAMINE" if self.read_only else "SELECT"):
            info = conn.select_folder(self.folder, readonly=self.read_only)
        validity = info.get(b"UIDVALIDITY")
        self.uidvalidity = int(validity) if isinstance(validity, int) else None
        self.seen_uids = set()
        self._sizes = {}
        if not info.get(b"EXISTS"):
            return []
        with self._wire("UID SEARCH"):
            uids = sorted({int(u) for u in conn.search("ALL")})
        if not uids:
            return []
        block = self.user.fetchsizelimit if self.user.fetchsizelimit > 0 else len(uids)
        result: list[MessageInfo] = []
        for start in range(0, len(uids), block):
            chunk = uids[start : start + block]
            with self._wire("UID FETCH"):
                data = self._uid_fetch(chunk, "RFC822.SIZE FLAGS")
            for position, uid in enumerate(chunk, start=start + 1):
                item = data.get(uid)
                if item is None:
                    # Expunged by another session since the SEARCH, or answered without its
                    # UID: either way not listed, so neither fetched nor deleted.
                    continue
                size = item.get(b"RFC822.SIZE")
                if not isinstance(size, int) or size < 0:
                    raise ProtocolError(f"{self.label}: bogus RFC822.SIZE for UID {uid}")
                flags = item.get(b"FLAGS", ())
                seen = isinstance(flags, tuple) and SEEN in flags
                if seen:
                    self.seen_uids.add(str(uid))
                result.append(MessageInfo(uid, size, str(uid), seen=seen, position=position))
                self._sizes[uid] = size
        return result

    def retrieve(self, number: int, out: BinaryIO, *, peek: bool) -> int:
        """Always with PEEK: a message is flagged \\Seen (or deleted) only once delivered.

        imaplib holds a whole literal in memory, so a message larger than `piece` (or of a
        size the listing did not give) is fetched in parts of that size
        (BODY.PEEK[]<offset.length>), each written out before the next is asked for: memory
        stays flat however large the message. A text larger than asked for is refused unread,
        and parts that go on well past the listed size are not asked for any more."""
        self._check_number(number)
        size = self._sizes.get(number)
        if size is not None and size <= self.piece:
            body = self._fetch_body(number, "BODY.PEEK[]", b"BODY[]", _text_bound(size))
            if body is None:
                raise ProtocolError(f"{self.label}: no text for message UID {number}")
            out.write(body)
            return len(body)
        written = 0
        while True:
            part = self._fetch_body(
                number,
                f"BODY.PEEK[]<{written}.{self.piece}>",
                f"BODY[]<{written}>".encode(),
                self.piece,
            )
            if part is None and written == 0:
                raise ProtocolError(f"{self.label}: no text for message UID {number}")
            part = part or b""  # NIL past the end, from some servers
            if len(part) > self.piece:  # a quoted string: a literal this long is refused
                raise ProtocolError(
                    f"{self.label}: the server sent {len(part)} octets of message UID {number} "
                    f"where {self.piece} were asked for"
                )
            out.write(part)
            written += len(part)
            if len(part) < self.piece:  # the last part (empty when the size was a multiple)
                return written
            if size is not None and written > _text_bound(size):
                raise ProtocolError(
                    f"{self.label}: the text of message UID {number} goes on past the {size} "
                    "octets listed for it; not reading further"
                )

    def _fetch_body(self, number: int, item: str, key: bytes, bound: int) -> bytes | None:
        """`key` of message `number` (None for NIL), no literal in the answer larger than
        `bound`. Only a response that carries `UID number` counts: ProtocolError if none
        brought the text, for bytes not proven to be this message's are never delivered."""
        with self._wire("UID FETCH"):
            item_of = self._uid_fetch([number], item, literal_bound=bound).get(number, {})
        if key not in item_of:
            raise ProtocolError(f"{self.label}: no text for message UID {number}")
        body = item_of[key]
        if body is not None and not isinstance(body, bytes):
            raise ProtocolError(f"{self.label}: bogus text for message UID {number}")
        return body

    def _uid_fetch(
        self, uids: list[int], items: str, *, literal_bound: int = MAX_LITERAL
    ) -> dict[int, dict[bytes, Any]]:
        """UID FETCH `items` of `uids`: for each UID, the items of the responses that carry it.

        imapclient's fetch() keys a response without a UID item by its sequence number, so an
        unsolicited `* 5 FETCH (BODY[] ...)` would pass for the text of UID 5. Here a response
        counts only for the UID it names; those without one of ours are news about other
        messages (flag changes) and are left out. Two responses for one UID that disagree on
        anything but FLAGS (which may change meanwhile) are a ProtocolError."""
        imap = self._require_connection()._imap
        with self._literals_up_to(literal_bound):
            typ, data = imap.uid("FETCH", ",".join(str(uid) for uid in uids), f"({items})")
        if typ != "OK":
            last = data[-1] if data else b""
            text = last.decode("utf-8", "replace") if isinstance(last, bytes) else str(last)
            raise self._refusal("UID FETCH", self._shown(text), auth=False)
        wanted = set(uids)
        found: dict[int, dict[bytes, Any]] = {}
        atoms = gen_parsed_response([part for part in data if part is not None])
        for _sequence_number in atoms:
            fields = next(atoms, None)
            if not isinstance(fields, tuple) or len(fields) % 2:
                raise ProtocolError(f"{self.label}: UID FETCH: a FETCH response out of shape")
            response = {
                name.upper(): value
                for name, value in zip(fields[::2], fields[1::2], strict=True)
                if isinstance(name, bytes)
            }
            uid = response.get(b"UID")
            if not isinstance(uid, int) or uid not in wanted:
                continue
            known = found.setdefault(uid, {})
            for name, value in response.items():
                if name != b"FLAGS" and known.get(name, value) != value:
                    raise ProtocolError(
                        f"{self.label}: the server sent two different "
                        f"{name.decode('ascii', 'replace')} for UID {uid}"
                    )
                known[name] = value
        return found

    @contextlib.contextmanager
    def _literals_up_to(self, bound: int) -> Iterator[None]:
        """Literals up to `bound` octets are read meanwhile, instead of MAX_LITERAL."""
        imap = self._require_connection()._imap
        if not isinstance(imap, _TracedIMAP4):
            yield
            return
        imap.max_literal = bound
        try:
            yield
        finally:
            imap.max_literal = MAX_LITERAL

    def delete(self, number: int) -> None:
        self.delete_many([number])

    def delete_many(self, numbers: list[int]) -> list[bool]:
        """One UID STORE for all of them: the server takes or refuses the command whole."""
        self._store(numbers, [DELETED, SEEN])
        self._deleted.update(numbers)
        return [True] * len(numbers)

    def mark_seen(self, number: int) -> None:
        """Flag message `number` \\Seen (after delivery, when it is kept)."""
        self._store([number], [SEEN])

    def mark_seen_many(self, numbers: list[int]) -> None:
        self._store(numbers, [SEEN])

    def expunge(self) -> bool:
        """Remove the messages flagged \\Deleted in this session: only those with UIDPLUS
        (UID EXPUNGE), every \\Deleted one of the folder without it."""
        conn = self._require_connection()
        if self._deleted:
            if "UIDPLUS" in self.capabilities:
                with self._wire("UID EXPUNGE"):
                    conn.uid_expunge(sorted(self._deleted))
            else:
                with self._wire("EXPUNGE"):
                    conn.expunge()
            self._deleted.clear()
        return True

    def commit(self) -> None:
        conn = self._require_connection()
        try:
            self.expunge()
            with self._wire("LOGOUT"):
                conn.logout()
        finally:
            self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.shutdown()
            except Exception:
                imap = getattr(conn, "_imap", None)
                for name in ("file", "sock"):
                    thing = getattr(imap, name, None)
                    if thing is not None:
                        with contextlib.suppress(Exception):
                            thing.close()
        self._end_plugins()

    # -- watching a folder (IDLE, RFC 2177) ----------------------------------------------
    #
    # A watch is a connection of its own that only listens; fetcher.idle decides what to do
    # with what it hears (through fetcher.idleplan) and polls on another connection.

    @property
    def can_idle(self) -> bool:
        return "IDLE" in self.capabilities

    def start_watch(self) -> None:
        """EXAMINE the folder (a watch changes nothing in it) and enter IDLE if offered."""
        conn = self._require_connection()
        with self._wire("EXAMINE"):
            conn.select_folder(self.folder, readonly=True)
        if self.can_idle:
            self._start_idle()

    def wait_for_news(self, timeout: float) -> list[bytes]:
        """The lines the server sends during IDLE, or [] if it says nothing for `timeout`
        seconds. Every line already received is returned, so that news never waits in a
        buffer behind a line that is not news."""
        conn = self._require_connection()
        imap = conn._imap
        with self._wire("IDLE"):
            if not self._buffered(imap) and not self._readable(imap, timeout):
                return []
            lines = [self._read_response(imap)]
            while self._buffered(imap):
                lines.append(self._read_response(imap))
        return lines

    def renew_idle(self) -> list[bytes]:
        """End IDLE (DONE) and enter it again; returns what the server said in between."""
        lines = self._end_idle()
        self._start_idle()
        return lines

    def ask_for_news(self) -> list[bytes]:
        """NOOP, for servers without IDLE: the lines it brings, its tagged reply included."""
        imap = self._require_connection()._imap
        with self._wire("NOOP"):
            tag = imap._command("NOOP")
            return self._read_until_tagged(imap, tag, "NOOP")

    def interrupt(self) -> None:
        """Wake a wait_for_news() blocked in another thread: it then fails as a lost
        connection. Never raises."""
        sock = getattr(getattr(self._conn, "_imap", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _start_idle(self) -> None:
        conn = self._require_connection()
        with self._wire("IDLE"):
            conn.idle()  # sends IDLE and reads the "+" continuation

    def _end_idle(self) -> list[bytes]:
        conn = self._require_connection()
        imap = conn._imap
        with self._wire("DONE"):
            imap.send(b"DONE\r\n")
            return self._read_until_tagged(imap, conn._idle_tag, "IDLE")

    def _read_until_tagged(self, imap: Any, tag: bytes, what: str) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            line = self._read_response(imap)
            lines.append(line)
            if line.startswith(tag + b" "):
                imap.tagged_commands.pop(tag, None)
                status = line[len(tag) + 1 :].split(b" ", 1)[0].upper()
                if status != b"OK":
                    text = self._shown(line.decode("utf-8", "replace"))
                    raise ProtocolError(f"{self.label}: {what} failed: {text}")
                return lines

    @staticmethod
    def _read_response(imap: Any) -> bytes:
        """One response line; a literal in it ({n} then n octets) is read and left out."""
        line: bytes = imap._get_line()
        literal = _LITERAL.search(line)
        while literal is not None:
            imap.read(int(literal.group(1)))
            rest: bytes = imap._get_line()
            line += b" " + rest
            literal = _LITERAL.search(rest)
        return line

    @staticmethod
    def _buffered(imap: Any) -> bool:
        """Whether a line (or part of one) was received but not read yet.

        imaplib reads through a buffered file: data can wait there that select() cannot see.
        Peeking with the socket non-blocking asks without waiting (and without the timeout
        that would leave the file unusable)."""
        sock = imap.sock
        timeout = sock.gettimeout()
        sock.setblocking(False)
        try:
            return bool(imap.file.peek(1))
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        finally:
            sock.settimeout(timeout)

    @staticmethod
    def _readable(imap: Any, timeout: float) -> bool:
        poller = select.poll()
        poller.register(imap.sock.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(max(0.0, timeout) * 1000))

    # -- connection and TLS --------------------------------------------------------------

    def _open(self, port: int, context: ssl.SSLContext | None) -> None:
        try:
            conn = self._connect_factory(
                self.host,
                port,
                timeout=float(self.timeout),
                context=context,
                opener=lambda timeout: self._connect_socket(port, timeout),
            )
        except ServerConnectionError:
            raise  # a pin mismatch or a plugin that cannot run, already worded
        except _Refused as err:  # imaplib closed the socket
            raise self._refused(err, "the greeting") from err
        except TimeoutError as err:
            raise self._timeout_error() from err
        except ssl.SSLError as err:
            reason = tls.describe_handshake_error(err, self.label)
            raise TLSError(f"{self.label}: {reason}") from err
        except imaplib.IMAP4.abort as err:
            raise ServerConnectionError(
                f"connection to {self._where(port)} lost: {self._shown(_text(err))}"
                f"{self._lost_note()}"
            ) from err
        except imaplib.IMAP4.error as err:
            # imaplib refuses a greeting other than OK or PREAUTH (e.g. BYE), or a non-IMAP4rev1
            # server, and raises this with the greeting's text.
            raise ProtocolError(
                f"{self.label}: the server refused the connection: {self._shown(_text(err))}"
            ) from err
        except socket.gaierror as err:
            raise self._unresolved(err, port) from err
        except OSError as err:
            reason = err.strerror or str(err)
            raise ServerConnectionError(
                f"connection to {self._where(port)} failed: {reason}"
            ) from err
        self._conn = conn
        if self.server.plugin is None:
            trace.note(f"Trying to connect to {self.host}/{port}...connected.")
        imap = conn._imap
        if isinstance(imap, _TracedIMAP4):
            imap.trace_secrets = self._secrets  # shared: secrets added later are redacted too
        self.peer_address = peer_address(imap.sock)
        welcome = conn.welcome
        if isinstance(welcome, bytes):
            welcome = welcome.decode("utf-8", "replace")
        self.greeting = str(welcome)
        self.preauth = self.greeting.upper().startswith("* PREAUTH")
        self._read_capabilities()

    def _read_capabilities(self) -> None:
        conn = self._require_connection()
        self.capabilities = frozenset(str(c).upper() for c in conn._imap.capabilities)

    def _refresh_capabilities(self) -> None:
        # After login the server may offer more (Dovecot adds UIDPLUS, for instance).
        conn = self._require_connection()
        with self._wire("CAPABILITY"):
            caps = conn.capabilities()
        self.capabilities = frozenset(
            (c.decode("ascii", "replace") if isinstance(c, bytes) else str(c)).upper() for c in caps
        )

    def _starttls(
        self, port: int, *, unverified: ssl.SSLCertVerificationError | None = None
    ) -> None:
        """STARTTLS, then CAPABILITY again over TLS. `unverified`: this is the second
        connection under `no sslcertck`, the first having shown that the certificate does not
        verify (fetchmail goes on, with a warning)."""
        required = self.tls_mode is tls.TlsMode.STARTTLS
        if self.preauth:
            # PREAUTH means we are logged in already: STARTTLS is no longer allowed, and going on
            # would read mail in plaintext (CVE-2021-39272).
            if required:
                self.close()
                raise TLSError(
                    f"{self.label}: upgrade to TLS failed: the server greeted with PREAUTH, "
                    f"so STARTTLS is impossible{self._plugin_tls_hint()}"
                )
            return
        if "STARTTLS" not in self.capabilities:
            if required:
                self.close()
                raise TLSError(
                    f"{self.label}: upgrade to TLS failed: the server does not offer STARTTLS"
                    f"{self._plugin_tls_hint()}"
                )
            return
        checking = None if unverified is not None else self._checking_context()
        context = checking or self._tls_context()
        conn = self._require_connection()
        succeeded = f"{self.label}: upgrade to TLS succeeded."
        imap = conn._imap
        if isinstance(imap, _TracedIMAP4):
            imap.after_starttls = succeeded
        try:
            conn.starttls(context)
        except TLSError as err:
            self.close()
            raise TLSError(f"{self.label}: upgrade to TLS failed: {err}") from err
        except _Refused as err:
            self.close()
            raise self._refused(err, "STARTTLS") from err
        except TimeoutError as err:
            self.close()
            raise self._timeout_error() from err
        except (OSError, imaplib.IMAP4.error) as err:  # ssl.SSLError included
            self.close()
            if checking is not None and isinstance(err, ssl.SSLCertVerificationError):
                # The failed handshake left this connection unusable: the session starts
                # again without the check.
                self._open(port, None)
                self._starttls(port, unverified=err)
                return
            if required:
                if isinstance(err, ssl.SSLError):
                    reason = tls.describe_handshake_error(err, self.label)
                elif isinstance(err, OSError):
                    reason = err.strerror or str(err)
                else:
                    reason = self._shown(_text(err))
                message = f"{self.label}: upgrade to TLS failed: {reason}"
                raise self._tls_failure(message, err, port) from err
            # Opportunistic: fetchmail repolls with STARTTLS off; so do we, once, in this call.
            self._open(port, None)
            return
        self.tls_active = True
        if unverified is not None:
            tls.warn_unverified(unverified, self.label)  # before any credential goes out
        if not isinstance(imap, _TracedIMAP4) or imap.after_starttls is not None:
            trace.note(succeeded)  # not said yet: no CAPABILITY went out after the handshake
        if isinstance(imap, _TracedIMAP4):
            imap.after_starttls = None
        # RFC 3501 6.2.1: forget what was said in plaintext; imaplib asked CAPABILITY again.
        self._read_capabilities()

    def _ask_for_tls(self, sock: socket.socket, deadline: float) -> bool:
        # PREAUTH or BYE: no STARTTLS to be had (the session proper refuses PREAUTH anyway).
        if not read_line(sock, deadline).upper().startswith(b"* OK"):
            return False
        sock.sendall(b"A0001 STARTTLS\r\n")
        for _ in range(100):  # untagged lines first, if the server has anything to say
            line = read_line(sock, deadline)
            if not line:
                return False
            if line.startswith(b"A0001 "):
                return line[6:].upper().startswith(b"OK")
        return False

    # -- authentication --------------------------------------------------------------------

    def _check_credentials(self) -> None:
        if self.user.password is None:
            raise CredentialsError(f"no password for {self.user.remote}@{self.label}")
        for value in (self.user.remote, self.user.password):
            if any(c in value for c in _FORBIDDEN_IN_COMMANDS):
                raise ConfigError(
                    f"{self.label}: refusing to send a user name or password with a line break "
                    "or NUL in it"
                )

    def _password(self) -> str:
        assert self.user.password is not None  # _check_credentials()
        return self.user.password

    def _password_login(self) -> None:
        if "LOGINDISABLED" in self.capabilities:
            # RFC 3501: the server wants TLS first. AUTHENTICATE PLAIN sends the same password,
            # so it is only used over TLS.
            if not self.tls_active:
                raise AuthenticationError(
                    f"{self.label}: the server disabled LOGIN and the connection is not "
                    "encrypted; not sending the password"
                )
            if "AUTH=PLAIN" not in self.capabilities:
                raise AuthenticationError(
                    f"{self.label}: the server disabled LOGIN and offers no AUTH=PLAIN"
                )
            self._plain()
            return
        imap = self._require_connection()._imap
        user = quote(self.user.remote)
        try:
            with self._wire("LOGIN", auth=True):
                # imaplib quotes the password but not the user name.
                imap.login(user, self._password())
        except UnicodeEncodeError as err:
            raise AuthenticationError(
                f"{self.label}: LOGIN cannot send a non-ASCII user name or password"
            ) from err

    def _plain(self) -> None:
        raw = f"\0{self.user.remote}\0{self._password()}".encode()
        self._secrets.append(base64.b64encode(raw).decode("ascii"))  # before it is sent
        answers = iter([raw])  # once: a server asking again is cancelled with "*"
        imap = self._require_connection()._imap
        with self._wire("AUTHENTICATE PLAIN", auth=True):
            imap.authenticate("PLAIN", lambda _challenge: next(answers, None))

    def _cram_md5(self, *, may_fall_back: bool) -> bool:
        """AUTHENTICATE CRAM-MD5 (RFC 2195). False when refused and LOGIN may be tried."""
        password = self._password().encode("utf-8")
        answered = False

        def answer(challenge: bytes) -> bytes | None:
            nonlocal answered
            if answered:
                return None  # RFC 2195 has one challenge: cancel with "*"
            answered = True
            mac = hmac.new(password, challenge, hashlib.md5).hexdigest()
            response = f"{self.user.remote} {mac}".encode()
            # The response is as good as the password to an offline guesser.
            self._secrets.append(base64.b64encode(response).decode("ascii"))
            return response

        imap = self._require_connection()._imap
        try:
            with self._wire("AUTHENTICATE CRAM-MD5", auth=True):
                imap.authenticate("CRAM-MD5", answer)
        except AuthenticationError:
            if may_fall_back:
                return False
            raise
        return True

    def _oauth(self, mechanism: str) -> None:
        """AUTHENTICATE XOAUTH2 or OAUTHBEARER (RFC 7628) with the bearer token in `password`.

        A refusing server may first send an error challenge (base64 JSON): it is answered with an
        empty response, and its `status` goes into the error message.
        """
        account = f"{self.user.remote}@{self.label}"
        if not self.tls_active:
            raise TLSError(
                f"{self.label}: refusing to send the OAuth2 token of {account} over an "
                "unencrypted connection; use ssl or sslproto"
            )
        if f"AUTH={mechanism}" not in self.capabilities:
            raise AuthenticationError(
                f"{self.label}: the server does not offer AUTH={mechanism} "
                f"(auth {mechanism.lower()} for {account})"
            )
        self._check_credentials()
        port = self.port if self.port is not None else self._resolve_port()
        raw = oauth_response(mechanism, self.user.remote, self._password(), self.host, port)
        self._secrets.append(base64.b64encode(raw).decode("ascii"))
        challenges: list[bytes] = []

        def answer(challenge: bytes) -> bytes | None:
            challenges.append(challenge)
            if len(challenges) == 1:
                return raw
            if len(challenges) == 2:
                return b""  # RFC 7628 3.2.3: the empty response to an error challenge
            return None  # a server that goes on asking: cancel with "*"

        imap = self._require_connection()._imap
        try:
            with self._wire(f"AUTHENTICATE {mechanism}", auth=True):
                imap.authenticate(mechanism, answer)
        except AuthenticationError as err:
            cause = err.__cause__
            text = self._shown(_text(cause)) if cause is not None else ""
            status = oauth_error_status(challenges[1]) if len(challenges) > 1 else None
            if status is not None:
                status = self._redact(status)
            raise AuthenticationError(
                oauth_refused(self.label, account, mechanism, text, status)
            ) from err

    # -- the wire ----------------------------------------------------------------------------

    def _require_connection(self) -> Any:
        if self._conn is None:
            raise RuntimeError("ImapDriver used while not connected")
        return self._conn

    def _check_number(self, number: int) -> None:
        if number < 1:
            raise ValueError(f"UIDs start at 1, not {number}")

    def _store(self, numbers: list[int], flags: list[bytes]) -> None:
        conn = self._require_connection()
        for number in numbers:
            self._check_number(number)
        if self.read_only:
            # EXAMINE: servers may answer OK to a STORE and change nothing (Dovecot does).
            raise RuntimeError("ImapDriver: flags cannot be changed in a read-only session")
        if not numbers:
            return
        with self._wire("UID STORE"):
            conn.add_flags(numbers, flags, silent=True)

    @contextlib.contextmanager
    def _wire(self, what: str, *, auth: bool = False) -> Iterator[None]:
        """imaplib's and the socket's failures as the driver's errors."""
        try:
            yield
        except _Refused as err:
            # What was refused is still on its way: the dialogue cannot be brought back in step.
            self.close()
            raise self._refused(err, what) from err
        except RemoteError:
            raise
        except TimeoutError as err:
            self.close()
            raise self._timeout_error() from err
        except imaplib.IMAP4.abort as err:
            # BYE, EOF or garbage: the dialogue is out of step, nothing more can be sent.
            self.close()
            text = self._shown(_text(err))
            raise ServerConnectionError(
                f"connection to {self._where(self.port)} lost during {what}: {text}"
                f"{self._lost_note()}"
            ) from err
        except imaplib.IMAP4.error as err:
            text = self._shown(_text(err))
            raise self._refusal(what, text, auth=auth) from err
        except binascii.Error as err:
            if not auth:
                raise
            # imaplib could not decode an AUTHENTICATE challenge; the command is still open.
            self.close()
            raise ProtocolError(
                f"{self.label}: {what}: the server sent a challenge that is not base64"
            ) from err
        except ValueError as err:
            # imaplib and imapclient parse numbers with int(): one of thousands of digits (an
            # EXISTS, a UID, a literal's length) is a ValueError there, and a lie in any case.
            self.close()
            raise ProtocolError(
                f"{self.label}: {what}: the server sent a number that cannot be one"
            ) from err
        except OSError as err:
            self.close()
            reason = err.strerror or str(err) or type(err).__name__
            raise ServerConnectionError(
                f"connection to {self._where(self.port)} lost: {reason}{self._lost_note()}"
            ) from err

    def _redact(self, text: str) -> str:
        """`text` without any secret we sent, also as imaplib's repr() of bytes shows it."""
        forms = [form for secret in self._secrets for form in (secret, *_escaped(secret))]
        return trace.redact(text, *forms)

    def _shown(self, text: str) -> str:
        """A server's text as an error message quotes it: redacted, then cut short (in this
        order, so that no cut leaves the start of a secret behind)."""
        text = self._redact(text)
        return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."

    def _refused(self, err: _Refused, what: str) -> ProtocolError:
        return ProtocolError(f"{self.label}: {what}: {err.reason}; connection dropped")

    def _refusal(self, what: str, text: str, *, auth: bool) -> RemoteError:
        if "[INUSE]" in text.upper():
            return LockBusyError(f"{self.label}: lock busy! Is another session active? ({text})")
        if auth:
            return AuthenticationError(f"{self.label}: {text or 'authentication refused'}")
        return ProtocolError(f"{self.label}: {what} failed: {text}")

