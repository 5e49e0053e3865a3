"""IMAP faults at the level of a whole poll: whatever goes wrong, no message is lost.

Each test runs fetcher.session.AccountPoll with the real ImapDriver against the scripted fake
of tests/fakes/imap.py, a UID store on disk and a recording sink, and asserts what the server
ends up holding (messages, flags, EXPUNGE) and what the sink was given.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fakes.imap import FakeImapServer

from fetcher.drivers.base import MailboxDriver
from fetcher.drivers.imap import ImapDriver
from fetcher.errors import ServerConnectionError
from fetcher.exitcodes import ExitCode
from fetcher.model import GlobalOptions, ServerOptions, UserOptions
from fetcher.report import Reporter
from fetcher.session import AccountPoll, PollResult
from fetcher.sinks.base import Delivery, Envelope, Message, Outcome, Sink
from fetcher.uidstore import StoreService, UidStore, account_key

MESSAGES = [
    b"From: one@example.org\r\nSubject: first\r\nMessage-ID: <one@example.org>\r\n\r\n"
    + b"Hello, this is the first message.\r\n",
    b"From: two@example.org\r\nSubject: second\r\nMessage-ID: <two@example.org>\r\n\r\n"
    + b"And this is the second one, a little longer.\r\n" * 4,
]
DELETED = {"\\Deleted", "\\Seen"}
KEY = account_key("bob", "127.0.0.1", None, 42)  # the fake's UIDVALIDITY


class RecordingSink:
    """A Sink that keeps the Subject of every message it is given and answers `outcome`."""

    def __init__(self, outcome: Outcome = Outcome.ACCEPTED) -> None:
        self.outcome = outcome
        self.subjects: list[str] = []
        self.closed = 0

    async def deliver(self, envelope: Envelope, message: Message) -> Delivery:
        for line in message.header.decode("utf-8", "replace").split("\r\n"):
            if line.lower().startswith("subject:"):
                self.subjects.append(line.split(":", 1)[1].strip())
        message.body.read()
        return Delivery(self.outcome, "250 ok" if self.outcome is Outcome.ACCEPTED else "451 later")

    async def close(self) -> None:
        self.closed += 1


def poll(server: FakeImapServer, sink: RecordingSink, idfile: Path) -> PollResult:
    """One poll of bob's INBOX on the fake, with a fresh UidStore on `idfile`."""
    options = ServerOptions(
        pollname="127.0.0.1", protocol="IMAP", service=str(server.port), timeout=5,
        auth="password",
    )  # fmt: skip
    user = UserOptions(remote="bob", password="secret", sslproto="")
    store = UidStore(str(idfile))
    store.load()
    service = StoreService(store)

    def make_driver(
        s: ServerOptions, u: UserOptions, folder: str | None, read_only: bool
    ) -> MailboxDriver:
        return ImapDriver(s, u, folder=folder, read_only=read_only)

    def make_sink(s: ServerOptions, u: UserOptions, g: GlobalOptions) -> Sink:
        return sink

    account = AccountPoll(
        options, user, GlobalOptions(), service, Reporter(silent=True), make_driver, make_sink
    )
    try:
        return asyncio.run(account.run())
    finally:
        service.close()
        store.close()


def sent(server: FakeImapServer, command: str) -> list[str]:
    """The lines the client sent whose command (after the tag, and any UID) is `command`."""
    found = []
    for line in server.received:
        words = line.split(" ")[1:]
        if words and words[0].upper() == "UID":
            words = words[1:]
        if words and words[0].upper() == command:
            found.append(line)
    return found


def bodies_fetched(server: FakeImapServer) -> list[int]:
    """The UIDs whose text the client fetched, in order."""
    return [int(line.split(" ")[3]) for line in sent(server, "FETCH") if "BODY" in line]


def recorded(idfile: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(seen, delivered-but-not-yet-expunged) UIDs in the store, as the next run loads them."""
    store = UidStore(str(idfile))
    store.load()
    return store.seen(KEY), frozenset(store.delivered(KEY))


@pytest.fixture
def idfile(tmp_path: Path) -> Path:
    return tmp_path / "fetchids"


def test_a_clean_poll_deletes_and_expunges(idfile: Path) -> None:
    """The baseline the faults are measured against."""
    sink = RecordingSink()
    with FakeImapServer(messages=MESSAGES) as server:
        result = poll(server, sink, idfile)
    assert result.status is ExitCode.SUCCESS and result.fetched == 2
    assert sink.subjects == ["first", "second"]
    assert server.mailbox == {}
    assert server.expunged == [2, 1]
    assert all("BODY.PEEK[]" in line for line in sent(server, "FETCH") if "BODY" in line)


def test_drop_during_fetch_keeps_the_message(idfile: Path) -> None:
    sink = RecordingSink()
    dropping = FakeImapServer(messages=MESSAGES, drop_in_fetch_of_uid=2)
    with dropping as server, pytest.raises(ServerConnectionError):
        poll(server, sink, idfile)
    # message 1 was delivered and recorded; its deletion waited for the batch's turn on the
    # server, which never came: nothing was flagged or expunged
    assert sink.subjects == ["first"]
    assert set(server.mailbox) == {1, 2}
    assert server.flags == {1: set(), 2: set()}
    assert server.expunged == []
    assert sent(server, "EXPUNGE") == [] and sent(server, "STORE") == []
    assert bodies_fetched(server) == [1, 2]
    assert recorded(idfile) == (frozenset({"1"}), frozenset({"1"}))  # durable all the same

    # A server that lost the flags (a fresh fake with the same messages): message 1 is known
    # delivered, so once fetched and found the same it is deleted without a second delivery;
    # message 2 is delivered now.
    again = RecordingSink()
    with FakeImapServer(messages=MESSAGES) as server:
        result = poll(server, again, idfile)
    assert result.status is ExitCode.SUCCESS and result.fetched == 1
    assert again.subjects == ["second"]
    assert bodies_fetched(server) == [1, 2]
    assert server.mailbox == {}
    assert sorted(server.expunged) == [1, 2]
    # EXPUNGE's OK does not say which messages went: the records wait for the next listing
    assert recorded(idfile) == (frozenset({"1", "2"}), frozenset({"1", "2"}))
    with FakeImapServer(messages=[]) as server:
        poll(server, RecordingSink(), idfile)
    assert recorded(idfile) == (frozenset(), frozenset())  # gone from the server: forgotten


def test_store_refused_keeps_the_message_and_delivers_once(
    idfile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that refuses STORE cannot block the mailbox: each refusal is reported, the
    poll goes on, nothing is expunged, and no message is ever delivered twice."""
    sink = RecordingSink()
    refusing = FakeImapServer(messages=MESSAGES, store_reply="NO [CANNOT] flags are frozen")
    with refusing as server:
        result = poll(server, sink, idfile)
    assert result.status is ExitCode.SUCCESS
    assert sink.subjects == ["first", "second"]
    assert "could not delete message 1" in capsys.readouterr().err
    assert set(server.mailbox) == {1, 2}
    assert server.flags == {1: set(), 2: set()}
    assert sent(server, "EXPUNGE") == []
    assert recorded(idfile) == (frozenset({"1", "2"}), frozenset({"1", "2"}))

    # With the server fixed, the next poll deletes both without delivering either again
    # (each is fetched to prove it is the message recorded).
    again = RecordingSink()
    with FakeImapServer(messages=MESSAGES) as server:
        result = poll(server, again, idfile)
    assert result.status is ExitCode.NOMAIL
    assert again.subjects == []
    assert bodies_fetched(server) == [1, 2]
    assert server.mailbox == {}


def test_bye_mid_session_expunges_nothing(idfile: Path) -> None:
    sink = RecordingSink()
    bye = FakeImapServer(messages=MESSAGES, bye_on="STORE")
    with bye as server, pytest.raises(ServerConnectionError) as info:
        poll(server, sink, idfile)
    assert "BYE" in str(info.value) or "going away" in str(info.value)
    # both were delivered and recorded before their deletions went out together; the server
    # hung up at that STORE
    assert sink.subjects == ["first", "second"]
    assert set(server.mailbox) == {1, 2}
    assert server.flags == {1: set(), 2: set()}
    assert server.expunged == []
    assert sent(server, "EXPUNGE") == []
    assert sent(server, "LOGOUT") == []
    assert recorded(idfile) == (frozenset({"1", "2"}), frozenset({"1", "2"}))

    again = RecordingSink()
    with FakeImapServer(messages=MESSAGES) as server:
        poll(server, again, idfile)
    assert again.subjects == []  # found delivered before, and deleted without a second time
    assert server.mailbox == {}


def test_bye_before_any_delivery_leaves_everything(idfile: Path) -> None:
    sink = RecordingSink()
    bye = FakeImapServer(messages=MESSAGES, bye_on="FETCH")
    with bye as server, pytest.raises(ServerConnectionError):
        poll(server, sink, idfile)
    assert sink.subjects == []
    assert server.flags == {1: set(), 2: set()}
    assert sent(server, "STORE") == [] and sent(server, "EXPUNGE") == []
    assert recorded(idfile) == (frozenset(), frozenset())


def test_sink_tempfail_leaves_messages_unflagged(idfile: Path) -> None:
    sink = RecordingSink(Outcome.TEMPFAIL)
    with FakeImapServer(messages=MESSAGES) as server:
        result = poll(server, sink, idfile)
    assert result.fetched == 2  # read from the server (fetchmail's count), not delivered
    assert sink.subjects == ["first", "second"]
    assert set(server.mailbox) == {1, 2}
    assert server.flags == {1: set(), 2: set()}  # neither \Seen nor \Deleted
    assert sent(server, "STORE") == [] and sent(server, "EXPUNGE") == []
    assert sent(server, "LOGOUT")  # a clean end of session
    assert recorded(idfile) == (frozenset(), frozenset())

    # nothing was recorded: the next poll offers both again
    again = RecordingSink()
    with FakeImapServer(messages=MESSAGES) as server:
        poll(server, again, idfile)
    assert again.subjects == ["first", "second"]
    assert server.mailbox == {}
