"""The pidfile shared with fetchmail: what each run is told, and which files exist after.

The decision is a table; everything else runs on real files in tmp_path and real processes
that get real signals.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from fetcher.config import Environment
from fetcher.errors import LocalError
from fetcher.exitcodes import ExitCode
from fetcher.lock import (
    Action,
    Holder,
    PidLock,
    Request,
    acquire,
    claim,
    decide,
    read_holder,
)

DEADLINE = 5.0  # seconds; every wait here takes a few milliseconds when things work

# The decision

FG = Holder(4242, background=False)
BG = Holder(4242, background=True)
FETCHMAIL_FG = Holder(77, background=False, program="fetchmail")
FETCHMAIL_BG = Holder(77, background=True, program="fetchmail")
REFUSE, WAKE, STOP, RUN = Action.REFUSE, Action.WAKE, Action.STOP_HOLDER, Action.RUN
EXCLUDE, SUCCESS = ExitCode.EXCLUDE, ExitCode.SUCCESS

DECISIONS = [
    # -q
    ("quit, none", None, Request(quit=True), REFUSE, "no other pyfetch is running", EXCLUDE),
    ("quit, none, -s", None, Request(quit=True, silent=True),
     REFUSE, "no other pyfetch is running", EXCLUDE),
    ("quit, daemon", BG, Request(quit=True), STOP, "background pyfetch at 4242 killed.", SUCCESS),
    ("quit, foreground fetchmail", FETCHMAIL_FG, Request(quit=True),
     STOP, "foreground fetchmail at 77 killed.", SUCCESS),
    ("quit, daemon, -s", BG, Request(quit=True, silent=True), STOP, None, SUCCESS),
    ("quit wins over all", FG,
     Request(quit=True, check=True, named_servers=True, other_options=True),
     STOP, "foreground pyfetch at 4242 killed.", SUCCESS),
    # -c
    ("check, daemon", BG, Request(check=True),
     REFUSE, "can't check mail while another pyfetch to same host is running.", EXCLUDE),
    ("check wins over names", FETCHMAIL_FG, Request(check=True, named_servers=True),
     REFUSE, "can't check mail while another fetchmail to same host is running.", EXCLUDE),
    # server names
    ("names, daemon", BG, Request(named_servers=True),
     REFUSE, "can't poll specified hosts with another pyfetch running at 4242.", EXCLUDE),
    ("names win over foreground and options", FG,
     Request(named_servers=True, other_options=True, silent=True),
     REFUSE, "can't poll specified hosts with another pyfetch running at 4242.", EXCLUDE),
    # a foreground holder
    ("foreground", FG, Request(),
     REFUSE, "another foreground pyfetch is running at 4242.", EXCLUDE),
    ("foreground wins over options", FETCHMAIL_FG, Request(other_options=True),
     REFUSE, "another foreground fetchmail is running at 77.", EXCLUDE),
    ("foreground, -s", FG, Request(silent=True),
     REFUSE, "another foreground pyfetch is running at 4242.", EXCLUDE),
    # a daemon
    ("options, daemon", BG, Request(other_options=True),
     REFUSE, "can't accept options while a background pyfetch is running.", EXCLUDE),
    ("options, daemon, -s", FETCHMAIL_BG, Request(other_options=True, silent=True),
     REFUSE, "can't accept options while a background fetchmail is running.", EXCLUDE),
    ("daemon", BG, Request(), WAKE, "background pyfetch at 4242 awakened.", SUCCESS),
    ("fetchmail daemon", FETCHMAIL_BG, Request(),
     WAKE, "background fetchmail at 77 awakened.", SUCCESS),
    ("daemon, -s", BG, Request(silent=True), WAKE, None, SUCCESS),
    # nobody
    ("none", None, Request(), RUN, None, None),
    ("none, everything", None,
     Request(check=True, named_servers=True, other_options=True, silent=True), RUN, None, None),
]


@pytest.mark.parametrize(
    ("holder", "request_", "action", "message", "exit_code"),
    [pytest.param(*row[1:], id=row[0]) for row in DECISIONS],
)
def test_decide(
    holder: Holder | None,
    request_: Request,
    action: Action,
    message: str | None,
    exit_code: ExitCode | None,
) -> None:
    decision = decide(holder, request_)
    assert (decision.action, decision.message, decision.exit_code) == (
        action, message, exit_code
    )


# Processes and files


@pytest.fixture
def pidfile(tmp_path: Path) -> Path:
    return tmp_path / ".fetchmail.pid"


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start processes that are killed at the end of the test, whatever happened."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(args, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def sleeper(spawn: Callable[..., subprocess.Popen[bytes]], argv0: str = "sleep") -> int:
    proc = spawn(argv0, "30", executable=shutil.which("sleep"))
    return proc.pid


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: the PID names no process now
    return child.pid


def wait_until(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {DEADLINE} s")
        time.sleep(0.01)


def read(path: Path, messages: list[str] | None = None) -> Holder | None:
    return read_holder(str(path), report=(messages if messages is not None else []).append)


def stale_message(path: Path) -> str:
    return f'removing stale lockfile "{path}"'


# Taking and giving back


def test_acquire_writes_fetchmails_foreground_format(pidfile: Path) -> None:
    lock = acquire(str(pidfile), 0)
    assert lock is not None and lock.pid == os.getpid()
    assert pidfile.read_bytes() == f"{os.getpid()}\n".encode()
    assert pidfile.stat().st_mode & 0o777 == 0o600
    assert os.listdir(pidfile.parent) == [pidfile.name]  # no temporary file left behind


def test_acquire_writes_the_daemons_interval(pidfile: Path) -> None:
    assert acquire(str(pidfile), 60) is not None
    assert pidfile.read_bytes() == f"{os.getpid()}\n60\n".encode()


def test_a_second_acquire_gets_nothing(pidfile: Path) -> None:
    first = acquire(str(pidfile), 0)
    assert first is not None
    pidfile.write_text("12345\n")
    assert acquire(str(pidfile), 60) is None
    assert pidfile.read_text() == "12345\n"
    assert os.listdir(pidfile.parent) == [pidfile.name]


def test_acquire_in_a_missing_directory_says_why(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "fetchmail.pid"
    with pytest.raises(LocalError) as caught:
        acquire(str(path), 0)
    assert caught.value.exit_code == ExitCode.EXCLUDE
    assert caught.value.message == f"{path}: No such file or directory\nlock creation failed."


def test_release_removes_our_file_once(pidfile: Path) -> None:
    lock = acquire(str(pidfile), 0)
    assert lock is not None
    lock.release()
    assert not pidfile.exists()
    pidfile.write_text("12345\n")
    lock.release()  # idempotent: the next holder's file stays
    assert pidfile.read_text() == "12345\n"


def test_release_leaves_another_holders_file(pidfile: Path) -> None:
    lock = acquire(str(pidfile), 0)
    assert lock is not None
    pidfile.write_text("12345\n60\n")
    lock.release()
    assert pidfile.read_text() == "12345\n60\n"


def test_adopt_hands_the_lock_to_the_detached_daemon(
    pidfile: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    lock = acquire(str(pidfile), 0)
    assert lock is not None
    daemon = sleeper(spawn)
    lock.adopt(daemon, 60)
    assert lock.pid == daemon
    assert pidfile.read_bytes() == f"{daemon}\n60\n".encode()
    assert pidfile.stat().st_mode & 0o777 == 0o600
    assert os.listdir(pidfile.parent) == [pidfile.name]
    assert read(pidfile) == Holder(daemon, background=True)
    lock.release()  # the parent's copy: the daemon's lock stays
    assert pidfile.exists()


def test_adopt_refuses_a_lock_taken_over_meanwhile(pidfile: Path) -> None:
    lock = acquire(str(pidfile), 0)
    assert lock is not None
    pidfile.write_text("12345\n")
    with pytest.raises(LocalError) as caught:
        lock.adopt(54321, 60)
    assert caught.value.exit_code == ExitCode.EXCLUDE
    assert "no longer holds PID" in caught.value.message
    assert pidfile.read_text() == "12345\n"


# Stale files


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: f"{dead_pid()}\n60\n", id="dead process"),
        pytest.param(lambda: "garbage\n", id="garbage"),
        pytest.param(lambda: "", id="empty"),
        pytest.param(lambda: f"{os.getpid()}\n", id="our own PID"),
        pytest.param(lambda: "0\n", id="PID 0"),
    ],
)
def test_a_stale_file_is_removed(pidfile: Path, content: Callable[[], str]) -> None:
    pidfile.write_text(content())
    messages: list[str] = []
    assert read(pidfile, messages) is None
    assert messages == [stale_message(pidfile)]
    assert not pidfile.exists()


def test_a_pid_reused_since_the_file_was_written_is_stale(
    pidfile: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    pid = sleeper(spawn)
    pidfile.write_text(f"{pid}\n60\n")
    an_hour_ago = time.time() - 3600
    os.utime(pidfile, (an_hour_ago, an_hour_ago))
    messages: list[str] = []
    assert read(pidfile, messages) is None
    assert messages == [stale_message(pidfile)]
    assert not pidfile.exists()


def test_a_fetchmail_that_seems_younger_than_its_file_is_kept(
    pidfile: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """The clock was stepped forward after the daemon started: its file looks too old."""
    pid = sleeper(spawn, argv0="fetchmail")
    pidfile.write_text(f"{pid}\n60\n")
    an_hour_ago = time.time() - 3600
    os.utime(pidfile, (an_hour_ago, an_hour_ago))
    assert read(pidfile) == Holder(pid, background=True, program="fetchmail")
    assert pidfile.exists()


@pytest.mark.parametrize(
    ("lines", "background"), [("{}\n", False), ("{}\n60\n", True), ("  {} 300", True)]
)
def test_a_live_holder_is_kept(
    pidfile: Path,
    spawn: Callable[..., subprocess.Popen[bytes]],
    lines: str,
    background: bool,
) -> None:
    pid = sleeper(spawn)
    pidfile.write_text(lines.format(pid))
    messages: list[str] = []
    assert read(pidfile, messages) == Holder(pid, background, "pyfetch")
    assert messages == []
    assert pidfile.exists()


def test_a_holder_of_another_user_is_alive(pidfile: Path) -> None:
    """kill(1, 0) fails with EPERM for a user: the process exists all the same."""
    pidfile.write_text("1\n")
    holder = read(pidfile)
    assert holder is not None and holder.pid == 1
    assert pidfile.exists()


def test_no_file_no_holder(pidfile: Path) -> None:
    messages: list[str] = []
    assert read(pidfile, messages) is None
    assert messages == []


def test_a_symlink_is_neither_followed_nor_removed(pidfile: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("garbage\n")
    pidfile.symlink_to(target)
    with pytest.raises(LocalError) as caught:
        read(pidfile)
    assert caught.value.exit_code == ExitCode.EXCLUDE
    assert caught.value.message.startswith(f'error reading lockfile "{pidfile}": ')
    assert pidfile.is_symlink() and target.read_text() == "garbage\n"


# claim(): what a run does about a real holder

HOLDER = """
import os, signal, sys, time
pidfile, mode = sys.argv[1:3]
def on_usr1(signum, frame):
    open(pidfile + ".woken", "w").close()
def on_term(signum, frame):
    os.unlink(pidfile)
    sys.exit(0)
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_term)
with open(pidfile + ".new", "w") as f:
    f.write(f"{os.getpid()}\\n" if mode == "foreground" else f"{os.getpid()}\\n60\\n")
os.rename(pidfile + ".new", pidfile)
while True:
    time.sleep(0.01)
"""


@pytest.fixture
def holder(
    pidfile: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> Callable[[str], subprocess.Popen[bytes]]:
    """A process that writes the pidfile like a running pyfetch: "daemon" wakes on SIGUSR1
    and removes its file on SIGTERM, "foreground" writes no interval, "stubborn" ignores
    SIGTERM."""

    def start(mode: str) -> subprocess.Popen[bytes]:
        proc = spawn(sys.executable, "-c", HOLDER, str(pidfile), mode)
        wait_until("pidfile", pidfile.exists)
        return proc

    return start


def test_claim_wakes_a_daemon(
    pidfile: Path, holder: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    daemon = holder("daemon")
    messages: list[str] = []
    assert claim(str(pidfile), Request(), 0, report=messages.append) == ExitCode.SUCCESS
    assert messages == [f"background pyfetch at {daemon.pid} awakened."]
    wait_until("SIGUSR1 handled", Path(f"{pidfile}.woken").exists)
    assert daemon.poll() is None and pidfile.exists()


def test_claim_quit_stops_the_daemon(
    pidfile: Path, holder: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    daemon = holder("daemon")
    messages: list[str] = []
    assert claim(str(pidfile), Request(quit=True), 0, report=messages.append) == SUCCESS
    assert messages == [f"background pyfetch at {daemon.pid} killed."]
    assert not pidfile.exists()
    assert daemon.wait(timeout=DEADLINE) == 0


def test_claim_quit_gives_up_on_a_holder_that_stays(
    pidfile: Path, holder: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    stubborn = holder("stubborn")
    messages: list[str] = []
    result = claim(
        str(pidfile), Request(quit=True, silent=True), 0, report=messages.append, stop_timeout=0.2
    )
    assert result == ExitCode.EXCLUDE
    assert messages == [f"pyfetch at {stubborn.pid} did not stop within 0.2 seconds"]
    assert pidfile.exists() and stubborn.poll() is None


def test_claim_refuses_beside_a_foreground_run(
    pidfile: Path, holder: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    running = holder("foreground")
    content = pidfile.read_bytes()
    messages: list[str] = []
    assert claim(str(pidfile), Request(), 0, report=messages.append) == ExitCode.EXCLUDE
    assert messages == [f"another foreground pyfetch is running at {running.pid}."]
    assert pidfile.read_bytes() == content and running.poll() is None


def test_claim_quit_with_nobody_running(pidfile: Path) -> None:
    messages: list[str] = []
    assert claim(str(pidfile), Request(quit=True), 0, report=messages.append) == EXCLUDE
    assert messages == ["no other pyfetch is running"]
    assert not pidfile.exists()


def test_claim_quit_after_a_crash(pidfile: Path) -> None:
    pidfile.write_text(f"{dead_pid()}\n60\n")
    messages: list[str] = []
    assert claim(str(pidfile), Request(quit=True), 0, report=messages.append) == EXCLUDE
    assert messages == [stale_message(pidfile), "no other pyfetch is running"]
    assert not pidfile.exists()


def test_claim_replaces_a_stale_file(pidfile: Path) -> None:
    pidfile.write_text(f"{dead_pid()}\n")
    messages: list[str] = []
    lock = claim(str(pidfile), Request(), 300, report=messages.append)
    assert isinstance(lock, PidLock)
    assert messages == [stale_message(pidfile)]
    assert pidfile.read_bytes() == f"{os.getpid()}\n300\n".encode()
    with lock:
        pass
    assert not pidfile.exists()


RACER = """
import os, sys, time
from fetcher.lock import PidLock, Request, claim
pidfile, go, done = sys.argv[1:4]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
result = claim(pidfile, Request(), 0, report=lambda line: print(line, file=sys.stderr))
print("got it" if isinstance(result, PidLock) else f"refused {int(result)}", flush=True)
while not os.path.exists(done):  # hold the lock until every racer has decided
    time.sleep(0.01)
if isinstance(result, PidLock):
    result.release()
"""


def test_of_eight_runs_racing_for_a_stale_file_one_wins(
    pidfile: Path, tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    pidfile.write_text(f"{dead_pid()}\n60\n")
    go, done = tmp_path / "go", tmp_path / "done"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    racers = [
        spawn(
            sys.executable, "-c", RACER, str(pidfile), str(go), str(done),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for _ in range(8)
    ]
    for racer in racers:
        assert racer.stdout is not None and racer.stdout.readline() == b"ready\n"
    go.touch()
    results = []
    for racer in racers:
        assert racer.stdout is not None
        results.append(racer.stdout.readline().decode().strip())
    done.touch()
    errors = [racer.communicate(timeout=DEADLINE)[1].decode() for racer in racers]
    assert sorted(results) == ["got it"] + ["refused 8"] * 7
    winner = racers[results.index("got it")]
    assert "".join(errors).count(stale_message(pidfile)) == 1
    assert errors.count(f"another foreground pyfetch is running at {winner.pid}.\n") == 7
    assert all(racer.returncode == 0 for racer in racers)
    assert not pidfile.exists()


@pytest.mark.parametrize(
    ("fetchmailhome", "is_root", "expected"),
    [
        (None, False, "/home/bob/.fetchmail.pid"),
        ("/srv/fm", False, "/srv/fm/fetchmail.pid"),
        (None, True, "/var/run/fetchmail.pid"),
        ("/srv/fm", True, "/var/run/fetchmail.pid"),  # fetchmail 6.4.37 ignores it for root
    ],
)
def test_the_default_pidfile_is_fetchmails(
    fetchmailhome: str | None, is_root: bool, expected: str
) -> None:
    env = Environment(user="bob", home="/home/bob", fetchmailhome=fetchmailhome, is_root=is_root)
    assert env.default_pidfile == expected
