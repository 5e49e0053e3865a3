#!/usr/bin/env python3
"""POP3 to Postfix, pyfetch beside fetchmail on the same private servers; prints the ratio.

Seeds N messages of S bytes into a private Dovecot, then times one `-a` run of each program
delivering them all through STLS to a private Postfix (waiting until Postfix has written every
message to its Maildir), and checks that each run emptied the mailbox. Run as root (the
servers drop privileges), with fetchmail, Dovecot and Postfix installed (scripts/test installs
them).

    .venv/bin/python bench/pop3_delivery.py [--messages 200] [--size 4096] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from servers.certs import make_test_ca  # noqa: E402  (after the sys.path line)
from servers.dovecot import Dovecot  # noqa: E402
from servers.postfix import Postfix  # noqa: E402


def message(index: int, size: int) -> bytes:
    header = (
        f"From: sender{index}@example.org\r\nTo: bob@mail.isp.net\r\n"
        f"Subject: message {index}\r\nMessage-ID: <{index}@bench>\r\n\r\n"
    ).encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    body = (line * (size // len(line) + 1))[: max(size - len(header), 0)]
    return header + body


def run_once(
    program: list[str], home: Path, dovecot: Dovecot, postfix: Postfix, messages: list[bytes],
    rc: str,
) -> float:
    dovecot.reset("bob")
    postfix.reset()
    dovecot.seed("bob", messages)
    rcfile = home / ".fetchmailrc"
    # a lock of its own: a fetchmail (or pyfetch) running on this machine is left alone
    rcfile.write_text(f"set pidfile {home / 'lock.pid'}\n" + rc)
    rcfile.chmod(0o600)
    for leftover in (home / ".fetchids", home / ".fetchids.journal"):
        leftover.unlink(missing_ok=True)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run(
        [*program, "-a"], env=env, cwd=home, capture_output=True, text=True, check=False
    )
    postfix.wait_for_delivery(len(messages), timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or dovecot.messages("bob"):
        raise SystemExit(f"{program[0]} failed ({result.returncode}):\n{result.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    fetchmail = shutil.which("fetchmail")
    messages = [message(i, args.size) for i in range(args.messages)]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ca = make_test_ca(base / "ca")
        with Dovecot(ca) as dovecot, Postfix() as postfix:
            host, port = postfix.address
            rc = (
                f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports['pop3']} proto pop3\n"
                f"  user bob is bob here password hidden\n"
                f"  sslcertfile {ca.ca_cert} sslcommonname localhost smtphost {host}/{port}\n"
            )
            programs = {"pyfetch": [sys.executable, "-m", "fetcher"]}
            if fetchmail:
                programs["fetchmail"] = [fetchmail]
            times: dict[str, float] = {}
            for name, program in programs.items():
                home = base / name
                home.mkdir()
                times[name] = min(
                    run_once(program, home, dovecot, postfix, messages, rc)
                    for _ in range(args.runs)
                )
                per = times[name] / len(messages) * 1000
                print(f"{name:9} {len(messages)} x {args.size} B: {times[name]:.2f} s "
                      f"({per:.1f} ms per message)")
            if "fetchmail" in times:
                print(f"ratio pyfetch/fetchmail: {times['pyfetch'] / times['fetchmail']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
