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


# -- what mutation testing found unprotected -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("120 " + "a" * 32, Identity(120, "a" * 32)),
        ("abc " + "a" * 32, None),  # the size is a number
        ("120 " + "a" * 31, None),  # the digest has its length
        ("120 " + "a" * 16 + " " + "a" * 15, None),  # and no space
        ("120", None),
    ],
)
def test_an_identity_reads_back_only_whole(text: str, expected: Identity | None) -> None:
    assert Identity.parse(text) == expected


def test_an_identity_tells_messages_apart_by_their_first_octets() -> None:
    import io

    one = io.BytesIO(b"Message-ID: <1@x>\r\n\r\nbody\r\n")
    two = io.BytesIO(b"Message-ID: <2@x>\r\n\r\nbody\r\n")
    one.seek(5)
    first = Identity.of(30, one)
    assert one.tell() == 0  # left at the start, ready to be delivered
    assert first == Identity.of(30, io.BytesIO(one.getvalue()))
    assert first != Identity.of(30, two)
    assert first.size == 30 and len(first.digest) == 32


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("bob", "h"), "bob@h"),
        (("bob", "h", None, 5), "bob@h/INBOX;UIDVALIDITY=5"),
        (("bob", "h", "Lists", 5), "bob@h/Lists;UIDVALIDITY=5"),
    ],
)
def test_account_keys(args: tuple[str, str, str | None, int | None], key: str) -> None:
    assert account_key(*args) == key


def test_lines_are_split_as_fetchmail_splits_them_and_others_kept(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    ids.write_text("a line without an at sign\nmr b@host uid-1\n@host uid-2\n")
    ids.chmod(0o600)
    s = store(ids)
    assert s.seen("mr b@host") == {"uid-1"}  # the key ends at the first space after the @
    assert s.seen("@host") == {"uid-2"}
    s.save()
    assert ids.read_text() == "a line without an at sign\nmr b@host uid-1\n@host uid-2\n"


def test_the_journal_replays_past_a_line_it_cannot_read(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    journal = Path(str(ids) + ".journal")
    journal.write_text(
        f"seen {KEY} u1\nseen {KEY} u2\nseen {KEY} u3\ngarbage\n"
        f"expunged {KEY} u1\nexpunged {KEY} u2\nseen {KEY} u4\n"
    )
    journal.chmod(0o600)
    assert store(ids).seen(KEY) == {"u3", "u4"}


def test_an_account_never_seen_has_nothing_recorded(tmp_path: Path) -> None:
    s = store(tmp_path / ".fetchids")
    assert s.seen("nobody@x") == set()
    assert s.delivered("nobody@x") == {}
    assert s.has_it("nobody@x", "u1", Identity(1, "a" * 32)) == set()
    assert not s.knows("nobody@x")


def test_a_kept_message_is_not_a_pending_deletion(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    s = store(ids)
    s.record(KEY, "kept", delete_pending=False)
    s.record(KEY, "gone", delete_pending=True, identity=Identity(3, "c" * 32))
    again = store(ids)
    assert again.seen(KEY) == {"kept", "gone"}
    assert set(again.delivered(KEY)) == {"gone"}


def test_uids_that_are_not_utf8_survive_the_journal_and_the_file(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    odd = "uid-\udcff\udcfe"  # bytes a server sent that are no UTF-8
    s = store(ids)
    s.record(KEY, odd, delete_pending=False)
    assert store(ids).seen(KEY) == {odd}
    s.save()
    assert store(ids).seen(KEY) == {odd}


def test_records_go_on_after_a_save(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    s = store(ids)
    s.record(KEY, "u1", delete_pending=False)
    s.save()
    s.record(KEY, "u2", delete_pending=False)  # the journal is opened again
    assert store(ids).seen(KEY) == {"u1", "u2"}


def test_partial_records_of_a_uid_with_spaces(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    one = Identity(7, "7" * 32)
    store(ids).record_partial(KEY, "odd uid", one, ["bob@host"])
    assert store(ids).has_it(KEY, "odd uid", one) == {"bob@host"}
    journal = Path(str(ids) + ".journal")
    with journal.open("a") as handle:
        handle.write(f"got {KEY} u9 7 not-a-digest bob@host\n")  # a line that does not read
    assert store(ids).has_it(KEY, "u9", one) == set()


def test_forget_drops_a_folder_and_keys_are_found_by_prefix(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    old, new = account_key("bob", "h", "INBOX", 1), account_key("bob", "h", "INBOX", 2)
    s = store(ids)
    s.record(old, "1", delete_pending=False)
    s.record(new, "1", delete_pending=False)
    assert sorted(s.keys_starting("bob@h/INBOX;")) == [old, new]
    s.forget(old)
    again = store(ids)
    assert again.seen(old) == set() and again.seen(new) == {"1"}


@pytest.mark.parametrize("which", ["idfile", "journal"])
def test_a_state_file_that_is_a_link_is_refused(tmp_path: Path, which: str) -> None:
    ids = tmp_path / ".fetchids"
    target = tmp_path / "elsewhere"
    target.write_text(f"{KEY} u1\n")
    target.chmod(0o600)
    link = ids if which == "idfile" else Path(str(ids) + ".journal")
    link.symlink_to(target)
    with pytest.raises(PermissionsError, match="must be a regular file"):
        store(ids)


def test_the_store_service_does_each_thing_on_its_own_thread(tmp_path: Path) -> None:
    import asyncio

    from fetcher.uidstore import StoreService

    ids = tmp_path / ".fetchids"
    one = Identity(9, "9" * 32)

    async def main() -> None:
        service = StoreService(UidStore(str(ids)))
        await service.load()
        await service.record(KEY, "u1", delete_pending=True, identity=one)
        await service.record_seen(KEY, {"u2"})
        await service.record_partial(KEY, "u3", one, ["bob@host"])
        assert await service.seen(KEY) == {"u1", "u2"}
        assert await service.delivered(KEY) == {"u1": one}
        assert await service.has_it(KEY, "u3", one) == {"bob@host"}
        assert await service.knows(KEY)
        assert await service.keys_starting("bob@") == [KEY]
        await service.expunged(KEY, {"u1"})
        assert await service.seen(KEY) == {"u2"}
        await service.prune(KEY, {"u2"})  # u3 is gone from the server
        assert await service.has_it(KEY, "u3", one) == set()
        await service.forget(KEY)
        await service.save()
        service.close()

    asyncio.run(main())
    assert not ids.exists() and not Path(str(ids) + ".journal").exists()



def test_several_expunged_uids_replay_from_the_journal(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    s = store(ids)
    for uid in ("u1", "u2", "u3"):
        s.record(KEY, uid, delete_pending=False)
    s.expunged(KEY, {"u1", "u2"})
    assert store(ids).seen(KEY) == {"u3"}  # not saved: every expunged line replays


def test_a_uid_ending_in_any_character_reads_back_whole(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    s = store(ids)
    for uid in ("uidX", "uid\t", "uid."):
        s.record(KEY, uid, delete_pending=False)
    s.save()
    assert store(ids).seen(KEY) == {"uidX", "uid\t", "uid."}


def test_a_journal_made_open_to_others_meanwhile_is_made_private_again(tmp_path: Path) -> None:
    ids = tmp_path / ".fetchids"
    s = store(ids)
    journal = Path(str(ids) + ".journal")
    journal.write_text("")
    journal.chmod(0o640)
    s.record(KEY, "u1", delete_pending=False)
    assert journal.stat().st_mode & 0o777 == 0o600


def test_a_journal_given_to_another_user_meanwhile_is_refused(tmp_path: Path) -> None:
    import pwd

    if os.geteuid() != 0:
        from servers.fixtures import unavailable

        unavailable("only root can give a file to another user")
    ids = tmp_path / ".fetchids"
    s = store(ids)
    journal = Path(str(ids) + ".journal")
    journal.write_text("")
    journal.chmod(0o600)
    os.chown(journal, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(PermissionsError, match="owned by you"):
        s.record(KEY, "u1", delete_pending=False)
