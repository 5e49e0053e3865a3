"""A scripted POP3 server on a real 127.0.0.1 socket, one thread per connection.

It speaks enough RFC 1939/2449/2595 for the driver (CAPA, STLS, USER/PASS, APOP,
AUTH CRAM-MD5, AUTH PLAIN, STAT, LIST, UIDL, TOP, RETR, DELE, NOOP, RSET, QUIT). Its value
is in what a real server will not do on request:

- advertise STLS or strip it (`advertise_stls`), and accept or refuse it (`tls_context`);
- inject plaintext after "+OK" to STLS (`inject_after_stls`);
- answer any command with a canned line (`replies`, e.g. lock busy) or not at all (`silent`);
- drop the connection part-way through a RETR (`drop_in_retr_after`), or stop sending there and
  keep it open (`stall_in_retr_after`);
- send a RETR reply in pieces, pausing between them (`split_retr_at`: offsets into the
  dot-stuffed text after the +OK line), so that the client reads a line start, a stuffed dot
  or the terminator in two reads;
- answer an authentication step with `-ERR` and the line it received (`echo_auth`: USER, PASS,
  APOP, AUTH, or RESPONSE for the client's answer after a "+" continuation), or send an OAuth2
  error challenge whose `status` is the token the client sent (CHALLENGE);
- greet with an APOP timestamp (`apop_stamp`);
- take AUTH XOAUTH2 and OAUTHBEARER (`oauth_token`, offered when `capabilities` has a SASL line
  naming them), with or without an initial response: the decoded client response must be
  exactly the SASL string for the user and token (kept in `sasl_received`), or the server sends
  an RFC 7628 error challenge, reads the client's answer and says -ERR.

Everything every session received is kept in `received`, with whether it came over TLS, so a
test can assert that no USER or PASS was ever sent in the clear.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

HOST = "127.0.0.1"
SILENT_GREETING = "GREETING"  # in `silent`: accept the connection, never greet
SILENT_HANDSHAKE = "HANDSHAKE"  # in `silent`: "+OK" to STLS, then never start TLS
ECHO_RESPONSE = "RESPONSE"  # in `echo_auth`: the client's answer after a "+" continuation
ECHO_CHALLENGE = "CHALLENGE"  # in `echo_auth`: the OAuth2 error challenge's status is the token
SPLIT_PAUSE = 0.1  # seconds between the pieces of a split RETR reply
OAUTH_ERROR = {"status": "400", "schemes": "bearer", "scope": "mail"}


def oauth_string(mechanism: str, user: str, token: str, port: int) -> str:
    """The client response a correct XOAUTH2 or OAUTHBEARER client sends, before base64."""
    if mechanism == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01"
    return f"n,a={user},\x01host={HOST}\x01port={port}\x01auth=Bearer {token}\x01\x01"


@dataclass(frozen=True)
class Received:
    command: str  # the line as received, password included: tests check what went out
    tls: bool  # whether it came over TLS

    @property
    def verb(self) -> str:
        return self.command.split(" ", 1)[0].upper()


class _Session:
    """The state of one client connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile: BinaryIO = sock.makefile("rb")
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.user: str | None = None
        self.authenticated = False
        self.deleted: set[int] = set()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self, text: str) -> None:
        self.send(text.encode("utf-8") + b"\r\n")

    def upgrade(self, context: ssl.SSLContext) -> None:
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.rfile = self.sock.makefile("rb")
        self.tls = True


class FakePop3Server:
    """Start with `with FakePop3Server(...) as server:`; connect to `server.port`."""

    def __init__(
        self,
        *,
        messages: Iterable[bytes] = (),
        uids: Iterable[str] | None = None,
        user: str = "bob",
        password: str = "secret",
        greeting: str = "+OK fake POP3 server ready",
        apop_stamp: str | None = None,
        capa: bool = True,
        capabilities: Iterable[str] = ("TOP", "UIDL", "USER", "RESP-CODES"),
        advertise_stls: bool | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        cram_md5: bool = False,
        replies: Mapping[str, str] | None = None,
        silent: Iterable[str] = (),
        drop_in_retr_after: int | None = None,
        stall_in_retr_after: int | None = None,
        split_retr_at: Iterable[int] = (),
        echo_auth: Iterable[str] = (),
        inject_after_stls: bytes = b"",
        oauth_token: str | None = None,
    ) -> None:
        self.oauth_token = oauth_token
        self.sasl_received: list[str] = []  # decoded XOAUTH2/OAUTHBEARER client responses
        self.messages: list[bytes] = list(messages)
        self.uids: list[str] | None = list(uids) if uids is not None else None
        if self.uids is not None and len(self.uids) != len(self.messages):
            raise ValueError("one UID per message")
        self.user = user
        self.password = password
        self.greeting = greeting if apop_stamp is None else f"{greeting} {apop_stamp}"
        self.apop_stamp = apop_stamp
        self.capa = capa
        self.capabilities = list(capabilities)
        self.advertise_stls = tls_context is not None if advertise_stls is None else advertise_stls
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.cram_md5 = cram_md5
        self.replies = {k.upper(): v for k, v in (replies or {}).items()}
        self.silent = {s.upper() for s in silent}
        self.drop_in_retr_after = drop_in_retr_after
        self.stall_in_retr_after = stall_in_retr_after
        self.split_retr_at = sorted(split_retr_at)
        self.echo_auth = {v.upper() for v in echo_auth}
        self.inject_after_stls = inject_after_stls
        if implicit_tls and tls_context is None:
            raise ValueError("implicit TLS needs a tls_context")

        self.received: list[Received] = []
        self.sessions = 0
        self.errors: list[BaseException] = []  # server-side surprises, for debugging a test
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._clients: list[socket.socket] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakePop3Server:
        self._listener.listen(8)
        thread = threading.Thread(target=self._accept_loop, name="fake-pop3-accept", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        # shutdown() wakes the thread blocked in accept(); close() alone would not on Linux.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for sock in clients:
            # shutdown() wakes a thread blocked in recv(); close() alone would not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakePop3Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests look at ----------------------------------------------------------------

    @property
    def commands(self) -> list[str]:
        with self._lock:
            return [r.command for r in self.received]

    @property
    def verbs(self) -> list[str]:
        with self._lock:
            return [r.verb for r in self.received]

    def remaining(self) -> list[bytes]:
        """The messages still in the mailbox (deletions take effect at QUIT)."""
        return list(self.messages)

    # -- the server --------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.sessions += 1
                self._clients.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.implicit_tls:
                assert self.tls_context is not None
                sock = self.tls_context.wrap_socket(sock, server_side=True)
                with self._lock:
                    self._clients.append(sock)
            session = _Session(sock)
            if SILENT_GREETING in self.silent:
                self._stopping.wait()
                return
            session.line(self.greeting)
            while not self._stopping.is_set():
                raw = session.rfile.readline(65536)
                if not raw:
                    return
                command = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                with self._lock:
                    self.received.append(Received(command, session.tls))
                if not self._dispatch(session, command):
                    return
        except (OSError, ValueError):
            pass  # the client went away or the test stopped us: both are normal here
        except BaseException as err:  # a bug in the fake: keep it for the test to see
            self.errors.append(err)
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _dispatch(self, s: _Session, command: str) -> bool:
        """Answer one command; False ends the session."""
        verb, _, arg = command.partition(" ")
        verb = verb.upper()
        if verb in self.silent:
            self._stopping.wait()
            return False
        if verb in self.echo_auth:
            s.line(f"-ERR {command}")
            return True
        if verb in self.replies:
            s.line(self.replies[verb])
            return verb != "QUIT"
        handler = getattr(self, f"_cmd_{verb.lower()}", None)
        if handler is None:
            s.line("-ERR unknown command")
            return True
        if verb in _TRANSACTION and not s.authenticated:
            s.line("-ERR not logged in")
            return True
        result: bool = handler(s, arg)
        return result

    def _cmd_capa(self, s: _Session, arg: str) -> bool:
        if not self.capa:
            s.line("-ERR unknown command")
            return True
        lines = ["+OK Capability list follows", *self.capabilities]
        if self.advertise_stls and not s.tls and not s.authenticated:
            lines.append("STLS")
        if self.cram_md5:
            lines.append("SASL CRAM-MD5")
        lines.append(".")
        s.send("".join(f"{line}\r\n" for line in lines).encode())
        return True

    def _cmd_stls(self, s: _Session, arg: str) -> bool:
        if self.tls_context is None or s.tls or s.authenticated:
            s.line("-ERR STLS not available")
            return True
        s.send(b"+OK Begin TLS negotiation now\r\n" + self.inject_after_stls)
        if SILENT_HANDSHAKE in self.silent:
            self._stopping.wait()
            return False
        try:
            s.upgrade(self.tls_context)
        except (OSError, ValueError):
            return False  # the client refused our certificate, as it should if told to
        with self._lock:
            self._clients.append(s.sock)
        return True

    def _cmd_user(self, s: _Session, arg: str) -> bool:
        s.user = arg
        s.line("+OK")
        return True

    def _cmd_pass(self, s: _Session, arg: str) -> bool:
        if s.user == self.user and arg == self.password:
            return self._logged_in(s)
        s.line("-ERR [AUTH] Authentication failed.")
        return True

    def _cmd_apop(self, s: _Session, arg: str) -> bool:
        name, _, digest = arg.partition(" ")
        if self.apop_stamp is not None:
            good = hashlib.md5((self.apop_stamp + self.password).encode()).hexdigest()
            if name == self.user and hmac.compare_digest(digest, good):
                return self._logged_in(s)
        s.line("-ERR [AUTH] Authentication failed.")
        return True

    def _cmd_auth(self, s: _Session, arg: str) -> bool:
        mechanism, _, initial = arg.partition(" ")
        if mechanism.upper() in ("XOAUTH2", "OAUTHBEARER") and self.oauth_token is not None:
            return self._oauth(s, mechanism.upper(), initial)
        if mechanism.upper() == "PLAIN" and "SASL PLAIN" in self.capabilities:
            try:
                _authzid, name, password = base64.b64decode(initial).decode().split("\0")
            except ValueError:
                s.line("-ERR bad response")
                return True
            if name == self.user and hmac.compare_digest(password, self.password):
                return self._logged_in(s)
            s.line("-ERR [AUTH] Authentication failed.")
            return True
        if arg.upper() != "CRAM-MD5" or not self.cram_md5:
            s.line("-ERR unsupported mechanism")
            return True
        challenge = b"<4711.1234@fake.example>"
        s.line("+ " + base64.b64encode(challenge).decode())
        answer = self._read_answer(s)
        if ECHO_RESPONSE in self.echo_auth:
            s.line(f"-ERR {answer}")
            return True
        try:
            name, mac = base64.b64decode(answer).decode().split(" ", 1)
        except ValueError:
            s.line("-ERR bad response")
            return True
        good = hmac.new(self.password.encode(), challenge, hashlib.md5).hexdigest()
        if name == self.user and hmac.compare_digest(mac, good):
            return self._logged_in(s)
        s.line("-ERR [AUTH] Authentication failed.")
        return True

    def _offered(self, mechanism: str) -> bool:
        return any(
            c.split()[0].upper() == "SASL" and mechanism in c.upper().split()[1:]
            for c in self.capabilities
            if c.strip()
        )

    def _read_answer(self, s: _Session) -> str:
        answer = s.rfile.readline(65536).rstrip(b"\r\n").decode("utf-8", "replace")
        with self._lock:
            self.received.append(Received(answer, s.tls))
        return answer

    def _oauth(self, s: _Session, mechanism: str, initial: str) -> bool:
        assert self.oauth_token is not None
        if not self._offered(mechanism):
            s.line("-ERR unsupported mechanism")
            return True
        if not initial:
            s.line("+ ")
            initial = self._read_answer(s)
            if ECHO_RESPONSE in self.echo_auth:
                s.line(f"-ERR {initial}")
                return True
        try:
            decoded = base64.b64decode(initial, validate=True).decode("utf-8", "replace")
        except ValueError:
            s.line("-ERR bad response")
            return True
        with self._lock:
            self.sasl_received.append(decoded)
        if decoded == oauth_string(mechanism, self.user, self.oauth_token, self.port):
            return self._logged_in(s)
        error = dict(OAUTH_ERROR)
        if ECHO_CHALLENGE in self.echo_auth:
            error["status"] = decoded.partition("auth=Bearer ")[2].partition("\x01")[0]
        s.line("+ " + base64.b64encode(json.dumps(error).encode()).decode())
        if self._read_answer(s):
            s.line("-ERR expected an empty response to the error challenge")
            return True
        s.line("-ERR [AUTH] Authentication failed.")
        return True

    def _logged_in(self, s: _Session) -> bool:
        s.authenticated = True
        s.line("+OK Logged in.")
        return True

    def _live(self, s: _Session) -> list[int]:
        return [n for n in range(1, len(self.messages) + 1) if n not in s.deleted]

    def _message(self, s: _Session, arg: str) -> int | None:
        try:
            number = int(arg.split()[0])
        except (ValueError, IndexError):
            s.line("-ERR bad message number")
            return None
        if number not in self._live(s):
            s.line("-ERR no such message")
            return None
        return number

    def _cmd_stat(self, s: _Session, arg: str) -> bool:
        live = self._live(s)
        s.line(f"+OK {len(live)} {sum(len(self.messages[n - 1]) for n in live)}")
        return True

    def _cmd_list(self, s: _Session, arg: str) -> bool:
        if arg.strip():  # "LIST n", as fetchmail sends it: one line (RFC 1939)
            number = self._message(s, arg)
            if number is not None:
                s.line(f"+OK {number} {len(self.messages[number - 1])}")
            return True
        live = self._live(s)
        lines = [f"+OK {len(live)} messages"]
        lines += [f"{n} {len(self.messages[n - 1])}" for n in live]
        s.send("".join(f"{line}\r\n" for line in [*lines, "."]).encode())
        return True

    def _cmd_uidl(self, s: _Session, arg: str) -> bool:
        if self.uids is None:
            s.line("-ERR unknown command")
            return True
        lines = ["+OK", *(f"{n} {self.uids[n - 1]}" for n in self._live(s)), "."]
        s.send("".join(f"{line}\r\n" for line in lines).encode())
        return True

    def _cmd_retr(self, s: _Session, arg: str) -> bool:
        number = self._message(s, arg)
        if number is None:
            return True
        data = self.messages[number - 1]
        return self._send_message(s, number, data)

    def _cmd_top(self, s: _Session, arg: str) -> bool:
        number = self._message(s, arg)
        if number is None:
            return True
        try:
            count = int(arg.split()[1])
        except (ValueError, IndexError):
            s.line("-ERR bad line count")
            return True
        data = self.messages[number - 1]
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:  # the header, the blank line, then at most `count` body lines
            data = head + sep + b"\r\n".join(body.split(b"\r\n")[:count])
        return self._send_message(s, number, data)

    def _send_message(self, s: _Session, number: int, data: bytes) -> bool:
        lines = data.split(b"\r\n")
        if lines and lines[-1] == b"":
            lines.pop()  # the CRLF that ends the last line
        stuffed = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
        payload = f"+OK {len(data)} octets\r\n".encode() + stuffed + b".\r\n"
        if self.drop_in_retr_after is not None:
            s.send(payload[: self.drop_in_retr_after])
            with contextlib.suppress(OSError):
                s.sock.shutdown(socket.SHUT_RDWR)
            return False
        if self.stall_in_retr_after is not None:
            s.send(payload[: self.stall_in_retr_after])
            self._stopping.wait()  # the connection stays open, and nothing more comes
            return False
        if self.split_retr_at:
            # Each piece goes out on its own and the client has time to read it before the
            # next is sent, so a read of the client's ends exactly at each offset.
            with contextlib.suppress(OSError):
                s.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            status = len(payload) - len(stuffed) - 3  # offsets count from after the +OK line
            start = 0
            for at in (status + at for at in self.split_retr_at):
                s.send(payload[start:at])
                start = at
                if self._stopping.wait(SPLIT_PAUSE):
                    return False
            s.send(payload[start:])
            return True
        s.send(payload)
        return True

    def _cmd_dele(self, s: _Session, arg: str) -> bool:
        number = self._message(s, arg)
        if number is not None:
            s.deleted.add(number)
            s.line(f"+OK message {number} deleted")
        return True

    def _cmd_noop(self, s: _Session, arg: str) -> bool:
        s.line("+OK")
        return True

    def _cmd_rset(self, s: _Session, arg: str) -> bool:
        s.deleted.clear()
        s.line("+OK")
        return True

    def _cmd_quit(self, s: _Session, arg: str) -> bool:
        if s.authenticated and s.deleted:
            with self._lock:
                keep = [n for n in range(1, len(self.messages) + 1) if n not in s.deleted]
                if self.uids is not None:
                    self.uids = [self.uids[n - 1] for n in keep]
                self.messages = [self.messages[n - 1] for n in keep]
        s.line("+OK Bye")
        return False


_TRANSACTION = frozenset({"STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "NOOP", "RSET"})
