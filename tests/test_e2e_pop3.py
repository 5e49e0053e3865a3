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
from conftest import ROOT, ROOT_WARNING
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.postfix import Postfix, strip_added_headers
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
        [sys.executable, "-m", "fetcher", *args, "--pidfile", str(home / "pyfetch.pid")],
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


# -- listener faults: exactly the right messages stay on the server ---------------------------


@pytest.mark.smtp_fault(step="rcpt", code=550, text="5.1.1 no such user")
def test_permanent_refusal_is_kept_with_softbounce(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr  # read counts as mail
    assert dovecot.messages("bob") == MESSAGES[:1]
    assert "not flushed" in result.stdout


@pytest.mark.smtp_fault(
    step="rcpt", code=550, text="5.1.1 no such user", recipient="bob@127.0.0.1"
)
def test_permanent_refusal_is_bounced_then_deleted_without_softbounce(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    path = rcfile(home, dovecot, test_ca, smtpd)
    path.write_text("set no softbounce\n" + path.read_text())
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dovecot.messages("bob") == []
    (bounce,) = smtpd.transactions  # the refused message itself never arrived
    assert (bounce.mail_from, bounce.rcpt_tos) == ("<>", ["alice@example.org"])  # null sender
    assert b"Content-Type: message/delivery-status" in bounce.data
    assert b"550 5.1.1 no such user" in bounce.data
    assert b"Subject: one" in bounce.data  # the original header goes back to the sender


@pytest.mark.smtp_fault(step="rcpt", code=550, text="5.1.1 no such user")
def test_refusal_that_cannot_be_bounced_is_kept(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    """Every RCPT is refused, the bounce's too: nobody was told, so nothing is dropped."""
    dovecot.seed("bob", MESSAGES[:1])
    path = rcfile(home, dovecot, test_ca, smtpd)
    path.write_text("set no softbounce\n" + path.read_text())
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dovecot.messages("bob") == MESSAGES[:1]
    assert "could not send a bounce to alice@example.org" in result.stderr


@pytest.mark.smtp_fault(step="eom", drop=True, times=1)
def test_connection_lost_in_data_keeps_only_that_message(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:2])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    # the first transaction was cut before the 250; the second went through
    assert dovecot.messages("bob") == MESSAGES[:1]
    assert [t.data.endswith(MESSAGES[1].split(b"\r\n\r\n", 1)[1]) for t in smtpd.transactions
            if t.accepted] == [True]


@pytest.mark.smtp_fault(step="mail", code=571, text="5.7.1 spam refused")
def test_antispam_code_is_kept_with_softbounce(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd, "antispam 571")
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dovecot.messages("bob") == MESSAGES[:1]


# -- TLS ----------------------------------------------------------------------------------------


def test_no_sslcertck_accepts_an_unverifiable_certificate(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    path = rcfile(home, dovecot, test_ca, smtpd, "no sslcertck")
    path.write_text(path.read_text().replace(str(test_ca.ca_cert), str(test_ca.untrusted_cert)))
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dovecot.messages("bob") == []


@pytest.mark.parametrize("form", ["md5", "sha256", "wrong"])
def test_fingerprint_pins_the_certificate(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, form: str
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    pin = {
        "md5": test_ca.server_md5,
        "sha256": test_ca.server_sha256,
        "wrong": "00:" * 15 + "00",
    }[form]
    path = rcfile(home, dovecot, test_ca, smtpd, f'sslfingerprint "{pin}"')
    # the pin replaces the CA: trust a CA that did not sign the certificate
    path.write_text(path.read_text().replace(str(test_ca.ca_cert), str(test_ca.untrusted_cert)))
    result = pyfetch(home)
    if form == "wrong":
        assert result.returncode == 2, result.stdout + result.stderr
        assert dovecot.messages("bob") == MESSAGES[:1]
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert dovecot.messages("bob") == []


def test_implicit_tls_on_the_pop3s_port(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    path = rcfile(home, dovecot, test_ca, smtpd, "ssl")
    path.write_text(path.read_text().replace(
        f"service {dovecot.ports['pop3']}", f"service {dovecot.ports['pop3s']}"
    ))
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dovecot.messages("bob") == []


# -- other sinks, hooks, output -------------------------------------------------------------


def test_mda_gets_the_message_and_a_hostile_sender_runs_nothing(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, tmp_path: Path
) -> None:
    hostile = (
        b"From: $(touch " + str(tmp_path / "pwned").encode() + b")@example.org\r\n"
        b"Subject: x\r\n\r\nbody\r\n"
    )
    dovecot.seed("bob", [hostile])
    out = tmp_path / "mda-out"
    rcfile(home, dovecot, test_ca, smtpd, f"mda \"cat > {out}; echo %F > {out}.from\"")
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "pwned").exists()
    delivered = out.read_bytes()
    assert delivered.endswith(b"Subject: x\n\nbody\n")  # stripcr is on for an MDA
    assert b"\r" not in delivered
    assert dovecot.messages("bob") == []
    assert smtpd.transactions == []


def test_bsmtp_file(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, tmp_path: Path
) -> None:
    dovecot.seed("bob", MESSAGES[1:2])
    batch = tmp_path / "out.bsmtp"
    rcfile(home, dovecot, test_ca, smtpd, f"bsmtp {batch}")
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    text = batch.read_bytes()
    assert text.startswith(
        b"MAIL FROM:<carol@example.org>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n"
    )
    # dot-stuffed in the batch: ".a", "." and ".." became "..a", ".." and "..."
    assert b"\r\n\r\n..a line with a leading dot\r\n..\r\n...\r\nlast line\r\n" in text
    assert text.endswith(b"last line\r\n.\r\n")


def test_failing_preconnect_aborts_the_poll_with_exit_5(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd, 'preconnect "exit 3"')
    result = pyfetch(home)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "pre-connection command failed with status 3" in result.stderr
    assert dovecot.messages("bob") == MESSAGES[:1]


def test_postconnect_runs_after_the_poll(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, tmp_path: Path
) -> None:
    marker = tmp_path / "post"
    rcfile(home, dovecot, test_ca, smtpd, f'postconnect "touch {marker}"')
    result = pyfetch(home)
    assert result.returncode == 1, result.stdout + result.stderr
    assert marker.exists()


def test_silent_prints_nothing(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home, "-s")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ROOT_WARNING)
    assert len(smtpd.transactions) == 1


# -- the sample configuration, through a real Postfix ------------------------------------------


def test_sample_rcfile_delivers_byte_for_byte_through_postfix(
    home: Path, dovecot: Dovecot, test_ca: TestCA, postfix: Postfix
) -> None:
    """sample.fetchmailrc, pointed at the test servers, delivers every seeded message into
    Postfix's Maildir exactly, apart from the Received line added and Return-Path taken, and
    leaves nothing on the server."""
    sample = (ROOT / "sample.fetchmailrc").read_text()
    host, port = postfix.address
    sample = sample.replace(
        "poll mail.isp.net proto POP3",
        f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports['pop3']} proto POP3",
    ).replace(
        "user bob is bob here",
        f"user bob is bob here sslcertfile {test_ca.ca_cert} sslcommonname localhost"
        f" smtphost {host}/{port}",
    )
    assert f"service {dovecot.ports['pop3']}" in sample and "smtphost 127.0.0.1/" in sample
    rc = home / ".fetchmailrc"
    rc.write_text(sample)
    rc.chmod(0o600)
    dovecot.seed("bob", MESSAGES)
    result = pyfetch(home, "-d0")  # the sample sets `daemon 180`; -d0 polls once
    assert result.returncode == 0, result.stdout + result.stderr
    stored = postfix.wait_for_delivery(len(MESSAGES))
    got = sorted(delivered_body(strip_added_headers(m)) for m in stored)
    expected = sorted(m.removeprefix(b"Return-Path: <alice@example.org>\r\n") for m in MESSAGES)
    assert got == expected
    assert dovecot.messages("bob") == []


def test_d0_polls_once_in_the_foreground_whatever_set_daemon_says(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    path = rcfile(home, dovecot, test_ca, smtpd)
    path.write_text("set daemon 60\n" + path.read_text())
    result = pyfetch(home, "-d0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(smtpd.transactions) == 1
    assert "1 message for bob at mail.isp.net" in result.stdout
    assert not (home / "pyfetch.pid").exists()  # the lock goes with the run


def test_expunge_quits_and_logs_in_again_every_n_deletions(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES)
    rcfile(home, dovecot, test_ca, smtpd, "expunge 1", server_options="auth password")
    result = pyfetch(home, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("pyfetch: POP3> QUIT") == 3  # one session per deletion
    assert result.stdout.count("pyfetch: POP3> PASS *") == 3
    assert len(smtpd.transactions) == 3
    assert dovecot.messages("bob") == []


def test_batchlimit_reconnects_to_the_listener(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES)
    rcfile(home, dovecot, test_ca, smtpd, "batchlimit 2")
    result = pyfetch(home, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("pyfetch: SMTP> EHLO") == 2  # messages 1-2, then 3
    assert len(smtpd.transactions) == 3


def test_lmtp_delivery_into_dovecot(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    """A real LMTP server: Dovecot's own, delivering into another user's mailbox."""
    dovecot.add_user("carol", "unused")
    dovecot.seed("bob", MESSAGES[:2])
    path = rcfile(home, dovecot, test_ca, smtpd, "lmtp")
    host, port = smtpd.address
    path.write_text(
        path.read_text()
        .replace("is bob here", "is carol here")
        .replace(f"smtphost {host}/{port}", f"smtphost 127.0.0.1/{dovecot.ports['lmtp']}")
    )
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dovecot.messages("bob") == []

    def body(message: bytes) -> bytes:  # Dovecot stores LF line ends
        return message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]

    assert sorted(map(body, dovecot.messages("carol"))) == sorted(map(body, MESSAGES[:2]))


def test_several_accounts_exit_0_if_any_got_mail(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, closed_port: int
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    good = rcfile(home, dovecot, test_ca, smtpd).read_text()
    broken = f"poll down.isp.net via 127.0.0.1 service {closed_port} user x password y\n"
    rc = home / ".fetchmailrc"
    rc.write_text(good + broken)
    first = pyfetch(home)
    assert first.returncode == 0, first.stdout + first.stderr  # mail from the first account
    assert f"connection to 127.0.0.1:{closed_port} failed" in first.stderr
    rc.write_text(broken + good)
    second = pyfetch(home)
    assert second.returncode == 1, second.stdout + second.stderr  # the last one's: no mail


def test_passwordeval_logs_in_and_is_never_shown(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    path = rcfile(home, dovecot, test_ca, smtpd, server_options="auth password")
    path.write_text(path.read_text().replace("password hidden", "passwordeval \"echo hidden\""))
    result = pyfetch(home, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pyfetch: POP3> PASS *" in result.stdout
    assert "hidden" not in result.stdout + result.stderr
    assert dovecot.messages("bob") == []
