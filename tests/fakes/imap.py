"""A scripted IMAP server on 127.0.0.1 for what Dovecot will not do on request.

It greets with any line (`greeting`, e.g. PREAUTH), offers any CAPABILITY list, refuses
STARTTLS (`starttls_reply`), drops or ignores a command (`drop_on`, `silent_on`), can speak
implicit TLS (`tls_context`) and takes any AUTHENTICATE PLAIN (one continuation line). Every
line received is kept in `received`, so a test can assert that no credential was ever sent.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from types import TracebackType
from typing import BinaryIO

HOST = "127.0.0.1"


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
    ) -> None:
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
