"""`idle` as a user runs it: pyfetch waits in IDLE on a real Dovecot and delivers what arrives.

The pyfetch process runs in the background (no daemon interval: IDLE alone keeps it running)
while the test puts mail into the folders; each message must reach the SMTP listener without
any further poll being asked for. How fast it arrives is measured by bench/idle_latency.py;
here a generous deadline only stops a broken watch from hanging the suite.
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
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer

DEADLINE = 20.0  # seconds; a working watch needs well under one
BOB = "user bob there is bob here password hidden idle"  # Dovecot's bob, delivered to bob


def message(n: int, to: str = "bob") -> bytes:
    return (
        f"From: alice@example.org\r\nTo: {to}@example.org\r\nSubject: idle {n}\r\n"
        f"Message-ID: <idle-{n}@example.org>\r\n\r\nbody {n}\r\n"
    ).encode()


class Running:
    """A pyfetch process in the background, its stdout and stderr going to files."""

    def __init__(
        self, home: Path, *args: str, pidfile_option: bool = True, name: str = ""
    ) -> None:
        """With `pidfile_option`, the run's pidfile is private to the test (--pidfile); tests
        of the lock itself set `set pidfile` in the rcfile instead, so that a plain `pyfetch`
        finds it too. `name` tells apart the output files of several runs in one home."""
        self.out = home / f"{name}stdout.txt"
        self.err = home / f"{name}stderr.txt"
        private = ["--pidfile", str(home / "pyfetch.pid")] if pidfile_option else []
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LC_ALL": "C",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fetcher", *args, *private],
                env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"pyfetch exited ({self.proc.returncode}) waiting for {what}:\n"
                            + self.output())
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {DEADLINE} s:\n{self.output()}")
            time.sleep(0.02)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"pyfetch did not stop on signal {signum}:\n{self.output()}")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def start(home: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def run(*args: str) -> Running:
        started.append(Running(home, *args))
        return started[-1]

    yield run
    for one in started:  # the Dovecot fixture resets mailboxes only with no client connected
        one.stop(signal.SIGKILL)


def write_rcfile(home: Path, text: str) -> None:
    path = home / ".fetchmailrc"
    path.write_text(text)
    path.chmod(0o600)


def entry(dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, *users: str) -> str:
    """A poll entry for Dovecot's IMAP port with `users` (each `user NAME ... OPTIONS`)."""
    host, port = smtpd.address
    common = f"sslcertfile {test_ca.ca_cert} sslcommonname localhost smtphost {host}/{port}"
    lines = "".join(f"  {user} {common}\n" for user in users)
    return f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports['imap']} proto imap\n{lines}"


def empty(dovecot: Dovecot, user: str, folder: str | None = None) -> bool:
    """No message left (file names only: reading a file pyfetch is expunging could fail)."""
    return not dovecot.message_files(user, folder=folder)


def subjects(smtpd: SMTPServer) -> list[str]:
    found = []
    for txn in smtpd.transactions:
        for line in txn.data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                found.append(line.removeprefix(b"Subject: ").decode())
    return found


def test_three_folders_on_two_accounts_are_watched_at_once(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.add_user("carol", "secret2")
    # what is there before the watch starts is fetched by its first poll
    dovecot.seed("bob", [message(0)])
    dovecot.seed("bob", [message(1)], folder="Lists")
    dovecot.seed("carol", [message(2, "carol")])
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        "user bob there is bob here password hidden idle folder INBOX Lists",
        "user carol there is bob here password secret2 idle"))
    run = start("-v")
    run.wait_for("3 watches", lambda: run.output().count("pyfetch: watching ") == 3)
    run.wait_for("the first polls", lambda: len(smtpd.transactions) == 3)
    assert sorted(subjects(smtpd)) == ["idle 0", "idle 1", "idle 2"]

    # now one message at a time, each to another watched folder; nobody asks for a poll
    for n, (user, folder) in enumerate(
        [("bob", "Lists"), ("carol", None), ("bob", None), ("bob", "Lists")], start=3
    ):
        dovecot.seed(user, [message(n, user)], folder=folder)
        run.wait_for(f"message {n} in {folder} of {user}",
                     lambda n=n: f"idle {n}" in subjects(smtpd))
        run.wait_for(f"message {n} expunged", lambda u=user, f=folder: empty(dovecot, u, f))
    assert sorted(subjects(smtpd)) == [f"idle {n}" for n in range(7)]  # each exactly once

    assert run.stop() == 0  # mail was retrieved
    out = run.output()
    assert "pyfetch: terminated with signal 15" in out
    assert "IMAP> " in out and " IDLE" in out
    assert "hidden" not in out and "secret2" not in out


def test_watch_killed_on_the_server_reconnects_and_catches_up(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        BOB))
    run = start("-v")
    run.wait_for("the watch", lambda: "pyfetch: watching INBOX" in run.output())
    run.wait_for("IDLE", lambda: "IMAP< + idling" in run.output())
    dovecot.kick("bob")
    dovecot.seed("bob", [message(1)])  # arrives while nobody watches
    run.wait_for("the message", lambda: subjects(smtpd) == ["idle 1"])
    assert "mail.isp.net closed the connection: BYE " in run.output()  # said, not hidden
    dovecot.seed("bob", [message(2)])  # and the new watch hears of the next one
    run.wait_for("the next message", lambda: subjects(smtpd) == ["idle 1", "idle 2"])
    run.wait_for("the expunge", lambda: empty(dovecot, "bob"))  # after the 250, not with it
    assert run.stop(signal.SIGINT) == 0


def test_sigusr1_polls_every_watched_folder_now(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        "user bob there is bob here password hidden idle folder INBOX Lists"))
    dovecot.seed("bob", [message(1)], folder="Lists")  # the folder must exist to be watched
    run = start()
    run.wait_for("the first polls", lambda: subjects(smtpd) == ["idle 1"])
    inbox, lists = "No mail for bob at mail.isp.net (folder INBOX)", "(folder Lists)"
    run.wait_for("INBOX polled", lambda: inbox in run.output())
    before = run.output().count(inbox), run.output().count(lists)
    run.proc.send_signal(signal.SIGUSR1)
    run.wait_for("a poll of each folder", lambda: run.output().count(inbox) > before[0]
                 and run.output().count(lists) > before[1])
    assert run.stop() == 0


def test_check_only_polls_once_and_does_not_watch(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.seed("bob", [message(1)])
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        BOB))
    run = start("-c")
    assert run.proc.wait(timeout=DEADLINE) == 0, run.output()
    assert "1 message for bob at mail.isp.net" in run.output()
    assert smtpd.transactions == []


def test_wrong_password_ends_the_run_with_exit_3(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.seed("bob", [message(1)])
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        "user bob there is bob here password wrong idle"))
    run = start()
    assert run.proc.wait(timeout=DEADLINE) == 3, run.output()
    assert "Authorization failure on bob@mail.isp.net" in run.output()
    assert dovecot.messages("bob") == [message(1)]


def test_pop3_account_with_idle_is_polled_once_beside_the_watch(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    dovecot.add_user("carol", "secret2")
    dovecot.seed("carol", [message(1, "carol")])
    host, port = smtpd.address
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        BOB)
        + f"poll pop.isp.net via 127.0.0.1 service {dovecot.ports['pop3']} proto pop3\n"
        f"  user carol there is bob here password secret2 idle sslcertfile {test_ca.ca_cert}"
        f" sslcommonname localhost smtphost {host}/{port}\n")
    run = start()
    run.wait_for("the POP3 poll", lambda: subjects(smtpd) == ["idle 1"])
    dovecot.seed("bob", [message(2)])
    run.wait_for("the IMAP message", lambda: subjects(smtpd) == ["idle 1", "idle 2"])
    assert run.stop() == 0
    assert dovecot.messages("carol") == [] and dovecot.messages("bob") == []


def test_passwordeval_runs_again_for_every_login(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    """An OAuth2 token expires within the hour: a watch that logs in again must not reuse the
    one it started with."""
    token = home / "token"
    token.write_text("first-token\n")
    dovecot.add_user("carol", "first-token")
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        f'user carol there is bob here passwordeval "cat {token}" idle'))
    run = start("-v")
    run.wait_for("IDLE", lambda: "IMAP< + idling" in run.output())
    dovecot.add_user("carol", "second-token")  # the old token no longer works
    token.write_text("second-token\n")
    dovecot.kick("carol")
    dovecot.seed("carol", [message(1, "carol")])
    run.wait_for("the message", lambda: subjects(smtpd) == ["idle 1"])
    assert run.stop() == 0
    out = run.output()
    assert "Authorization failure" not in out
    assert "first-token" not in out and "second-token" not in out


def test_watch_whose_server_process_dies_without_a_word_reconnects(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    """No BYE, just the end of the stream: the watch must notice, not wait for 28 minutes."""
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        BOB))
    run = start("-v")
    run.wait_for("IDLE", lambda: "IMAP< + idling" in run.output())
    run.wait_for("the first poll", lambda: "No mail for bob" in run.output())
    run.wait_for("the poll's session to end", lambda: len(dovecot.imap_processes()) == 1)
    assert dovecot.kill_imap_processes() == 1  # the watch's
    dovecot.seed("bob", [message(1)])
    run.wait_for("the message", lambda: subjects(smtpd) == ["idle 1"])
    assert "lost during IDLE" in run.output()
    assert run.stop() == 0


def test_keep_delivers_each_message_once_and_writes_the_idfile_as_it_goes(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        "user bob there is bob here password hidden idle keep"))
    run = start()
    run.wait_for("the first poll", lambda: "No mail for bob" in run.output())
    for n in (1, 2):
        dovecot.seed("bob", [message(n)])
        run.wait_for(f"message {n}", lambda n=n: f"idle {n}" in subjects(smtpd))
        run.wait_for("\\Seen", lambda n=n: dovecot.flags("bob") == ["S"] * n)
    ids = home / ".fetchids"
    run.wait_for("the idfile", lambda: ids.exists() and len(ids.read_text().splitlines()) == 2)
    assert ids.read_text().startswith("bob@127.0.0.1/INBOX;UIDVALIDITY=")
    assert subjects(smtpd) == ["idle 1", "idle 2"]  # the kept first one was not fetched again
    assert len(dovecot.messages("bob")) == 2
    assert run.stop() == 0


def test_idle_works_with_fetchmails_default_protocol(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    """No `proto`: fetchmail's `auto` tries IMAP first, and so does the watch."""
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        BOB).replace(" proto imap", ""))
    run = start()
    run.wait_for("the first poll", lambda: "No mail for bob" in run.output())
    dovecot.seed("bob", [message(1)])
    run.wait_for("the message", lambda: subjects(smtpd) == ["idle 1"])
    assert run.stop() == 0


def test_idle_with_auto_on_a_pop3_server_still_fetches(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer,
    start: Callable[..., Running],
) -> None:
    """`auto` found POP3 there: nothing to watch, but the mail must not stay behind."""
    dovecot.seed("bob", [message(1)])
    write_rcfile(home, entry(dovecot, test_ca, smtpd,
        BOB)
        .replace(" proto imap", "")
        .replace(f"service {dovecot.ports['imap']}", f"service {dovecot.ports['pop3']}"))
    run = start()
    run.wait_for("the message", lambda: subjects(smtpd) == ["idle 1"])
    assert "(while watching INBOX of bob@mail.isp.net)" in run.output()  # said, not hidden
    assert run.stop() == 0
    assert dovecot.messages("bob") == []
