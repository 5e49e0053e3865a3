"""The decisions of a poll, with no I/O: what to fetch, skip and delete, and what a delivery
outcome leads to (the h11 idea: all the rules in one module, tested with tables).

fetchmail's rules, with one deliberate improvement: a message whose UID is recorded as
delivered but which is still on the server (the run was killed between the MTA's 250 and the
POP3 QUIT that makes DELE final) is deleted without being delivered again, where fetchmail
would deliver it a second time.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Set
from dataclasses import dataclass

from fetcher.drivers.base import MessageInfo
from fetcher.sinks.base import Delivery, Outcome


class Action(enum.Enum):
    FETCH = "fetch"
    SKIP_SEEN = "seen"  # already fetched (keep), or not new
    SKIP_OVERSIZED = "oversized"  # over `limit`; never marked seen, so it is reported each poll
    FLUSH = "flush"  # `flush`: a seen message is deleted without fetching
    FLUSH_OVERSIZED = "limitflush"  # `limitflush`: an oversized message is deleted
    DELETE_DELIVERED = "delivered"  # delivered by an earlier run whose QUIT never happened


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
    uidl: bool = False  # the user forced UID tracking (`uidl`)

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


def plan_mailbox(
    listing: Iterable[MessageInfo],
    seen: Set[str],
    policy: Policy,
    delivered: Set[str] = frozenset(),
    *,
    server_flags: bool = True,
) -> list[Decision]:
    """One decision per message, in server order.

    `seen` holds the UIDs recorded as fetched for this account (fetchmail's .fetchids);
    `delivered` those of messages an earlier run delivered and meant to delete, but whose
    deletion the server never confirmed. With `server_flags` off, a message the server
    flags as read (IMAP \\Seen) is new unless `seen` has it: another client may have read it.
    """
    decisions: list[Decision] = []
    for message in listing:
        uid = message.uid
        known = (uid is not None and uid in seen) or (server_flags and message.seen)
        oversized = policy.limit > 0 and message.size > policy.limit
        if uid is not None and uid in delivered and not policy.keep:
            action = Action.DELETE_DELIVERED
        elif known and not policy.fetchall:
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


class Disposition(enum.Enum):
    """What happens on the server after a delivery attempt."""

    DELETE = "delete"  # accepted (or refused for good without softbounce): record, then DELE
    KEEP_SEEN = "keep-seen"  # accepted with `keep`: record the UID, leave the message
    RETRY = "retry"  # not accepted: leave it, unrecorded, for the next poll


def after_delivery(delivery: Delivery, policy: Policy) -> Disposition:
    """fetchmail 6.4's handling of the listener's answer (reference section 4.7)."""
    if delivery.outcome is Outcome.ACCEPTED:
        return Disposition.KEEP_SEEN if policy.keep else Disposition.DELETE
    if delivery.outcome is Outcome.PERMFAIL and not policy.softbounce and not policy.keep:
        return Disposition.DELETE  # `set no softbounce`: a permanent refusal drops it
    return Disposition.RETRY


def fetchlimit_reached(fetched: int, policy: Policy) -> bool:
    return policy.fetchlimit > 0 and fetched >= policy.fetchlimit
