"""The daemon, the lock and the run loop as a user meets them: the real `pyfetch` program, a
real Dovecot and a recording SMTP server.

The rcfiles here say `set pidfile` (rather than the --pidfile of the other end-to-end tests),
so that a second plain `pyfetch`, as an `ip-up` hook or cron runs it, finds the first one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from conftest import ROOT_WARNING as PYFETCH_ROOT_WARNING
from fakes.pop3 import SILENT_GREETING, FakePop3Server
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer
from test_e2e_idle import BOB, DEADLINE, Running, entry, message, subjects

SOON = 8.0  # seconds: well under the mute server's timeout below, far over what a poll takes


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def start(home: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def run(*args: str, name: str = "") -> Running:
        started.append(Running(home, *args, pidfile_option=False, name=name))
        return started[-1]

    yield run
    for one in started:
        one.stop(signal.SIGKILL)


@pytest.fixture
def detached(home: Path) -> Iterator[None]:
    """Kills a detached daemon a failed test left behind."""
    yield
    pid = read_pid(home)
    if pid is not None:
        with _gone_already():
            os.kill(pid, signal.SIGKILL)


class _gone_already:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *rest: object) -> bool:
        return kind is ProcessLookupError


def write_rcfile(home: Path, text: str) -> None:
    """The rcfile, replaced in one step with its final mode, as an editor saves it."""
    temporary = home / ".fetchmailrc.new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"set pidfile {home / 'pyfetch.pid'}\n" + text)
    os.replace(temporary, home / ".fetchmailrc")


def pop3(dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, user: str = "bob",
         password: str = "hidden", options: str = "") -> str:
    """A poll entry for `user` on Dovecot's POP3 port, delivering to the SMTP server."""
    host, port = smtpd.address
    return (
        f"poll {user}.isp.net via 127.0.0.1 service {dovecot.ports['pop3']} proto pop3\n"
        f"  user {user} there is {user} here password {password} {options}\n"
        f"  sslcertfile {test_ca.ca_cert} sslcommonname localhost smtphost {host}/{port}\n"
    )


def fake(
    server: FakePop3Server, smtpd: SMTPServer, user: str = "bob", timeout: int = 20,
    options: str = "",
) -> str:
    """A poll entry for a scripted server (plain POP3, a short timeout)."""
    host, port = smtpd.address
    return (
        f"poll fake.isp.net via 127.0.0.1 service {server.port} proto pop3 timeout {timeout} "
        f"{options}\n"
        f"  user {user} there is {user} here password secret sslproto '' "
        f"smtphost {host}/{port}\n"
    )


def pyfetch(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pyfetch's stderr without its first line as root, the root warning (checked here)."""
    result = program(home, [sys.executable, "-m", "fetcher"], *args)
    warning = PYFETCH_ROOT_WARNING
    assert result.stderr.startswith(warning), result.stderr
    result.stderr = result.stderr.removeprefix(warning)
    return result


def fetchmail(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real fetchmail, with the same home and rcfile (so the same `set pidfile`)."""
    return program(home, ["fetchmail"], *args)


def program(home: Path, command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*command, *args], env=env, cwd=home, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, errors="replace", timeout=DEADLINE * 3, check=False,
    )


ROOT_WARNING = "fetchmail: WARNING: Running as root is discouraged.\n"


def read_pid(home: Path) -> int | None:
    try:
        return int((home / "pyfetch.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def sleeping_daemon(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> Running:
    """A pyfetch daemon in the foreground (`set daemon 3600`, -N -v) for bob, once its first
    poll is done: from then on only a wake-up makes it poll again."""
    write_rcfile(home, "set daemon 3600\n" + pop3(dovecot, test_ca, smtpd))
    run = start("-N", "-v")
    run.wait_for("the first poll", lambda: "sleeping at" in run.output())
    return run


def wait_until(what: str, condition: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"no {what} after {deadline} s")
        time.sleep(0.02)


def test_daemon_polls_every_interval_until_q_stops_it(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.seed("bob", [message(1)])
    write_rcfile(home, pop3(dovecot, test_ca, smtpd))
    run = start("-d", "1", "-N", "-v")
    run.wait_for("the first poll", lambda: subjects(smtpd) == ["idle 1"])
    assert (home / "pyfetch.pid").read_text() == f"{run.proc.pid}\n1\n"  # fetchmail's form
    dovecot.seed("bob", [message(2)])
    run.wait_for("a poll a second later", lambda: subjects(smtpd) == ["idle 1", "idle 2"])

    quit_ = pyfetch(home, "-q")
    assert quit_.returncode == 0, quit_.stderr
    assert quit_.stderr == f"pyfetch: background pyfetch at {run.proc.pid} killed.\n"
    assert not (home / "pyfetch.pid").exists()  # gone by the time -q returns
    assert run.proc.wait(timeout=DEADLINE) == 0  # mail was retrieved
    out = run.output()
    assert "pyfetch: starting pyfetch" in out and " daemon" in out
    assert "pyfetch: sleeping at " in out and " for 1 seconds" in out
    assert "pyfetch: awakened at " in out
    assert "pyfetch: terminated with signal 15" in out

    again = pyfetch(home, "-q")
    assert again.returncode == 8
    assert again.stderr == "pyfetch: no other pyfetch is running\n"


def test_sigusr1_sighup_and_a_second_pyfetch_wake_a_sleeping_daemon(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    run = sleeping_daemon(home, dovecot, test_ca, smtpd, start)
    dovecot.seed("bob", [message(1)])
    run.proc.send_signal(signal.SIGUSR1)
    run.wait_for("the poll SIGUSR1 asks for", lambda: subjects(smtpd) == ["idle 1"])
    assert "pyfetch: awakened by signal 10" in run.output()

    dovecot.seed("bob", [message(2)])
    woken = pyfetch(home)  # what an ip-up hook or a cron line runs
    assert woken.returncode == 0, woken.stderr
    assert woken.stderr == f"pyfetch: background pyfetch at {run.proc.pid} awakened.\n"
    run.wait_for("the poll a second pyfetch asks for", lambda: len(subjects(smtpd)) == 2)
    assert pyfetch(home, "-s").returncode == 0  # -v and -s alone still wake it

    dovecot.seed("bob", [message(3)])
    run.proc.send_signal(signal.SIGHUP)  # wakes a daemon too (it does not end it)
    run.wait_for("the poll SIGHUP asks for", lambda: len(subjects(smtpd)) == 3)
    assert "pyfetch: awakened by signal 1" in run.output()

    check = pyfetch(home, "-c")
    assert check.returncode == 8
    assert check.stderr == (
        "pyfetch: can't check mail while another pyfetch to same host is running.\n"
    )
    options = pyfetch(home, "-a")
    assert options.returncode == 8
    assert options.stderr == (
        "pyfetch: can't accept options while a background pyfetch is running.\n"
    )
    named = pyfetch(home, "bob.isp.net")
    assert named.returncode == 8
    assert "can't poll specified hosts with another pyfetch running at" in named.stderr
    assert run.proc.poll() is None
    assert pyfetch(home, "-q").returncode == 0


def test_daemon_detaches_and_hands_the_lock_to_the_background_process(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, detached: None,
) -> None:
    dovecot.seed("bob", [message(1)])
    write_rcfile(home, pop3(dovecot, test_ca, smtpd))
    started = pyfetch(home, "-d", "1")
    assert started.returncode == 0, started.stderr
    pid = read_pid(home)
    assert pid is not None
    assert (home / "pyfetch.pid").read_text() == f"{pid}\n1\n"
    os.kill(pid, 0)  # the background process the pidfile names is running
    wait_until("the daemon's delivery", lambda: subjects(smtpd) == ["idle 1"])
    stopped = pyfetch(home, "-q")
    assert stopped.returncode == 0, stopped.stderr
    assert not (home / "pyfetch.pid").exists()
    wait_until("the daemon's end", lambda: ended(pid))


def ended(pid: int) -> bool:
    """The process is gone, or a zombie waiting for whoever adopted it to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def test_a_second_run_beside_a_foreground_one_exits_8(
    home: Path, smtpd: SMTPServer, start: Callable[..., Running],
) -> None:
    with FakePop3Server(silent=[SILENT_GREETING]) as mute:
        write_rcfile(home, fake(mute, smtpd))
        run = start()
        run.wait_for("the lock", lambda: read_pid(home) == run.proc.pid)
        assert (home / "pyfetch.pid").read_text() == f"{run.proc.pid}\n"  # no interval line
        second = pyfetch(home)
        assert second.returncode == 8
        pid = run.proc.pid
        assert second.stderr == f"pyfetch: another foreground pyfetch is running at {pid}.\n"

        stopped = pyfetch(home, "-q")  # stops a run waiting on a server that never answers
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stderr == f"pyfetch: foreground pyfetch at {run.proc.pid} killed.\n"
        assert run.proc.wait(timeout=DEADLINE) == 1  # nothing was retrieved
        assert not (home / "pyfetch.pid").exists()


def test_a_stale_pidfile_is_removed_with_a_message(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_rcfile(home, pop3(dovecot, test_ca, smtpd))
    (home / "pyfetch.pid").write_text(f"{dead.pid}\n60\n")
    result = pyfetch(home)
    assert result.returncode == 1, result.stderr
    assert result.stderr == f'pyfetch: removing stale lockfile "{home / "pyfetch.pid"}"\n'
    assert not (home / "pyfetch.pid").exists()


def test_two_runs_started_together_deliver_every_message_once(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.seed("bob", [message(n) for n in range(30)])
    write_rcfile(home, pop3(dovecot, test_ca, smtpd))
    first = start(name="first-")
    time.sleep(0.05)
    second = start(name="second-")
    codes = sorted([first.proc.wait(timeout=DEADLINE), second.proc.wait(timeout=DEADLINE)])
    assert codes[0] == 0 and codes[1] in (1, 8), first.output() + second.output()
    assert sorted(subjects(smtpd)) == sorted(f"idle {n}" for n in range(30))
    assert dovecot.messages("bob") == []


def test_sigterm_during_a_large_message_delivers_it_once_or_leaves_it(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    line = b"x" * 998 + b"\r\n"
    big = (b"From: alice@example.org\r\nSubject: big\r\nMessage-ID: <big@example.org>\r\n\r\n"
           + line * (20 * 1024 * 1024 // len(line)))
    dovecot.seed("bob", [big, message(1), message(2)])
    write_rcfile(home, pop3(dovecot, test_ca, smtpd))
    run = start("-v")
    run.wait_for("the big message's transfer", lambda: " 1 99999999" in run.output()
                 or "RETR 1" in run.output())
    assert run.stop() in (0, 1)
    first = subjects(smtpd)
    assert first.count("big") <= 1
    if "big" not in first:
        assert any(b"Subject: big" in m for m in dovecot.messages("bob"))  # still there
    assert first == ["big"][: len(first)]  # stopped: nothing after the message in hand

    assert pyfetch(home).returncode in (0, 1)  # the rest, in a run of its own
    assert sorted(subjects(smtpd)) == ["big", "idle 1", "idle 2"]  # each exactly once
    assert dovecot.messages("bob") == []


def test_an_edited_rcfile_is_read_again_and_a_broken_one_survived(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.add_user("carol", "secret2")
    dovecot.seed("carol", [message(2, "carol")])
    write_rcfile(home, pop3(dovecot, test_ca, smtpd))
    run = start("-d", "1", "-N", "-v")
    run.wait_for("the first poll", lambda: "sleeping at" in run.output())
    assert subjects(smtpd) == []  # carol is not in the rcfile yet

    write_rcfile(home, pop3(dovecot, test_ca, smtpd)
                 + pop3(dovecot, test_ca, smtpd, "carol", "secret2"))
    run.wait_for("carol's mail", lambda: subjects(smtpd) == ["idle 2"])
    assert f"pyfetch: reading {home / '.fetchmailrc'} again (it changed)" in run.output()

    write_rcfile(home, "poll broken.isp.net proto pop3 bogus\n")
    run.wait_for("the complaint", lambda: "going on with the configuration" in run.output())
    assert f"pyfetch: {home / '.fetchmailrc'}:2: syntax error at bogus" in run.output()
    dovecot.seed("bob", [message(3)])
    dovecot.seed("carol", [message(4, "carol")])
    run.wait_for("mail after the broken edit",
                 lambda: sorted(subjects(smtpd)) == ["idle 2", "idle 3", "idle 4"])
    assert run.stop() == 0


def test_a_server_that_never_answers_does_not_delay_the_others(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.seed("bob", [message(n) for n in range(3)])
    with FakePop3Server(silent=[SILENT_GREETING]) as mute:
        write_rcfile(home, fake(mute, smtpd, "dave") + pop3(dovecot, test_ca, smtpd))
        run = start()
        wait_until("bob's mail while the first server hangs",
                   lambda: len(subjects(smtpd)) == 3, SOON)
        assert run.proc.poll() is None  # still waiting on the mute server
        assert run.stop() == 0
    out = run.out.read_text()
    # bob's lines came out whole, after the hung poll's (they were held back, not lost)
    assert out.index("3 messages for bob at bob.isp.net") < out.index("reading message bob@")
    assert out.count("reading message bob@127.0.0.1:") == 3
    assert dovecot.messages("bob") == []


def test_a_failing_server_is_said_once_and_polled_less_often(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    with FakePop3Server(greeting="-ERR come back tomorrow") as failing:
        write_rcfile(home, fake(failing, smtpd) + pop3(dovecot, test_ca, smtpd))
        run = start("-d", "1", "-N")
        time.sleep(3.5)
        dovecot.seed("bob", [message(1)])
        run.wait_for("bob's mail, polled every second", lambda: subjects(smtpd) == ["idle 1"])
        time.sleep(3.5)
        # every second for 7 s would be 8 polls; doubling delays (1, 2, 4 s) give 4
        assert failing.sessions <= 4
        err = run.err.read_text()
        assert err.count("come back tomorrow") == 1, err
        assert err.count("keeps failing") == 0  # notes go to stdout
        assert run.out.read_text().count("pyfetch: bob@fake.isp.net keeps failing") == 1

        sessions = failing.sessions
        run.proc.send_signal(signal.SIGUSR1)  # a wake-up polls it at once, delays or not
        run.wait_for("the poll after the wake-up", lambda: failing.sessions > sessions)
        assert run.stop() == 0


def test_pyfetch_wakes_and_stops_a_fetchmail_daemon_on_the_same_lock(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, need_fetchmail: None,
) -> None:
    write_rcfile(home, "set daemon 3600\n" + pop3(dovecot, test_ca, smtpd))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C"}
    with (home / "fetchmail.out").open("wb") as out:
        daemon = subprocess.Popen(["fetchmail", "-N"], env=env, cwd=home,
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        wait_until("fetchmail's lock", lambda: read_pid(home) == daemon.pid)
        dovecot.seed("bob", [message(1)])
        woken = pyfetch(home)
        assert woken.returncode == 0, woken.stderr
        assert woken.stderr == f"pyfetch: background fetchmail at {daemon.pid} awakened.\n"
        wait_until("fetchmail's poll", lambda: subjects(smtpd) == ["idle 1"])  # fetchmail's
        stopped = pyfetch(home, "-q")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stderr == f"pyfetch: background fetchmail at {daemon.pid} killed.\n"
        assert daemon.wait(timeout=DEADLINE) == 0
        assert not (home / "pyfetch.pid").exists()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_fetchmail_wakes_and_stops_a_pyfetch_daemon_on_the_same_lock(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, need_fetchmail: None,
    start: Callable[..., Running],
) -> None:
    run = sleeping_daemon(home, dovecot, test_ca, smtpd, start)
    dovecot.seed("bob", [message(1)])
    woken = fetchmail(home)
    assert woken.returncode == 0, woken.stderr
    assert woken.stderr.removeprefix(ROOT_WARNING) == (
        f"fetchmail: background fetchmail at {run.proc.pid} awakened.\n"
    )
    run.wait_for("pyfetch's poll", lambda: subjects(smtpd) == ["idle 1"])
    polling = fetchmail(home, "-c")  # a fetchmail never polls beside it
    assert polling.returncode == 8
    stopped = fetchmail(home, "-q")
    assert stopped.returncode == 0, stopped.stderr
    assert run.proc.wait(timeout=DEADLINE) == 0
    assert not (home / "pyfetch.pid").exists()


def test_idle_watches_and_timed_polls_live_in_one_daemon(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.add_user("carol", "secret2")
    write_rcfile(home, entry(dovecot, test_ca, smtpd, BOB)
                 + pop3(dovecot, test_ca, smtpd, "carol", "secret2"))
    run = start("-d", "1", "-N", "-v")
    run.wait_for("the watch", lambda: "watching INBOX of bob@mail.isp.net (IDLE)" in run.output())
    dovecot.seed("bob", [message(1)])  # heard in IDLE
    dovecot.seed("carol", [message(2, "carol")])  # found by the next timed poll
    run.wait_for("both", lambda: sorted(subjects(smtpd)) == ["idle 1", "idle 2"])
    assert pyfetch(home).returncode == 0  # one lock for the whole run
    assert pyfetch(home, "-q").returncode == 0
    assert run.proc.wait(timeout=DEADLINE) == 0


def test_a_daemon_whose_every_watch_gave_up_ends_with_their_status(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    write_rcfile(home, entry(dovecot, test_ca, smtpd, BOB.replace("hidden", "wrong")))
    run = start("-d", "1", "-N")
    assert run.proc.wait(timeout=DEADLINE) == 3, run.output()  # rather than idle for ever
    assert "pyfetch: no longer watching INBOX of bob@mail.isp.net" in run.output()
    assert not (home / "pyfetch.pid").exists()


def test_accounts_polled_side_by_side_write_their_lines_whole(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
) -> None:
    dovecot.add_user("carol", "secret2")
    dovecot.seed("bob", [message(n) for n in range(5)])
    dovecot.seed("carol", [message(n, "carol") for n in range(5, 10)])
    write_rcfile(home, pop3(dovecot, test_ca, smtpd)
                 + pop3(dovecot, test_ca, smtpd, "carol", "secret2"))
    result = pyfetch(home, "-v")
    assert result.returncode == 0, result.stderr
    assert len(subjects(smtpd)) == 10
    lines = result.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.endswith(": poll started")]
    ends = [i for i, line in enumerate(lines) if line.endswith(": poll completed")]
    assert len(starts) == len(ends) == 2
    bob, carol = lines[starts[0] : ends[0] + 1], lines[starts[1] : ends[1] + 1]
    assert "querying bob.isp.net" in bob[0] and "querying carol.isp.net" in carol[0]
    assert ends[0] < starts[1]  # one block after the other, in rcfile order
    assert sum("reading message bob@" in line for line in bob) == 5
    assert not any("carol" in line for line in bob)
    assert sum("reading message carol@" in line for line in carol) == 5


def test_parallel_1_polls_one_account_after_the_other(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.seed("bob", [message(1)])
    with FakePop3Server(silent=[SILENT_GREETING]) as mute:
        write_rcfile(home, fake(mute, smtpd, "dave", timeout=2) + pop3(dovecot, test_ca, smtpd))
        run = start("--parallel", "1")
        run.wait_for("bob's mail", lambda: subjects(smtpd) == ["idle 1"])
        # bob's poll began only once the first one had given up on its server
        assert "timeout after 2 seconds waiting for server fake.isp.net" in run.err.read_text()
        assert run.proc.wait(timeout=DEADLINE) == 0


def test_at_most_4_polls_at_once_against_one_host_unless_parallel_says_more(
    home: Path, smtpd: SMTPServer, start: Callable[..., Running],
) -> None:
    with FakePop3Server(silent=[SILENT_GREETING]) as mute:
        # six mailboxes on one server that never greets; the first gives up after a second
        users = [f"user{n}" for n in range(6)]
        write_rcfile(home, "".join(
            fake(mute, smtpd, user, timeout=1 if n == 0 else 60) for n, user in enumerate(users)
        ))
        run = start()
        run.wait_for("a fifth connection", lambda: mute.sessions == 5)
        # the fifth poll could begin only once the first had given up on the host
        assert "timeout after 1 seconds waiting for server fake.isp.net" in run.err.read_text()
        run.stop()
    with FakePop3Server(silent=[SILENT_GREETING]) as mute:
        write_rcfile(home, "".join(
            fake(mute, smtpd, user, timeout=60) for user in users
        ))
        run = start("--parallel", "6")
        run.wait_for("six connections at once", lambda: mute.sessions == 6)
        assert "timeout" not in run.err.read_text()
        run.stop()


def test_silent_daemon_says_nothing_but_errors(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.seed("bob", [message(1)])
    with FakePop3Server(greeting="-ERR come back tomorrow") as failing:
        write_rcfile(home, fake(failing, smtpd) + pop3(dovecot, test_ca, smtpd))
        run = start("-d", "1", "-N", "-s")
        run.wait_for("bob's mail", lambda: subjects(smtpd) == ["idle 1"])
        run.wait_for("a second poll of the failing server", lambda: failing.sessions >= 2)
        assert run.stop() == 0
    assert run.out.read_text() == ""
    assert "come back tomorrow" in run.err.read_text()


def test_a_servers_interval_polls_it_every_nth_time(
    home: Path, smtpd: SMTPServer, start: Callable[..., Running],
) -> None:
    with FakePop3Server() as every, FakePop3Server() as third:
        write_rcfile(home, fake(every, smtpd) + fake(third, smtpd, options="interval 3")
                     .replace("fake.isp.net", "third.isp.net"))
        run = start("-d", "1", "-N")
        run.wait_for("seven polls of the first server", lambda: every.sessions >= 7)
        assert run.stop() == 1
    assert 2 <= third.sessions <= 3  # at 0 s, 3 s (and 6 s), not every second
