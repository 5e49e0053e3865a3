"""A server that sends bare LFs: every line end goes out as CRLF and the dots are stuffed by
those lines, so nothing is added or lost, and a large message is not one over-long line. A
scripted IMAP server sends them, through to the recording SMTP server and a real Postfix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from fakes.imap import FakeImapServer
from servers.postfix import Postfix, strip_added_headers
from servers.smtp import SMTPServer


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def write_rcfile(home: Path, entry: str) -> None:
    path = home / ".fetchmailrc"
    path.write_text(entry)
    path.chmod(0o600)


def run(program: str, home: Path) -> subprocess.CompletedProcess[str]:
    """pyfetch on home/.fetchmailrc, with a private lock."""
    assert program == "pyfetch"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "FETCHMAILHOME": str(home), "LC_ALL": "C", "PYTHONPATH": str(ROOT)}
    rc = str(home / ".fetchmailrc")
    argv = [sys.executable, "-m", "fetcher", "-f", rc, "--pidfile", str(home / "pf.pid")]
    return subprocess.run(argv, env=env, cwd=home, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, errors="replace", timeout=120,
                          check=False)


# -- a server that sends bare LFs -----------------------------------------------------------

BARE_LF = [
    b"From: alice@example.org\nSubject: bare LF\n\n.one dot\n..two dots\n.\nlast\n",
    b"From: alice@example.org\nSubject: no line end at the end\n\nend",
    # 2 MB with not a single CRLF in it
    b"From: alice@example.org\nSubject: large\n\n" + b"0123456789 bare LF line.\n" * 80_000,
]


def as_crlf(message: bytes) -> bytes:
    crlf = message.replace(b"\n", b"\r\n")
    return crlf if crlf.endswith(b"\r\n") else crlf + b"\r\n"


def fake_entry(server: FakeImapServer, listener: tuple[str, int]) -> str:
    host, port = listener
    return (
        f"poll imap.isp.net via 127.0.0.1 service {server.port} proto imap timeout 30\n"
        f"  user bob is bob here password secret sslproto '' smtphost {host}/{port}\n"
    )


def delivered_body(data: bytes) -> bytes:
    """The message without the Received line pyfetch put on top."""
    assert data.startswith(b"Received: from 127.0.0.1 [127.0.0.1]\r\n")
    end = data.index(b"\r\n", data.index(b"\tfor <bob@127.0.0.1>")) + 2
    return data[end:]


def test_bare_lf_lines_reach_the_listener_as_crlf_lines(home: Path, smtpd: SMTPServer) -> None:
    with FakeImapServer(messages=list(BARE_LF)) as server:
        write_rcfile(home, fake_entry(server, smtpd.address))
        result = run("pyfetch", home)
        assert result.returncode == 0, result.stdout + result.stderr
        assert server.mailbox == {}
    assert [delivered_body(t.data) for t in smtpd.transactions] == [as_crlf(m) for m in BARE_LF]


def test_bare_lf_lines_through_postfix(home: Path, postfix: Postfix) -> None:
    with FakeImapServer(messages=list(BARE_LF)) as server:
        write_rcfile(home, fake_entry(server, postfix.address))
        result = run("pyfetch", home)
        assert result.returncode == 0, result.stdout + result.stderr
    stored = postfix.wait_for_delivery(len(BARE_LF))
    got = sorted(delivered_body(strip_added_headers(m)) for m in stored)
    assert got == sorted(as_crlf(m) for m in BARE_LF)
