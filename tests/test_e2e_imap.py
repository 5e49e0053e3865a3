"""pyfetch polling IMAP as a user runs it: a real Dovecot, a real SMTP listener, the CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from reference import private_pidfile_args
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer
from test_e2e_pop3 import MESSAGES, delivered_body, pyfetch


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def run_fetchmail(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real fetchmail on home/.fetchmailrc, with a private FETCHMAILHOME and pidfile, so that
    another fetchmail on the machine (root's lock is /var/run/fetchmail.pid whatever
    FETCHMAILHOME says) neither stops this one nor is woken by it."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "FETCHMAILHOME": str(home),
           "LC_ALL": "C"}
    argv = ["fetchmail", "-f", str(home / ".fetchmailrc"),
            *private_pidfile_args(home / "fetchmail-run"), *args]
    return subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, timeout=120,
                          check=False)


def rcfile(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, options: str = ""
) -> Path:
    host, port = smtpd.address
    path = home / ".fetchmailrc"
    path.write_text(
        f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports['imap']} proto imap\n"
        f"  user bob is bob here password hidden\n"
        f"  sslcertfile {test_ca.ca_cert} sslcommonname localhost\n"
        f"  smtphost {host}/{port} {options}\n"
    )
    path.chmod(0o600)
    return path


def test_inbox_is_delivered_and_expunged(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES)
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(delivered_body(t.data) for t in smtpd.transactions) == sorted(
        m.removeprefix(b"Return-Path: <alice@example.org>\r\n") for m in MESSAGES
    )
    assert dovecot.messages("bob") == []
    assert "STARTTLS" in result.stdout  # TLS before the password
    assert "hidden" not in result.stdout + result.stderr


def test_several_folders_are_polled_in_turn(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    dovecot.seed("bob", MESSAGES[1:2], folder="Archive")
    rcfile(home, dovecot, test_ca, smtpd, "folder INBOX, Archive")
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(smtpd.transactions) == 2
    assert dovecot.messages("bob") == [] and dovecot.messages("bob", folder="Archive") == []


def test_keep_marks_seen_only_after_delivery_and_fetches_once(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:2])
    rcfile(home, dovecot, test_ca, smtpd, "keep")
    first = pyfetch(home)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(smtpd.transactions) == 2
    assert len(dovecot.messages("bob")) == 2
    assert all("S" in flags for flags in dovecot.flags("bob"))
    second = pyfetch(home)
    assert second.returncode == 1, second.stdout + second.stderr
    assert len(smtpd.transactions) == 2


@pytest.mark.smtp_fault(step="rcpt", code=451, text="4.3.0 try later")
def test_refused_message_stays_unseen_and_undeleted(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert dovecot.messages("bob") == MESSAGES[:1]
    assert all("S" not in flags for flags in dovecot.flags("bob"))


def test_check_only_changes_no_flags(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:2])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home, "-c")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 messages for bob at mail.isp.net" in result.stdout
    assert all("S" not in flags for flags in dovecot.flags("bob"))
    assert smtpd.transactions == []


def test_uidvalidity_change_is_reported_not_silent(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd, "keep")
    assert pyfetch(home).returncode == 0
    ids = (home / ".fetchids").read_text()
    assert "bob@127.0.0.1/INBOX;UIDVALIDITY=" in ids
    dovecot.change_uidvalidity("bob")
    result = pyfetch(home)
    assert "UIDVALIDITY of INBOX for bob@mail.isp.net changed from" in result.stderr
    assert len(smtpd.transactions) == 1  # the \\Seen flag still says it was fetched
    old = ids.split(";UIDVALIDITY=")[1].split()[0]
    left = (home / ".fetchids").read_text() if (home / ".fetchids").exists() else ""
    assert f"UIDVALIDITY={old}" not in left  # the stale UIDs are gone


@pytest.mark.parametrize("port", ["imap", "pop3"])
def test_auto_tries_imap_then_pop3(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, port: str
) -> None:
    """fetchmail's default protocol: IMAP first; a server that does not speak it gets POP3."""
    dovecot.seed("bob", MESSAGES[:1])
    path = rcfile(home, dovecot, test_ca, smtpd)
    path.write_text(
        path.read_text()
        .replace(" proto imap", "")
        .replace(f"service {dovecot.ports['imap']}", f"service {dovecot.ports[port]}")
    )
    result = pyfetch(home, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert dovecot.messages("bob") == []
    assert f"with {port.upper()} (pyfetch" in smtpd.transactions[0].data.decode(errors="replace")


def test_expunge_n_expunges_every_n_deletions_in_one_session(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    messages = [
        f"From: a@example.org\r\nSubject: {n}\r\n\r\nbody {n}\r\n".encode() for n in range(5)
    ]
    dovecot.seed("bob", messages)
    rcfile(home, dovecot, test_ca, smtpd, "expunge 2")
    result = pyfetch(home, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(smtpd.transactions) == 5 and dovecot.messages("bob") == []
    sent = [line.removeprefix("pyfetch: IMAP> ").split()[1:] for line in result.stdout.splitlines()
            if line.startswith("pyfetch: IMAP> ")]
    commands = [" ".join(words[:2] if words[0] == "UID" else words[:1]) for words in sent if words]
    assert commands.count("AUTHENTICATE") + commands.count("LOGIN") == 1  # one session
    # after the 2nd and the 4th deletion, and the last one at the end
    assert commands.count("UID EXPUNGE") == 3
    # An EXPUNGE's OK does not say which messages went: the records stay until the next
    # poll's listing shows them gone, and that poll forgets them, delivering nothing again.
    again = pyfetch(home)
    assert again.returncode == 1, again.stdout + again.stderr
    assert len(smtpd.transactions) == 5
    assert not (home / ".fetchids").exists() or "bob@" not in (home / ".fetchids").read_text()


def _progress(output: str) -> list[str]:
    return [line for line in output.splitlines()
            if line.startswith(("reading message", "skipping message")) or " for bob at " in line]


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize(
    ("options", "args"),
    [("", []), ("expunge 1", []), ("limit 50", []), ("keep", []), ("fetchall keep", []),
     ("", ["-c"])],
)
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_progress_lines_are_fetchmails(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, options: str,
    args: list[str], protocol: str,
) -> None:
    """Word for word, numbers included. IMAP messages are numbered by sequence number, not
    UID: after a first poll the UIDs start above 1, the numbers fetchmail shows do not."""
    def batch(first: int) -> list[bytes]:
        return [f"Subject: {n}\r\n\r\n{'x' * 100 * (n % 2)}\r\n".encode()
                for n in range(first, first + 3)]

    dovecot.seed("bob", batch(0))
    path = rcfile(home, dovecot, test_ca, smtpd, f"{options} sslcertck")
    path.write_text(path.read_text().replace(" proto imap", f" proto {protocol}").replace(
        f"service {dovecot.ports['imap']}", f"service {dovecot.ports[protocol]}"))
    assert pyfetch(home).returncode == 0  # UIDs 1-3 are gone (or skipped and kept)
    outputs, said = [], ""
    for program in ("fetchmail", "pyfetch"):
        for path in dovecot.message_files("bob"):  # leftovers go; Dovecot's next UID stays
            path.unlink()
        dovecot.seed("bob", batch(0))
        (home / ".fetchids").unlink(missing_ok=True)
        if program == "fetchmail":
            result = run_fetchmail(home, *args)
            said = result.stderr
        else:
            result = pyfetch(home, *args)
        outputs.append(_progress(result.stdout))
    assert outputs[0], f"fetchmail said nothing to compare with; its stderr:\n{said}"
    assert outputs[1] == outputs[0]


def test_message_larger_than_a_fetch_part_arrives_whole(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    big = b"From: a@example.org\r\nSubject: big\r\n\r\n" + line * (9 * 2**20 // len(line))
    dovecot.seed("bob", [big])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [delivered_body(t.data) for t in smtpd.transactions] == [big]
    assert dovecot.messages("bob") == []


@pytest.mark.usefixtures("need_fetchmail")
def test_progress_lines_with_folders_are_fetchmails(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    """With a folder list fetchmail names the folder in the count, and so do we."""
    rcfile(home, dovecot, test_ca, smtpd, "folder INBOX Lists Empty sslcertck")
    outputs, said = [], ""
    for program in ("fetchmail", "pyfetch"):
        dovecot.seed("bob", [b"Subject: a\r\n\r\nin the inbox\r\n"])
        dovecot.seed("bob", [b"Subject: b\r\n\r\non a list\r\n"] * 2, folder="Lists")
        dovecot.seed("bob", [b"Subject: c\r\n\r\nseeded to make the folder\r\n"], folder="Empty")
        for path in dovecot.message_files("bob", folder="Empty"):
            path.unlink()
        if program == "fetchmail":
            result = run_fetchmail(home)
            said = result.stderr
        else:
            result = pyfetch(home)
        outputs.append([line.removeprefix(f"{program}: ")
                        for line in _progress(result.stdout + result.stderr)])
    assert outputs[0], f"fetchmail said nothing to compare with; its stderr:\n{said}"
    assert outputs[1] == outputs[0]


def read_elsewhere(dovecot: Dovecot, count: int) -> None:
    """Another mail client reads the last `count` messages of bob's INBOX (sets \\Seen)."""
    from imapclient import IMAPClient  # type: ignore[import-untyped]

    with IMAPClient("127.0.0.1", dovecot.ports["imap"], ssl=False) as other:
        other.login("bob", "hidden")
        other.select_folder("INBOX")
        uids = other.search("ALL")[-count:]
        other.fetch(uids, ["BODY[]"])  # not PEEK: this marks them read


def test_keep_fetches_mail_another_client_has_read_once_pyfetch_knows_the_folder(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    """fetchmail trusts \\Seen and would never deliver the second message below."""
    dovecot.seed("bob", [b"Subject: old\r\n\r\nread before pyfetch came\r\n"])
    read_elsewhere(dovecot, 1)
    dovecot.seed("bob", [b"Subject: first\r\n\r\nunread\r\n"])
    rcfile(home, dovecot, test_ca, smtpd, "keep")
    assert pyfetch(home).returncode == 0
    assert [delivered_body(t.data) for t in smtpd.transactions] == [
        b"Subject: first\r\n\r\nunread\r\n"  # the old one counts as read, as in fetchmail
    ]
    dovecot.seed("bob", [b"Subject: second\r\n\r\nread on the phone first\r\n"])
    read_elsewhere(dovecot, 1)
    assert dovecot.flags("bob") == ["S", "S", "S"]
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [delivered_body(t.data) for t in smtpd.transactions][1:] == [
        b"Subject: second\r\n\r\nread on the phone first\r\n"
    ]
    assert pyfetch(home).returncode == 1  # and each only once
    assert len(smtpd.transactions) == 2
