#!/usr/bin/env python3
"""Read a 10,000-entry rcfile with pyfetch and with fetchmail, and print the times and ratios.

Two shapes of entry: "typical" (the home user's one-liner with a few options) and "heavy"
(IMAP, via, several folders, escapes, MDA: about 30 tokens). For pyfetch the parse (text to
tree), the merge (defaults, built-in values) and the JSON dump are timed apart, in process,
best of N runs; then both programs run `--configdump` on the same file as a whole process.
The goal is a parse under one second.

    .venv/bin/python bench/parse_rcfile.py [--entries N] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fetcher.config import Environment, build
from fetcher.configdump import configdump_json
from fetcher.gcpause import paused_gc
from fetcher.rcfile import parse


def typical(i: int) -> str:
    return (
        f"poll mail{i}.isp.net proto POP3 user user{i} is local{i} here password pw{i}\n"
        f"  keep fetchall limit 5000000\n"
    )


def heavy(i: int) -> str:
    return (
        f"poll mail{i}.example.org via 127.0.0.{i % 250 + 1} proto IMAP port 993\n"
        f'  user "user{i}" there with password "s3cr\\x65t{i}" is local{i} here\n'
        f"  ssl sslcertck keep fetchall folder INBOX, Archive smtphost localhost/2525\n"
        f'  limit 1000000 mda "/usr/bin/procmail -d %T"\n'
    )


def make_rcfile(entries: int, entry: Callable[[int], str]) -> bytes:
    head = "set daemon 300\ndefaults proto pop3 timeout 60 fetchlimit 50\n"
    return (head + "".join(entry(i) for i in range(entries))).encode()


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def process(runs: int, environ: dict[str, str], cmd: list[str]) -> float:
    return best_of(
        runs, lambda: subprocess.run(cmd, check=True, capture_output=True, env=environ)
    )


def measure(data: bytes, path: str, env: Environment, runs: int) -> tuple[float, float, float]:
    tree = parse(data, path)
    config = build(tree, env)

    def merge() -> None:
        with paused_gc():
            build(tree, env)

    def dump() -> None:
        with paused_gc():
            configdump_json(config)

    return best_of(runs, lambda: parse(data, path)), best_of(runs, merge), best_of(runs, dump)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    fetchmail = shutil.which("fetchmail")
    env = Environment.from_os()
    goal_met = True
    for shape, entry in (("typical", typical), ("heavy", heavy)):
        data = make_rcfile(args.entries, entry)
        with tempfile.TemporaryDirectory() as tmp:
            rcfile = Path(tmp) / "fetchmailrc"
            rcfile.write_bytes(data)
            os.chmod(rcfile, 0o600)
            parse_s, merge_s, dump_s = measure(data, str(rcfile), env, args.runs)
            goal_met &= parse_s < 1.0
            print(f"{shape}: {args.entries} entries, {len(data)} bytes")
            print(f"  pyfetch parse {parse_s:.3f} s, merge {merge_s:.3f} s, dump {dump_s:.3f} s")

            environ = {**os.environ, "HOME": tmp}
            pyfetch = [sys.executable, "-m", "fetcher", "-f", str(rcfile), "--configdump"]
            ours = process(args.runs, environ, pyfetch)
            if fetchmail is None:
                print(f"  pyfetch --configdump {ours:.3f} s; fetchmail not installed, no ratio")
                continue
            theirs = process(args.runs, environ, [fetchmail, "-f", str(rcfile), "--configdump"])
            print(
                f"  --configdump as a process: pyfetch {ours:.3f} s, fetchmail {theirs:.3f} s,"
                f" ratio pyfetch/fetchmail {ours / theirs:.2f}"
            )
    print(f"goal (parse under 1 s): {'met' if goal_met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
