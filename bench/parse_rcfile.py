#!/usr/bin/env python3
"""Parse a 10,000-entry rcfile with pyfetch and with fetchmail, and print the ratio.

The goal is under one second for pyfetch's parse + merge. Both programs are timed on the same
file through `--configdump` (process start included), and pyfetch's in-process parse alone is
timed too, best of a few runs.

    .venv/bin/python bench/parse_rcfile.py [--entries N]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fetcher.config import Environment, build  # noqa: E402
from fetcher.configdump import configdump  # noqa: E402
from fetcher.rcfile import parse  # noqa: E402


def make_rcfile(entries: int) -> bytes:
    lines = ["set daemon 300", "defaults proto pop3 timeout 60 fetchlimit 50"]
    for i in range(entries):
        lines.append(
            f"poll mail{i}.example.org via 127.0.0.{i % 250 + 1} proto IMAP port 993\n"
            f"  user \"user{i}\" there with password \"s3cr\\x65t{i}\" is local{i} here\n"
            f"  ssl sslcertck keep fetchall folder INBOX, Archive smtphost localhost/2525\n"
            f"  limit 1000000 mda \"/usr/bin/procmail -d %T\""
        )
    return ("\n".join(lines) + "\n").encode()


def best_of(runs: int, fn: object) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    data = make_rcfile(args.entries)
    with tempfile.TemporaryDirectory() as tmp:
        rcfile = Path(tmp) / "fetchmailrc"
        rcfile.write_bytes(data)
        os.chmod(rcfile, 0o600)
        env = Environment.from_os()

        def in_process() -> None:
            configdump(build(parse(data, str(rcfile)), env))

        ours = best_of(args.runs, in_process)
        print(f"rcfile: {args.entries} entries, {len(data)} bytes")
        print(f"pyfetch parse+merge+dump in process: {ours:.3f} s")

        def run(cmd: list[str]) -> float:
            def once() -> None:
                subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HOME": tmp})

            return best_of(args.runs, once)

        ours_cli = run([sys.executable, "-m", "fetcher", "-f", str(rcfile), "--configdump"])
        print(f"pyfetch --configdump:                {ours_cli:.3f} s")
        fetchmail = shutil.which("fetchmail")
        if fetchmail is None:
            print("fetchmail not installed: no ratio")
            return 0
        theirs = run([fetchmail, "-f", str(rcfile), "--configdump"])
        print(f"fetchmail --configdump:              {theirs:.3f} s")
        print(f"ratio pyfetch/fetchmail (--configdump): {ours_cli / theirs:.2f}")
        print(f"goal: parse under 1 s: {'met' if ours < 1.0 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
