"""The seen-UID file: fetchmail's format, and nothing re-delivered after a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fetcher.errors import PermissionsError
from fetcher.uidstore import Identity, UidStore, account_key

KEY = account_key("bob", "mail.isp.net")


def store(path: Path) -> UidStore:
    s = UidStore(str(path))
    s.load()
    return s


def test_reads_and_keeps_fetchmails_format(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    ids.write_text("bob@mail.isp.net uid-aaa\nbob@mail.isp.net uid-bbb\nann@other.net x y z\n")
    ids.chmod(0o600)
    s = store(ids)
    assert s.seen(KEY) == {"uid-aaa", "uid-bbb"}
    assert s.seen("ann@other.net") == {"x y z"}  # the key ends at the first space after @
    s.record(KEY, "uid-ccc", delete_pending=False)
    s.expunged(KEY, {"uid-aaa"})
    s.save()
    assert ids.read_text() == (
        "bob@mail.isp.net uid-bbb\nbob@mail.isp.net uid-ccc\nann@other.net x y z\n"
    )
    assert ids.stat().st_mode & 0o777 == 0o600
    assert not Path(str(ids) + ".journal").exists()


def test_empty_store_removes_the_file(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    ids.write_text("bob@mail.isp.net u1\n")
    ids.chmod(0o600)
    s = store(ids)
    s.expunged(KEY, {"u1"})
    s.save()
    assert not ids.exists()


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    ids.write_text("bob@mail.isp.net u1\n")
    ids.chmod(0o644)
    with pytest.raises(PermissionsError):
        store(ids)


def test_deliveries_survive_a_kill_before_save(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    # a separate process records two deliveries and is killed without saving
    script = (
        "import os, sys; sys.path.insert(0, sys.argv[2]);"
        "from fetcher.uidstore import UidStore;"
        "s = UidStore(sys.argv[1]); s.load();"
        "s.record('bob@mail.isp.net', 'u1', delete_pending=True);"
        "s.record('bob@mail.isp.net', 'u2', delete_pending=False);"
        "os.kill(os.getpid(), 9)"
    )
    root = str(Path(__file__).resolve().parent.parent)
    result = subprocess.run([sys.executable, "-c", script, str(ids), root], check=False)
    assert result.returncode == -9
    s = store(ids)
    assert set(s.delivered(KEY)) == {"u1"}
    assert s.seen(KEY) == {"u1", "u2"}
    s.save()
    # fetchmail would see both as fetched; the pending deletion stays in the journal
    assert ids.read_text() == "bob@mail.isp.net u1\nbob@mail.isp.net u2\n"
    assert set(store(ids).delivered(KEY)) == {"u1"}


def test_recorded_as_seen_in_one_go_survives_a_restart(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    s = store(ids)
    assert not s.knows(KEY)
    s.record_seen(KEY, {"u2", "u1"})
    s.record_seen(KEY, set())
    assert s.knows(KEY) and s.seen(KEY) == {"u1", "u2"} and not s.delivered(KEY)
    again = store(ids)  # not saved: the journal has them
    assert again.knows(KEY) and again.seen(KEY) == {"u1", "u2"}


def test_torn_journal_line_is_ignored(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    journal = Path(str(ids) + ".journal")
    journal.write_text("delivered bob@mail.isp.net u1\ndeliv")
    os.chmod(journal, 0o600)
    assert set(store(ids).delivered(KEY)) == {"u1"}


def test_prune_forgets_uids_the_server_no_longer_lists(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    s = store(ids)
    for uid in ("u1", "u2", "u3"):
        s.record(KEY, uid, delete_pending=uid == "u3")
    s.prune(KEY, {"u2"})
    s.save()
    assert ids.read_text() == "bob@mail.isp.net u2\n"
    assert not store(ids).delivered(KEY)


def test_pending_deletions_keep_their_identity_across_saves(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    one, two = Identity(120, "1" * 32), Identity(340, "2" * 32)
    s = store(ids)
    s.record(KEY, "u1", delete_pending=True, identity=one)
    s.record(KEY, "u2", delete_pending=True, identity=two)
    s.record(KEY, "odd uid", delete_pending=True, identity=one)  # fetchmail allows spaces
    assert store(ids).delivered(KEY) == {"u1": one, "u2": two, "odd uid": one}  # journal
    s.save()
    again = store(ids)
    assert again.delivered(KEY) == {"u1": one, "u2": two, "odd uid": one}  # every one kept
    again.save()
    assert store(ids).delivered(KEY) == {"u1": one, "u2": two, "odd uid": one}


def test_a_seen_uid_with_spaces_survives_the_journal(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    store(ids).record(KEY, "x y z", delete_pending=False)
    assert store(ids).seen(KEY) == {"x y z"}


def test_the_journal_is_private_whatever_the_umask(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    old = os.umask(0)
    try:
        store(ids).record(KEY, "u1", delete_pending=True, identity=Identity(1, "a" * 32))
    finally:
        os.umask(old)
    assert Path(str(ids) + ".journal").stat().st_mode & 0o777 == 0o600


def test_who_has_a_message_is_kept_until_everyone_has_it(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    one = Identity(120, "1" * 32)
    s = store(ids)
    s.record_partial(KEY, "u1", one, ["bob@host"])
    s.record_partial(KEY, "u1", one, ["bob@host", "dave@host"])
    assert store(ids).has_it(KEY, "u1", one) == {"bob@host", "dave@host"}  # from the journal
    assert store(ids).has_it(KEY, "u1", Identity(120, "2" * 32)) == set()  # another message
    assert store(ids).seen(KEY) == set()  # not fetched for good yet
    s.save()
    again = store(ids)
    assert again.has_it(KEY, "u1", one) == {"bob@host", "dave@host"}  # across a save
    again.record(KEY, "u1", delete_pending=True, identity=one)  # now everyone has it
    assert store(ids).has_it(KEY, "u1", one) == set()
    again.prune(KEY, set())
    again.save()
    assert not Path(str(ids) + ".journal").exists()


def test_a_partial_record_of_a_message_gone_from_the_server_is_forgotten(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    s = store(ids)
    s.record_partial(KEY, "u1", Identity(5, "5" * 32), ["bob@host"])
    s.prune(KEY, {"u2"})
    s.save()
    assert not Path(str(ids) + ".journal").exists()
