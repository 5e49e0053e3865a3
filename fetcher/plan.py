"""The decisions of a poll, with no I/O: what to fetch, skip and delete, and what a delivery
outcome leads to (the h11 idea: all the rules in one module, tested with tables).

fetchmail's rules, with one deliberate improvement: a message whose UID is recorded as
delivered but which is still on the server (the run was killed between the MTA's 250 and the
POP3 QUIT that makes DELE final) is deleted without being delivered again, where fetchmail
would deliver it a second time. Servers repeat and reuse UIDs, so such a message is first
fetched and compared with what the record says of it (size, digest): only the very message
is deleted; anything else is delivered as new (docs/design.md, rule 8).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from fetcher.drivers.base import MessageInfo
from fetcher.exitcodes import ExitCode
from fetcher.sinks.base import Delivery, Outcome
from fetcher.uidstore import Identity


class Action(enum.Enum):
    FETCH = "fetch"
    SKIP_SEEN = "seen"  # already fetched (keep), or not new
    SKIP_OVERSIZED = "oversized"  # over `limit`; never marked seen, so it is reported each poll
    FLUSH = "flush"  # `flush`: a seen message is deleted without fetching
    FLUSH_OVERSIZED = "limitflush"  # `limitflush`: an oversized message is deleted
    # delivered by an earlier run whose QUIT never happened: deleted once it proves the same
    DELETE_DELIVERED = "delivered"


@dataclass(frozen=True)
class Policy:
    """The account options that decide a poll."""

    keep: bool = False
    fetchall: bool = False
    flush: bool = False
    limitflush: bool = False
    limit: int = 0  # octets; 0 = no limit
    fetchlimit: int = 0  # messages per poll; 0 = no limit
    softbounce: bool = True
    spambounce: bool = False
    uidl: bool = False  # the user forced UID tracking (`uidl`)
    bouncemail: bool = True  # `no bouncemail`: the postmaster is told instead of the sender
    antispam: frozenset[int] = frozenset()  # listener codes that mean "spam"
    multidrop: bool = False  # recipients come from the header; the postmaster is the last resort

    @property
    def peek(self) -> bool:
        """Read with TOP (the server's seen state untouched) rather than RETR: fetchmail uses
        RETR with `fetchall`, and with `keep` when no UIDs are tracked, so that the server's own
        seen flag is what marks a message as read."""
        return not self.fetchall and not (self.keep and not self.uidl)


@dataclass(frozen=True)
class Decision:
    message: MessageInfo
    action: Action
    expect: Identity | None = None  # DELETE_DELIVERED: what the message must prove to be


def plan_mailbox(
    listing: Iterable[MessageInfo],
    seen: Set[str],
    policy: Policy,
    delivered: Mapping[str, Identity | None] | None = None,
    *,
    server_flags: bool = True,
    orphans: Iterable[Identity] = (),
) -> list[Decision]:
    """One decision per message, in server order.

    `seen` holds the UIDs recorded as fetched for this account (fetchmail's .fetchids);
    `delivered` those of messages an earlier run delivered and meant to delete, but whose
    deletion the server never confirmed, with what identifies each. With `server_flags` off, a
    message the server flags as read (IMAP \\Seen) is new unless `seen` has it: another client
    may have read it.

    A UID the listing gives to more than one message names none of them: they are handled as
    if the server had no UIDs (a record could otherwise skip or delete the wrong one). So is a
    UID recorded as delivered whose message no longer has the recorded size: the server reused
    it for another message.

    `orphans` identify messages delivered whose records lost their UIDs (the folder's
    UIDVALIDITY changed before they were deleted): an unrecorded message of the same size is
    fetched and compared with one of them, and deleted without delivery only if it proves
    the same.
    """
    delivered = delivered or {}
    unclaimed = list(orphans)
    listing = list(listing)
    repeated = {uid for uid, n in Counter(m.uid for m in listing).items() if n > 1}
    decisions: list[Decision] = []
    for message in listing:
        uid = message.uid if message.uid not in repeated else None
        expect = delivered.get(uid) if uid is not None else None
        if uid is not None and uid in delivered and (expect is None or expect.size != message.size):
            uid = None  # recorded for another message, or without what would prove it the same
        known = (uid is not None and uid in seen) or (server_flags and message.seen)
        oversized = policy.limit > 0 and message.size > policy.limit
        if uid is not None and expect is not None and not policy.keep:
            decisions.append(Decision(message, Action.DELETE_DELIVERED, expect))
            continue
        orphan = next((o for o in unclaimed if o.size == message.size), None)
        if orphan is not None and (uid is None or uid not in delivered) and not policy.keep:
            unclaimed.remove(orphan)
            decisions.append(Decision(message, Action.DELETE_DELIVERED, orphan))
            continue
        if known and not policy.fetchall:
            action = Action.FLUSH if policy.flush else Action.SKIP_SEEN
        elif oversized:
            action = Action.FLUSH_OVERSIZED if policy.limitflush else Action.SKIP_OVERSIZED
        else:
            action = Action.FETCH
        decisions.append(Decision(message, action))
    return decisions


def count_new(decisions: Iterable[Decision]) -> tuple[int, int, int]:
    """(messages, seen, octets) for fetchmail's `N messages (M seen) for bob at host (T octets).`"""
    total = seen = octets = 0
    for decision in decisions:
        total += 1
        octets += decision.message.size
        if decision.action in (Action.SKIP_SEEN, Action.FLUSH, Action.DELETE_DELIVERED):
            seen += 1
    return total, seen, octets


class Record(enum.Enum):
    """What the UID store learns of a message, durably, before anything happens on the server."""

    NOTHING = "nothing"  # not accepted: the message is fetched again at the next poll
    SEEN = "seen"  # kept on the server, and known as fetched (fetchmail's .fetchids line)
    DELIVERED = "delivered"  # about to be deleted: never delivered again, even after a crash
    PARTIAL = "partial"  # kept for those who deferred it: the others are not given it again


class OnServer(enum.Enum):
    """What happens to the message on the server once its record is durable."""

    LEAVE = "leave"
    DELETE = "delete"  # DELE, or \Deleted then EXPUNGE
    MARK_SEEN = "mark seen"  # IMAP \Seen; POP3 has no flags and keeps the record only


@dataclass(frozen=True)
class Step:
    """What one delivery attempt leads to (the per-message rule of docs/design.md): record,
    then act on the server, in that order. `bounce`: tell the sender before the message is
    dropped; if nobody could be told, `KEEP_FOR_RETRY` applies instead.

    `notify`: recipients the listener refused for good while others took the message; the
    sender (the postmaster under `no bouncemail`) is told of them, and the message goes its
    way whether or not that notice could be sent: the others have it already.
    `to_postmaster`: a multidrop message every recipient of which was refused for good goes to
    the postmaster instead, in a delivery of its own whose outcome decides the message's fate
    (fetchmail's open_smtp_sink()); its `notify` is sent if that delivery succeeds."""

    record: Record
    on_server: OnServer
    bounce: bool = False
    notify: tuple[str, ...] = ()
    to_postmaster: bool = False

    @property
    def deletes(self) -> bool:
        return self.on_server is OnServer.DELETE


KEEP_FOR_RETRY = Step(Record.NOTHING, OnServer.LEAVE)


def refusals_to_report(delivery: Delivery, policy: Policy) -> tuple[str, ...]:
    """The refused recipients the sender hears of (fetchmail's
    handle_smtp_report_without_bounce()): every one refused with a 5xx, except a spam
    refusal (`antispam` codes) unless `spambounce`, a 553 (an invalid sender: bouncing to it
    would feed spammers), and a 552 (too large) under `no bouncemail`."""
    told: list[str] = []
    for recipient, reply in delivery.refused.items():
        code = int(reply[:3]) if reply[:3].isdigit() else 0
        if code in policy.antispam:
            if policy.spambounce:
                told.append(recipient)
        elif code == 553 or (code == 552 and not policy.bouncemail):
            continue
        elif 500 <= code <= 599:
            told.append(recipient)
    return tuple(told)


def after_delivery(
    delivery: Delivery,
    policy: Policy,
    *,
    has_uid: bool,
    recipients: tuple[str, ...] = (),
) -> Step:
    """fetchmail 6.4's handling of the listener's answer, as one step.

    Accepted: delete, or with `keep` mark it read; recipients refused for good meanwhile are
    reported to the sender (`notify`). Refused for good (5xx): kept for the next poll under
    `softbounce` (fetchmail's default); with `no softbounce` it is bounced to its sender and
    deleted, except that a refusal for spam (`antispam` codes) is dropped without a bounce
    unless `spambounce` is set. A multidrop message whose every recipient (`recipients`, the
    envelope's) was refused for good goes to the postmaster first (`to_postmaster`). A
    temporary refusal is always kept, the whole message, whoever else took it; when some LMTP
    recipients took the message before others deferred it, who has it is recorded. Without a
    UID (a POP3 server without UIDL) there is nothing to record.
    """
    if delivery.outcome is Outcome.ACCEPTED:
        notify = refusals_to_report(delivery, policy)
        step = Step(Record.SEEN, OnServer.MARK_SEEN, notify=notify) if policy.keep else Step(
            Record.DELIVERED, OnServer.DELETE, notify=notify
        )
    elif (
        delivery.outcome is Outcome.PERMFAIL
        and policy.multidrop
        and recipients
        and all(recipient in delivery.refused for recipient in recipients)
    ):
        notify = refusals_to_report(delivery, policy)
        return Step(Record.NOTHING, OnServer.LEAVE, notify=notify, to_postmaster=True)
    elif delivery.outcome is Outcome.PERMFAIL and not policy.softbounce and not policy.keep:
        bounce = not (delivery.antispam and not policy.spambounce)
        step = Step(Record.DELIVERED, OnServer.DELETE, bounce=bounce)
    elif delivery.delivered_to:
        # LMTP: some recipients have it, others deferred it (a full mailbox). Kept for
        # the others; who has it is recorded so that they never get it twice.
        return Step(Record.PARTIAL, OnServer.LEAVE) if has_uid else KEEP_FOR_RETRY
    else:
        return KEEP_FOR_RETRY
    if not has_uid:
        step = dataclasses.replace(step, record=Record.NOTHING)
    return step


def fetchlimit_reached(fetched: int, policy: Policy) -> bool:
    return policy.fetchlimit > 0 and fetched >= policy.fetchlimit


# -- one session, one command at a time -----------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    """Fetch the message and deliver it; then report after_delivery()'s step back."""

    message: MessageInfo


@dataclass(frozen=True)
class Remove:
    """Delete the message without fetching it (flush, limitflush)."""

    message: MessageInfo
    reason: str  # for the `skipping message ... flushed` line; "" for a plain flush


@dataclass(frozen=True)
class Verify:
    """A message delivered by an earlier run: fetch it and compare it with `expect`. The same
    message is deleted without delivering it again (then report `verified(True)`); any other
    is delivered as new (`verified(False)`)."""

    message: MessageInfo
    expect: Identity


@dataclass(frozen=True)
class Skip:
    """Leave the message and say so (over `limit`: reported at every poll)."""

    message: MessageInfo
    reason: str


@dataclass(frozen=True)
class Expunge:
    """Make the deletions so far final and go on in the same session (IMAP `expunge N`)."""


@dataclass(frozen=True)
class Relogin:
    """End the session (POP3 QUIT makes DELE final) and poll the rest in a new one."""


@dataclass(frozen=True)
class FetchlimitReached:
    limit: int
    left: int  # messages that would have been fetched


Command = Fetch | Remove | Verify | Skip | Expunge | Relogin | FetchlimitReached

_REMOVE_REASONS = {Action.FLUSH: "", Action.FLUSH_OVERSIZED: "oversized"}
_WORK = frozenset({Action.FETCH, Action.DELETE_DELIVERED, *_REMOVE_REASONS})


class SessionPlan:
    """The work of one session, handed out one command at a time; no I/O.

    The poll (fetcher.session) asks next(), does what it is told and reports back what the
    server did (deleted()). `fetched` counts the messages read in earlier sessions of the same
    poll, for `fetchlimit` across the relogins of `expunge N`.
    """

    def __init__(
        self,
        decisions: list[Decision],
        policy: Policy,
        *,
        expunge: int = 0,
        can_expunge: bool = True,
        fetched: int = 0,
    ) -> None:
        self.decisions = decisions
        self.policy = policy
        self.expunge_every = expunge
        self.can_expunge = can_expunge
        self.fetched = fetched
        self.status = ExitCode.NOMAIL
        self.more = False  # a Relogin ended the session with work left
        self.unexpunged: list[str] = []  # UIDs deleted since the last expunge, for the store
        self._deleted_since_expunge = 0
        self._index = 0
        self._finished = False

    def next(self) -> Command | None:
        """What to do next; None when the session's work is done."""
        while not self._finished and self._index < len(self.decisions):
            if self._expunge_due():
                self._deleted_since_expunge = 0
                if self.can_expunge:
                    return Expunge()
                self._finished = self.more = True
                return Relogin()
            decision = self.decisions[self._index]
            message, action = decision.message, decision.action
            if action is Action.FETCH:
                if fetchlimit_reached(self.fetched, self.policy):
                    self._finished = True
                    self.status = ExitCode.MAXFETCH
                    left = sum(1 for d in self.decisions[self._index :] if d.action is Action.FETCH)
                    return FetchlimitReached(self.policy.fetchlimit, left)
                self._index += 1
                self.fetched += 1
                if self.status is ExitCode.NOMAIL:
                    self.status = ExitCode.SUCCESS
                return Fetch(message)
            self._index += 1
            if action is Action.DELETE_DELIVERED:
                assert decision.expect is not None  # plan_mailbox gives it with the action
                return Verify(message, decision.expect)
            if action in _REMOVE_REASONS:
                return Remove(message, _REMOVE_REASONS[action])
            if action is Action.SKIP_OVERSIZED:
                return Skip(message, "oversized")
        return None

    def peek(self) -> Fetch | Verify | None:
        """The message the next command will fetch, if the next command fetches one (so that
        it can be read while this one is delivered); nothing changes."""
        if self._finished or self._expunge_due():
            return None
        for decision in self.decisions[self._index :]:
            if decision.action is Action.FETCH:
                if fetchlimit_reached(self.fetched, self.policy):
                    return None
                return Fetch(decision.message)
            if decision.action is Action.DELETE_DELIVERED and decision.expect is not None:
                return Verify(decision.message, decision.expect)
            if decision.action is not Action.SKIP_SEEN:
                return None  # another command comes first
        return None

    def verified(self, same: bool) -> None:
        """The outcome of a Verify: not the same message means it is delivered, a fetch."""
        if not same:
            self.fetched += 1
            if self.status is ExitCode.NOMAIL:
                self.status = ExitCode.SUCCESS

    def deleted(self, message: MessageInfo) -> None:
        """The server took the deletion of `message` (not yet final until expunge or QUIT)."""
        self._deleted_since_expunge += 1
        if message.uid is not None:
            self.unexpunged.append(message.uid)

    def expunged(self) -> set[str]:
        """The deletions so far are final: the UIDs the store may now forget."""
        uids = set(self.unexpunged)
        self.unexpunged.clear()
        return uids

    def stop(self) -> None:
        """Hand out nothing more (the run is stopping): the session ends cleanly."""
        self._finished = True

    def _expunge_due(self) -> bool:
        """`expunge N`: after every N deletions, if anything is left that fetches or deletes."""
        if not self.expunge_every or self._deleted_since_expunge < self.expunge_every:
            return False
        return any(d.action in _WORK for d in self.decisions[self._index :])


def combine_sessions(so_far: ExitCode, session: ExitCode) -> ExitCode:
    """The status of a poll made of several sessions (the relogins of POP3 `expunge N`): the
    last one that says more than "no mail"."""
    return so_far if session is ExitCode.NOMAIL and so_far is not ExitCode.NOMAIL else session
