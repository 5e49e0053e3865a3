"""A large message's progress on a terminal: one line on stderr rewritten in place, only where
somebody watches (a terminal, no -s), and wiped before the message's own line."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer
from test_e2e_pop3 import rcfile

LINE = b"x" * 998 + b"\r\n"
BIG = b"From: alice@example.org\r\nSubject: big\r\n\r\n" + LINE * (8 * 1024 * 1024 // len(LINE))


def run_on_a_terminal(home: Path, *args: str) -> tuple[int, str]:
    """pyfetch with its stderr on a pseudo-terminal; (exit code, what the terminal got)."""
    master, slave = os.openpty()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fetcher", *args, "--pidfile", str(home / "pyfetch.pid")],
        env=env, cwd=home, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other end closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_a_large_message_shows_how_far_it_has_come(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", [BIG])
    rcfile(home, dovecot, test_ca, smtpd)
    code, terminal = run_on_a_terminal(home)
    assert code == 0, terminal
    assert "\rreading message bob@127.0.0.1:1 of 1: " in terminal.replace("\x1b[K", "")
    assert " of 8.0 MB (" in terminal and "%)" in terminal  # (fast here: maybe only 0%)
    assert terminal.rstrip().endswith("\r\x1b[K")  # wiped: the message's own line follows
    assert len(smtpd.transactions) == 1


def test_no_progress_with_s_or_for_a_small_message(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", [BIG])
    rcfile(home, dovecot, test_ca, smtpd)
    code, terminal = run_on_a_terminal(home, "-s")
    assert code == 0, terminal
    assert "reading message" not in terminal and "%)" not in terminal
    dovecot.seed("bob", [b"Subject: small\r\n\r\nhello\r\n"])
    code, terminal = run_on_a_terminal(home)
    assert code == 0, terminal
    assert "%)" not in terminal
