"""The pidfile pyfetch shares with fetchmail 6.4, so that the two never poll at once.

The file (`~/.fetchmail.pid`, `$FETCHMAILHOME/fetchmail.pid`, `/var/run/fetchmail.pid` for
root, or `--pidfile`) holds what fetchmail writes: `PID\\n` for a run in the foreground,
`PID\\nINTERVAL\\n` for a daemon. fetchmail reads it with `fscanf("%ld %d")`, and so does
`_parse`: two numbers mean a daemon ("background") holds it, one number a foreground run.

What a run does about a holder is fetchmail's table of rules, kept in the pure `decide()`:
run, wake the daemon (SIGUSR1), stop it (`-q`, SIGTERM), or refuse with exit 8. `claim()` is
the one call the command line makes; the rest are the thin actions it is made of.

A file is *stale*, and is removed with `removing stale lockfile "PATH"`, when

* nothing in it parses as a PID (a holder that crashed between creating and writing it);
* its process no longer exists, or is a zombie (an EPERM from `kill(pid, 0)` means the
  process exists under another user: fetchmail takes it for dead);
* it names our own PID (left by an earlier process that had the PID we have now);
* on Linux, the process with that PID started after the file was last written: the holder
  died long ago (typically before a reboot) and an unrelated program got its PID. A process
  that looks like a pyfetch or a fetchmail is exempt, because the same picture appears when
  the clock is stepped forward (NTP on a machine without a clock battery) after a daemon
  started at boot, and removing a live daemon's file would let two runs poll at once.

A file that does not parse but was written within the last second is read once more after a
short pause: fetchmail creates the file first and writes the PID after, and a reader in
between must not take its brand-new lock for a crash's leftover.

Why `link()`: pyfetch writes the full contents to a temporary file beside the pidfile, fsyncs
it, and then hard-links it to the pidfile's name. The link fails if the name exists, so it is
an atomic create-if-absent, and the file appears with its contents already in place: a
fetchmail (or pyfetch) that reads it never sees it empty, and a crash at any instant leaves
either no pidfile or a complete one (plus, at worst, a `.NAME.*.tmp` file nobody reads).

Why the directory lock: removing a stale file and creating a new one are two steps. If A and
B both read the same stale file, A may remove it and link its own before B gets to remove
"the stale file", which is by then A's fresh lock; B would then link its own too, and both
would run. So every pyfetch holds `flock(LOCK_EX)` on the pidfile's directory from reading
the file until its own lock is in place (`locked_directory`). fetchmail takes no such lock;
against a fetchmail the removal only checks that the file is still the one read (same inode),
which leaves the window as narrow as fetchmail leaves it against itself.

A daemon takes the lock before it detaches: the detached process then calls `adopt()` with its
own PID, which rewrites the file atomically (fetchmail's readers never see a gap), and the
parent leaves without `release()`. `release()` removes the file only if it still names us.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import itertools
import os
import re
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

from fetcher.errors import LocalError
from fetcher.exitcodes import ExitCode

__all__ = [
    "STOP_TIMEOUT",
    "Action",
    "Decision",
    "Holder",
    "PidLock",
    "Request",
    "acquire",
    "claim",
    "decide",
    "locked_directory",
    "read_holder",
    "stop_holder",
    "wake_holder",
]

STOP_TIMEOUT = 30.0  # seconds `-q` waits for the holder to go
_POLL_PAUSE = 0.05  # seconds between checks while waiting for a stopped holder
_START_SLACK = 2.0  # seconds: /proc's boot time is whole seconds, and mtimes may be coarse
_YOUNG = 1.0  # seconds: an unparseable file this fresh may be a holder still writing it
_REREAD_PAUSE = 0.1
_CLAIM_ATTEMPTS = 5
_MAX_PID = 2**31 - 1  # beyond pid_t; os.kill() would raise OverflowError
_READ_LIMIT = 4096  # the file holds two short lines; anything longer is garbage anyway
# fscanf("%ld %d"): leading blanks skipped, the second number may follow without a blank
_FSCANF = re.compile(r"\s*([+-]?[0-9]+)(?:\s*([+-]?[0-9]+))?")


# The decision


@dataclass(frozen=True)
class Holder:
    """The live process the pidfile names."""

    pid: int
    background: bool  # the file has the second (interval) line: a daemon
    program: str = "pyfetch"  # "fetchmail" when fetchmail itself holds it; used in messages


@dataclass(frozen=True)
class Request:
    """What this run was asked to do, as far as the lock cares."""

    quit: bool = False  # -q
    check: bool = False  # -c
    named_servers: bool = False  # server names on the command line
    other_options: bool = False  # any option but -v/-s/--verbose/--silent (and -q itself)
    silent: bool = False  # -s


class Action(enum.Enum):
    RUN = "run"  # no one holds the lock: take it and poll
    WAKE = "wake"  # a daemon holds it: make it poll now
    STOP_HOLDER = "stop"  # -q: end the holder
    REFUSE = "refuse"  # end with the decision's exit code


@dataclass(frozen=True)
class Decision:
    action: Action
    message: str | None  # for stderr, without the "pyfetch: " prefix; None prints nothing
    exit_code: ExitCode | None  # None for RUN: the run goes on


def decide(holder: Holder | None, request: Request) -> Decision:
    """fetchmail 6.4.37's rules, in its order. Unlike fetchmail, whose `-q` goes on to poll when
    it is not the last argument, pyfetch's `-q` never polls."""
    if request.quit:
        return _quit(holder, request.silent)
    if holder is None:
        return Decision(Action.RUN, None, None)
    p, pid = holder.program, holder.pid
    if request.check:
        return _refuse(f"can't check mail while another {p} to same host is running.")
    if request.named_servers:
        return _refuse(f"can't poll specified hosts with another {p} running at {pid}.")
    if not holder.background:
        return _refuse(f"another foreground {p} is running at {pid}.")
    if request.other_options:
        return _refuse(f"can't accept options while a background {p} is running.")
    return Decision(
        Action.WAKE, _unless(request.silent, f"background {p} at {pid} awakened."), ExitCode.SUCCESS
    )


def _quit(holder: Holder | None, silent: bool) -> Decision:
    if holder is None:
        return _refuse("no other pyfetch is running")
    message = f"{_kind(holder)} {holder.program} at {holder.pid} killed."
    return Decision(Action.STOP_HOLDER, _unless(silent, message), ExitCode.SUCCESS)


def _refuse(message: str) -> Decision:
    # -s hides what went as asked (woken, killed), never why nothing happened
    return Decision(Action.REFUSE, message, ExitCode.EXCLUDE)


def _unless(silent: bool, message: str) -> str | None:
    return None if silent else message


def _kind(holder: Holder) -> str:
    return "background" if holder.background else "foreground"


# What the file says, and whether it is stale: pure


@dataclass(frozen=True)
class _Contents:
    pid: int
    background: bool


@dataclass(frozen=True)
class _Process:
    """What the system tells about the PID the file names."""

    alive: bool
    started: float | None  # seconds since the epoch; None where /proc cannot tell
    argv: tuple[str, ...]  # empty where unknown


def _parse(text: str) -> _Contents | None:
    match = _FSCANF.match(text)
    if match is None:
        return None
    pid = int(match.group(1))
    if not 0 < pid <= _MAX_PID:  # kill() would take 0 or -N for a process group
        return None
    return _Contents(pid, background=match.group(2) is not None)


def _is_stale(
    contents: _Contents | None, process: _Process | None, *, own_pid: int, modified: float
) -> bool:
    if contents is None or contents.pid == own_pid:
        return True
    if process is None or not process.alive:
        return True
    if process.started is None or process.started <= modified + _START_SLACK:
        return False
    # started after the file was written: a reused PID, unless it is one of us and the clock
    # was stepped forward since (see the module docstring)
    return not _looks_like_a_poller(process.argv)


def _looks_like_a_poller(argv: tuple[str, ...]) -> bool:
    """fetchmail, the `pyfetch` script (maybe run by an interpreter), or `python -m fetcher`."""
    names = [os.path.basename(arg) for arg in argv[:2]]
    if "fetchmail" in names or "pyfetch" in names:
        return True
    return ("-m", "fetcher") in itertools.pairwise(argv[:4])


def _program(argv: tuple[str, ...]) -> str:
    return "fetchmail" if argv and os.path.basename(argv[0]) == "fetchmail" else "pyfetch"


# Reading the file


@dataclass(frozen=True)
class _Snapshot:
    text: str
    modified: float
    identity: tuple[int, int]  # (st_dev, st_ino): which file we read, for the removal


def read_holder(path: str, *, report: Callable[[str], None]) -> Holder | None:
    """The live holder of the pidfile, or None. A stale file is removed (and reported)."""
    snapshot = _read_or_fail(path)
    if snapshot is not None and _parse(snapshot.text) is None and _is_young(snapshot):
        time.sleep(_REREAD_PAUSE)  # a fetchmail may be between its create and its write
        snapshot = _read_or_fail(path)
    if snapshot is None:
        return None
    contents = _parse(snapshot.text)
    own_pid = os.getpid()
    process = None
    if contents is not None and contents.pid != own_pid:
        process = _probe(contents.pid)
    if _is_stale(contents, process, own_pid=own_pid, modified=snapshot.modified):
        report(f'removing stale lockfile "{path}"')
        _remove_stale(path, snapshot)
        return None
    assert contents is not None and process is not None  # not stale, so both are known
    return Holder(contents.pid, contents.background, _program(process.argv))


def _read_or_fail(path: str) -> _Snapshot | None:
    try:
        return _read(path)
    except OSError as err:
        raise LocalError(
            f'error reading lockfile "{path}": {err.strerror}', ExitCode.EXCLUDE
        ) from None


def _read(path: str) -> _Snapshot | None:
    """The file's text and times; None if there is none. O_NOFOLLOW: a symlink planted in
    the pidfile's place must not make us read (and then remove) some other file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            # never remove a device or a FIFO as "stale" (think --pidfile /dev/null)
            raise OSError(errno.EINVAL, "not a regular file")
        data = file.read(_READ_LIMIT)
    return _Snapshot(data.decode("latin-1"), info.st_mtime, (info.st_dev, info.st_ino))


def _is_young(snapshot: _Snapshot) -> bool:
    return time.time() - snapshot.modified < _YOUNG


def _remove_stale(path: str, snapshot: _Snapshot) -> None:
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == snapshot.identity:  # not a fetchmail's fresh file
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise LocalError(
            f'cannot remove stale lockfile "{path}": {err.strerror}', ExitCode.EXCLUDE
        ) from None


def _named_pid(path: str) -> int | None:
    """The PID the file names now, None if there is no file or no PID in it."""
    snapshot = _read(path)
    contents = _parse(snapshot.text) if snapshot is not None else None
    return contents.pid if contents is not None else None


# What the system says about a PID


def _probe(pid: int) -> _Process:
    return _Process(_alive(pid), _start_time(pid), _command_line(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    fields = _proc_stat(pid)
    return fields is None or fields[0] not in ("Z", "X")  # a zombie has ended already


def _proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat from field 3 (state) on; None off Linux or when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read().decode("latin-1")
    except OSError:
        return None
    # field 2, the command name in parentheses, may itself hold blanks and parentheses
    return text.rpartition(")")[2].split()


def _start_time(pid: int) -> float | None:
    fields = _proc_stat(pid)
    boot = _boot_time()
    if fields is None or boot is None or len(fields) < 20:
        return None
    try:
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return None


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as file:
            for line in file:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _command_line(pid: int) -> tuple[str, ...]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
    except OSError:
        return ()
    return tuple(arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg)


# Taking, handing over and giving back the lock


@contextlib.contextmanager
def locked_directory(path: str) -> Iterator[None]:
    """Hold flock(LOCK_EX) on the directory of `path`, so that no other pyfetch reads, removes
    or creates the pidfile meanwhile. Blocks while another pyfetch holds it (briefly)."""
    directory = _directory(path)
    try:
        fd = _lock_directory(directory)
    except OSError as err:
        raise _creation_failed(directory, err) from None
    try:
        yield
    finally:
        os.close(fd)  # closing the last descriptor drops the flock


def _lock_directory(directory: str) -> int:
    """A descriptor of `directory` holding flock(LOCK_EX) on it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def acquire(path: str, interval: int) -> PidLock | None:
    """Create the pidfile naming us; None if it exists already (someone else holds it)."""
    pid = os.getpid()
    try:
        if not _link_new(path, _contents(pid, interval)):
            return None
    except OSError as err:
        raise _creation_failed(path, err) from None
    return PidLock(path, pid)


def _link_new(path: str, data: bytes) -> bool:
    temp = _write_temp(path, data)
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # a file system without hard links (vfat, some FUSE): create it as fetchmail does
        return _create_exclusive(path, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return True


def _create_exclusive(path: str, data: bytes) -> bool:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(fd)
    return True


def _write_temp(path: str, data: bytes) -> str:
    """A new file beside `path` (mode 0600) holding `data`, on disk; returns its name."""
    fd, temp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=_directory(path)
    )
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(fd)
    except BaseException:
        os.unlink(temp)
        raise
    return temp


def _contents(pid: int, interval: int) -> bytes:
    return (f"{pid}\n{interval}\n" if interval > 0 else f"{pid}\n").encode("ascii")


def _directory(path: str) -> str:
    return os.path.dirname(path) or "."


def _creation_failed(path: str, err: OSError) -> LocalError:
    return LocalError(f"{path}: {err.strerror}\nlock creation failed.", ExitCode.EXCLUDE)


class PidLock:
    """The pidfile we hold. `pid` is the process the file names."""

    def __init__(self, path: str, pid: int) -> None:
        self.path = path
        self.pid = pid
        self._released = False

    def __repr__(self) -> str:
        return f"PidLock({self.path!r}, {self.pid})"

    def __enter__(self) -> PidLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def adopt(self, pid: int, interval: int) -> None:
        """Make the file name `pid` (the detached daemon) instead of the parent, in one step.

        Refuses if the file no longer names the parent: had the parent died first, another run
        may have removed its file as stale and put its own there."""
        try:
            with locked_directory(self.path):
                if _named_pid(self.path) != self.pid:
                    raise LocalError(
                        f'lockfile "{self.path}" no longer holds PID {self.pid}; lock lost.',
                        ExitCode.EXCLUDE,
                    )
                temp = _write_temp(self.path, _contents(pid, interval))
                try:
                    os.replace(temp, self.path)
                except BaseException:
                    os.unlink(temp)
                    raise
        except OSError as err:
            raise _creation_failed(self.path, err) from None
        self.pid = pid

    def release(self) -> None:
        """Remove the file if it still names us. Only the process it names does so: after a
        fork the parent's copy of this object must not remove the child's lock."""
        if self._released or os.getpid() != self.pid:
            return
        self._released = True
        # best effort: we are on our way out, and a file left behind is stale to the next run
        with contextlib.suppress(OSError):
            fd = _lock_directory(_directory(self.path))
            try:
                if _named_pid(self.path) == self.pid:
                    os.unlink(self.path)
            finally:
                os.close(fd)


# Acting on a holder


def stop_holder(holder: Holder, path: str, *, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM the holder, then wait until it is gone or its pidfile no longer names it.
    True if that happened within `timeout` seconds."""
    try:
        os.kill(holder.pid, signal.SIGTERM)
    except (PermissionError, ProcessLookupError):
        raise LocalError(
            f"error killing {_kind(holder)} {holder.program} at {holder.pid}; bailing out.",
            ExitCode.EXCLUDE,
        ) from None
    deadline = time.monotonic() + timeout
    while not _has_stopped(holder.pid, path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_PAUSE)
    return True


def _has_stopped(pid: int, path: str) -> bool:
    if not _alive(pid):
        return True
    try:
        return _named_pid(path) != pid
    except OSError:
        return False  # cannot tell from the file; the process is still there


def wake_holder(holder: Holder) -> None:
    """SIGUSR1: a daemon polls at once instead of at the end of its interval."""
    try:
        os.kill(holder.pid, signal.SIGUSR1)
    except OSError:
        raise LocalError(
            f"elder sibling at {holder.pid} died mysteriously.", ExitCode.UNDEFINED
        ) from None


# The whole of it


@dataclass(frozen=True)
class _Stop:
    holder: Holder
    message: str | None


def claim(
    path: str,
    request: Request,
    interval: int,
    *,
    report: Callable[[str], None],
    stop_timeout: float = STOP_TIMEOUT,
) -> PidLock | ExitCode:
    """Decide and act. The PidLock if this run may go on, else the exit code to end with.
    `interval` is the daemon's poll interval, 0 for a run in the foreground. `report` prints
    a line on stderr (the caller adds "pyfetch: ")."""
    with locked_directory(path):
        outcome = _claim_locked(path, request, interval, report)
    if not isinstance(outcome, _Stop):
        return outcome
    # the waiting happens unlocked: other pyfetch runs need not queue behind a -q
    holder = outcome.holder
    if not stop_holder(holder, path, timeout=stop_timeout):
        report(f"{holder.program} at {holder.pid} did not stop within {stop_timeout:g} seconds")
        return ExitCode.EXCLUDE
    _say(report, outcome.message)
    return ExitCode.SUCCESS


def _claim_locked(
    path: str, request: Request, interval: int, report: Callable[[str], None]
) -> PidLock | ExitCode | _Stop:
    for _ in range(_CLAIM_ATTEMPTS):
        holder = read_holder(path, report=report)
        decision = decide(holder, request)
        if decision.action is Action.RUN:
            lock = acquire(path, interval)
            if lock is not None:
                return lock
            continue  # a fetchmail created it between our read and our link: look again
        if decision.action is Action.STOP_HOLDER:
            assert holder is not None
            return _Stop(holder, decision.message)
        if decision.action is Action.WAKE:
            assert holder is not None
            wake_holder(holder)
        _say(report, decision.message)
        assert decision.exit_code is not None
        return decision.exit_code
    report(f'lockfile "{path}" keeps changing; lock creation failed.')
    return ExitCode.EXCLUDE


def _say(report: Callable[[str], None], message: str | None) -> None:
    if message is not None:
        report(message)
