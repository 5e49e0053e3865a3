"""A scripted IMAP server on 127.0.0.1 for what Dovecot will not do on request.

It greets with any line (`greeting`, e.g. PREAUTH), offers any CAPABILITY list, refuses
STARTTLS (`starttls_reply`), drops or ignores a command (`drop_on`, `silent_on`), can speak
implicit TLS (`tls_context`) and takes any AUTHENTICATE PLAIN (one continuation line). Every
line received is kept in `received`, so a test can assert that no credential was ever sent.

With `oauth_token`, AUTHENTICATE XOAUTH2 and OAUTHBEARER succeed only when the decoded client
response is exactly the SASL string for `oauth_user` and that token (kept in `sasl_received`);
otherwise the server sends an RFC 7628 error challenge, reads the client's answer and says NO.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import socket
import ssl
import threading
from types import TracebackType
from typing import BinaryIO

HOST = "127.0.0.1"
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
    ) -> None:
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
            with conn, contextlib.suppress(OSError):
                self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        if self.tls_context is not None:
            conn = self.tls_context.wrap_socket(conn, server_side=True)
        rfile = conn.makefile("rb")
        try:
            self._dialogue(conn, rfile)
        finally:
            rfile.close()  # the socket's descriptor stays open while its file does
            conn.close()

    def _dialogue(self, conn: socket.socket, rfile: BinaryIO) -> None:
        conn.sendall(self.greeting.encode() + b"\r\n")
        while True:
            raw = rfile.readline()
            if not raw:
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
            if verb == "CAPABILITY":
                reply = f"* CAPABILITY {self.capabilities}\r\n{tag} OK done\r\n"
            elif verb == "STARTTLS":
                reply = f"{tag} {self.starttls_reply}\r\n"
            elif verb == "AUTHENTICATE" and self._is_oauth(rest):
                reply = self._oauth(conn, rfile, tag, rest.split()[1].upper())
            elif verb == "AUTHENTICATE":
                conn.sendall(b"+ \r\n")
                answer = rfile.readline().decode("ascii", "replace").rstrip("\r\n")
                self.received.append(answer)
                reply = f"{tag} OK authenticated\r\n"
            elif verb == "LOGOUT":
                conn.sendall(f"* BYE bye\r\n{tag} OK done\r\n".encode())
                return
            else:
                reply = f"{tag} OK done\r\n"
            conn.sendall(reply.encode())

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
