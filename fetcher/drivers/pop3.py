"""The POP3 driver: poplib for the connection, our own dialogue on top of it.

poplib opens the socket, wraps it for implicit TLS and reads the greeting. The dialogue itself
is written here, on poplib's socket and file, because poplib:
- checks no certificate unless handed a context (ours comes from fetcher.tls);
- keeps a whole RETR in a list, and refuses lines over 2048 octets (`_MAXLINE`), while real
  mail has lines far longer; we stream the text to the caller's file whatever its line
  lengths, holding at most MAX_LINE octets of a line (fetchmail delivers any line too);
- reads CAPA again inside `stls()`, and traces to stdout instead of our -v trace.

Order of a session (fetchmail's, minus LAST):
greeting, CAPA, STLS per TlsMode, CAPA again over TLS, authentication, STAT, LIST, UIDL,
then TOP/RETR, DELE, QUIT.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import os
import poplib
import re
import select
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol, cast

from fetcher import tls, trace
from fetcher.drivers.base import MessageInfo
from fetcher.drivers.endpoint import Endpoint, SocketOpener, peer_address, read_line
from fetcher.drivers.sasl import (
    OAUTH_MECHANISMS,
    Secrets,
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
from fetcher.exitcodes import ExitCode
from fetcher.model import ServerOptions, UserOptions

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

PROTO = "POP3"
DEFAULT_PORT = 110
DEFAULT_SSL_PORT = 995
SERVICE = "pop3"  # fetchmail's names for them: what a plugin's `%p` stands for by default
SSL_SERVICE = "pop3s"
# The most of one message line held in memory: a longer line is written on in pieces of about
# this size. Not a limit: a message line may be any length.
MAX_LINE = 1024 * 1024
MAX_REPLY_LINE = 8192  # longest status or listing line (RFC 2449 allows only 512)
MAX_CAPA_LINES = 1000  # a CAPA listing longer than this is not a POP3 server talking
MAX_UID = 512  # RFC 1939 says 70; some servers exceed it, none by this much (CVE-2005-2335)
# The connection's read buffer: a message's text is worked on a buffer's worth at a time, and
# each refill lets go of the interpreter lock, so fewer and larger ones keep a large message
# moving while the listener's side is busy too.
READ_BUFFER = 256 << 10
TOP_ALL_LINES = 99999999  # fetchmail's TOP n 99999999: the whole message, but not marked seen
FORCE_RETR_ENV = "FETCHMAIL_POP3_FORCE_RETR"  # fetchmail: set at all, even empty, means RETR
_FORBIDDEN_IN_COMMANDS = ("\r", "\n", "\0")
# RFC 5034 section 4: an AUTH command with its initial response fits in 255 octets, CRLF included;
# a longer response (a real OAuth2 token makes one) goes after the server's "+" instead.
MAX_AUTH_LINE = 255
class ConnectFactory(Protocol):
    """Opens a POP3 connection and reads the greeting; tests pass their own.

    `opener` makes the stream (a TCP connection, or a plugin's pipe: Endpoint._connect_socket).
    With a context, TLS is negotiated before the greeting (implicit TLS, port 995).
    """

    def __call__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        context: ssl.SSLContext | None,
        opener: SocketOpener,
    ) -> poplib.POP3: ...


class _ConnectTimeout(TimeoutError):
    """The TCP connect or the implicit-TLS handshake timed out, not the wait for the greeting:
    fetchmail words the two differently."""


class _Pop3Connection(poplib.POP3):
    """poplib.POP3 on our stream (TCP with TCP_NODELAY, or a plugin), our TLS context, and no
    socket leak on a bad greeting."""

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
        try:
            super().__init__(host, port, timeout)
        except BaseException:
            _close_quietly(self)
            raise
        # poplib read the greeting with a small buffer of its own; the rest is read with
        # ours, unless something came after the greeting already (kept where it is).
        if not _read_ahead(self):
            old_file, self.file = self.file, reader_of(self.sock)
            old_file.close()

    def _create_socket(self, timeout: float) -> socket.socket:
        try:
            sock = self._opener(timeout)
        except TimeoutError as err:
            raise _ConnectTimeout(*err.args) from err
        try:
            if self._context is not None:
                # The socket's timeout also bounds the handshake (CVE-2011-1947).
                return self._context.wrap_socket(sock, server_hostname=self.host)
        except TimeoutError as err:
            sock.close()
            raise _ConnectTimeout(*err.args) from err
        except BaseException:
            sock.close()
            raise
        return sock


def _read_ahead(conn: poplib.POP3) -> bool:
    """Whether the connection's reader holds octets the dialogue has not come to yet."""
    reader = conn.file
    if not isinstance(reader, io.BufferedReader):
        return False  # not poplib's own file: nothing we can look into without blocking
    timeout = conn.sock.gettimeout()
    try:
        conn.sock.settimeout(0.0)  # peek() must only report what is already there
        return bool(reader.peek(1))
    except OSError:
        return False
    finally:
        conn.sock.settimeout(timeout)


def reader_of(sock: socket.socket) -> BinaryIO:
    """The connection's buffered reader: over TLS, one whose refills take every record that
    has come in already (see _TlsRecords)."""
    if isinstance(sock, ssl.SSLSocket):
        return cast(BinaryIO, io.BufferedReader(_TlsRecords(sock), READ_BUFFER))
    return cast(BinaryIO, sock.makefile("rb", buffering=READ_BUFFER))


class _TlsRecords(io.RawIOBase):
    """A TLS socket's reads, each taking all the records that are there already (up to the
    buffer's size). One read of a TLS socket gives one record, 16 KB at most: without this,
    the driver's block-at-a-time copy of a 100 MB message went round 6,400 times. It waits
    only as a plain read does (for the first record); after that it reads on only while the
    socket has data, so nothing waits for text the server has not sent. An error after some
    octets came in is raised by the next read, once those have been used."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        super().__init__()
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._error: OSError | None = None

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        view = memoryview(buffer).cast("B")
        got = self._sock.recv_into(view)
        while got and got < len(view) and (self._sock.pending() or self._poll.poll(0)):
            try:
                more = self._sock.recv_into(view[got:])
            except OSError as err:
                self._error = err
                break
            if not more:
                break
            got += more
        return got


def open_connection(
    host: str,
    port: int,
    *,
    timeout: float,
    context: ssl.SSLContext | None,
    opener: SocketOpener,
) -> poplib.POP3:
    """The default ConnectFactory."""
    return _Pop3Connection(host, port, timeout, context, opener)


@dataclass(frozen=True)
class Reply:
    """A POP3 status line: +OK (ok) or -ERR, with the text after the status word."""

    ok: bool
    text: str
    line: str


_APOP_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_APOP_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_APOP_LITERAL = r"\[(?:[\x20-\x5a\x5e-\x7e]|\\[\x20-\x7e])*\]"
_APOP_WORD = rf"(?:{_APOP_ATOM}|{_APOP_QUOTED})"
_APOP_SUBDOMAIN = rf"(?:{_APOP_ATOM}|{_APOP_LITERAL})"
# An RFC 822 msg-id in printable ASCII, which is what fetchmail's rfc822_valid_msgid() demands of
# an APOP challenge since 6.3.8: the MD5 collision attack on APOP (CVE-2007-1558) needs
# challenges that are not valid msg-ids.
_APOP_MSGID = re.compile(
    rf"<{_APOP_WORD}(?:\.{_APOP_WORD})*@{_APOP_SUBDOMAIN}(?:\.{_APOP_SUBDOMAIN})*>"
)


def apop_timestamp(greeting: str) -> str:
    """The APOP challenge in a greeting, checked as strictly as fetchmail does (exit 3)."""
    start = greeting.find("<")
    if start < 0:
        raise AuthenticationError("Required APOP timestamp not found in greeting")
    end = greeting.find(">", start)
    if end < 0 or end == start + 1:
        raise AuthenticationError("Timestamp syntax error in greeting")
    stamp = greeting[start : end + 1]
    if not _APOP_MSGID.fullmatch(stamp):
        raise AuthenticationError("Invalid APOP timestamp.")
    return stamp


def _is_lock_busy(text: str) -> bool:
    # fetchmail's pop3_ok(): "lock busy", "unable to lock", "wait a few minutes" and RFC 2449's
    # response codes all mean another session holds the mailbox, not a bad password.
    return any(s in text for s in ("lock", "Lock", "LOCK", "wait", "[IN-USE]", "[LOGIN-DELAY]"))


def _is_server_busy(text: str) -> bool:
    return ("Service" in text or "service" in text) and "unavailable" in text


def _close_quietly(conn: poplib.POP3) -> None:
    # poplib.close() needs both attributes; a failed constructor may have set neither.
    for name in ("file", "sock"):
        thing = getattr(conn, name, None)
        if thing is not None:
            with contextlib.suppress(OSError):
                thing.close()


class Pop3Driver(Endpoint):
    """A MailboxDriver for POP3 and APOP (see fetcher.drivers.base for the contract)."""

    protocol = PROTO
    DEFAULT_PORT = DEFAULT_PORT
    DEFAULT_SSL_PORT = DEFAULT_SSL_PORT
    SERVICE = SERVICE
    SSL_SERVICE = SSL_SERVICE

    def __init__(
        self,
        server: ServerOptions,
        user: UserOptions,
        *,
        connect_factory: ConnectFactory | None = None,
    ) -> None:
        super().__init__(server, user)
        self.greeting = ""
        self.capabilities: dict[str, tuple[str, ...]] = {}  # CAPA name (upper case) -> arguments
        self.capa_supported = False  # CAPA answered +OK
        self._connect_factory: ConnectFactory = connect_factory or open_connection
        self._conn: poplib.POP3 | None = None
        # What we sent that no error or trace line may show; each authentication step adds its
        # own. Whatever the server says is shown only through it (see _shown).
        self._secrets = Secrets(user.password)

    # -- MailboxDriver -------------------------------------------------------------------

    def connect(self) -> None:
        port = self._resolve_port()
        self.port = port
        if self.tls_mode is tls.TlsMode.IMPLICIT:
            self._open_implicit(port)
        else:
            self._open(port, None)
        self._probe_capabilities()
        if self.tls_mode in (tls.TlsMode.STARTTLS, tls.TlsMode.OPPORTUNISTIC):
            self._starttls(port)

    def login(self) -> None:
        self._require_connection()
        if self.tls_mode.required and not self.tls_active:
            # connect() already refused; this guards a caller that ignored its exception.
            raise TLSError(f"{self.label}: upgrade to TLS failed.")
        auth = self.server.auth
        if self.server.protocol.upper() == "APOP":
            # `proto APOP` forces APOP whatever `auth` says, as in fetchmail.
            self._apop()
        elif auth == "ssh":
            # fetchmail sends no credentials with `auth ssh`: the tunnel authenticated us.
            return
        elif auth == "cram-md5":
            self._cram_md5(may_fall_back=False)
        elif auth == "any":
            # The strongest method offered first; fetchmail falls back after a refused AUTH.
            if "CRAM-MD5" in self._sasl_mechanisms() and self._cram_md5(may_fall_back=True):
                return
            if self._user_disabled() and "PLAIN" in self._sasl_mechanisms():
                self._plain()  # a server that turned USER/PASS off but takes SASL PLAIN
                return
            self._user_pass()
        elif auth == "password":
            self._user_pass()
        elif auth in OAUTH_MECHANISMS:
            self._oauth(OAUTH_MECHANISMS[auth])
        else:
            raise UnsupportedFeatureError(
                f"{self.label}: authentication '{auth}' is not supported for POP3"
            )

    def list_messages(self) -> list[MessageInfo]:
        reply = self._expect_ok("STAT")
        count = self._parse_counts(reply.text, "STAT")[0]
        if count == 0:
            return []
        # One LIST for all sizes instead of fetchmail's LIST n per message: one round trip.
        self._expect_ok("LIST")
        sizes: dict[int, int] = {}
        for line in self._read_listing(max_lines=count):
            number, size = self._parse_counts(line, "LIST")
            if not 1 <= number <= count or number in sizes:
                raise ProtocolError(
                    f"{self.label}: bogus LIST line {self._shown(line)!r} for {count} messages"
                )
            sizes[number] = size
        uids = self._uid_listing(count)
        return [MessageInfo(n, sizes[n], uids.get(n)) for n in sorted(sizes)]

    def retrieve(self, number: int, out: BinaryIO, *, peek: bool) -> int:
        self._check_number(number)
        if peek and self._top_usable():
            command = f"TOP {number} {TOP_ALL_LINES}"
        else:
            command = f"RETR {number}"
        reply = self._command(command)
        if not reply.ok:
            raise ProtocolError(f"{self.label}: {command} failed: {self._shown_reply(reply)}")
        # Trace the status line only: message contents never reach the log.
        return self._copy_text(out, MAX_LINE, what=f"text of message {number}")

    def delete(self, number: int) -> None:
        self._check_number(number)
        self._expect_ok(f"DELE {number}")

    def delete_many(self, numbers: list[int]) -> list[bool]:
        """DELE each message; with PIPELINING (RFC 2449) all of them in one write, the replies
        read after. A -ERR refuses that one message only."""
        for number in numbers:
            self._check_number(number)
        commands = [f"DELE {number}" for number in numbers]
        if "PIPELINING" in self.capabilities and len(commands) > 1:
            self._send_all(commands)
            replies = [self._read_status() for _ in commands]
        else:
            replies = [self._command(command) for command in commands]
        return [reply.ok for reply in replies]

    def mark_seen_many(self, numbers: list[int]) -> None:
        """POP3 has no flags (see mark_seen)."""

    def mark_seen(self, number: int) -> None:
        """POP3 has no flags: a kept message is remembered by its UID in .fetchids."""

    def expunge(self) -> bool:
        return False  # only QUIT makes DELE take effect: the session logs in again

    def commit(self) -> None:
        try:
            self._expect_ok("QUIT")
        finally:
            self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                _close_quietly(conn)
        self._end_plugins()

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
        except _ConnectTimeout as err:
            raise self._timeout_error("connect") from err
        except TimeoutError as err:
            raise self._timeout_error("server") from err
        except ssl.SSLError as err:
            reason = tls.describe_handshake_error(err, self.label)
            raise TLSError(f"{self.label}: {reason}") from err
        except poplib.error_proto as err:
            raise self._greeting_error(err, port) from err
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
        # A factory may hand us something that is not TCP; latency is all we would lose.
        with contextlib.suppress(OSError, AttributeError):
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer_address = peer_address(conn.sock)
        self.greeting = conn.welcome.decode("utf-8", "replace")  # as sent: APOP reads it
        trace.received(PROTO, self._shown(self.greeting))

    def _greeting_error(self, err: poplib.error_proto, port: int) -> RemoteError:
        arg = err.args[0] if err.args else ""
        if not isinstance(arg, bytes):
            # poplib's own complaint, not the server's words: "-ERR EOF" or "line too long".
            if "EOF" in str(arg):
                return ServerConnectionError(
                    f"connection to {self._where(port)} lost: the server closed it before "
                    f"greeting{self._lost_note()}"
                )
            return ProtocolError(f"{self.label}: bad greeting: {arg}")
        text = self._shown(arg.decode("utf-8", "replace"))
        trace.received(PROTO, text)
        if text.startswith("-ERR"):
            return self._refusal(text[4:].strip(), stage="greeting")
        return ProtocolError(f"{self.label}: bad greeting: {text[:80]!r}")

    def _starttls(
        self, port: int, *, unverified: ssl.SSLCertVerificationError | None = None
    ) -> None:
        """STLS, then CAPA again over TLS. `unverified`: this is the second connection under
        `no sslcertck`, the first having shown that the certificate does not verify."""
        required = self.tls_mode is tls.TlsMode.STARTTLS
        if not required and "STLS" not in self.capabilities:
            return
        # When TLS is required, send STLS even if CAPA did not offer it (fetchmail >= 6.3.19): a
        # man in the middle who strips STLS from CAPA then gains nothing.
        checking = None if unverified is not None else self._checking_context()
        context = checking or self._tls_context()
        reply = self._command("STLS")
        if not reply.ok:
            if required:
                raise TLSError(f"{self.label}: upgrade to TLS failed.{self._plugin_tls_hint()}")
            return  # opportunistic: the server said no; the connection is still usable
        conn = self._require_connection()
        if _read_ahead(conn):
            # Bytes after "+OK" but before the handshake cannot come from an honest server: a
            # man in the middle is injecting plaintext to be read as if it came over TLS.
            self.close()
            raise TLSError(f"{self.label}: upgrade to TLS failed: data injected before TLS")
        try:
            tls_sock = context.wrap_socket(conn.sock, server_hostname=self.host)
        except TLSError as err:
            self.close()
            raise TLSError(f"{self.label}: upgrade to TLS failed: {err}") from err
        except TimeoutError as err:
            self.close()
            raise self._timeout_error(None) from err  # fetchmail: "timeout after N seconds."
        except OSError as err:  # ssl.SSLError included
            self.close()
            if checking is not None and isinstance(err, ssl.SSLCertVerificationError):
                # `no sslcertck`: fetchmail goes on with a warning. The failed handshake left
                # this connection unusable, so the session starts again without the check.
                self._open(port, None)
                self._probe_capabilities()
                self._starttls(port, unverified=err)
                return
            if required:
                reason = (
                    tls.describe_handshake_error(err, self.label)
                    if isinstance(err, ssl.SSLError)
                    else (err.strerror or str(err))
                )
                message = f"{self.label}: upgrade to TLS failed: {reason}"
                raise self._tls_failure(message, err, port) from err
            # Opportunistic: the failed handshake left the connection unusable. fetchmail then
            # repolls with STARTTLS off; so do we, once, in this call.
            self._open(port, None)
            self._probe_capabilities()
            return
        old_file = conn.file
        conn.sock = tls_sock
        conn.file = reader_of(tls_sock)
        with contextlib.suppress(OSError):
            old_file.close()
        self.tls_active = True
        if unverified is not None:
            tls.warn_unverified(unverified, self.label)  # before any credential goes out
        trace.note(f"{self.label}: upgrade to TLS succeeded.")
        # RFC 2595: forget what was said in plaintext, an attacker may have edited it.
        self._probe_capabilities()

    def _ask_for_tls(self, sock: socket.socket, deadline: float) -> bool:
        if not read_line(sock, deadline).startswith(b"+OK"):
            return False
        sock.sendall(b"STLS\r\n")
        return read_line(sock, deadline).startswith(b"+OK")

    def _probe_capabilities(self) -> None:
        self.capabilities = {}
        reply = self._command("CAPA")
        self.capa_supported = reply.ok
        if not reply.ok:
            return  # an RFC 1939 server without CAPA: nothing is offered
        for line in self._read_listing(max_lines=MAX_CAPA_LINES):
            words = line.split()
            if words:
                self.capabilities[words[0].upper()] = tuple(words[1:])

    def _sasl_mechanisms(self) -> set[str]:
        return {m.upper() for m in self.capabilities.get("SASL", ())}

    def _top_usable(self) -> bool:
        if FORCE_RETR_ENV in os.environ:
            return False
        # TOP is optional (RFC 1939). Without CAPA we cannot know, so we try it, as fetchmail.
        return not self.capa_supported or "TOP" in self.capabilities

    # -- authentication --------------------------------------------------------------------

    def _password(self) -> str:
        if self.user.password is None:
            raise CredentialsError(f"no password for {self.user.remote}@{self.label}")
        return self.user.password

    def _user_pass(self) -> None:
        password = self._password()
        self._auth_step(f"USER {self.user.remote}")
        self._auth_step(f"PASS {password}", password)

    def _user_disabled(self) -> bool:
        return self.capa_supported and "USER" not in self.capabilities

    def _plain(self) -> None:
        """AUTH PLAIN with the initial response (RFC 5034): one round trip, secret redacted."""
        password = self._password()
        token = base64.b64encode(f"\0{self.user.remote}\0{password}".encode()).decode("ascii")
        self._auth_step(f"AUTH PLAIN {token}", password, token)

    def _apop(self) -> None:
        password = self._password()
        stamp = apop_timestamp(self.greeting)
        digest = hashlib.md5((stamp + password).encode("utf-8")).hexdigest()
        # The digest is as good as the password to an offline guesser: keep it out of the trace.
        self._auth_step(f"APOP {self.user.remote} {digest}", password, digest)

    def _cram_md5(self, *, may_fall_back: bool) -> bool:
        """AUTH CRAM-MD5 (RFC 2195). False when refused and another method may be tried."""
        password = self._password()
        reply = self._command("AUTH CRAM-MD5")
        if reply.ok:
            raise ProtocolError(f"{self.label}: AUTH CRAM-MD5 accepted without a challenge")
        if not reply.line.startswith("+"):
            return self._auth_refused(reply, may_fall_back)
        try:
            challenge = base64.b64decode(reply.line[1:].strip(), validate=True)
        except (binascii.Error, ValueError):
            self._send("*")  # RFC 5034: cancel the exchange, then read its -ERR
            return self._auth_refused(self._read_status(), may_fall_back)
        mac = hmac.new(password.encode("utf-8"), challenge, hashlib.md5).hexdigest()
        answer = base64.b64encode(f"{self.user.remote} {mac}".encode()).decode("ascii")
        self._send(answer, answer, mac)  # the HMAC is as good as the password to a guesser
        final = self._read_status()
        if final.ok:
            return True
        return self._auth_refused(final, may_fall_back)

    def _oauth(self, mechanism: str) -> None:
        """AUTH XOAUTH2 or OAUTHBEARER with the bearer token in `password`, over TLS only."""
        account = f"{self.user.remote}@{self.label}"
        if not self.tls_active:
            raise TLSError(
                f"{self.label}: refusing to send the OAuth2 token of {account} over an "
                "unencrypted connection; use ssl or sslproto"
            )
        if mechanism not in self._sasl_mechanisms():
            raise AuthenticationError(
                f"{self.label}: the server does not offer SASL {mechanism} "
                f"(auth {mechanism.lower()} for {account})"
            )
        token = self._password()
        port = self.port if self.port is not None else self._resolve_port()
        raw = oauth_response(mechanism, self.user.remote, token, self.host, port)
        blob = base64.b64encode(raw).decode("ascii")
        command = f"AUTH {mechanism} {blob}"
        if len(command) + 2 <= MAX_AUTH_LINE:
            reply = self._command(command, blob, token)
        else:
            reply = self._command(f"AUTH {mechanism}")
            if reply.ok:
                raise ProtocolError(f"{self.label}: AUTH {mechanism} accepted without a response")
            if reply.line.startswith("+"):
                self._send(blob, blob, token)
                reply = self._read_status(blob, token)
        status: str | None = None
        if not reply.ok and reply.line.startswith("+"):
            # RFC 7628 3.2.2: an error challenge; the client answers with an empty response and
            # the server then fails the exchange.
            try:
                status = oauth_error_status(base64.b64decode(reply.text, validate=True))
            except (binascii.Error, ValueError):
                status = None
            if status is not None:
                status = self._shown(status)  # the server chose it: it may be an echo
            self._send("")
            reply = self._read_status(blob, token)
        if reply.ok:
            return
        error = self._refusal(reply.text, stage="auth")
        if isinstance(error, AuthenticationError):
            raise AuthenticationError(
                oauth_refused(self.label, account, mechanism, self._shown(reply.text), status)
            )
        raise error

    def _auth_refused(self, reply: Reply, may_fall_back: bool) -> bool:
        error = self._refusal(reply.text, stage="auth")
        if may_fall_back and isinstance(error, AuthenticationError):
            return False
        raise error

    def _auth_step(self, command: str, *secrets: str) -> None:
        reply = self._command(command, *secrets)
        if not reply.ok:
            raise self._refusal(reply.text, stage="auth")

    def _refusal(self, text: str, *, stage: str) -> RemoteError:
        """The error for an -ERR before we are logged in, by fetchmail's reading of its text."""
        text = self._shown(text)
        if _is_lock_busy(text):
            return LockBusyError(f"{self.label}: lock busy! Is another session active? ({text})")
        if _is_server_busy(text):
            return RemoteError(f"{self.label}: server busy: {text}", ExitCode.SERVBUSY)
        if stage == "greeting":
            return ProtocolError(f"{self.label}: the server refused the connection: {text}")
        return AuthenticationError(f"{self.label}: {text or 'authentication refused'}")

    # -- listings ----------------------------------------------------------------------------

    def _uid_listing(self, count: int) -> dict[int, str]:
        if self.capa_supported and "UIDL" not in self.capabilities:
            return {}
        reply = self._command("UIDL")
        if not reply.ok:
            return {}  # UIDL is optional (RFC 1939): the listing just has no UIDs
        uids: dict[int, str] = {}
        for line in self._read_listing(max_lines=count):
            parts = line.split()
            number = _number(parts[0]) if len(parts) == 2 else None
            if number is None:
                raise ProtocolError(f"{self.label}: bogus UIDL line {self._shown(line)!r}")
            uid = parts[1]
            if not 1 <= number <= count or number in uids:
                raise ProtocolError(
                    f"{self.label}: bogus UIDL line {self._shown(line)!r} for {count} messages"
                )
            if len(uid) > MAX_UID or not uid.isascii() or not uid.isprintable():
                raise ProtocolError(
                    f"{self.label}: unusable UID in UIDL line {self._shown(line)[:80]!r}"
                )
            uids[number] = uid
        return uids

    def _parse_counts(self, text: str, what: str) -> tuple[int, int]:
        # Both numbers must be plain non-negative decimals: a negative or huge message number is
        # how CVE-2001-1009 and CVE-2002-0146 started.
        parts = text.split()
        numbers = [_number(part) for part in parts[:2]]
        if len(parts) < 2 or numbers[0] is None or numbers[1] is None:
            raise ProtocolError(f"{self.label}: bogus {what} reply {self._shown(text)!r}")
        return numbers[0], numbers[1]

    def _read_listing(self, *, max_lines: int) -> list[str]:
        """The lines of a multi-line reply after +OK, each traced, up to the final '.'."""
        lines: list[str] = []
        while True:
            raw = self._read_line(MAX_REPLY_LINE, what="listing")
            line = raw.decode("utf-8", "replace")
            if trace.enabled():  # a listing may have many thousands of lines
                trace.received(PROTO, self._shown(line))
            if raw == b".":
                return lines
            if len(lines) >= max_lines:
                raise ProtocolError(
                    f"{self.label}: more listing lines than the {max_lines} expected"
                )
            lines.append(line[1:] if raw.startswith(b".") else line)

    # -- the wire ----------------------------------------------------------------------------

    def _require_connection(self) -> poplib.POP3:
        if self._conn is None:
            raise RuntimeError("Pop3Driver used while not connected")
        return self._conn

    def _check_number(self, number: int) -> None:
        if number < 1:
            raise ValueError(f"message numbers start at 1, not {number}")

    def _command(self, command: str, *secrets: str) -> Reply:
        self._send(command, *secrets)
        return self._read_status(*secrets)

    def _expect_ok(self, command: str) -> Reply:
        reply = self._command(command)
        if not reply.ok:
            raise ProtocolError(f"{self.label}: {command} failed: {self._shown_reply(reply)}")
        return reply

    def _send(self, line: str, *secrets: str) -> None:
        if any(c in line for c in _FORBIDDEN_IN_COMMANDS):
            # A line break in a user name or password would let it inject a second command.
            raise ConfigError(
                f"{self.label}: refusing to send a command with a line break or NUL in it: "
                + trace.redact(line.split(" ", 1)[0], *secrets)
            )
        conn = self._require_connection()
        self._secrets.add(*secrets)  # before it goes out: the reply may echo it
        if trace.enabled():
            trace.sent(PROTO, self._shown(line))
        with self._wire():
            conn.sock.sendall(line.encode("utf-8") + b"\r\n")

    def _send_all(self, lines: list[str]) -> None:
        """Several commands in one write (pipelined), each traced; no secret goes this way."""
        conn = self._require_connection()
        for line in lines:
            if any(c in line for c in _FORBIDDEN_IN_COMMANDS):
                raise ConfigError(f"{self.label}: refusing to send a line break or NUL")
            if trace.enabled():
                trace.sent(PROTO, self._shown(line))
        with self._wire():
            conn.sock.sendall("".join(line + "\r\n" for line in lines).encode("utf-8"))

    def _read_status(self, *secrets: str) -> Reply:
        self._secrets.add(*secrets)
        raw = self._read_line(MAX_REPLY_LINE, what="reply")
        line = raw.decode("utf-8", "replace")
        if trace.enabled():
            trace.received(PROTO, self._shown(line))
        for word, ok in (("+OK", True), ("-ERR", False)):
            if line.startswith(word) and (len(line) == len(word) or not line[len(word)].isalpha()):
                return Reply(ok, line[len(word) :].strip(), line)
        if line.startswith("+"):
            return Reply(False, line[1:].strip(), line)  # a SASL continuation ("+ base64")
        self._abort()
        raise ProtocolError(f"{self.label}: unexpected reply {self._shown(line)[:80]!r}")

    def _copy_text(self, out: BinaryIO, hold: int, *, what: str) -> int:
        """Copy a multi-line reply to `out` up to its terminating `.` line: dot-stuffing
        undone (RFC 1939 section 3), every line ended by CRLF (a bare LF is tolerated).
        Returns the octets written.

        A line may be of any length: once `hold` octets of a line whose end has not arrived
        are in, they are written on, so memory does not grow with the line. A line held back
        that way is written as the same octets, in pieces (see _write_part).

        It works a block at a time on what the connection has buffered, with bytes
        operations: a 100 MB message has 1.4 million lines, and a Python step per line cost
        more than the transfer. Nothing after the terminator is consumed."""
        # poplib's makefile("rb"): a BufferedReader, whose peek() shows what is buffered
        reader = cast(io.BufferedReader, self._require_connection().file)
        hold = max(hold, 3)  # a line start of 3 octets without LF can no longer be ". CRLF"
        pending = bytearray()  # the part of a line not written yet; its LF has not arrived
        continued = False  # pending is the rest of a line whose start was written already
        written = 0
        # A spool that can tell SMTP-ready text from the rest (fetcher/spool.py) is told.
        write_plain: Callable[[bytes], object] = getattr(out, "write_plain", out.write)
        while True:
            with self._wire(None):
                block = reader.peek(1)  # all that is buffered, or one read's worth
            if not block:
                raise self._cut_short(what)
            if b"\n" not in block:  # the middle of a long line
                with self._wire(None):
                    pending += reader.read(len(block))
                if len(pending) >= hold:
                    written += _write_part(out, pending, line_start=not continued)
                    continued = True
                continue
            data = bytes(pending) + block
            text = b""
            start = 0  # where the first line that starts in `data` starts
            if continued:
                # The end of a line written on in part: nothing in it starts a line.
                start = data.index(b"\n") + 1
                text = _line_end(data[:start])
                continued = False
            block_lines = data[start:] if start else data
            # CRLF throughout, as RFC 1939 has it, makes both steps one search shorter
            lf_count = block_lines.count(b"\n")
            crlf = lf_count == block_lines.count(b"\r\n")
            # The usual block: neither the terminator nor a stuffed dot is in it, so its whole
            # lines are the message's text as they stand, and SMTP DATA too when no CR stands
            # alone (the listener's side then sends them on unsearched).
            usual = crlf and not text and _undotted(block_lines)
            end, end_length = (-1, 0) if usual else _terminator(block_lines, crlf=crlf)
            if end >= 0:
                lines, rest, used = block_lines[:end], b"", start + end + end_length
            else:
                cut = block_lines.rfind(b"\n") + 1
                lines, rest, used = block_lines[:cut], block_lines[cut:], len(data)
            with self._wire(None):
                # the whole block, or only up to the end of the terminator line
                reader.read(used - len(pending))
            text = lines if usual else text + _unstuff(lines, crlf=crlf)
            if text:
                plain = usual and text.count(b"\r") == lf_count
                (write_plain if plain else out.write)(text)
                written += len(text)
            if end >= 0:
                return written
            pending = bytearray(rest)
            if len(pending) >= hold:
                written += _write_part(out, pending, line_start=True)
                continued = True

    def _read_line(self, limit: int, *, what: str) -> bytes:
        """One line without its CRLF (a bare LF is tolerated), of at most `limit` octets."""
        conn = self._require_connection()
        with self._wire():
            raw = conn.file.readline(limit + 2)
        if raw.endswith(b"\r\n"):
            return raw[:-2]
        if raw.endswith(b"\n"):
            return raw[:-1]
        if len(raw) >= limit + 2:
            raise self._too_long(what, limit)
        raise self._cut_short(what)

    def _too_long(self, what: str, limit: int) -> ProtocolError:
        """A line over the limit: the dialogue is out of step, so the connection goes."""
        self._abort()
        return ProtocolError(f"{self.label}: {what} line longer than {limit} octets")

    def _cut_short(self, what: str) -> ServerConnectionError:
        """The server closed the connection in the middle of a reply."""
        self._abort()
        return ServerConnectionError(
            f"connection to {self._where(self.port)} lost: the server closed it during the "
            f"{what}{self._lost_note()}"
        )

    def _shown(self, text: str) -> str:
        """Text as an error or a trace line may show it: every secret we sent on this connection
        cut out, since a server may echo any of it in any reply. Only what is shown is cut: what
        is parsed (sizes, UIDs) stays as the server sent it, a password of "1234" included."""
        return self._secrets.redact(text)

    def _shown_reply(self, reply: Reply) -> str:
        return self._shown(reply.text or reply.line)

    @contextlib.contextmanager
    def _wire(self, waiting: Literal["server"] | None = "server") -> Iterator[None]:
        """Socket failures as the driver's errors; the connection is dropped first. `waiting`
        words a timeout: None while a message's text comes (see Endpoint._timeout_error)."""
        try:
            yield
        except TimeoutError as err:
            self._abort()
            raise self._timeout_error(waiting) from err
        except OSError as err:
            self._abort()
            raise self._lost(err) from err

    def _abort(self) -> None:
        # After a timeout, a dropped line or garbage the dialogue is out of step: nothing more
        # can be sent on this connection, and QUIT must not run (it would expunge).
        self.close()

    def _lost(self, err: OSError) -> ServerConnectionError:
        reason = err.strerror or str(err) or type(err).__name__
        return ServerConnectionError(
            f"connection to {self._where(self.port)} lost: {reason}{self._lost_note()}"
        )


# A message number or size never has more digits than this (a billion terabytes); a server
# that sends a longer one is lying, and Python would refuse to read one of over 4300 digits.
MAX_DIGITS = 18


def _number(text: str) -> int | None:
    """A plain non-negative decimal of at most MAX_DIGITS ASCII digits; None for anything else."""
    if not text or len(text) > MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _terminator(data: bytes, *, crlf: bool = False) -> tuple[int, int]:
    """Where the `.` line that ends a multi-line reply starts in `data` (which starts a line),
    and its length with its line end; (-1, 0) if it is not there. `crlf`: every LF in `data`
    follows a CR, so only `CRLF . CRLF` can end it (one search for a pattern five long)."""
    if data.startswith(b".\r\n"):
        return 0, 3
    if data.startswith(b".\n"):
        return 0, 2
    if crlf:
        at = data.find(b"\r\n.\r\n")
        return (at + 2, 3) if at >= 0 else (-1, 0)
    marked = b"\n" + data
    found = [
        (at, len(term) - 1)
        for term in (b"\n.\r\n", b"\n.\n")
        if (at := marked.find(term)) >= 0
    ]
    return min(found) if found else (-1, 0)


def _undotted(lines: bytes) -> bool:
    """Whether no line that starts in `lines` (CRLF lines, the first starting at its start)
    starts with a dot: then neither the terminator nor any stuffing is in it."""
    return not lines.startswith(b".") and lines.find(b"\r\n.") < 0


def _write_part(out: BinaryIO, pending: bytearray, *, line_start: bool) -> int:
    """Write on what is held of a line whose LF has not arrived (3 octets or more), and empty
    `pending` of it. At the start of a line a stuffed dot is removed. A final CR stays held: it
    may be the first half of the CRLF that ends the line. Returns the octets written."""
    keep = 1 if pending.endswith(b"\r") else 0
    part = bytes(pending[: len(pending) - keep])
    del pending[: len(pending) - keep]
    if line_start and part.startswith(b"."):
        part = part[1:]
    out.write(part)
    return len(part)


def _line_end(piece: bytes) -> bytes:
    """The rest of a line, up to and with its LF, ended by CRLF."""
    body = piece[:-2] if piece.endswith(b"\r\n") else piece[:-1]
    return body + b"\r\n"


def _unstuff(lines: bytes, *, crlf: bool = False) -> bytes:
    """Whole lines of a multi-line reply as the message holds them: a dot that starts a line
    is removed (the server doubled it), and every line ends with CRLF. `crlf`: they do
    already."""
    if crlf:
        text = lines.replace(b"\r\n.", b"\r\n")
        return text[1:] if text.startswith(b".") else text
    text = (b"\n" + lines.replace(b"\r\n", b"\n")).replace(b"\n.", b"\n")[1:]
    return text.replace(b"\n", b"\r\n")

