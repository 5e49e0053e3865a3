"""pyfetch as a user runs it: a real Dovecot POP3 server, a real SMTP listener, the CLI.

Each test writes an rcfile, runs `pyfetch` in a subprocess and checks what the listener
received byte for byte, what is left on the server, the exit code and the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer

MESSAGES = [
    b"Return-Path: <alice@example.org>\r\nFrom: Alice <alice@example.org>\r\n"
    b"To: bob@mail.isp.net\r\nSubject: one\r\n\r\nHello Bob.\r\n",
    b"From: carol@example.org\r\nTo: bob@mail.isp.net\r\nSubject: two\r\n\r\n"
    b".a line with a leading dot\r\n.\r\n..\r\nlast line\r\n",
    b"From: dave@example.org\r\nSubject: eight bit\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    b"caf\xc3\xa9 \xff\xfe binary-looking bytes\r\n",
]


def rcfile(
    home: Path,
    dovecot: Dovecot,
    test_ca: TestCA,
    smtpd: SMTPServer,
    options: str = "",
    *,
    server_options: str = "",
) -> Path:
    host, port = smtpd.address
    text = (
        f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports['pop3']} proto pop3 "
        f"{server_options}\n"
        f"  user bob is bob here password hidden\n"
        f"  sslcertfile {test_ca.ca_cert} sslcommonname localhost\n"
        f"  smtphost {host}/{port} {options}\n"
    )
    path = home / ".fetchmailrc"
    path.write_text(text)
    path.chmod(0o600)
    return path


def pyfetch(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LC_ALL": "C",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, "-m", "fetcher", *args],
        env=env, cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        errors="replace", timeout=120, check=False,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def delivered_body(data: bytes) -> bytes:
    """What the listener got, minus the Received header pyfetch adds at the top."""
    assert data.startswith(b"Received: from 127.0.0.1 [127.0.0.1]\r\n\tby ")
    end = data.index(b"\r\n", data.index(b"\tfor <bob@127.0.0.1>")) + 2
    return data[end:]


def test_seed_setup_delivers_everything_and_empties_the_mailbox(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES)
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home, "-a")
    assert result.returncode == 0, result.stdout + result.stderr
    received = smtpd.transactions
    assert len(received) == len(MESSAGES)
    for transaction, original in zip(received, MESSAGES, strict=True):
        assert transaction.rcpt_tos == ["bob@127.0.0.1"]
        expected = original.removeprefix(
            b"Return-Path: <alice@example.org>\r\n"
        )  # stripped for SMTP, as fetchmail does
        assert delivered_body(transaction.data) == expected
    assert received[0].mail_from == "alice@example.org"
    assert received[1].mail_from == "carol@example.org"
    assert dovecot.messages("bob") == []
    assert "3 messages for bob at mail.isp.net" in result.stdout
    assert "reading message bob@127.0.0.1:1 of 3" in result.stdout
    assert result.stdout.count(" flushed") == 3


def test_no_mail_exits_1(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pyfetch: No mail for bob at mail.isp.net" in result.stdout
    assert smtpd.transactions == []


def test_keep_with_uidl_fetches_each_message_once(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:2])
    rcfile(home, dovecot, test_ca, smtpd, "keep", server_options="uidl")
    first = pyfetch(home)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(smtpd.transactions) == 2
    assert len(dovecot.messages("bob")) == 2  # kept
    ids = (home / ".fetchids").read_text().splitlines()
    assert len(ids) == 2 and all(line.startswith("bob@127.0.0.1 ") for line in ids)
    second = pyfetch(home)
    assert second.returncode == 1, second.stdout + second.stderr
    assert len(smtpd.transactions) == 2  # nothing delivered twice
    assert "2 messages (2 seen) for bob at mail.isp.net" in second.stdout


def test_limit_skips_big_messages(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    big = b"From: x@example.org\r\nSubject: big\r\n\r\n" + b"x" * 5000 + b"\r\n"
    dovecot.seed("bob", [MESSAGES[0], big])
    rcfile(home, dovecot, test_ca, smtpd, "limit 1000")
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(smtpd.transactions) == 1
    assert dovecot.messages("bob") == [big]
    assert "skipping message bob@127.0.0.1:2" in result.stdout
    assert "(oversized)" in result.stdout


def test_fetchlimit_exits_13_and_leaves_the_rest(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES)
    rcfile(home, dovecot, test_ca, smtpd, "fetchlimit 2")
    result = pyfetch(home)
    assert result.returncode == 13, result.stdout + result.stderr
    assert len(smtpd.transactions) == 2
    assert dovecot.messages("bob") == [MESSAGES[2]]
    assert "fetchlimit 2 reached; 1 message left on server mail.isp.net account bob" in (
        result.stdout
    )


@pytest.mark.smtp_fault(step="rcpt", code=451, text="4.3.0 try later")
def test_temporary_refusal_keeps_the_message(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr  # read, so "mail"
    assert dovecot.messages("bob") == MESSAGES[:1]
    assert "not flushed" in result.stdout


def test_wrong_password_exits_3(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    path = rcfile(home, dovecot, test_ca, smtpd)
    path.write_text(path.read_text().replace("password hidden", "password wrong"))
    result = pyfetch(home)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "wrong" not in result.stdout + result.stderr


def test_no_listener_exits_10_and_deletes_nothing(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, closed_port: int
) -> None:
    dovecot.seed("bob", MESSAGES[:2])
    path = rcfile(home, dovecot, test_ca, smtpd)
    host, port = smtpd.address
    path.write_text(path.read_text().replace(f"{host}/{port}", f"127.0.0.1/{closed_port}"))
    result = pyfetch(home)
    assert result.returncode == 10, result.stdout + result.stderr
    assert dovecot.messages("bob") == MESSAGES[:2]


def test_verbose_trace_never_shows_the_password(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd, server_options="auth password")
    result = pyfetch(home, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pyfetch: POP3> USER bob" in result.stdout
    assert "pyfetch: POP3> PASS *" in result.stdout
    assert "pyfetch: POP3> STLS" in result.stdout  # TLS before the password
    assert "pyfetch: SMTP> MAIL FROM:<alice@example.org>" in result.stdout
    assert "hidden" not in result.stdout + result.stderr
    assert "pyfetch: normal termination, status 0" in result.stdout


def test_untrusted_certificate_is_refused(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    path = rcfile(home, dovecot, test_ca, smtpd)
    # trust another CA than the one that signed the server's certificate
    path.write_text(path.read_text().replace(str(test_ca.ca_cert), str(test_ca.untrusted_cert)))
    result = pyfetch(home)
    assert result.returncode == 2, result.stdout + result.stderr
    assert dovecot.messages("bob") == MESSAGES[:1]
    assert smtpd.transactions == []


def test_check_only_reports_and_changes_nothing(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:2])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home, "-c")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 messages for bob at mail.isp.net" in result.stdout
    assert smtpd.transactions == []
    assert len(dovecot.messages("bob")) == 2
