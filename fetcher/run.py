"""One run loop for every mode: a single poll of everything, a daemon (`-d N`), IDLE watches.

A `Run` owns the event loop and everything that lives as long as it: the signals, the UID
store (on a thread of its own), the console, and one task group in which the polls, the IDLE
watches and the daemon's timer are peers. What to poll when, and what a failure leads to, is
decided by fetcher.schedule; one poll of one folder is fetcher.session's AccountPoll.

- Polls of different mailboxes run side by side, at most `parallel` at once and at most
  PER_HOST at once against one server host (or `parallel`, when the user asked for a
  number: an ISP polling its own server knows what it can take); two polls of the same
  mailbox never overlap.
  Each poll's lines come out whole (fetcher.console).
- SIGTERM, SIGINT and SIGQUIT stop the run: no new message is started, the message in hand is
  delivered and recorded (or left on the server), sessions end cleanly so that deletions take
  effect; polls still waiting on a server after STOP_GRACE seconds are given up (nothing they
  hold is lost: an unrecorded message stays on the server). A second signal gives up at once.
- SIGUSR1 (and SIGHUP in a daemon) polls everything now: timed mailboxes whatever their
  delays, and every watched folder.
- In a daemon, and while IDLE watches run, the rcfile is looked at each time the timer wakes;
  when it changed it is read again: new and changed mailboxes are polled (or watched) at once,
  unchanged ones keep their schedule, and an rcfile that does not read changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from fetcher import __version__
from fetcher.drivers.base import MailboxDriver
from fetcher.drivers.pop3 import Pop3Driver
from fetcher.errors import PyfetchError
from fetcher.exitcodes import ExitCode
from fetcher.idle import FolderWatch, Timing, WatchFactory, watch_connection
from fetcher.interface import (
    MONITOR_QUIESCE,
    Link,
    MonitorCounts,
    interface_skip,
    monitor_skip,
    read_link,
)
from fetcher.model import Config, ServerOptions, UserOptions
from fetcher.report import Reporter, describe_failure
from fetcher.schedule import Health, after_poll, due, period, run_status, together
from fetcher.session import AccountPoll, DriverFactory, SinkFactory
from fetcher.sinks.factory import sink_for
from fetcher.sizewarning import SizeWarnings
from fetcher.uidstore import StoreService, UidStore

DEFAULT_PARALLEL = 4  # polls at once; 1 polls in rcfile order, one after the other, as fetchmail
PER_HOST = 4  # polls at once against one server host, whatever `parallel` allows
STOP_GRACE = 3.0  # seconds a stopping run lets polls finish before it gives up on them
RCFILE_CHECK = 60.0  # how often a run with IDLE watches and no daemon timer looks at the rcfile

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def default_driver(
    server: ServerOptions, user: UserOptions, folder: str | None, read_only: bool
) -> MailboxDriver:
    # The IMAP driver (and imapclient with it) is imported only for a poll that may speak
    # IMAP: a POP3-only run starts some 20 ms sooner.
    if server.protocol == "IMAP":
        from fetcher.drivers.imap import ImapDriver

        return ImapDriver(server, user, folder=folder, read_only=read_only)
    if server.protocol == "auto":
        from fetcher.drivers.auto import AutoDriver

        return AutoDriver(server, user, folder=folder, read_only=read_only)
    return Pop3Driver(server, user)


@dataclass(frozen=True)
class Mailbox:
    """One folder of one account (POP3 has just the one, `folder` None)."""

    server: ServerOptions
    user: UserOptions
    folder: str | None

    @property
    def name(self) -> str:
        base = f"{self.user.remote}@{self.server.pollname}"
        return base if self.folder is None else f"{base}/{self.folder}"

    @property
    def identity(self) -> tuple[str, str, str]:
        """What two entries polling the same mailbox on the server have in common."""
        return (self.user.remote, self.server.queryname.lower(), self.folder or "INBOX")

    @property
    def watched(self) -> bool:
        """`idle` works with IMAP only (fetchmail: "effective only with IMAP"); a POP3
        account with it is polled like any other."""
        return self.user.idle and self.server.protocol in ("IMAP", "auto")

    @property
    def fingerprint(self) -> tuple[object, ...]:
        """Its options, minus what moving it in the rcfile changes: equal fingerprints after a
        re-read mean the same mailbox, polled the same way."""
        server = dataclasses.replace(self.server, users=[], line=0)
        user = dataclasses.replace(
            self.user, line=0, password=None if self.user.passwordeval else self.user.password
        )
        return (server, user, self.folder)


def mailboxes(config: Config) -> list[Mailbox]:
    """Every folder of every selected account, in rcfile order."""
    out: list[Mailbox] = []
    for server, user in config.selected_accounts():
        imap = server.protocol in ("IMAP", "auto")
        folders: list[str | None] = list(user.mailboxes) if imap else []
        out.extend(Mailbox(server, user, folder) for folder in folders or [None])
    return out


@dataclass
class Factories:
    """How a run makes its connections, and looks at network links; tests replace them."""

    driver: DriverFactory = default_driver
    sink: SinkFactory = sink_for
    watch: WatchFactory = watch_connection
    timing: Timing = field(default_factory=Timing)
    link: Callable[[str], Link | None] = read_link  # `interface` and `monitor`


# Reads the rcfile again (same command line, no prompting); raises PyfetchError if it is bad.
Reload = Callable[[Config], Config]


@dataclass
class _Watching:
    watch: FolderWatch
    stop: asyncio.Event


class Run:
    def __init__(
        self,
        config: Config,
        reporter: Reporter,
        *,
        check_only: bool = False,
        parallel: int | None = None,
        reload: Reload | None = None,
        factories: Factories | None = None,
        warn_sizes: bool = False,
    ) -> None:
        self.config = config
        self.reporter = reporter
        self.check_only = check_only
        self.parallel = max(parallel or DEFAULT_PARALLEL, 1)
        self.per_host = self.parallel if parallel else min(PER_HOST, self.parallel)
        self.reload = reload
        self.factories = factories or Factories()
        self.daemon = config.globals.poll_interval if not check_only else 0
        self.signum: int | None = None  # the signal that stopped the run
        self.store: StoreService | None = None
        self.retrieved = False
        self._mailboxes: dict[str, Mailbox] = {}
        self._status: dict[str, ExitCode] = {}
        self._health: dict[str, Health] = {}
        self._next_poll: dict[str, float] = {}  # timed mailboxes waiting for their time
        self._timed: set[asyncio.Task[ExitCode]] = set()  # timed polls under way
        self._polls: dict[asyncio.Task[object], AccountPoll] = {}  # every poll under way
        self._watching: dict[str, _Watching] = {}
        self._gave_up: dict[str, tuple[object, ...]] = {}  # watches that ended on their own
        # A daemon in the background mails its user about messages over `limit`, as fetchmail
        # does (not a single run, not -N): fetcher.sizewarning
        self._size_warnings = SizeWarnings() if warn_sizes and self.daemon else None
        self._monitor = MonitorCounts()  # `monitor`: each mailbox's link count after a poll
        self._unmonitored: set[str] = set()  # woken by a signal: polled whatever `monitor` says
        self._rcfile_stamp = _stamp(config.rcfile)

    # -- the run -----------------------------------------------------------------------------

    def execute(self) -> ExitCode:
        return asyncio.run(self._main())

    async def _main(self) -> ExitCode:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()  # a poll or a watch ended: the timer looks again
        self._slots = asyncio.Semaphore(self.parallel)
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._mailbox_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._woken_by: int | None = None
        if not self.check_only:
            self.store = StoreService(UidStore(self.config.globals.idfile or ""))
            await self.store.load()
        if self.daemon and not self.reporter.silent:
            self.reporter.info(f"starting pyfetch {__version__} daemon")
        installed = self._install_signals(loop)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._adopt(self.config, first=True)
                group.create_task(self._timer())
        except BaseExceptionGroup as errors:  # a bug in a task: let the CLI report it
            raise errors.exceptions[0] from None
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            if self.store is not None:
                await self.store.save()
                self.store.close()
        if self.signum is not None:
            self.reporter.info(f"terminated with signal {self.signum}")
        final = run_status([self._status.get(name) for name in self._mailboxes], self.retrieved)
        if self.reporter.verbose:
            self.reporter.info(f"normal termination, status {int(final)}")
        return final

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        wakers = [signal.SIGUSR1] + ([signal.SIGHUP] if self.daemon else [])
        stoppers = [*_STOP_SIGNALS] + ([] if self.daemon else [signal.SIGHUP])
        installed: list[int] = []
        try:
            for signum in stoppers:
                loop.add_signal_handler(signum, self._on_stop, signum)
                installed.append(signum)
            for signum in wakers:
                loop.add_signal_handler(signum, self._on_wake, signum)
                installed.append(signum)
        except (RuntimeError, ValueError):  # not the main thread: whoever runs us stops us
            pass
        return installed

    def _on_stop(self, signum: int) -> None:
        if self._stopping.is_set():
            self._give_up_polls()  # asked twice: do not wait for slow servers
            return
        self.signum = signum
        self.stop()
        asyncio.get_running_loop().call_later(STOP_GRACE, self._give_up_polls)

    def stop(self) -> None:
        """End the run as a stop signal does (see the module's docstring)."""
        self._stopping.set()
        for watching in self._watching.values():
            watching.stop.set()

    def _on_wake(self, signum: int) -> None:
        self._woken_by = signum
        self._wake.set()
        for watching in self._watching.values():
            watching.watch.news.set()

    def _give_up_polls(self) -> None:
        """Cancel the polls still running, except one that is delivering and recording a
        message: that one is looked at again shortly."""
        busy = False
        for task, poll in list(self._polls.items()):
            if poll.in_delivery:
                busy = True
            else:
                task.cancel("the run is stopping")
        if busy:
            asyncio.get_running_loop().call_later(0.1, self._give_up_polls)

    # -- the timer: timed polls, daemon cycles, rcfile changes -------------------------------

    async def _timer(self) -> None:
        loop = asyncio.get_running_loop()
        asleep = False
        while not self._stopping.is_set():
            starting = due(self._next_poll, loop.time(), together(self.daemon))
            if starting and asleep:
                asleep = False
                self._say("awakened at")
            for name in starting:
                del self._next_poll[name]
                task = self._group.create_task(self.poll(self._mailboxes[name], timed=True))
                self._timed.add(task)
                task.add_done_callback(self._timed_done)
            if not self._timed and not self._next_poll and not self._watching:
                return  # everything polled once (a single run), or every watch gave up
            timeout = self._next_wait(loop.time())
            if self.daemon and not self._timed and not asleep and timeout is not None:
                asleep = True
                self._say("sleeping at", f" for {max(1, round(timeout))} seconds")
            self._changed.clear()
            await _wait_any([self._stopping, self._wake, self._changed], timeout)
            if self._wake.is_set() and not self._stopping.is_set():
                self._woken()
            await self._maybe_reload()

    def _timed_done(self, task: asyncio.Task[ExitCode]) -> None:
        self._timed.discard(task)
        self._changed.set()

    def _next_wait(self, now: float) -> float | None:
        """Seconds until the timer must look again: the next mailbox's time, or the next look
        at the rcfile when watches run without a daemon timer; None: only events."""
        waits = [max(0.0, at - now) for at in self._next_poll.values()]
        if self._watching and self.reload is not None and not self.daemon:
            waits.append(RCFILE_CHECK)
        return min(waits) if waits else None

    def _woken(self) -> None:
        """SIGUSR1 (a second pyfetch) or SIGHUP: every timed mailbox is polled now, as
        fetchmail does when woken, failing ones included."""
        self._wake.clear()
        signum, self._woken_by = self._woken_by, None
        if signum is not None and not self.reporter.silent:
            self.reporter.info(f"awakened by signal {signum}")
        now = asyncio.get_running_loop().time()
        for name, mailbox in self._mailboxes.items():
            if not mailbox.watched:
                self._next_poll[name] = now
                self._unmonitored.add(name)  # as fetchmail: a wake-up is not for `monitor`

    def _say(self, what: str, tail: str = "") -> None:
        """`sleeping at ...` and `awakened at ...`: with -v, or on a terminal when the lines do
        not go to syslog, as fetchmail."""
        on_terminal = sys.stdout.isatty() and not self.config.globals.syslog
        chatty = bool(self.reporter.verbose) or on_terminal
        if chatty and not self.reporter.silent:
            self.reporter.info(f"{what} {time.ctime()}{tail}")

    # -- polls -------------------------------------------------------------------------------

    async def poll(self, mailbox: Mailbox, *, timed: bool = False) -> ExitCode:
        """One poll of one folder, in turn with the others (the bounds of the module's
        docstring). Its failure is reported here, with the poll's other lines, unless a
        daemon said the same failure before; a daemon's timed poll is then scheduled again."""
        lock = self._mailbox_locks.setdefault(mailbox.identity, asyncio.Lock())
        host = self._hosts.setdefault(mailbox.identity[1], asyncio.Semaphore(self.per_host))
        async with lock, self._slots, host:
            if self._stopping.is_set():
                return ExitCode.NOMAIL
            with self.reporter.console.group():
                skip = self._link_skip(mailbox, monitor=timed)
                if skip is not None:
                    # Not polled: no status of its own for the run's exit code, and a daemon
                    # looks again at its next time, as after a poll that found nothing.
                    self.reporter.info(f"skipping poll of {mailbox.server.pollname}, {skip}")
                    if timed and self.daemon:
                        self._reschedule(mailbox, ExitCode.NOMAIL, None)
                    return ExitCode.NOMAIL
                status, failure = await self._poll_now(mailbox)
                self._note_link(mailbox)
                self._status[mailbox.name] = status
                self.retrieved = self.retrieved or status is ExitCode.SUCCESS
                say, note = True, None
                if timed and self.daemon:
                    say, note = self._reschedule(mailbox, status, failure)
                if failure is not None and say:
                    self.reporter.error(failure)
                if note is not None:
                    self.reporter.info(note)
                if self.reporter.verbose and status not in (ExitCode.SUCCESS, ExitCode.NOMAIL):
                    self.reporter.info(f"Query status={int(status)} ({status.label})")
        if self.store is not None and (self.daemon or mailbox.watched):
            # A daemon or a watch runs for days: write .fetchids after each poll, as a
            # fetchmail daemon does after each cycle, rather than let the journal grow.
            await self.store.save()
        return status

    def _link_skip(self, mailbox: Mailbox, *, monitor: bool) -> str | None:
        """Why `interface` or `monitor` skips this poll now (fetchmail's words after "skipping
        poll of HOST, "), or None. `monitor` only for a timed poll that no signal asked for;
        a poll that an IDLE watch asks for has its news already."""
        server = mailbox.server
        woken = mailbox.name in self._unmonitored
        self._unmonitored.discard(mailbox.name)
        if server.interface is not None:
            why = interface_skip(server.interface, self.factories.link(server.interface))
            if why is not None:
                return f"{server.interface} {why}"
        if server.monitor is not None and monitor and not woken:
            link = self.factories.link(server.monitor)
            if monitor_skip(self._monitor.noted(mailbox.name), link):
                return f"{server.monitor} inactive"
        return None

    def _note_link(self, mailbox: Mailbox) -> None:
        """After a daemon's poll of a `monitor` mailbox: note its link's count once the poll's
        last packets are through (a single run has no next poll to compare)."""
        if mailbox.server.monitor is None or not self.daemon:
            return

        def note() -> None:
            link = self.factories.link(monitor)
            if link is not None:
                order = [(name, m.server.monitor) for name, m in self._mailboxes.items()]
                self._monitor.note(order, mailbox.name, link.packets)

        monitor = mailbox.server.monitor
        asyncio.get_running_loop().call_later(MONITOR_QUIESCE, note)

    def _reschedule(
        self, mailbox: Mailbox, status: ExitCode, failure: str | None
    ) -> tuple[bool, str | None]:
        """A daemon's next poll of `mailbox`; (whether to say its failure, a note to add)."""
        name = mailbox.name
        decision = after_poll(
            self._health.get(name, Health()), status, failure, account=name,
            period_seconds=period(self.daemon, mailbox.server.interval),
            verbose=bool(self.reporter.verbose),
        )
        if self._mailboxes.get(name) is mailbox and not self._stopping.is_set():
            # (a re-read that replaced the mailbox has scheduled the new one already)
            self._health[name] = decision.health
            self._next_poll[name] = asyncio.get_running_loop().time() + decision.delay
        return decision.say, decision.note

    async def _poll_now(self, mailbox: Mailbox) -> tuple[ExitCode, str | None]:
        """(the poll's status, the text of the failure that ended it, if one did)."""
        server, user = mailbox.server, mailbox.user
        poll = AccountPoll(
            server, user, self.config.globals, self.store, self.reporter,
            self.factories.driver, self.factories.sink,
            check_only=self.check_only, folder=mailbox.folder, stopping=self._stopping,
            size_warnings=self._size_warnings,
        )
        task: asyncio.Task[object] | None = asyncio.current_task()
        if task is not None:
            self._polls[task] = poll
        try:
            return (await poll.run()).status, None
        except PyfetchError as err:
            return err.exit_code, describe_failure(err, server, user)
        except Exception as err:  # a bug: this poll ends, the run (a daemon) goes on
            frame = traceback.extract_tb(err.__traceback__)[-1]
            where = f"{os.path.basename(frame.filename)}:{frame.lineno}"
            if os.environ.get("PYFETCH_DEBUG"):
                traceback.print_exception(err)
            return ExitCode.UNDEFINED, (
                f"internal error ({type(err).__name__} at {where}) while polling "
                f"{mailbox.name}; please report it."
            )
        finally:
            if task is not None:
                self._polls.pop(task, None)

    # -- IDLE watches ------------------------------------------------------------------------

    def _start_watches(self) -> None:
        """A watch for every watched folder that has none (and did not give up unchanged)."""
        if self.check_only:
            return
        for name, mailbox in self._mailboxes.items():
            if not mailbox.watched or name in self._watching:
                continue
            if self._gave_up.get(name) == mailbox.fingerprint:
                continue
            self._gave_up.pop(name, None)
            stop = asyncio.Event()
            if self._stopping.is_set():
                stop.set()
            watch = FolderWatch(
                mailbox.server, mailbox.user, mailbox.folder,
                functools.partial(self.poll, mailbox), self.reporter, stop,
                make_connection=self.factories.watch, timing=self.factories.timing,
            )
            self._watching[name] = _Watching(watch, stop)
            self._group.create_task(self._watch(name, mailbox, watch))

    async def _watch(self, name: str, mailbox: Mailbox, watch: FolderWatch) -> None:
        try:
            outcome = await watch.run()
        finally:
            current = self._watching.get(name)
            if current is not None and current.watch is watch:
                del self._watching[name]
                if not current.stop.is_set():  # it ended on its own: it gave up
                    self._gave_up[name] = mailbox.fingerprint
            self._changed.set()
        self._status[name] = outcome.status

    # -- the configuration, and reading it again ---------------------------------------------

    def _adopt(self, config: Config, *, first: bool = False) -> None:
        """Take `config`'s mailboxes: new and changed ones are polled (or watched) now,
        unchanged ones keep their schedule, removed ones are dropped (a poll under way ends
        as usual)."""
        now = asyncio.get_running_loop().time()
        old = self._mailboxes
        self.config = config
        if self.daemon and config.globals.poll_interval > 0:
            self.daemon = config.globals.poll_interval
        self._mailboxes = {mailbox.name: mailbox for mailbox in mailboxes(config)}
        for name in list(self._next_poll):
            if name not in self._mailboxes or self._mailboxes[name].watched:
                del self._next_poll[name]
        for name, watching in list(self._watching.items()):
            mailbox = self._mailboxes.get(name)
            if mailbox is None or mailbox.fingerprint != old[name].fingerprint:
                watching.stop.set()
                del self._watching[name]
        for name, mailbox in self._mailboxes.items():
            before = old.get(name)
            if mailbox.watched and not self.check_only:
                continue
            if before is not None and before.fingerprint == mailbox.fingerprint:
                continue  # unchanged: its schedule stands
            self._health.pop(name, None)
            self._next_poll[name] = now
        self._start_watches()

    async def _maybe_reload(self) -> None:
        """Read the rcfile again if it changed since it was last read (a daemon, or a run
        with IDLE watches: a single run polls with what it read at the start)."""
        if self.reload is None or self.config.rcfile is None:
            return
        if not self.daemon and not self._watching:
            return
        stamp = _stamp(self.config.rcfile)
        if stamp == self._rcfile_stamp:
            return
        self._rcfile_stamp = stamp
        path = self.config.rcfile
        self.reporter.info(f"reading {path} again (it changed)")
        try:
            config = await asyncio.to_thread(self.reload, self.config)
        except PyfetchError as err:
            self.reporter.error(err.message)
            self.reporter.error(f"going on with the configuration read before from {path}")
            return
        for warning in config.warnings:
            self.reporter.console.write("err", warning + "\n")
        for note in _restart_notes(self.config, config):
            self.reporter.error(note)
        self._adopt(config)


def _stamp(path: str | None) -> tuple[int, int, int, int] | None:
    """What tells that the rcfile changed: its inode, size, and modification and change
    times (the change time moves with a chmod too, so fixing the file's mode counts)."""
    if path is None or path == "-":
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _restart_notes(old: Config, new: Config) -> list[str]:
    """Settings a re-read cannot change in a running process."""
    notes = []
    for key in ("idfile", "pidfile", "logfile", "syslog"):
        if getattr(old.globals, key) != getattr(new.globals, key):
            notes.append(f"the new `{key}` setting takes effect when pyfetch is started again")
    return notes


async def _wait_any(events: list[asyncio.Event], timeout: float | None) -> None:
    """Wait until one of `events` is set, or `timeout` seconds (None: no limit)."""
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
