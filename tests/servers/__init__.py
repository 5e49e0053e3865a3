"""Real mail servers, started privately for end-to-end tests.

Everything listens on loopback only, on free unprivileged ports, with its files in a temporary
directory, so tests can run beside each other and beside any system-wide mail server.

* :mod:`servers.certs` - the test CA and server certificates.
* :mod:`servers.dovecot` - POP3/IMAP (plain, STLS/STARTTLS, implicit TLS) and LMTP.
* :mod:`servers.smtp` - aiosmtpd SMTP and LMTP listeners that record and inject faults.
* :mod:`servers.postfix` - Postfix as the local MTA, delivering into one Maildir.
* :mod:`servers.fixtures` - the pytest fixtures and markers built on them.

This module holds the small helpers they share.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

HOST = "127.0.0.1"
HOST6 = "::1"


class ServerUnavailable(RuntimeError):
    """A server could not be started (binary missing, bad setup, or it never came up)."""


def ipv6_loopback() -> bool:
    """Whether ::1 can be bound here (containers sometimes run without IPv6)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((HOST6, 0))
    except OSError:
        return False
    return True


def free_port(*, also_ipv6: bool = False) -> int:
    """A TCP port nothing listens on right now, on 127.0.0.1 (and on ::1 if asked).

    The kernel picks it (bind to port 0), which avoids guessing.  There is a window between
    closing this socket and the server binding the port; that race is accepted, because the
    kernel hands out ephemeral ports round-robin and so does not reuse one quickly.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
            if not also_ipv6:
                return port
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s6:
                    s6.bind((HOST6, port))
            except OSError:
                continue  # taken on ::1 only; ask for another one
            return port
    raise ServerUnavailable("could not find a free port")


def free_ports(count: int, *, also_ipv6: bool = False) -> list[int]:
    """``count`` distinct free ports (distinct even if the kernel repeats itself)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(also_ipv6=also_ipv6)
        if port not in ports:
            ports.append(port)
    return ports


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    ready: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.02,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Poll ``ready`` until it is true; give up after ``timeout`` or as soon as ``alive`` is false.

    Polling with a short interval rather than sleeping a fixed time keeps startup as fast as the
    server allows, which matters because every test session pays it.
    """
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return True
        if alive is not None and not alive():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.2)


def wait_for_ports(
    ports: Iterable[int], timeout: float, *, alive: Callable[[], bool] | None = None
) -> list[int]:
    """Wait until every port accepts a connection; return those that never did."""
    pending = list(ports)
    deadline = time.monotonic() + timeout

    def check() -> bool:
        pending[:] = [p for p in pending if not port_open(p)]
        return not pending

    wait_until(check, max(0.0, deadline - time.monotonic()), alive=alive)
    return pending


def require_binary(name: str, hint: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise ServerUnavailable(f"{name} is not installed ({hint})")
    return path


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ServerUnavailable(f"{what} must be started as root (it drops privileges itself)")


def make_private_dir(prefix: str) -> Path:
    """A fresh directory under /tmp that unprivileged server processes may traverse.

    pytest's tmp_path lives under /tmp/pytest-of-root (mode 0700), which the mail user and
    Dovecot's login user cannot enter; and Unix socket paths are limited to 108 bytes, so
    the base must stay short too.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def tail(path: Path, limit: int = 6000, *, start: int = 0) -> str:
    """The end of a log file from byte ``start`` on, for error messages."""
    try:
        with path.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError as exc:
        return f"({path}: {exc})"
    if len(text) > limit:
        text = "...\n" + text[-limit:]
    return text or f"({path}: nothing{' new' if start else ''})"


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# pid of a server process -> (its watchdog, our end of the watchdog's pipe)
_watchdogs: dict[int, tuple[subprocess.Popen[bytes], int]] = {}

# The watchdog waits for EOF on its stdin, which happens only when every copy of the pipe's
# write end is closed: when stop() disarms it, or when this process dies in any way.  Then it
# sends SIGTERM to the server.
_WATCHDOG = 'read _ignored; kill -TERM "$0" 2>/dev/null'


def spawn(args: list[str], *, log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a foreground server process, stdout/stderr to ``log``, that cannot outlive us.

    Fixture finalizers stop servers after failing tests, but not when pytest itself is killed
    (``timeout``, a CI time limit, SIGKILL).  PR_SET_PDEATHSIG would be the usual answer, but
    the kernel clears it when a process changes its credentials, which both Dovecot's and
    Postfix's masters do as they start; so a small shell watches a pipe from us instead.
    """
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        )
    read_end, write_end = os.pipe()  # not inherited by later children (PEP 446)
    try:
        watchdog = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, str(proc.pid)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # its own session: a Ctrl-C meant for pytest must not fire it before the
            # finalizers had their chance to stop the server cleanly
            start_new_session=True,
        )
    finally:
        os.close(read_end)
    _watchdogs[proc.pid] = (watchdog, write_end)
    return proc


def _disarm(proc: subprocess.Popen[bytes]) -> None:
    entry = _watchdogs.pop(proc.pid, None)
    if entry is None:
        return
    watchdog, write_end = entry
    watchdog.kill()  # first, so that closing the pipe does not make it signal anything
    watchdog.wait()
    os.close(write_end)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process does not exit in ``timeout`` seconds."""
    _disarm(proc)
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class ClosedPort:
    """A loopback port where a connection is refused, reliably.

    The socket is bound but never listens: Linux answers a SYN to it with RST, and nothing
    else can bind the port while this object holds it (closing a probe socket and hoping the
    port stays unused would race with other tests).
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self.host = HOST
        self.port: int = self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ClosedPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
