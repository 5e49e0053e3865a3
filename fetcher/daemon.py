"""Going into the background for `-d N` without `-N`, as fetchmail does, minus its race.

The parent forks; the child leaves the terminal's session (setsid), moves to `/`, points its
standard input at /dev/null and its standard output and error at the logfile (or /dev/null),
and takes over the pidfile lock the parent took before forking. Only then does the parent exit
0: when `pyfetch -d 300` returns, the daemon is running and its pidfile names it, so an `ip-up`
hook or a unit file can wake or stop it at once. A lock that cannot be had is refused in the
foreground, where the user sees the message, not in a child nobody watches.

The run's own lines do not depend on the redirection: they go through the console to the
logfile or syslog (fetcher.logsetup). It catches what else is written, such as an MDA's
complaints, as fetchmail's does.

It runs before any thread or event loop exists: fork() keeps only the calling thread.
"""

from __future__ import annotations

import os
import sys

from fetcher.errors import LocalError
from fetcher.exitcodes import ExitCode
from fetcher.lock import PidLock

_READY = b"1"


def detach(lock: PidLock | None, interval: int, logfile: str | None) -> None:
    """Continue in a detached child; the parent exits here (0 once the child is ready)."""
    sys.stdout.flush()
    sys.stderr.flush()
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child:
        os.close(ready_write)
        word = os.read(ready_read, 1)
        os._exit(0 if word == _READY else int(ExitCode.UNDEFINED))  # the lock is the child's
    os.close(ready_read)
    try:
        os.setsid()
        if lock is not None:
            lock.adopt(os.getpid(), interval)
        _redirect(logfile)
        os.chdir("/")
    except (OSError, LocalError) as err:
        message = err.message if isinstance(err, LocalError) else str(err)
        sys.stderr.write(f"pyfetch: cannot detach into the background: {message}\n")
        sys.stderr.flush()
        os._exit(int(ExitCode.UNDEFINED))
    os.write(ready_write, _READY)
    os.close(ready_write)


def _redirect(logfile: str | None) -> None:
    """stdin from /dev/null; stdout and stderr to the logfile (appended) or /dev/null."""
    null = os.open(os.devnull, os.O_RDWR)
    out = null
    if logfile is not None:
        out = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in {null, out}:
        if fd > 2:
            os.close(fd)
