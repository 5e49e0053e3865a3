"""The crash sweep: the real program killed (SIGKILL) at random moments while it drains a
mailbox, then run again, until the mailbox is empty. Whatever the moment, no message may be
lost, and each kill may deliver at most the one message that was in flight a second time
(docs/design.md, rules 1 and 2).

The moments come from a seeded generator, printed on failure, so a failing sweep can be
replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer

MESSAGES = 400
SEED = int(os.environ.get("PYFETCH_CRASH_SEED", "20261130"))
MOST_RUNS = 80  # a sweep that has not drained the mailbox by then is stuck


def message(n: int) -> bytes:
    body = f"line {n}\r\n".encode() * (n % 7 * 40 + 1)  # sizes vary: some cross a buffer
    return (f"From: alice@example.org\r\nSubject: crash {n}\r\n"
            f"Message-ID: <crash-{n}@example.org>\r\n\r\n").encode() + body


def subjects(smtpd: SMTPServer) -> Counter[str]:
    return Counter(
        line.removeprefix(b"Subject: ").decode()
        for txn in smtpd.transactions for line in txn.data.split(b"\r\n")
        if line.startswith(b"Subject: crash ")
    )


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_killed_at_random_moments_nothing_is_lost_and_little_is_doubled(
    tmp_path: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, protocol: str,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    host, port = smtpd.address
    rc = home / ".fetchmailrc"
    rc.write_text(
        f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports[protocol]} proto {protocol}\n"
        f"  user bob there is bob here password hidden\n"
        f"  sslcertfile {test_ca.ca_cert} sslcommonname localhost smtphost {host}/{port}\n"
    )
    rc.chmod(0o600)
    dovecot.seed("bob", [message(n) for n in range(MESSAGES)])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C",
           "PYTHONPATH": str(ROOT)}
    moments = random.Random(f"{SEED}-{protocol}")
    kills = 0
    log: list[str] = []
    for _ in range(MOST_RUNS):
        before = len(smtpd.transactions)
        run = subprocess.Popen(
            [sys.executable, "-m", "fetcher", "--pidfile", str(home / "pyfetch.pid")],
            env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Kill at a random moment once it delivers: the machine's speed does not matter.
        moment = moments.uniform(0.0, 0.15)
        deadline = time.monotonic() + 30
        while len(smtpd.transactions) == before and run.poll() is None:
            if time.monotonic() > deadline:
                run.kill()
                pytest.fail("a run delivered nothing in 30 s\n" + "\n".join(log))
            time.sleep(0.005)
        try:
            code = run.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            run.send_signal(signal.SIGKILL)
            run.wait()
            kills += 1
            log.append(f"killed {moment:.3f} s into delivering, after "
                       f"{len(smtpd.transactions) - before} deliveries")
            continue
        finally:
            assert run.stderr is not None
            err = run.stderr.read().decode(errors="replace")
            run.stderr.close()
        log.append(f"ended with {code}")
        assert code in (0, 1), f"exit {code}: {err}\n" + "\n".join(log)
        if not dovecot.message_files("bob"):
            break
    else:
        pytest.fail(f"mailbox not drained after {MOST_RUNS} runs (seed {SEED})\n"
                    + "\n".join(log))

    got = subjects(smtpd)
    lost = [n for n in range(MESSAGES) if got[f"crash {n}"] == 0]
    doubled = sum(count - 1 for count in got.values())
    where = f"seed {SEED}, {kills} kills:\n" + "\n".join(log)
    assert lost == [], f"lost {lost} ({where})"
    assert kills > 0, f"the sweep never killed a run ({where})"
    assert doubled <= kills, f"{doubled} delivered twice for {kills} kills ({where})"
