"""The fastest a client can empty a mailbox: raw pipelined POP3 and IMAP drains.

Used by bench/speed.py as one half of "the limit" (Postfix's smtp-source is the other): what
no fetching program can beat against the same Dovecot, since a program does at least this much
on the server side. Each drain connects in plain text, upgrades with STLS / STARTTLS (the
certificate checked against the test CA, as the programs do), logs in, then

* POP3: sends every `RETR n` in one write and reads the answers back, then every `DELE n` and
  QUIT in a second write;
* IMAP: SELECT, one `FETCH 1:* (BODY.PEEK[])`, then `STORE 1:* +FLAGS.SILENT (\\Deleted)`,
  EXPUNGE and LOGOUT in one write.

Nothing is decoded or kept: the answers are only scanned for their ends, counted and their
bytes added up, so the cost is the server's and the network's, not the client's.

    .venv/bin/python bench/rawdrain.py pop3|imap PORT CAFILE USER PASSWORD COUNT
"""

from __future__ import annotations

import socket
import ssl
import sys
import time
from dataclasses import dataclass

HOST = "127.0.0.1"
CHUNK = 1 << 18


class DrainError(RuntimeError):
    pass


@dataclass
class Drained:
    messages: int
    octets: int  # bytes of message data received (dot-stuffed for POP3)
    seconds: float


class _Reader:
    """Buffered reads over a (TLS) socket; scanned bytes are dropped as it goes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0

    def _fill(self) -> None:
        if self.pos > CHUNK:
            del self.buf[: self.pos]
            self.pos = 0
        chunk = self.sock.recv(CHUNK)
        if not chunk:
            raise DrainError("the server closed the connection")
        self.buf += chunk

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n", self.pos)) < 0:
            self._fill()
        line = bytes(self.buf[self.pos : end])
        self.pos = end + 2
        return line

    def skip(self, count: int) -> None:
        """Drop exactly ``count`` bytes."""
        while len(self.buf) - self.pos < count:
            count -= len(self.buf) - self.pos
            self.buf.clear()
            self.pos = 0
            self._fill()
        self.pos += count

    def skip_past(self, marker: bytes) -> int:
        """Drop everything up to and including ``marker``; return how many bytes before it."""
        start = search = self.pos
        skipped = 0
        while (end := self.buf.find(marker, search)) < 0:
            keep = len(marker) - 1  # the marker may straddle two reads
            if len(self.buf) - keep > self.pos:
                skipped += len(self.buf) - keep - self.pos
                del self.buf[: len(self.buf) - keep]
                self.pos = start = 0
            search = max(start, len(self.buf) - keep)
            chunk = self.sock.recv(CHUNK)
            if not chunk:
                raise DrainError("the server closed the connection")
            self.buf += chunk
        skipped += end - self.pos
        self.pos = end + len(marker)
        return skipped


def _connect(port: int) -> tuple[socket.socket, _Reader]:
    sock = socket.create_connection((HOST, port), timeout=600)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, _Reader(sock)


def _tls(sock: socket.socket, cafile: str) -> tuple[ssl.SSLSocket, _Reader]:
    context = ssl.create_default_context(cafile=cafile)
    tls = context.wrap_socket(sock, server_hostname="localhost")
    return tls, _Reader(tls)


def _expect_ok(reader: _Reader, what: str) -> bytes:
    line = reader.line()
    if not line.startswith(b"+OK"):
        raise DrainError(f"{what}: {line!r}")
    return line


def pop3(port: int, cafile: str, user: str, password: str, count: int) -> Drained:
    """RETR all ``count`` messages in one write, then DELE them all and QUIT in another."""
    start = time.perf_counter()
    sock, reader = _connect(port)
    with sock:
        _expect_ok(reader, "greeting")
        sock.sendall(b"STLS\r\n")
        _expect_ok(reader, "STLS")
        tls, reader = _tls(sock, cafile)
        with tls:
            tls.sendall(f"USER {user}\r\nPASS {password}\r\n".encode())
            _expect_ok(reader, "USER")
            _expect_ok(reader, "PASS")
            tls.sendall(b"".join(b"RETR %d\r\n" % n for n in range(1, count + 1)))
            octets = 0
            for n in range(1, count + 1):
                _expect_ok(reader, f"RETR {n}")
                reader.pos -= 2  # the status line's CRLF starts the first data line
                # counted from that CRLF up to the end marker's own: the data, CRLF included
                octets += reader.skip_past(b"\r\n.\r\n")
            tls.sendall(b"".join(b"DELE %d\r\n" % n for n in range(1, count + 1)) + b"QUIT\r\n")
            for n in range(1, count + 1):
                _expect_ok(reader, f"DELE {n}")
            _expect_ok(reader, "QUIT")
    return Drained(count, octets, time.perf_counter() - start)


def _tagged(reader: _Reader, tag: bytes) -> tuple[int, int]:
    """Read up to the tagged reply; return (FETCH responses, literal octets) seen on the way."""
    fetches = octets = 0
    while True:
        line = reader.line()
        while line.endswith(b"}") and b"{" in line:  # a literal follows; then the line goes on
            size = int(line[line.rindex(b"{") + 1 : -1])
            if b" FETCH " in line:
                fetches += 1
            octets += size
            reader.skip(size)
            line = reader.line()
        if line.startswith(tag + b" "):
            if not line.startswith(tag + b" OK"):
                raise DrainError(f"{tag.decode()}: {line!r}")
            return fetches, octets


def imap(port: int, cafile: str, user: str, password: str, count: int) -> Drained:
    """One FETCH of every message's BODY.PEEK[], then flag them all deleted and EXPUNGE."""
    start = time.perf_counter()
    sock, reader = _connect(port)
    with sock:
        if not reader.line().startswith(b"* OK"):
            raise DrainError("no IMAP greeting")
        sock.sendall(b"a1 STARTTLS\r\n")
        _tagged(reader, b"a1")
        tls, reader = _tls(sock, cafile)
        with tls:
            tls.sendall(f'a2 LOGIN "{user}" "{password}"\r\na3 SELECT INBOX\r\n'.encode())
            _tagged(reader, b"a2")
            _tagged(reader, b"a3")
            tls.sendall(b"a4 FETCH 1:* (BODY.PEEK[])\r\n")
            fetched, octets = _tagged(reader, b"a4")
            if fetched != count:
                raise DrainError(f"FETCH gave {fetched} messages, expected {count}")
            tls.sendall(
                b"a5 STORE 1:* +FLAGS.SILENT (\\Deleted)\r\na6 EXPUNGE\r\na7 LOGOUT\r\n"
            )
            for tag in (b"a5", b"a6", b"a7"):
                _tagged(reader, tag)
    return Drained(count, octets, time.perf_counter() - start)


DRAINS = {"pop3": pop3, "imap": imap}


def main() -> int:
    if len(sys.argv) != 7 or sys.argv[1] not in DRAINS:
        print(__doc__, file=sys.stderr)
        return 2
    protocol, port, cafile, user, password, count = sys.argv[1:]
    got = DRAINS[protocol](int(port), cafile, user, password, int(count))
    print(f"{protocol}: {got.messages} messages, {got.octets} bytes in {got.seconds:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
