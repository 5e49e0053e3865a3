#!/usr/bin/env python3
"""Peak memory of fetching one big message: pyfetch beside fetchmail, over POP3 and IMAP.

Seeds one message of S MB into a private Dovecot, then runs one `-a` poll of each program on
the same rcfile (STARTTLS, certificate checked against the test CA) delivering it to a private
Postfix, under `/usr/bin/time -f %M` (GNU time, Debian package `time`), and prints per run the
maximum resident set size of the program's process and its wall time. Before each run the
mailbox, Postfix's Maildir and the .fetchids files are emptied; after it the script checks
exit status 0, an empty mailbox and one delivered message of the right size (Postfix stores
LF line ends and prepends a few headers; the check allows for those, so a truncated or
doubled message fails it). Run as root (the servers drop privileges), with fetchmail, Dovecot
and Postfix installed (scripts/test installs them).

    .venv/bin/python bench/message_memory.py [--size 100] [--protocols pop3,imap]

What the figures mean: max RSS is the peak of the program's own memory, interpreter and
libraries included; it excludes the servers. fetchmail streams a message from the server to
the SMTP listener a line at a time, so its RSS stays a few MB whatever the message size, and
the ratio pyfetch/fetchmail mostly shows how much of the message pyfetch holds at once
(pyfetch's baseline, Python plus its modules, is about 30 MB on its own, against about
8 MB for fetchmail, so a ratio near 4 means pyfetch too holds only a small part at once).
The wall time is the program's run, until it exits; Postfix writing the message to disk
afterwards is waited for but not counted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from servers.certs import make_test_ca  # noqa: E402  (after the sys.path line)
from servers.dovecot import Dovecot  # noqa: E402
from servers.postfix import Postfix  # noqa: E402

GNU_TIME = Path("/usr/bin/time")
PROTOCOLS = ("pop3", "imap")
# Postfix prepends Return-Path:, Delivered-To: and Received: (a few hundred bytes).
ADDED_HEADERS_MAX = 4096


@dataclass
class Run:
    program: str
    protocol: str
    size: int
    maxrss_kb: int
    seconds: float


def message(size: int) -> bytes:
    """One message of about ``size`` bytes: short headers, then whole CRLF lines."""
    header = (
        b"From: sender@example.org\r\nTo: bob@mail.isp.net\r\n"
        b"Subject: one big message\r\nMessage-ID: <big@bench>\r\n\r\n"
    )
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    return header + line * max((size - len(header)) // len(line), 1)


def check_delivered(postfix: Postfix, sent: bytes) -> None:
    """One message in the Maildir, as long as ``sent`` with LF line ends plus Postfix's
    headers, and ending as ``sent`` does."""
    files = postfix.message_files()
    if len(files) != 1:
        raise SystemExit(f"expected 1 delivered message, found {len(files)}")
    expected = len(sent) - sent.count(b"\r\n")
    got = files[0].stat().st_size
    if not expected <= got <= expected + ADDED_HEADERS_MAX:
        raise SystemExit(
            f"delivered message is {got} bytes; expected {expected} plus Postfix's headers"
        )
    tail = sent[-1024:].replace(b"\r\n", b"\n")
    with files[0].open("rb") as stored:
        stored.seek(-len(tail), os.SEEK_END)
        if stored.read() != tail:
            raise SystemExit("delivered message does not end as the sent one does")


def run_once(
    name: str, program: list[str], protocol: str, home: Path, dovecot: Dovecot,
    postfix: Postfix, sent: bytes, rc: str,
) -> Run:
    dovecot.reset("bob")
    postfix.reset()
    for leftover in (home / ".fetchids", home / ".fetchids.journal"):
        leftover.unlink(missing_ok=True)
    dovecot.seed("bob", [sent])
    rcfile = home / ".fetchmailrc"
    # a lock of its own: a fetchmail (or pyfetch) running on this machine is left alone
    rcfile.write_text(f"set pidfile {home / 'lock.pid'}\n" + rc)
    rcfile.chmod(0o600)
    report = home / "time.out"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run(
        [str(GNU_TIME), "-o", str(report), "-f", "maxrss_kb=%M", *program, "-a"],
        env=env, cwd=home, capture_output=True, text=True, check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} over {protocol} failed ({result.returncode}):\n{result.stderr}")
    postfix.wait_for_delivery(1, timeout=600)
    if dovecot.message_files("bob"):
        raise SystemExit(f"{name} over {protocol} left the message in the mailbox")
    check_delivered(postfix, sent)
    fields = dict(
        line.split("=", 1) for line in report.read_text().splitlines() if "=" in line
    )
    return Run(name, protocol, len(sent), int(fields["maxrss_kb"]), elapsed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=100, help="message size in MB")
    parser.add_argument(
        "--protocols", default=",".join(PROTOCOLS), help="comma-separated: pop3,imap"
    )
    args = parser.parse_args()
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown or not protocols:
        parser.error(f"--protocols takes pop3 and/or imap, not {args.protocols!r}")
    if not GNU_TIME.exists():
        print(f"{GNU_TIME} is missing: install GNU time (apt-get install time)", file=sys.stderr)
        return 1
    programs = {"pyfetch": [sys.executable, "-m", "fetcher"]}
    fetchmail = shutil.which("fetchmail")
    if fetchmail:
        programs["fetchmail"] = [fetchmail]
    else:
        print("fetchmail is not on PATH: measuring pyfetch only", file=sys.stderr)
    sent = message(args.size << 20)
    runs: list[Run] = []
    print(f"{'program':9} {'protocol':8} {'size MB':>8} {'max RSS MB':>11} {'wall s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ca = make_test_ca(base / "ca")
        with Dovecot(ca) as dovecot, Postfix() as postfix:
            host, port = postfix.address
            for protocol in protocols:
                rc = (
                    f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports[protocol]}"
                    f" proto {protocol}\n"
                    f"  user bob is bob here password hidden\n"
                    f"  sslcertfile {ca.ca_cert} sslcommonname localhost"
                    f" smtphost {host}/{port}\n"
                )
                for name, program in programs.items():
                    home = base / f"{name}-{protocol}"
                    home.mkdir()
                    run = run_once(name, program, protocol, home, dovecot, postfix, sent, rc)
                    runs.append(run)
                    print(f"{run.program:9} {run.protocol:8} {run.size / 2**20:8.1f} "
                          f"{run.maxrss_kb / 1024:11.1f} {run.seconds:7.2f}", flush=True)
    by_key = {(run.program, run.protocol): run for run in runs}
    for protocol in protocols:
        ours, theirs = by_key.get(("pyfetch", protocol)), by_key.get(("fetchmail", protocol))
        if ours and theirs:
            print(f"ratio max RSS pyfetch/fetchmail, {protocol}: "
                  f"{ours.maxrss_kb / theirs.maxrss_kb:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
