"""The delivered-not-yet-deleted records: written by a real run, trusted only when they prove
the very message, and never a way in for another user or a full disk.

A record lets a later poll delete a message without delivering it again (a run whose QUIT was
lost). Servers repeat and reuse UIDs, so a record must only ever delete the message it was
made for, and when in doubt the message is delivered again instead (docs/design.md, rule 8).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes.pop3 import FakePop3Server
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer
from test_e2e_pop3 import MESSAGES, pyfetch, rcfile


def mail(n: int, text: str = "") -> bytes:
    return (f"From: alice@example.org\r\nSubject: message {n}\r\n"
            f"Message-ID: <{n}@example.org>\r\n\r\n{text or 'body'}\r\n").encode()


def subjects(smtpd: SMTPServer) -> list[str]:
    return [
        line.removeprefix(b"Subject: ").decode()
        for txn in smtpd.transactions for line in txn.data.split(b"\r\n")
        if line.startswith(b"Subject: ")
    ]


def fake_rcfile(home: Path, server: FakePop3Server, smtpd: SMTPServer) -> None:
    """bob at the fake (plain POP3, a short timeout), delivering to `smtpd`."""
    host, port = smtpd.address
    path = home / ".fetchmailrc"
    path.write_text(
        f"poll mail.isp.net via 127.0.0.1 service {server.port} proto pop3 timeout 2\n"
        f"  user bob is bob here password secret sslproto '' smtphost {host}/{port}\n"
    )
    path.chmod(0o600)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_a_lost_quit_then_the_next_run_deletes_without_delivering_again(
    home: Path, smtpd: SMTPServer
) -> None:
    """The first run delivers, records and deletes, but its QUIT is never answered: the
    server keeps both messages. The second run finds them by their records and deletes them,
    delivering nothing twice."""
    with FakePop3Server(messages=[mail(1), mail(2)], uids=["a", "b"], silent=["QUIT"]) as pop:
        fake_rcfile(home, pop, smtpd)
        first = pyfetch(home)
        assert first.returncode != 0, first.stdout + first.stderr  # the QUIT timed out
        assert subjects(smtpd) == ["message 1", "message 2"]
        assert len(pop.remaining()) == 2  # DELE takes effect only at QUIT
        journal = (home / ".fetchids.journal").read_text()
        assert journal.count("delivered bob@127.0.0.1 ") == 2

        pop.silent = set()
        second = pyfetch(home)
        assert second.returncode == 1, second.stdout + second.stderr  # nothing new
        assert subjects(smtpd) == ["message 1", "message 2"]  # nothing delivered twice
        assert pop.remaining() == []
        assert second.stdout.count("(delivered before) flushed") == 2
    assert not (home / ".fetchids.journal").exists()


def test_a_uid_reused_for_another_message_is_delivered_not_deleted(
    home: Path, smtpd: SMTPServer
) -> None:
    """UIDL = message number: after a QUIT whose reply was lost the server did delete, and a
    new message of the same size arrived as number 1 with UID "1"."""
    with FakePop3Server(messages=[mail(1), mail(2)], uids=["1", "2"], silent=["QUIT"]) as pop:
        fake_rcfile(home, pop, smtpd)
        pyfetch(home)
    assert subjects(smtpd) == ["message 1", "message 2"]
    newcomer = mail(3)
    assert len(newcomer) == len(mail(1))  # the same size: only its contents tell
    with FakePop3Server(messages=[newcomer, mail(2)], uids=["1", "2"]) as pop:
        fake_rcfile(home, pop, smtpd)  # (a new port; the records are keyed by the host)
        result = pyfetch(home)
        assert result.returncode == 0, result.stdout + result.stderr
        assert subjects(smtpd) == ["message 1", "message 2", "message 3"]  # 3 delivered
        assert pop.remaining() == []  # and 2, proven the same, deleted unread


def test_a_uid_the_server_gives_to_several_messages_deletes_none_unread(
    home: Path, smtpd: SMTPServer
) -> None:
    with FakePop3Server(messages=[mail(1), mail(2)], uids=["same", "same"],
                        silent=["QUIT"]) as pop:
        fake_rcfile(home, pop, smtpd)
        pyfetch(home)
    assert subjects(smtpd) == ["message 1", "message 2"]
    with FakePop3Server(messages=[mail(1), mail(2), mail(3)], uids=["same"] * 3) as pop:
        fake_rcfile(home, pop, smtpd)
        result = pyfetch(home)
        assert result.returncode == 0, result.stdout + result.stderr
        assert pop.remaining() == []
    # 1 and 2 again rather than risk deleting 3 unread: never lost, and said how
    assert subjects(smtpd)[2:] == ["message 1", "message 2", "message 3"]


@pytest.mark.parametrize("problem", ["mode", "link"])
def test_a_journal_others_could_have_written_is_refused(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, tmp_path: Path,
    problem: str,
) -> None:
    """A journal line makes pyfetch delete a message without delivering it: one that anybody
    else could have written (open to others, or a link planted at its name) is not read."""
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd)
    journal = home / ".fetchids.journal"
    planted = tmp_path / "planted"
    planted.write_text("delivered bob@127.0.0.1 anything 1 " + "0" * 32 + "\n")
    if problem == "mode":
        os.rename(planted, journal)
        journal.chmod(0o666)
    else:
        planted.chmod(0o600)
        journal.symlink_to(planted)
    result = pyfetch(home)
    assert result.returncode == 6, result.stdout + result.stderr
    assert str(journal) in result.stderr
    assert len(dovecot.messages("bob")) == 1  # nothing deleted
    assert smtpd.transactions == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB file system of its own, to fill up."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        from servers.fixtures import unavailable

        unavailable(f"cannot mount a small file system: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        # lazily: a file a failed test left open must not keep the mount behind
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def test_a_full_disk_under_the_idfile_stops_before_any_deletion_and_says_so(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, tiny_disk: Path,
) -> None:
    dovecot.seed("bob", MESSAGES)
    rcfile(home, dovecot, test_ca, smtpd)
    filler = tiny_disk / "filler"
    with filler.open("wb") as handle, pytest.raises(OSError):
        handle.write(b"x" * 1024 * 1024)
        handle.flush()
    result = pyfetch(home, "-i", str(tiny_disk / ".fetchids"))
    assert result.returncode == 6, result.stdout + result.stderr
    assert "No space left on device" in result.stderr
    assert str(tiny_disk / ".fetchids") in result.stderr
    assert "internal error" not in result.stderr
    assert len(smtpd.transactions) <= 1  # the one delivered before its record failed
    assert len(dovecot.messages("bob")) == 3  # nothing deleted without a record

    filler.unlink()  # room again: the rest comes, the one in doubt at most twice
    again = pyfetch(home, "-i", str(tiny_disk / ".fetchids"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert dovecot.messages("bob") == []
    assert len(smtpd.transactions) <= 4


def test_the_idfile_is_rewritten_on_its_own_file_system(tiny_disk: Path) -> None:
    """The new idfile is written beside the old one and renamed over it: a temporary file
    anywhere else would not rename onto another file system."""
    from fetcher.uidstore import Identity, UidStore

    ids = tiny_disk / ".fetchids"
    store = UidStore(str(ids))
    store.load()
    store.record("bob@host", "u1", delete_pending=True, identity=Identity(5, "e" * 32))
    store.save()
    assert ids.read_text() == "bob@host u1\n"
    assert sorted(p.name for p in tiny_disk.iterdir()) == [".fetchids", ".fetchids.journal"]


def test_a_full_disk_is_said_plainly_and_records_nothing_half(tiny_disk: Path) -> None:
    from fetcher.errors import LocalError
    from fetcher.exitcodes import ExitCode
    from fetcher.uidstore import Identity, UidStore

    ids = tiny_disk / ".fetchids"
    store = UidStore(str(ids))
    store.load()
    store.record("bob@host", "u0", delete_pending=False)  # something for save() to write
    with (tiny_disk / "filler").open("wb") as handle, pytest.raises(OSError):
        handle.write(b"x" * 1024 * 1024)
        handle.flush()
    long_uid = "u1" + "x" * 8192  # more than the journal's last page has left
    with pytest.raises(LocalError) as info:
        store.record("bob@host", long_uid, delete_pending=True, identity=Identity(5, "e" * 32))
    assert info.value.exit_code is ExitCode.IOERR
    assert info.value.message == (
        f"cannot write {ids}.journal: No space left on device; "
        "mail not yet recorded stays on the server"
    )
    with pytest.raises(LocalError, match="No space left on device") as saving:
        store.save()
    assert str(tiny_disk) in saving.value.message
    (tiny_disk / "filler").unlink()
    store.record("bob@host", "u2", delete_pending=False)  # room again: it goes on
    store.close()
    again = UidStore(str(ids))
    again.load()
    assert again.seen("bob@host") == {"u0", "u2"}  # u1 never half recorded
