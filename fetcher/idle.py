"""IDLE on every idle folder of every account at once, in one process.

Each watched folder gets a FolderWatch: a connection of its own that EXAMINEs the folder and
waits in IDLE (NOOP every minute where IDLE is not offered), and a poller that runs the
ordinary poll (fetcher.session, on another connection) whenever the watch hears of new mail.
The watch never changes the folder, so a poll and its watch never get in each other's way, and
news that arrives during a poll is heard and polled for right after it.

Why not poll on the IDLE connection, as fetchmail does: a watch that only listens can stay in
IDLE while a poll runs, so nothing that arrives meanwhile is missed, and a poll that fails
(the listener is down, say) does not take the watch down with it.

The blocking driver calls of a watch run in a thread of its own (fetcher.worker): a watch
waits up to 28 minutes in one call, and must not hold a thread that polls need. What to do
with what the server says is decided by fetcher.idleplan; the watches live in the run loop of
fetcher.run, which stops and wakes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from fetcher.credentials import for_login
from fetcher.errors import PyfetchError
from fetcher.exitcodes import ExitCode
from fetcher.idleplan import (
    IDLE_RENEWAL,
    NOOP_INTERVAL,
    News,
    Next,
    classify,
    gives_up,
    react,
    repoll_delay,
    retry_delay,
)
from fetcher.model import ServerOptions, UserOptions
from fetcher.report import Reporter, describe_failure
from fetcher.worker import Worker

T = TypeVar("T")


class WatchConnection(Protocol):
    """What a watch needs of an IMAP connection (ImapDriver has it; tests may pass another)."""

    @property
    def can_idle(self) -> bool: ...

    def connect(self) -> None: ...

    def login(self) -> None: ...

    def start_watch(self) -> None: ...

    def wait_for_news(self, timeout: float) -> list[bytes]: ...

    def renew_idle(self) -> list[bytes]: ...

    def ask_for_news(self) -> list[bytes]: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...


# (server, account, folder or None for INBOX) -> a connection for watching it
WatchFactory = Callable[[ServerOptions, UserOptions, str | None], WatchConnection]
# polls one folder once and returns its status; reports its own errors
FolderPoll = Callable[[], Awaitable[ExitCode]]


def watch_connection(
    server: ServerOptions, user: UserOptions, folder: str | None
) -> WatchConnection:
    """The default WatchFactory."""
    from fetcher.drivers.imap import ImapDriver  # imapclient: only when a folder is watched

    return ImapDriver(server, user, folder=folder, read_only=True)


@dataclass
class Timing:
    """How long a watch waits; tests shorten them."""

    renewal: float = IDLE_RENEWAL
    noop_interval: float = NOOP_INTERVAL
    retry: Callable[[int], float] = retry_delay


@dataclass
class WatchOutcome:
    status: ExitCode = ExitCode.NOMAIL  # of the last poll, or of the failure that ended it
    retrieved: bool = False  # some poll brought mail


@dataclass
class FolderWatch:
    server: ServerOptions
    user: UserOptions
    folder: str | None
    poll: FolderPoll
    reporter: Reporter
    stop: asyncio.Event
    make_connection: WatchFactory = watch_connection
    timing: Timing = field(default_factory=Timing)
    outcome: WatchOutcome = field(default_factory=WatchOutcome)

    def __post_init__(self) -> None:
        self.name = f"{self.folder or 'INBOX'} of {self.user.remote}@{self.server.pollname}"
        self.news = asyncio.Event()  # set: poll the folder
        self._connection: WatchConnection | None = None
        self._failures = 0
        self._finished = False
        self._worker = Worker(f"watch {self.name}")

    async def run(self) -> WatchOutcome:
        """Watch until `stop` is set or the watch gives up; the poll under way is finished
        (never one cut in half) before it returns."""
        poller = asyncio.create_task(self._poll_on_news())
        interrupter = asyncio.create_task(self._interrupt_on_stop())
        try:
            await self._watch()
        finally:
            self._finished = True
            self.news.set()
            interrupter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller  # cancelled only when a stopping run gives up on the poll
            self._worker.close()
        return self.outcome

    async def _interrupt_on_stop(self) -> None:
        """Wake the watch's thread out of its wait (up to 28 minutes) once `stop` is set."""
        await self.stop.wait()
        connection = self._connection
        if connection is not None:
            connection.interrupt()

    # -- the watch -------------------------------------------------------------------------

    async def _watch(self) -> None:
        ever_watched = False
        while not self.stop.is_set():
            connection: WatchConnection | None = None
            try:
                login = await self._call(for_login, self.server, self.user)  # may run a command
                connection = self.make_connection(self.server, login, self.folder)
                self._connection = connection
                await self._call(connection.connect)
                await self._call(connection.login)
                await self._call(connection.start_watch)
                if not ever_watched and self.reporter.verbose:
                    how = "IDLE" if connection.can_idle else "NOOP polling"
                    self.reporter.info(f"watching {self.name} ({how})")
                ever_watched = True
                self.news.set()  # catch up on what came while nobody watched
                farewell = await self._listen(connection)
                if self.stop.is_set():
                    return
                self._failures += 1
                self.reporter.error(
                    f"{self.server.pollname} closed the connection: {farewell} "
                    f"(while watching {self.name})"
                )
            except PyfetchError as err:
                if self.stop.is_set() or self._failed(err, ever_watched):
                    return
            except _Stopped:
                return
            finally:
                self._connection = None
                if connection is not None:
                    with contextlib.suppress(_Stopped):
                        await self._call(connection.close)
            delay = self.timing.retry(self._failures)
            if self.reporter.verbose:
                self.reporter.info(f"watching {self.name} again in {delay:g} seconds")
            await _wait_for(self.stop, delay)

    def _failed(self, err: PyfetchError, ever_watched: bool) -> bool:
        """Report a failure; True if it ends the watch."""
        self._failures += 1
        self.outcome.status = err.exit_code
        why = describe_failure(err, self.server, self.user)
        self.reporter.error(f"{why} (while watching {self.name})")
        if gives_up(err.exit_code, ever_watched=ever_watched):
            self.reporter.error(f"no longer watching {self.name}")
            return True
        if self.server.protocol == "auto" and not ever_watched:
            # `auto` may mean a POP3 server, which cannot be watched: poll it (the poll tries
            # IMAP, then POP3) each time the watch is tried, so its mail still comes.
            self.news.set()
        return False

    async def _listen(self, connection: WatchConnection) -> str:
        """Wait for news on an established watch until the connection must be made anew;
        returns the server's farewell (its BYE line)."""
        idling = connection.can_idle
        renew_at = time.monotonic() + self.timing.renewal
        while True:
            if self.stop.is_set():
                return ""
            if idling:
                wait = max(0.0, renew_at - time.monotonic())
                lines = await self._call(connection.wait_for_news, wait)
            else:
                if await _wait_for(self.stop, self.timing.noop_interval):
                    return ""
                lines = await self._call(connection.ask_for_news)
            poll, then = react(lines, idling=idling)
            if poll:
                self.news.set()
            if then is Next.RECONNECT:
                return next((_text(line) for line in lines if classify(line) is News.GONE), "")
            self._failures = 0  # the connection works: the next failure starts the delays anew
            if then is Next.RENEW:
                more = await self._call(connection.renew_idle)
                if react(more, idling=True)[0]:
                    self.news.set()
                renew_at = time.monotonic() + self.timing.renewal

    async def _call(self, func: Callable[..., T], *args: object) -> T:
        """`func(*args)` on the watch's thread. Once `stop` is set the watch does not wait for
        a call the interruption cannot reach (a connect to a server that does not answer):
        it raises _Stopped, and the thread ends on its own when the call does."""
        call = asyncio.ensure_future(self._worker.call(func, *args))
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({call, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not call.done():
            call.cancel()
            raise _Stopped
        return call.result()

    # -- the poller --------------------------------------------------------------------------

    async def _poll_on_news(self) -> None:
        failures = 0
        again: float | None = None
        while True:
            await _wait_for(self.news, again)
            if self.stop.is_set() or self._finished:
                return
            self.news.clear()
            status = await self.poll()
            self.outcome.status = status
            self.outcome.retrieved = self.outcome.retrieved or status is ExitCode.SUCCESS
            failures = 0 if status in (ExitCode.SUCCESS, ExitCode.NOMAIL) else failures + 1
            again = repoll_delay(status, failures, self.timing.retry)


class _Stopped(Exception):
    """The watch was stopped while its thread was busy with a call."""


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").removeprefix("* ")


async def _wait_for(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set or `timeout` seconds passed (None: no limit); True if set."""
    if timeout is None:
        await event.wait()
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
    return event.is_set()
