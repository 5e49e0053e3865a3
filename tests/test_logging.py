"""Where the lines go, as a user meets it: fetchmail's logfile, syslog, the terminal, and the
root warning; the real `pyfetch` beside the real fetchmail 6.4.37 where both apply.

Syslog is a Unix datagram socket the test binds, named to pyfetch with PYFETCH_SYSLOG_SOCKET
(for users: syslog listening somewhere else than /dev/log, as in a container).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT, ROOT_WARNING
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.fixtures import unavailable
from servers.smtp import SMTPServer
from test_e2e_daemon import ended, pop3, read_pid, write_rcfile
from test_e2e_idle import DEADLINE, message, subjects

AS_ROOT = os.getuid() == 0
PYFETCH_WARNING = ROOT_WARNING
FETCHMAIL_WARNING = "fetchmail: WARNING: Running as root is discouraged.\n" if AS_ROOT else ""
# a logfile line of a daemon: syslog's time, then the line as the terminal would show it
STAMPED = re.compile(r"[A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d (\S.*)")
# a syslog message as syslog(3) sends it: <facility mail * 8 + level>time tag[pid]: text
SYSLOG = re.compile(rb"<(\d+)>[A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d pyfetch\[(\d+)\]: (.*)")
LOG_ERR, LOG_INFO = 2 * 8 + 3, 2 * 8 + 6


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def logfile(home: Path) -> Path:
    """fetchmail appends to a logfile that exists, only."""
    path = home / "pyfetch.log"
    path.touch()
    return path


class Syslog:
    """A syslog daemon's socket: the messages pyfetch sends, as received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[tuple[int, int, str]] = []  # (priority, pid, text)

    def messages(self) -> list[tuple[int, int, str]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.received
            match = SYSLOG.fullmatch(data)
            assert match, data  # exactly syslog(3)'s form, no NUL, no newline
            self.received.append((int(match[1]), int(match[2]), match[3].decode()))

    def texts(self, priority: int) -> list[str]:
        return [text for prio, _, text in self.messages() if prio == priority]


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[Syslog]:
    server = Syslog(tmp_path / "log.sock")
    yield server
    server.sock.close()


@pytest.fixture
def detached(home: Path) -> Iterator[None]:
    """Kills a detached daemon a failed test left behind."""
    yield
    pid = read_pid(home)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(
    home: Path, *args: str, env: dict[str, str] | None = None, program: str = "pyfetch"
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fetcher"] if program == "pyfetch" else [program]
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C",
               "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [*command, *args], env=environ, cwd=home, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, errors="replace", timeout=DEADLINE * 3, check=False,
    )


def dead(port: int) -> str:
    """An account on a port where nothing listens: its poll fails with an error."""
    return f"poll dead.isp.net via 127.0.0.1 service {port} proto pop3 user bob password s3cr3t " \
           "sslproto ''\n"


def wait_until(what: str, condition: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"no {what} after {deadline} s")
        time.sleep(0.05)


# -- the logfile ------------------------------------------------------------------------------


def test_a_detached_daemon_appends_every_line_to_its_logfile_each_with_the_time(
    home: Path, logfile: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    closed_port: int, detached: None,
) -> None:
    dovecot.seed("bob", [message(1)])
    logfile.write_text("an earlier line\n")
    write_rcfile(home, f"set logfile {logfile}\n" + pop3(dovecot, test_ca, smtpd)
                 + dead(closed_port))
    started = run(home, "-d", "1")
    assert started.returncode == 0, started.stderr
    # the terminal hears only the root warning: the daemon's lines are the logfile's
    assert (started.stdout, started.stderr) == ("", PYFETCH_WARNING)
    pid = read_pid(home)
    assert pid is not None
    wait_until("the delivery", lambda: subjects(smtpd) == ["idle 1"])
    wait_until("the poll's lines", lambda: "reading message bob@" in logfile.read_text())
    wait_until("the failing account's error", lambda: "dead.isp.net" in logfile.read_text())

    stopped = run(home, "-q")
    assert stopped.returncode == 0, stopped.stderr
    wait_until("the daemon's end", lambda: ended(pid))
    first, *lines = logfile.read_text().splitlines()
    assert first == "an earlier line"  # appended to, as fetchmail does
    said = []
    for line in lines:
        stamped = STAMPED.fullmatch(line)
        assert stamped, line
        said.append(stamped[1])
    assert said[0].startswith("pyfetch: starting pyfetch ") and said[0].endswith(" daemon")
    assert any(line.startswith("1 message for bob at bob.isp.net (") for line in said)
    assert any(line.startswith("reading message bob@127.0.0.1:1 of 1 (") for line in said)
    assert f"pyfetch: connection to 127.0.0.1:{closed_port} failed: Connection refused" in said
    assert said[-1] == "pyfetch: terminated with signal 15"
    text = logfile.read_text()
    assert "hidden" not in text and "s3cr3t" not in text  # never a password
    assert "Running as root" not in text


@pytest.mark.usefixtures("need_fetchmail")
def test_a_single_run_writes_to_the_logfile_and_not_to_the_terminal_as_fetchmail(
    home: Path, closed_port: int
) -> None:
    write_rcfile(home, dead(closed_port))
    for program, warning in (("fetchmail", FETCHMAIL_WARNING), ("pyfetch", PYFETCH_WARNING)):
        log = home / f"{program}.log"
        log.touch()
        result = run(home, "-L", str(log), program=program)
        assert result.returncode == 2, result.stderr  # a socket error
        assert (result.stdout, result.stderr) == ("", warning)
        text = log.read_text()
        assert f"connection to 127.0.0.1:{closed_port} " in text, text
        # no time at the start of a single run's lines, as in fetchmail
        assert text.startswith(f"{program}: "), text


def test_an_mdas_words_in_the_logfile_come_after_the_lines_before_it(
    home: Path, logfile: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    """The run gathers its lines before writing them to a file; an MDA writes to the same
    file at once. What the run said before starting the MDA must not come after it."""
    dovecot.seed("bob", [message(1), message(2)])
    mda = f"mda 'echo the MDA speaks; cat >> {home}/mbox'"
    write_rcfile(home, pop3(dovecot, test_ca, smtpd, options=mda))
    result = run(home, "-v", "-L", str(logfile))
    assert result.returncode == 0, result.stderr
    lines = logfile.read_text().splitlines()
    spoken = [n for n, line in enumerate(lines) if line == "the MDA speaks"]
    asked = [n for n, line in enumerate(lines) if re.match(r"pyfetch: POP3> (TOP|RETR) 1\b", line)]
    assert len(spoken) == 2 and len(asked) == 1, lines
    assert asked[0] < spoken[0], "\n".join(lines)
    assert (home / "mbox").read_text().count("Subject: idle") == 2


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize(
    ("option", "warning"),
    [("-N", "The nodetach option is in effect, ignoring logfile option."),
     ("missing", 'Logfile "{log}" does not exist, ignoring logfile option.')],
)
def test_a_logfile_fetchmail_ignores_is_ignored_with_its_warning(
    home: Path, logfile: Path, closed_port: int, option: str, warning: str
) -> None:
    """-N keeps the lines on the terminal (for a unit file), as fetchmail; so does a logfile
    that does not exist (a typo creates no file). -s leaves the warning out, as fetchmail."""
    log = logfile if option == "-N" else home / "missing.log"
    write_rcfile(home, dead(closed_port))
    args = ["-L", str(log), *(["-N"] if option == "-N" else [])]
    for program, root in (("fetchmail", FETCHMAIL_WARNING), ("pyfetch", PYFETCH_WARNING)):
        result = run(home, *args, program=program)
        assert result.returncode == 2
        assert result.stderr.startswith(root + warning.format(log=log) + "\n"), result.stderr
        assert f"connection to 127.0.0.1:{closed_port} " in result.stderr  # the terminal's
        assert not log.exists() or log.read_text() == ""
        silent = run(home, *args, "-s", program=program)
        assert warning.format(log=log) not in silent.stderr


@pytest.fixture
def read_only_logfile(tmp_path: Path) -> Iterator[Path]:
    """An existing logfile nobody, root included, may write: on a read-only file system."""
    mountpoint = tmp_path / "ro"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a small file system: {mounted.stderr.strip()}")
    try:
        (mountpoint / "log").touch()
        subprocess.run(["mount", "-o", "remount,ro", str(mountpoint)], check=True)
        yield mountpoint / "log"
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.mark.usefixtures("need_fetchmail")
def test_a_logfile_that_cannot_be_written_ends_the_run_as_in_fetchmail(
    home: Path, read_only_logfile: Path, closed_port: int
) -> None:
    write_rcfile(home, dead(closed_port))
    for program, root in (("fetchmail", FETCHMAIL_WARNING), ("pyfetch", PYFETCH_WARNING)):
        result = run(home, "-L", str(read_only_logfile), program=program)
        assert result.returncode == 23
        assert result.stderr == f'{root}Logfile "{read_only_logfile}" is not writable, aborting.\n'


# -- syslog -----------------------------------------------------------------------------------


def test_syslog_gets_every_line_errors_at_log_err_and_the_terminal_none(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, closed_port: int,
    syslog: Syslog,
) -> None:
    dovecot.seed("bob", [message(1)])
    write_rcfile(home, "set syslog\n" + pop3(dovecot, test_ca, smtpd) + dead(closed_port))
    result = run(home, env={"PYFETCH_SYSLOG_SOCKET": str(syslog.path)})
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", PYFETCH_WARNING)  # as fetchmail: syslog only
    info, errors = syslog.texts(LOG_INFO), syslog.texts(LOG_ERR)
    assert any(text.startswith("1 message for bob at bob.isp.net (") for text in info), info
    assert any(text.startswith("reading message bob@127.0.0.1:1 of 1 (") for text in info)
    assert f"connection to 127.0.0.1:{closed_port} failed: Connection refused" in errors
    assert "Socket or TLS error on bob@dead.isp.net" in errors
    assert {pid for _, pid, _ in syslog.messages()} != {os.getpid()}  # the program's own PID
    assert len({pid for _, pid, _ in syslog.messages()}) == 1
    assert not any("hidden" in text or "s3cr3t" in text for _, _, text in syslog.messages())


@pytest.mark.parametrize(
    ("rcfile", "args", "where"),
    [("set syslog\n", ["--nosyslog"], "terminal"),
     ("set no syslog\n", [], "terminal"),
     ("", ["--syslog"], "syslog"),
     ("set syslog\nset logfile {log}\n", [], "logfile"),  # a logfile wins, as in fetchmail
     ("", ["--syslog", "-L", "{log}"], "logfile")],
)
def test_syslog_on_and_off_and_the_logfile_winning(
    home: Path, logfile: Path, closed_port: int, syslog: Syslog,
    rcfile: str, args: list[str], where: str,
) -> None:
    write_rcfile(home, rcfile.format(log=logfile) + dead(closed_port))
    result = run(home, *(arg.format(log=logfile) for arg in args),
                 env={"PYFETCH_SYSLOG_SOCKET": str(syslog.path)})
    assert result.returncode == 2
    failed = f"connection to 127.0.0.1:{closed_port} failed: Connection refused"
    assert (failed in result.stderr) == (where == "terminal"), result.stderr
    assert (failed in syslog.texts(LOG_ERR)) == (where == "syslog")
    assert (failed in logfile.read_text()) == (where == "logfile")
    if where != "syslog":
        assert syslog.messages() == []


def test_a_detached_daemon_without_logfile_sends_its_errors_to_syslog(
    home: Path, closed_port: int, syslog: Syslog, detached: None,
) -> None:
    """fetchmail sends them to /dev/null; pyfetch's errors reach the user somewhere."""
    write_rcfile(home, dead(closed_port))
    env = {"PYFETCH_SYSLOG_SOCKET": str(syslog.path)}
    version = run(home, "-V", "-d", "1", env=env)
    assert ("Errors will be logged via syslog (no logfile, no terminal); progress messages "
            "will be discarded.\n") in version.stdout
    started = run(home, "-d", "1", env=env)
    assert (started.returncode, started.stdout, started.stderr) == (0, "", PYFETCH_WARNING)
    daemon = read_pid(home)
    failed = f"connection to 127.0.0.1:{closed_port} failed: Connection refused"
    wait_until("the error in syslog", lambda: failed in syslog.texts(LOG_ERR))
    assert run(home, "-q").returncode == 0
    assert syslog.texts(LOG_INFO) == []  # not `starting pyfetch ... daemon`: nobody asked
    assert {pid for _, pid, _ in syslog.messages()} == {daemon}  # the daemon's, not its parent's


def test_where_syslog_cannot_be_reached_the_lines_reach_the_terminal_or_a_warning_does(
    home: Path, tmp_path: Path, closed_port: int, detached: None,
) -> None:
    nowhere = tmp_path / "no-syslog-here"
    env = {"PYFETCH_SYSLOG_SOCKET": str(nowhere)}
    write_rcfile(home, dead(closed_port))
    result = run(home, "--syslog", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"{PYFETCH_WARNING}pyfetch: syslog cannot be reached at {nowhere} (No such file or "
        "directory): writing to the terminal instead.\n"
    )
    assert f"connection to 127.0.0.1:{closed_port} failed" in result.stderr

    version = run(home, "-V", "--syslog", env=env)
    assert (f"Syslog socket {nowhere} cannot be reached (No such file or directory): messages "
            "will go to the terminal until it can.\n") in version.stdout

    started = run(home, "-d", "1", env=env)  # said while there is a terminal to say it on
    assert started.returncode == 0
    assert started.stderr == (
        f"{PYFETCH_WARNING}pyfetch: no logfile, and syslog cannot be reached at {nowhere} (No "
        "such file or directory): the daemon's errors will be lost until it can (-L FILE would "
        "keep them).\n"
    )
    assert run(home, "-q").returncode == 0


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a small file system: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_lines_the_logfile_cannot_take_go_to_syslog(
    home: Path, full_disk: Path, closed_port: int, syslog: Syslog, detached: None,
) -> None:
    """A daemon's logfile on a disk that filled up: its errors are not lost."""
    log = full_disk / "log"
    log.touch()
    with (full_disk / "filler").open("wb") as handle, pytest.raises(OSError):
        handle.write(b"x" * 1024 * 1024)
        handle.flush()
    write_rcfile(home, f"set logfile {log}\n" + dead(closed_port))
    started = run(home, "-d", "1", env={"PYFETCH_SYSLOG_SOCKET": str(syslog.path)})
    assert started.returncode == 0, started.stderr
    failed = f"connection to 127.0.0.1:{closed_port} failed: Connection refused"
    wait_until("the error in syslog", lambda: failed in syslog.texts(LOG_ERR))  # as it is
    assert run(home, "-q").returncode == 0
    assert log.read_text() == ""  # the disk is full


# -- -V ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize(
    ("rcfile", "fetchmail_says", "pyfetch_adds"),
    [("set logfile {log}\n", ["Logfile is {log}"], []),
     ("set daemon 60\nset logfile {log}\n", ["Logfile is {log}"],
      ["Logfile lines will start with the time."]),
     ("set syslog\n", ["Progress messages will be logged via syslog"],
      ["Syslog socket is {sock}."]),
     ("set syslog\nset logfile {log}\n", ["Logfile is {log}"], [])],
)
def test_version_says_where_the_lines_go(
    home: Path, logfile: Path, syslog: Syslog, closed_port: int,
    rcfile: str, fetchmail_says: list[str], pyfetch_adds: list[str],
) -> None:
    write_rcfile(home, rcfile.format(log=logfile) + dead(closed_port))
    values = {"log": logfile, "sock": syslog.path}
    env = {"PYFETCH_SYSLOG_SOCKET": str(syslog.path)}
    theirs = run(home, "-V", program="fetchmail").stdout.splitlines()
    ours = run(home, "-V", env=env).stdout.splitlines()
    for line in fetchmail_says:
        assert line.format(**values) in theirs
        assert line.format(**values) in ours
    for line in pyfetch_adds:
        assert line.format(**values) in ours
    told = {"Logfile is", "Progress messages will be logged via syslog", "Syslog socket",
            "Errors will be logged", "Logfile lines"}
    said = [line for line in ours if any(line.startswith(start) for start in told)]
    assert said == [line.format(**values) for line in fetchmail_says + pyfetch_adds]


def test_version_promises_progress_dots_as_fetchmail(home: Path, closed_port: int) -> None:
    write_rcfile(home, "set showdots\n" + dead(closed_port))
    version = run(home, "-V")
    assert "pyfetch will show progress dots even in logfiles.\n" in version.stdout


# -- the root warning -------------------------------------------------------------------------


@pytest.mark.skipif(not AS_ROOT, reason="the warning is for runs as root")
@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize("args", [["-V"], ["--configdump"], ["--help"], ["-q"], ["-s"], []])
def test_every_run_as_root_starts_with_fetchmails_warning(
    home: Path, closed_port: int, args: list[str]
) -> None:
    write_rcfile(home, dead(closed_port))
    theirs = run(home, *args, program="fetchmail")
    ours = run(home, *args)
    assert theirs.stderr.startswith(FETCHMAIL_WARNING), theirs.stderr
    assert ours.stderr.startswith(PYFETCH_WARNING), ours.stderr
    assert ours.stderr.count("Running as root") == 1
    assert "Running as root" not in ours.stdout  # never mixed into -V's or the dump's output
