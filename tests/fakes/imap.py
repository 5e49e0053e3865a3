"""A scripted IMAP server on 127.0.0.1 for what Dovecot will not do on request.

It greets with any line (`greeting`, e.g. PREAUTH), offers any CAPABILITY list, refuses
STARTTLS (`starttls_reply`), drops or ignores a command (`drop_on`, `silent_on`), can speak
implicit TLS (`tls_context`) and takes any AUTHENTICATE PLAIN (one continuation line). Every
line received is kept in `received`, so a test can assert that no credential was ever sent.

With `oauth_token`, AUTHENTICATE XOAUTH2 and OAUTHBEARER succeed only when the decoded client
response is exactly the SASL string for `oauth_user` and that token (kept in `sasl_received`);
otherwise the server sends an RFC 7628 error challenge, reads the client's answer and says NO.

With `messages`, it also holds a mailbox (UIDs 1, 2, ... in order, UIDVALIDITY `uidvalidity`)
that lives as long as the server, across connections: SELECT/EXAMINE, UID SEARCH, UID FETCH
(sizes and flags, or BODY.PEEK[]), UID STORE +FLAGS, EXPUNGE and UID EXPUNGE work on it, so a
test can assert what stayed (`mailbox`, `flags`, `expunged`). Faults for it: `drop_in_fetch_of_uid`
sends half of that message's text and closes the connection; `store_reply` answers every UID
STORE with that tagged reply (e.g. "NO [CANNOT] refused") and changes nothing; `bye_on` answers
that command (the word after any UID, e.g. "STORE") with an untagged BYE and closes.

With `concurrent`, each connection is served in a thread of its own (a watch and a poll at
once); `deliver()` adds a message, which NOOP then announces with `* n EXISTS`.

A hostile server, on demand:
- `spoof_uid`: every UID FETCH of that UID's text also gets an unsolicited FETCH response
  without a UID item, numbered as the UID (a sequence number the client may take for it),
  carrying `spoof_text`; `spoof_where` puts it "before" or "after" the real response, or
  "instead" of it. With `spoof_listing`, the size listing gets one too (`spoof_text`'s size,
  flagged \\Seen).
- `body_size_claim`: the literal of every message text announces that many octets; the text is
  padded with "X" up to it when that is under 64 MiB, else sent as it is, and the server then
  waits for the client's next line.
- `long_line_on`: that command is answered first with an untagged line of 2,000,000 octets.
- `echo_refusal`: LOGIN, and AUTHENTICATE after the client's response, are answered with this
  status ("NO" or "BAD") followed by the client's line, as a careless server echoes it.
- `challenge_again`: AUTHENTICATE sends the client's response back as a new challenge up to
  that many times (a server that never concludes), until the client cancels with "*".
- `challenge`: the text of AUTHENTICATE's first challenge (empty by default; e.g. not base64).
- `hung_up` is set when the client closes a connection.

UID FETCH of `BODY.PEEK[]<offset.length>` answers with that part of the text (`BODY[]<offset>`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import socket
import ssl
import threading
from types import TracebackType
from typing import BinaryIO

HOST = "127.0.0.1"
_PARTIAL = re.compile(r"BODY\.PEEK\[\]<(\d+)\.(\d+)>", re.IGNORECASE)
_PAD_LIMIT = 64 << 20  # octets: a larger claimed literal is announced, not sent
OAUTH_ERROR = {"status": "invalid_token", "schemes": "bearer", "scope": "mail"}


def oauth_string(mechanism: str, user: str, token: str, port: int) -> str:
    """The client response a correct XOAUTH2 or OAUTHBEARER client sends, before base64."""
    if mechanism == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01"
    return f"n,a={user},\x01host={HOST}\x01port={port}\x01auth=Bearer {token}\x01\x01"


class FakeImapServer:
    def __init__(
        self,
        *,
        greeting: str = "* OK fake IMAP ready",
        capabilities: str = "IMAP4rev1 STARTTLS AUTH=PLAIN",
        starttls_reply: str = "NO STARTTLS refused",
        tls_context: ssl.SSLContext | None = None,
        drop_on: str | None = None,
        silent_on: str | None = None,
        oauth_token: str | None = None,
        oauth_user: str = "bob",
        messages: list[bytes] | None = None,
        uidvalidity: int = 42,
        drop_in_fetch_of_uid: int | None = None,
        store_reply: str | None = None,
        bye_on: str | None = None,
        concurrent: bool = False,
        spoof_uid: int | None = None,
        spoof_where: str = "after",
        spoof_text: bytes = b"Subject: forged\r\n\r\nNot the message asked for.\r\n",
        spoof_listing: bool = False,
        body_size_claim: int | None = None,
        long_line_on: str | None = None,
        echo_refusal: str | None = None,
        challenge_again: int = 0,
        challenge: str = "",
    ) -> None:
        assert spoof_where in ("before", "after", "instead")
        self.spoof_uid = spoof_uid
        self.spoof_where = spoof_where
        self.spoof_text = spoof_text
        self.spoof_listing = spoof_listing
        self.body_size_claim = body_size_claim
        self.long_line_on = long_line_on
        self.echo_refusal = echo_refusal
        self.challenge_again = challenge_again
        self.challenge = challenge
        self.hung_up = threading.Event()
        self.concurrent = concurrent
        self._lock = threading.Lock()
        self.has_mailbox = messages is not None
        self.mailbox: dict[int, bytes] = dict(enumerate(messages or [], start=1))
        self.flags: dict[int, set[str]] = {uid: set() for uid in self.mailbox}
        self.expunged: list[int] = []
        self.uidvalidity = uidvalidity
        self.drop_in_fetch_of_uid = drop_in_fetch_of_uid
        self.store_reply = store_reply
        self.bye_on = bye_on
        self.oauth_token = oauth_token
        self.oauth_user = oauth_user
        self.sasl_received: list[str] = []  # decoded XOAUTH2/OAUTHBEARER client responses
        self.tls_context = tls_context
        self.drop_on = drop_on  # close the connection on receiving this command
        self.silent_on = silent_on  # never answer this command (the client must time out)
        self.greeting = greeting
        self.capabilities = capabilities
        self.starttls_reply = starttls_reply
        self.received: list[str] = []
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stop = threading.Event()

    def __enter__(self) -> FakeImapServer:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept(); close() does not
        self._listener.close()
        self._thread.join(5)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self.concurrent:
                threading.Thread(target=self._serve_one, args=(conn,), daemon=True).start()
            else:
                self._serve_one(conn)

    def _serve_one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self._session(conn)

    def deliver(self, data: bytes) -> None:
        """New mail: the next UID, unseen."""
        with self._lock:
            uid = max([*self.mailbox, *self.expunged, 0]) + 1
            self.mailbox[uid] = data
            self.flags[uid] = set()

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        if self.tls_context is not None:
            conn = self.tls_context.wrap_socket(conn, server_side=True)
        rfile = conn.makefile("rb")
        try:
            self._dialogue(conn, rfile)
        except (BrokenPipeError, ConnectionResetError):
            # the client hung up while we were still sending (a line or literal it refused)
            self.hung_up.set()
        finally:
            rfile.close()  # the socket's descriptor stays open while its file does
            conn.close()

    def _dialogue(self, conn: socket.socket, rfile: BinaryIO) -> None:
        conn.sendall(self.greeting.encode() + b"\r\n")
        announced = 0  # messages this connection was told of
        while True:
            try:
                raw = rfile.readline()
            except ConnectionResetError:  # a client closing with our data unread resets
                raw = b""
            if not raw:
                self.hung_up.set()
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.received.append(line)
            tag, _, rest = line.partition(" ")
            verb = rest.split(" ", 1)[0].upper()
            if verb == self.drop_on:
                return
            if verb == self.silent_on:
                self._stop.wait(5)
                return
            words = rest.split(" ")
            command = words[1].upper() if verb == "UID" and len(words) > 1 else verb
            if command == self.bye_on:
                conn.sendall(b"* BYE going away\r\n")
                return
            if command == self.long_line_on:
                conn.sendall(b"* OK " + b"x" * 2_000_000 + b"\r\n")
            if self.has_mailbox and command in _MAILBOX_COMMANDS:
                with self._lock:
                    mailbox_reply = self._mailbox(conn, tag, command, rest)
                    announced = len(self.mailbox)
                if mailbox_reply is None:
                    return  # dropped
                conn.sendall(mailbox_reply.encode())
                continue
            if verb == "NOOP" and self.has_mailbox:
                with self._lock:
                    news = len(self.mailbox) > announced
                    announced = len(self.mailbox)
                if news:
                    conn.sendall(f"* {announced} EXISTS\r\n* 1 RECENT\r\n".encode())
            if verb == "CAPABILITY":
                reply = f"* CAPABILITY {self.capabilities}\r\n{tag} OK done\r\n"
            elif verb == "STARTTLS":
                reply = f"{tag} {self.starttls_reply}\r\n"
            elif verb == "AUTHENTICATE" and self._is_oauth(rest):
                reply = self._oauth(conn, rfile, tag, rest.split()[1].upper())
            elif verb == "AUTHENTICATE":
                reply = self._authenticate(conn, rfile, tag)
            elif verb == "LOGIN" and self.echo_refusal is not None:
                reply = f"{tag} {self.echo_refusal} {line}\r\n"
            elif verb == "LOGOUT":
                conn.sendall(f"* BYE bye\r\n{tag} OK done\r\n".encode())
                return
            else:
                reply = f"{tag} OK done\r\n"
            conn.sendall(reply.encode())

    def _authenticate(self, conn: socket.socket, rfile: BinaryIO, tag: str) -> str:
        """Any mechanism: `challenge`, then `challenge_again` echoes of the answer."""
        conn.sendall(f"+ {self.challenge}\r\n".encode())
        for again in range(self.challenge_again, -1, -1):
            raw = rfile.readline()
            if not raw:
                return ""  # the client hung up: the next read says so
            answer = raw.decode("ascii", "replace").rstrip("\r\n")
            self.received.append(answer)
            if answer == "*":
                return f"{tag} BAD AUTHENTICATE cancelled\r\n"
            if again:
                conn.sendall(f"+ {answer}\r\n".encode())
        if self.echo_refusal is not None:
            return f"{tag} {self.echo_refusal} {answer}\r\n"
        return f"{tag} OK authenticated\r\n"

    def _is_oauth(self, rest: str) -> bool:
        words = rest.split()
        return (
            self.oauth_token is not None
            and len(words) == 2
            and words[1].upper() in ("XOAUTH2", "OAUTHBEARER")
        )

    def _oauth(self, conn: socket.socket, rfile: BinaryIO, tag: str, mechanism: str) -> str:
        assert self.oauth_token is not None
        conn.sendall(b"+ \r\n")
        answer = rfile.readline().decode("ascii", "replace").rstrip("\r\n")
        self.received.append(answer)
        try:
            decoded = base64.b64decode(answer, validate=True).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return f"{tag} BAD not base64\r\n"
        self.sasl_received.append(decoded)
        if decoded == oauth_string(mechanism, self.oauth_user, self.oauth_token, self.port):
            return f"{tag} OK authenticated\r\n"
        error = base64.b64encode(json.dumps(OAUTH_ERROR).encode()).decode()
        conn.sendall(f"+ {error}\r\n".encode())
        empty = rfile.readline().decode("ascii", "replace").rstrip("\r\n")
        self.received.append(empty)
        if empty:
            return f"{tag} BAD expected an empty response to the error challenge\r\n"
        return f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials\r\n"

    # -- the mailbox -----------------------------------------------------------------------

    def _uids(self, spec: str) -> list[int]:
        """The UIDs in the mailbox that an IMAP sequence set of UIDs names."""
        highest = max(self.mailbox, default=0)
        wanted: set[int] = set()
        for part in spec.split(","):
            low, _, high = part.partition(":")
            first = highest if low == "*" else int(low)
            last = first if not high else highest if high == "*" else int(high)
            wanted.update(range(min(first, last), max(first, last) + 1))
        return [uid for uid in sorted(self.mailbox) if uid in wanted]

    def _seq(self, uid: int) -> int:
        return sorted(self.mailbox).index(uid) + 1

    def _flag_list(self, uid: int) -> str:
        return "(" + " ".join(sorted(self.flags[uid])) + ")"

    def _spoof(
        self, conn: socket.socket, uid: int, items: str, partial: re.Match[str] | None
    ) -> None:
        """An unsolicited FETCH without UID, numbered as if `uid` were a sequence number."""
        text = self.spoof_text
        if "BODY" not in items:
            conn.sendall(f"* {uid} FETCH (RFC822.SIZE {len(text)} FLAGS (\\Seen))\r\n".encode())
            return
        item = "BODY[]" if partial is None else f"BODY[]<{partial.group(1)}>"
        conn.sendall(f"* {uid} FETCH ({item} {{{len(text)}}}\r\n".encode() + text + b")\r\n")

    def _mailbox(self, conn: socket.socket, tag: str, command: str, rest: str) -> str | None:
        words = rest.split(" ")
        if command in ("SELECT", "EXAMINE"):
            mode = "READ-ONLY" if command == "EXAMINE" else "READ-WRITE"
            return (
                f"* {len(self.mailbox)} EXISTS\r\n* 0 RECENT\r\n"
                "* FLAGS (\\Seen \\Deleted)\r\n"
                f"* OK [UIDVALIDITY {self.uidvalidity}] UIDs valid\r\n"
                f"{tag} OK [{mode}] done\r\n"
            )
        if command == "SEARCH":
            found = "".join(f" {uid}" for uid in sorted(self.mailbox))
            return f"* SEARCH{found}\r\n{tag} OK done\r\n"
        if command == "FETCH":
            uids, items = self._uids(words[2]), " ".join(words[3:]).upper()
            partial = _PARTIAL.search(items)
            for uid in uids:
                spoofed = uid == self.spoof_uid and ("BODY" in items or self.spoof_listing)
                if spoofed and self.spoof_where in ("before", "instead"):
                    self._spoof(conn, uid, items, partial)
                if spoofed and self.spoof_where == "instead":
                    continue
                if "BODY" not in items:
                    size = len(self.mailbox[uid])
                    line = f"* {self._seq(uid)} FETCH (UID {uid} RFC822.SIZE {size} "
                    conn.sendall(f"{line}FLAGS {self._flag_list(uid)})\r\n".encode())
                    if spoofed and self.spoof_where == "after":
                        self._spoof(conn, uid, items, partial)
                    continue
                text, item = self.mailbox[uid], "BODY[]"
                if partial is not None:
                    offset, length = int(partial.group(1)), int(partial.group(2))
                    text, item = text[offset : offset + length], f"BODY[]<{offset}>"
                size = len(text) if self.body_size_claim is None else self.body_size_claim
                head = f"* {self._seq(uid)} FETCH (UID {uid} {item} {{{size}}}\r\n".encode()
                if uid == self.drop_in_fetch_of_uid:
                    conn.sendall(head + text[: len(text) // 2])
                    return None
                if size > _PAD_LIMIT:
                    conn.sendall(head + text)
                    return ""  # the literal never ends: wait for whatever the client does
                conn.sendall(head + text.ljust(size, b"X") + b")\r\n")
                if spoofed and self.spoof_where == "after":
                    self._spoof(conn, uid, items, partial)
            return f"{tag} OK done\r\n"
        if command == "STORE":
            if self.store_reply is not None:
                return f"{tag} {self.store_reply}\r\n"
            uids, mode = self._uids(words[2]), words[3].upper()
            flags = " ".join(words[4:]).strip("()").split()
            lines = ""
            for uid in uids:
                if mode.startswith("+"):
                    self.flags[uid].update(flags)
                elif mode.startswith("-"):
                    self.flags[uid].difference_update(flags)
                else:
                    self.flags[uid] = set(flags)
                if not mode.endswith(".SILENT"):
                    flag_list = self._flag_list(uid)
                    lines += f"* {self._seq(uid)} FETCH (UID {uid} FLAGS {flag_list})\r\n"
            return f"{lines}{tag} OK done\r\n"
        # EXPUNGE, or UID EXPUNGE with a set
        candidates = self._uids(words[2]) if words[0].upper() == "UID" else sorted(self.mailbox)
        lines = ""
        for uid in reversed(candidates):
            if "\\Deleted" in self.flags[uid]:
                lines += f"* {self._seq(uid)} EXPUNGE\r\n"
                del self.mailbox[uid], self.flags[uid]
                self.expunged.append(uid)
        return f"{lines}{tag} OK done\r\n"


_MAILBOX_COMMANDS = frozenset({"SELECT", "EXAMINE", "SEARCH", "FETCH", "STORE", "EXPUNGE"})
