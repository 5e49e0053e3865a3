"""A scripted SMTP/LMTP listener for faults aiosmtpd will not produce on demand.

It runs in the test's own event loop. Each accepted connection runs the next script of the
list (an `async def script(conn)`), so a test can say "the first connection drops in the middle
of DATA, the second behaves". What a script did not expect fails the test through `errors`.

    async with ScriptedListener(first, second) as listener:
        sink = SmtpSink([f"127.0.0.1/{listener.port}"], ...)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from types import TracebackType

Script = Callable[["Conn"], Awaitable[None]]

EHLO_LINES = ("250-fake.test", "250-SIZE 100000000", "250-8BITMIME", "250 HELP")


class Conn:
    """One accepted connection, as seen by its script."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.transcript: list[str] = []  # the command lines the client sent
        self.data_received = 0  # octets of DATA read so far

    async def reply(self, *lines: str) -> None:
        """Send reply lines in one write, as a real server answering several at once would."""
        self.writer.write("".join(line + "\r\n" for line in lines).encode())
        await self.writer.drain()

    async def command(self) -> str:
        raw = await self.reader.readline()
        if not raw:
            raise EOFError(f"client closed the connection; transcript {self.transcript}")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        self.transcript.append(line)
        return line

    async def expect(self, verb: str, reply: str | None = None) -> str:
        line = await self.command()
        if not line.upper().startswith(verb.upper()):
            raise AssertionError(f"expected {verb}, got {line!r}")
        if reply is not None:
            await self.reply(reply)
        return line

    async def hello(self, *ehlo_lines: str) -> None:
        """Greeting and EHLO (or LHLO) with the given extension lines."""
        await self.reply("220 fake.test ESMTP")
        await self.expect("")  # EHLO or LHLO, whichever the client speaks
        await self.reply(*(ehlo_lines or EHLO_LINES))

    async def envelope(self, recipients: int = 1) -> None:
        await self.expect("MAIL FROM:", "250 OK")
        for _ in range(recipients):
            await self.expect("RCPT TO:", "250 OK")
        await self.expect("DATA", "354 go ahead")

    async def data(self, *, stop_after: int | None = None) -> bytes:
        """Read the message up to and including the final dot (returned without it), or only
        `stop_after` octets of it."""
        chunks: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise EOFError("client closed the connection during DATA")
            self.data_received += len(line)
            if line == b".\r\n":
                return b"".join(chunks)
            chunks.append(line)
            if stop_after is not None and self.data_received >= stop_after:
                return b"".join(chunks)

    def drop(self) -> None:
        self.writer.transport.abort()

    async def linger(self) -> None:
        """Say nothing until the client gives up and closes."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass


class ServedConnections:
    """An asyncio server whose connection tasks all end when it does (`async with`)."""

    def __init__(self) -> None:
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _track(self) -> asyncio.Task[None]:
        """The running connection task, to be cancelled when the server ends."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        return task

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._server.wait_closed()


class ScriptedListener(ServedConnections):
    def __init__(self, *scripts: Script, host: str = "127.0.0.1", path: str | None = None):
        super().__init__()
        self.scripts = list(scripts)
        self.host = host
        self.path = path
        self.port = 0
        self.connections: list[Conn] = []
        self.errors: list[BaseException] = []

    @property
    def entry(self) -> str:
        """The smtphost hunt-list entry for this listener."""
        if self.path is not None:
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}/{self.port}"

    async def __aenter__(self) -> ScriptedListener:
        if self.path is not None:
            self._server = await asyncio.start_unix_server(self._serve, self.path)
        else:
            self._server = await asyncio.start_server(self._serve, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._track()
        conn = Conn(reader, writer)
        index = len(self.connections)
        self.connections.append(conn)
        try:
            if index < len(self.scripts):
                await self.scripts[index](conn)
            else:
                await conn.reply("554 no script for this connection")
        except (asyncio.CancelledError, EOFError, ConnectionError):
            pass
        except BaseException as exc:  # an assertion in a script: the test reports it
            self.errors.append(exc)
        finally:
            writer.close()
            self._tasks.discard(task)
