"""The poll's decisions, as tables: listing + recorded UIDs + options -> actions."""

from __future__ import annotations

import pytest

from fetcher.drivers.base import MessageInfo
from fetcher.plan import (
    Action,
    Disposition,
    Policy,
    after_delivery,
    count_new,
    fetchlimit_reached,
    plan_mailbox,
)
from fetcher.sinks.base import Delivery, Outcome

LISTING = [
    MessageInfo(1, 100, "a"),
    MessageInfo(2, 5000, "b"),
    MessageInfo(3, 100, "c"),
    MessageInfo(4, 100, None),
]

F, SEEN, BIG = Action.FETCH, Action.SKIP_SEEN, Action.SKIP_OVERSIZED


@pytest.mark.parametrize(
    ("policy", "seen", "delivered", "expected"),
    [
        (Policy(), set(), set(), [F, F, F, F]),
        (Policy(keep=True), {"a"}, set(), [SEEN, F, F, F]),
        (Policy(keep=True, fetchall=True), {"a"}, set(), [F, F, F, F]),
        (Policy(keep=True, flush=True), {"a"}, set(), [Action.FLUSH, F, F, F]),
        (Policy(), {"a"}, set(), [SEEN, F, F, F]),  # seen by fetchmail with keep: left alone
        (Policy(flush=True), {"a"}, set(), [Action.FLUSH, F, F, F]),
        (Policy(limit=1000), set(), set(), [F, BIG, F, F]),
        (Policy(limit=1000, limitflush=True), set(), set(), [F, Action.FLUSH_OVERSIZED, F, F]),
        # delivered by a run that died before QUIT: delete, never deliver twice
        (Policy(), {"c"}, {"c"}, [F, F, Action.DELETE_DELIVERED, F]),
        (Policy(fetchall=True), {"c"}, {"c"}, [F, F, Action.DELETE_DELIVERED, F]),
        (Policy(keep=True), {"c"}, {"c"}, [F, F, SEEN, F]),  # keep now: leave it
    ],
)
def test_plan(
    policy: Policy, seen: set[str], delivered: set[str], expected: list[Action]
) -> None:
    actions = [d.action for d in plan_mailbox(LISTING, seen, policy, delivered)]
    assert actions == expected


def test_count_line_numbers() -> None:
    decisions = plan_mailbox(LISTING, {"a"}, Policy(keep=True))
    assert count_new(decisions) == (4, 1, 5300)


@pytest.mark.parametrize(
    ("outcome", "policy", "expected"),
    [
        (Outcome.ACCEPTED, Policy(), Disposition.DELETE),
        (Outcome.ACCEPTED, Policy(keep=True), Disposition.KEEP_SEEN),
        (Outcome.TEMPFAIL, Policy(), Disposition.RETRY),
        (Outcome.PERMFAIL, Policy(), Disposition.RETRY),  # softbounce is fetchmail 6's default
        (Outcome.PERMFAIL, Policy(softbounce=False), Disposition.DELETE),
        (Outcome.PERMFAIL, Policy(softbounce=False, keep=True), Disposition.RETRY),
        (Outcome.TEMPFAIL, Policy(softbounce=False), Disposition.RETRY),
    ],
)
def test_after_delivery(outcome: Outcome, policy: Policy, expected: Disposition) -> None:
    assert after_delivery(Delivery(outcome), policy) is expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Policy(), True),
        (Policy(fetchall=True), False),
        (Policy(keep=True), False),  # keep without UIDs: RETR marks it read on the server
        (Policy(keep=True, uidl=True), True),
    ],
)
def test_peek(policy: Policy, expected: bool) -> None:
    assert policy.peek is expected


def test_fetchlimit() -> None:
    assert not fetchlimit_reached(5, Policy())
    assert not fetchlimit_reached(1, Policy(fetchlimit=2))
    assert fetchlimit_reached(2, Policy(fetchlimit=2))


def test_server_seen_flag_counts_as_seen() -> None:
    listing = [MessageInfo(1, 10, "1", seen=True), MessageInfo(2, 10, "2")]
    assert [d.action for d in plan_mailbox(listing, set(), Policy())] == [SEEN, F]
    assert [d.action for d in plan_mailbox(listing, set(), Policy(fetchall=True))] == [F, F]


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        (set(), [F, F, F]),  # read by another client, and by nobody in our record: fetch
        ({"1"}, [SEEN, F, F]),
        ({"1", "3"}, [SEEN, F, SEEN]),  # we delivered it; nobody has read it on the server
    ],
)
def test_without_server_flags_only_our_record_says_seen(
    recorded: set[str], expected: list[Action]
) -> None:
    listing = [MessageInfo(1, 10, "1", seen=True), MessageInfo(2, 10, "2", seen=True),
               MessageInfo(3, 10, "3")]
    decisions = plan_mailbox(listing, recorded, Policy(keep=True), server_flags=False)
    assert [d.action for d in decisions] == expected
