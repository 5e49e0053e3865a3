#!/usr/bin/env python3
"""IMAP IDLE delivery latency, pyfetch beside fetchmail on the same private servers, and the ratio.

Each program runs in the background on one account with `idle` (STARTTLS, trusting only the test
CA, as both programs do by default with `sslcertfile` and `sslcommonname localhost`) against a
private Dovecot, delivering to a recording aiosmtpd listener. Once it has fetched the mail that
was there at start and is waiting in IDLE, N messages are put into the mailbox one at a time;
the latency of each is from the moment the message file is in the Maildir to the final dot of
its SMTP transaction (timed in the listener's thread). The program is then stopped with
SIGTERM and the mailbox must be empty. Run as root (Dovecot drops privileges), with fetchmail
and Dovecot installed (scripts/test installs them).

What was found out about fetchmail 6.4.37 here:

* `idle` in the rcfile is enough: plain `fetchmail` (no -d) polls once, then stays in the
  foreground in IDLE and fetches each new message as Dovecot announces it, until a signal.
  `-N`, `-d 0` and `-N -d 0` each behaved the same (tried; -v shows `IDLE` / `+ idling`).
* fetchmail accepts the test certificate with `sslcertfile CA sslcertck sslcommonname localhost`
  (sslcertck is fetchmail's default since 6.4; spelt out here anyway).
* With more than one folder (or account) it refuses at once: exit 5 and "idle mode does not
  work for multiple folders or accounts!". `--folders K` therefore watches K folders with
  pyfetch only, and shows fetchmail's refusal beside fetchmail's one-folder figures.
* Dovecot, not the client, sets the floor: it learns of new Maildir files through inotify but
  waits NOTIFY_DELAY_MSECS = 500 ms (lib-storage/mailbox-watch.c) before sending `* N EXISTS`
  to an idling client, so both programs measure 0.5-0.55 s. That timer starts at the first
  change Dovecot sees, whatever it is: pyfetch expunges on a second connection, so that expunge
  starts the timer of its IDLE connection, and a message put in less than 0.5 s later is
  announced early (with a 0.2 s pause pyfetch measured ~310 ms, fetchmail ~550 ms). A message
  that lands while fetchmail is between two IDLE commands is announced by the next at once
  (~40 ms). Hence --pause defaults to 1 s: every message meets a client idling undisturbed.

    .venv/bin/python bench/idle_latency.py [--messages 20] [--folders 1] [--pause 1.0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from servers.certs import TestCA, make_test_ca  # noqa: E402  (after the sys.path line)
from servers.dovecot import Dovecot  # noqa: E402
from servers.smtp import SMTPServer  # noqa: E402

PASSWORD = "hidden"  # Dovecot's default password for bob
TIMEOUT = 30.0  # seconds for any one message (or the first poll)


def message(index: int) -> bytes:
    return (
        f"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: idle {index}\r\n"
        f"Message-ID: <idle-{index}@bench>\r\n\r\nbody {index}\r\n"
    ).encode()


def record_arrivals(smtpd: SMTPServer) -> list[float]:
    """perf_counter() at the final dot of every transaction, taken in the server's thread."""
    arrivals: list[float] = []
    original = smtpd.handler.handle_DATA

    async def handle_data(*args: Any) -> str:
        arrivals.append(time.perf_counter())
        return await original(*args)

    # aiosmtpd looks the hooks up on the handler for each new connection
    smtpd.handler.handle_DATA = handle_data  # type: ignore[method-assign,assignment]
    return arrivals


class Program:
    """One program running in the background in `home`, its output going to a file there."""

    def __init__(self, command: list[str], home: Path) -> None:
        self.name = command[0]
        self.out = home / "output.txt"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C",
            "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
        }  # fmt: skip
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                command, env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def output(self) -> str:
        return self.out.read_text(errors="replace").replace(PASSWORD, "*****")

    def fail(self, why: str) -> SystemExit:
        self.stop()
        return SystemExit(f"{self.name}: {why}\n{self.output()}")

    def wait_until(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.perf_counter() + TIMEOUT
        while not condition():
            if self.proc.poll() is not None:
                raise self.fail(f"exited ({self.proc.returncode}) waiting for {what}")
            if time.perf_counter() > deadline:
                raise self.fail(f"no {what} after {TIMEOUT:.0f} s")
            time.sleep(0.002)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def write_rcfile(home: Path, dovecot: Dovecot, ca: TestCA, smtpd: SMTPServer,
                 folders: list[str]) -> None:
    host, port = smtpd.address
    rc = home / ".fetchmailrc"
    rc.write_text(
        f"set pidfile {home / 'lock.pid'}\n"  # its own lock: leave other runs alone
        f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports['imap']} proto imap\n"
        f"  user bob there is bob here password {PASSWORD} idle folder {' '.join(folders)}\n"
        f"  sslcertfile {ca.ca_cert} sslcertck sslcommonname localhost smtphost {host}/{port}\n"
    )
    rc.chmod(0o600)


def measure(command: list[str], home: Path, dovecot: Dovecot, ca: TestCA, smtpd: SMTPServer,
            arrivals: list[float], folders: list[str], count: int, pause: float) -> list[float]:
    """Latencies in seconds of `count` messages seeded round-robin into `folders`."""
    home.mkdir(exist_ok=True)
    dovecot.reset("bob")
    write_rcfile(home, dovecot, ca, smtpd, folders)
    boxes = [None if folder == "INBOX" else folder for folder in folders]
    for n, box in enumerate(boxes):  # creates the folders; the first poll fetches these
        dovecot.seed("bob", [message(-1 - n)], folder=box)

    def delivered(total: int) -> Callable[[], bool]:
        return lambda: len(arrivals) >= total

    def empty() -> bool:
        return not any(dovecot.message_files("bob", folder=box) for box in boxes)

    start = len(arrivals)
    program = Program(command, home)
    program.wait_until("first poll", delivered(start + len(boxes)))
    program.wait_until("expunge after the first poll", empty)
    time.sleep(0.5 + 0.1 * len(boxes))  # time to send IDLE on every watched folder
    latencies: list[float] = []
    for n in range(count):
        before = len(arrivals)
        dovecot.seed("bob", [message(n)], folder=boxes[n % len(boxes)])
        t0 = time.perf_counter()
        program.wait_until(f"delivery of message {n}", delivered(before + 1))
        latencies.append(arrivals[before] - t0)
        program.wait_until(f"expunge of message {n}", empty)
        time.sleep(pause)
    status = program.stop()
    if status != 0 or not empty():
        raise SystemExit(f"{command[0]} exited {status}, mailbox left: {not empty()}\n"
                         f"{program.output()}")
    return latencies


def refusal(home: Path, dovecot: Dovecot, ca: TestCA, smtpd: SMTPServer,
            folders: list[str]) -> str:
    """What fetchmail says when asked to idle on several folders (it should refuse)."""
    home.mkdir(exist_ok=True)
    write_rcfile(home, dovecot, ca, smtpd, folders)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LC_ALL": "C"}
    result = subprocess.run(["fetchmail"], env=env, cwd=home, capture_output=True, text=True,
                            check=False, timeout=TIMEOUT)
    said = [line for line in result.stderr.splitlines() if "Running as root" not in line]
    return f"exit {result.returncode}: {' '.join(said).strip()}"


def summary(latencies: list[float]) -> tuple[float, float, float]:
    """Median, 90th percentile and maximum in milliseconds."""
    ms = [x * 1000 for x in latencies]
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[-1] if len(ms) > 1 else ms[0]
    return statistics.median(ms), p90, max(ms)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--folders", type=int, default=1, help="folders pyfetch watches")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between messages")
    args = parser.parse_args()
    if args.messages < 1 or args.folders < 1:
        parser.error("--messages and --folders must be at least 1")
    folders = ["INBOX", *(f"Folder{k}" for k in range(1, args.folders))]
    fetchmail = shutil.which("fetchmail")
    results: dict[str, tuple[int, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ca = make_test_ca(base / "ca")
        with Dovecot(ca) as dovecot, SMTPServer() as smtpd:
            arrivals = record_arrivals(smtpd)
            results["pyfetch"] = (len(folders), measure(
                [sys.executable, "-m", "fetcher"], base / "pyfetch", dovecot, ca, smtpd,
                arrivals, folders, args.messages, args.pause))
            if fetchmail is None:
                print("fetchmail is not installed; pyfetch only")
            else:
                if len(folders) > 1:
                    said = refusal(base / "fetchmail-multi", dovecot, ca, smtpd, folders)
                    print(f"fetchmail with idle on {len(folders)} folders refuses ({said});"
                          " measured on INBOX alone")
                results["fetchmail"] = (1, measure(
                    [fetchmail], base / "fetchmail", dovecot, ca, smtpd, arrivals, ["INBOX"],
                    args.messages, args.pause))
    print(f"{'program':9} {'folders':>7} {'messages':>8} {'median ms':>10} {'p90 ms':>8} "
          f"{'max ms':>8}")
    medians: dict[str, float] = {}
    for name, (nfolders, latencies) in results.items():
        median, p90, top = summary(latencies)
        medians[name] = median
        print(f"{name:9} {nfolders:>7} {len(latencies):>8} {median:>10.1f} {p90:>8.1f} "
              f"{top:>8.1f}")
    if "fetchmail" in medians:
        print(f"ratio pyfetch/fetchmail (medians): {medians['pyfetch'] / medians['fetchmail']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
