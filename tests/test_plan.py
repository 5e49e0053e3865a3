"""The poll's decisions, as tables: listing + recorded UIDs + options -> actions."""

from __future__ import annotations

import pytest

from fetcher.drivers.base import MessageInfo
from fetcher.exitcodes import ExitCode
from fetcher.plan import (
    KEEP_FOR_RETRY,
    Action,
    Command,
    Decision,
    Expunge,
    Fetch,
    FetchlimitReached,
    OnServer,
    Policy,
    Record,
    Relogin,
    Remove,
    SessionPlan,
    Skip,
    Step,
    Verify,
    after_delivery,
    combine_sessions,
    count_new,
    fetchlimit_reached,
    plan_mailbox,
)
from fetcher.sinks.base import Delivery, Outcome
from fetcher.uidstore import Identity

LISTING = [
    MessageInfo(1, 100, "a"),
    MessageInfo(2, 5000, "b"),
    MessageInfo(3, 100, "c"),
    MessageInfo(4, 100, None),
]

F, SEEN, BIG = Action.FETCH, Action.SKIP_SEEN, Action.SKIP_OVERSIZED
DD = Action.DELETE_DELIVERED
C = Identity(100, "c" * 32)  # what the record of message "c" says of it
NONE: dict[str, Identity | None] = {}


@pytest.mark.parametrize(
    ("policy", "seen", "delivered", "expected"),
    [
        (Policy(), set(), NONE, [F, F, F, F]),
        (Policy(keep=True), {"a"}, NONE, [SEEN, F, F, F]),
        (Policy(keep=True, fetchall=True), {"a"}, NONE, [F, F, F, F]),
        (Policy(keep=True, flush=True), {"a"}, NONE, [Action.FLUSH, F, F, F]),
        (Policy(), {"a"}, NONE, [SEEN, F, F, F]),  # seen by fetchmail with keep: left alone
        (Policy(flush=True), {"a"}, NONE, [Action.FLUSH, F, F, F]),
        (Policy(limit=1000), set(), NONE, [F, BIG, F, F]),
        (Policy(limit=1000, limitflush=True), set(), NONE, [F, Action.FLUSH_OVERSIZED, F, F]),
        (Policy(limit=100), set(), NONE, [F, BIG, F, F]),  # `limit` itself is not over it
        (Policy(limit=1), set(), NONE, [BIG, BIG, BIG, BIG]),
        (Policy(limit=100, limitflush=True), set(), NONE, [F, Action.FLUSH_OVERSIZED, F, F]),
        # delivered by a run that died before QUIT: proven the same, then deleted
        (Policy(), {"c"}, {"c": C}, [F, F, DD, F]),
        (Policy(fetchall=True), {"c"}, {"c": C}, [F, F, DD, F]),
        (Policy(keep=True), {"c"}, {"c": C}, [F, F, SEEN, F]),  # keep now: leave it
        # a record that cannot be this message (the size changed), or cannot prove it (an
        # older record without identity): delivered as new, never deleted unread
        (Policy(), {"c"}, {"c": Identity(99, "c" * 32)}, [F, F, F, F]),
        (Policy(), {"c"}, {"c": None}, [F, F, F, F]),
    ],
)
def test_plan(
    policy: Policy, seen: set[str], delivered: dict[str, Identity | None],
    expected: list[Action],
) -> None:
    actions = [d.action for d in plan_mailbox(LISTING, seen, policy, delivered)]
    assert actions == expected


def test_a_delivered_record_asks_the_message_to_prove_itself() -> None:
    decisions = plan_mailbox(LISTING, {"c"}, Policy(), {"c": C})
    assert decisions[2] == Decision(LISTING[2], DD, C)


@pytest.mark.parametrize("policy", [Policy(), Policy(keep=True)])
def test_a_uid_given_to_several_messages_names_none_of_them(policy: Policy) -> None:
    listing = [MessageInfo(1, 100, "x"), MessageInfo(2, 100, "x"), MessageInfo(3, 100, "y")]
    decisions = plan_mailbox(listing, {"x", "y"}, policy, {"x": Identity(100, "d" * 32)})
    assert [d.action for d in decisions] == [F, F, SEEN]  # neither skipped nor deleted unread


def test_count_line_numbers() -> None:
    decisions = plan_mailbox(LISTING, {"a"}, Policy(keep=True))
    assert count_new(decisions) == (4, 1, 5300)
    decisions = plan_mailbox(LISTING, {"a", "c"}, Policy(keep=True))
    assert count_new(decisions) == (4, 2, 5300)


DELETE = Step(Record.DELIVERED, OnServer.DELETE)
KEEP_SEEN = Step(Record.SEEN, OnServer.MARK_SEEN)


@pytest.mark.parametrize(
    ("delivery", "policy", "has_uid", "expected"),
    [
        (Delivery(Outcome.ACCEPTED), Policy(), True, DELETE),
        (Delivery(Outcome.ACCEPTED), Policy(keep=True), True, KEEP_SEEN),
        (Delivery(Outcome.TEMPFAIL), Policy(), True, KEEP_FOR_RETRY),
        # softbounce is fetchmail 6's default: a permanent refusal is kept too
        (Delivery(Outcome.PERMFAIL), Policy(), True, KEEP_FOR_RETRY),
        (Delivery(Outcome.PERMFAIL), Policy(softbounce=False), True,
         Step(Record.DELIVERED, OnServer.DELETE, bounce=True)),
        (Delivery(Outcome.PERMFAIL), Policy(softbounce=False, keep=True), True, KEEP_FOR_RETRY),
        (Delivery(Outcome.TEMPFAIL), Policy(softbounce=False), True, KEEP_FOR_RETRY),
        # spam is dropped without a bounce, unless spambounce asks for one
        (Delivery(Outcome.PERMFAIL, antispam=True), Policy(softbounce=False), True, DELETE),
        (Delivery(Outcome.PERMFAIL, antispam=True), Policy(softbounce=False, spambounce=True),
         True, Step(Record.DELIVERED, OnServer.DELETE, bounce=True)),
        # LMTP: some recipients have it, others deferred: kept, and who has it recorded
        (Delivery(Outcome.TEMPFAIL, delivered_to=("bob@host",)), Policy(), True,
         Step(Record.PARTIAL, OnServer.LEAVE)),
        (Delivery(Outcome.TEMPFAIL, delivered_to=("bob@host",)), Policy(), False, KEEP_FOR_RETRY),
        (Delivery(Outcome.PERMFAIL), Policy(softbounce=False), False,
         Step(Record.NOTHING, OnServer.DELETE, bounce=True)),  # no UID: still bounced
        # no UIDL: nothing to record, the server side is the same
        (Delivery(Outcome.ACCEPTED), Policy(), False, Step(Record.NOTHING, OnServer.DELETE)),
        (Delivery(Outcome.ACCEPTED), Policy(keep=True), False,
         Step(Record.NOTHING, OnServer.MARK_SEEN)),
    ],
)
def test_after_delivery(delivery: Delivery, policy: Policy, has_uid: bool, expected: Step) -> None:
    assert after_delivery(delivery, policy, has_uid=has_uid) == expected


MULTIDROP = Policy(multidrop=True)
BOTH = ("bob@host", "carol@host")
CAROL_UNKNOWN = {"carol@host": "550 5.1.1 carol: no such user"}


@pytest.mark.parametrize(
    ("delivery", "policy", "recipients", "expected"),
    [
        # some recipients refused for good, the others took it: deleted, the refused reported
        (Delivery(Outcome.ACCEPTED, refused=CAROL_UNKNOWN), MULTIDROP, BOTH,
         Step(Record.DELIVERED, OnServer.DELETE, notify=("carol@host",))),
        (Delivery(Outcome.ACCEPTED, refused=CAROL_UNKNOWN), Policy(multidrop=True, keep=True),
         BOTH, Step(Record.SEEN, OnServer.MARK_SEEN, notify=("carol@host",))),
        # not every refusal is reported: spam (unless spambounce), 553, 552 without bouncemail
        (Delivery(Outcome.ACCEPTED, refused={"carol@host": "554 spam"}),
         Policy(multidrop=True, antispam=frozenset({554})), BOTH, DELETE),
        (Delivery(Outcome.ACCEPTED, refused={"carol@host": "554 spam"}),
         Policy(multidrop=True, antispam=frozenset({554}), spambounce=True), BOTH,
         Step(Record.DELIVERED, OnServer.DELETE, notify=("carol@host",))),
        (Delivery(Outcome.ACCEPTED, refused={"carol@host": "553 bad sender"}), MULTIDROP, BOTH,
         DELETE),
        (Delivery(Outcome.ACCEPTED, refused={"carol@host": "552 too big"}),
         Policy(multidrop=True, bouncemail=False), BOTH, DELETE),
        (Delivery(Outcome.ACCEPTED, refused={"carol@host": "552 too big"}), MULTIDROP, BOTH,
         Step(Record.DELIVERED, OnServer.DELETE, notify=("carol@host",))),
        # every recipient refused for good: the postmaster gets it, whatever softbounce says
        (Delivery(Outcome.PERMFAIL, refused={r: "550 no" for r in BOTH}), MULTIDROP, BOTH,
         Step(Record.NOTHING, OnServer.LEAVE, notify=BOTH, to_postmaster=True)),
        (Delivery(Outcome.PERMFAIL, refused={r: "550 no" for r in BOTH}),
         Policy(multidrop=True, softbounce=False), BOTH,
         Step(Record.NOTHING, OnServer.LEAVE, notify=BOTH, to_postmaster=True)),
        # ... but not a single-drop message, nor one refused after DATA, nor a deferral
        (Delivery(Outcome.PERMFAIL, refused={"bob@host": "550 no"}), Policy(), ("bob@host",),
         KEEP_FOR_RETRY),
        (Delivery(Outcome.PERMFAIL, refused=CAROL_UNKNOWN), MULTIDROP, BOTH, KEEP_FOR_RETRY),
        (Delivery(Outcome.PERMFAIL), MULTIDROP, BOTH, KEEP_FOR_RETRY),
        # any 4xx keeps the whole message, whoever else accepted it
        (Delivery(Outcome.TEMPFAIL, refused={"carol@host": "452 full"}), MULTIDROP, BOTH,
         KEEP_FOR_RETRY),
        # the postmaster's own delivery (no recipients handed in) never goes round again
        (Delivery(Outcome.PERMFAIL, refused={"postmaster@host": "550 no"}), MULTIDROP, (),
         KEEP_FOR_RETRY),
    ],
)
def test_after_delivery_per_recipient(
    delivery: Delivery, policy: Policy, recipients: tuple[str, ...], expected: Step
) -> None:
    assert after_delivery(delivery, policy, has_uid=True, recipients=recipients) == expected


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


# -- a session, command by command --------------------------------------------------------

M = [MessageInfo(n, 100, str(n)) for n in range(1, 7)]
FL, FO, BIGX = Action.FLUSH, Action.FLUSH_OVERSIZED, BIG


PLAIN = Policy()


def session(
    actions: list[Action], policy: Policy = PLAIN, *, deletes: bool = True, **options: object
) -> tuple[list[str], SessionPlan]:
    """Run a SessionPlan over `actions` (one per message of M), the server taking every
    deletion when `deletes` and every verified message proving the same; the commands it gave,
    written short: F1 fetch 1, R2 remove 2, V3 verify 3, S4 skip 4, X expunge, Q relogin,
    L<left> fetchlimit."""
    decisions = [
        Decision(m, a, C if a is DD else None) for m, a in zip(M, actions, strict=False)
    ]
    plan = SessionPlan(decisions, policy, **options)  # type: ignore[arg-type]
    shown: list[str] = []
    while (command := plan.next()) is not None:
        shown.append(_short(command))
        if isinstance(command, Verify):
            plan.verified(True)
        if isinstance(command, Fetch | Remove | Verify) and deletes:
            deleting = isinstance(command, Remove | Verify) or not policy.keep
            if deleting:
                plan.deleted(command.message)
        if isinstance(command, Expunge):
            plan.expunged()
    return shown, plan


def _short(command: Command) -> str:
    match command:
        case Fetch(message=m):
            return f"F{m.number}"
        case Remove(message=m):
            return f"R{m.number}"
        case Verify(message=m):
            return f"V{m.number}"
        case Skip(message=m):
            return f"S{m.number}"
        case Expunge():
            return "X"
        case Relogin():
            return "Q"
        case FetchlimitReached(left=left):
            return f"L{left}"
    raise AssertionError(command)


@pytest.mark.parametrize(
    ("actions", "policy", "options", "commands", "status", "more"),
    [
        ([], Policy(), {}, [], ExitCode.NOMAIL, False),
        ([F, F, F], Policy(), {}, ["F1", "F2", "F3"], ExitCode.SUCCESS, False),
        ([SEEN, SEEN], Policy(), {}, [], ExitCode.NOMAIL, False),
        ([FL, F, DD, BIGX], Policy(), {}, ["R1", "F2", "V3", "S4"], ExitCode.SUCCESS, False),
        # fetchlimit: counts fetches only, says how many are left, ends the session
        ([F, SEEN, F, F, F], Policy(fetchlimit=2), {}, ["F1", "F3", "L2"], ExitCode.MAXFETCH,
         False),
        ([F, F], Policy(fetchlimit=2), {}, ["F1", "F2"], ExitCode.SUCCESS, False),
        # ... also across the relogins of one poll: 1 fetched before this session
        ([F, F], Policy(fetchlimit=2), {"fetched": 1}, ["F1", "L1"], ExitCode.MAXFETCH, False),
        # IMAP expunge 2: EXPUNGE after every 2 deletions, not at the end (commit does that)
        ([F, F, F, F, F], Policy(), {"expunge": 2}, ["F1", "F2", "X", "F3", "F4", "X", "F5"],
         ExitCode.SUCCESS, False),
        ([F, F, SEEN, SEEN], Policy(), {"expunge": 2}, ["F1", "F2"], ExitCode.SUCCESS, False),
        ([FL, FO, F], Policy(), {"expunge": 2}, ["R1", "R2", "X", "F3"], ExitCode.SUCCESS,
         False),
        # POP3 cannot expunge: QUIT and a new session for the rest
        ([F, F, F], Policy(), {"expunge": 2, "can_expunge": False}, ["F1", "F2", "Q"],
         ExitCode.SUCCESS, True),
        # keep: nothing is deleted, so expunge never comes due
        ([F, F, F], Policy(keep=True), {"expunge": 1}, ["F1", "F2", "F3"], ExitCode.SUCCESS,
         False),
    ],
)
def test_session_commands(
    actions: list[Action], policy: Policy, options: dict[str, object], commands: list[str],
    status: ExitCode, more: bool,
) -> None:
    shown, plan = session(actions, policy, **options)
    assert shown == commands
    assert plan.status is status
    assert plan.more is more


def test_a_refused_deletion_does_not_count_toward_expunge() -> None:
    shown, _ = session([F, F, F], deletes=False, expunge=1)
    assert shown == ["F1", "F2", "F3"]


def test_expunged_hands_over_the_deleted_uids_once() -> None:
    plan = SessionPlan([Decision(m, F) for m in M[:3]], Policy())
    for _ in range(3):
        command = plan.next()
        assert isinstance(command, Fetch)
        plan.deleted(command.message)
    assert plan.expunged() == {"1", "2", "3"}
    assert plan.expunged() == set()


def test_stop_hands_out_nothing_more() -> None:
    plan = SessionPlan([Decision(m, F) for m in M[:3]], Policy())
    assert plan.next() == Fetch(M[0])
    plan.stop()
    assert plan.next() is None
    assert plan.status is ExitCode.SUCCESS and plan.fetched == 1


@pytest.mark.parametrize(
    ("so_far", "session_status", "expected"),
    [
        (ExitCode.NOMAIL, ExitCode.NOMAIL, ExitCode.NOMAIL),
        (ExitCode.SUCCESS, ExitCode.NOMAIL, ExitCode.SUCCESS),  # the last session found nothing
        (ExitCode.NOMAIL, ExitCode.SUCCESS, ExitCode.SUCCESS),
        (ExitCode.SUCCESS, ExitCode.MAXFETCH, ExitCode.MAXFETCH),
        (ExitCode.SUCCESS, ExitCode.SOCKET, ExitCode.SOCKET),
    ],
)
def test_statuses_of_the_sessions_of_one_poll(
    so_far: ExitCode, session_status: ExitCode, expected: ExitCode
) -> None:
    assert combine_sessions(so_far, session_status) is expected


def test_a_message_that_proves_another_is_delivered_and_counts_as_fetched() -> None:
    plan = SessionPlan([Decision(M[0], DD, C)], Policy(fetchlimit=1))
    assert plan.next() == Verify(M[0], C)
    plan.verified(False)
    assert plan.status is ExitCode.SUCCESS and plan.fetched == 1


def test_fetchlimit_1_fetches_one() -> None:
    shown, plan = session([F, F, F], Policy(fetchlimit=1))
    assert shown == ["F1", "L2"]
    assert plan.status is ExitCode.MAXFETCH


def test_the_commands_carry_what_the_progress_lines_say() -> None:
    decisions = [Decision(M[0], FL), Decision(M[1], FO), Decision(M[2], BIGX),
                 Decision(M[3], F)]
    plan = SessionPlan(decisions, Policy(fetchlimit=0))
    assert [plan.next() for _ in range(5)] == [
        Remove(M[0], ""), Remove(M[1], "oversized"), Skip(M[2], "oversized"), Fetch(M[3]), None,
    ]
    limited = SessionPlan([Decision(M[0], F), Decision(M[1], F)], Policy(fetchlimit=1))
    assert [limited.next(), limited.next()] == [Fetch(M[0]), FetchlimitReached(1, 1)]


def test_a_verified_stranger_adds_to_the_fetches_of_earlier_sessions() -> None:
    plan = SessionPlan([Decision(M[0], DD, C)], Policy(), fetched=3)
    plan.next()
    plan.verified(False)
    assert plan.fetched == 4


@pytest.mark.parametrize(
    ("actions", "policy", "expected"),
    [
        ([F, F], PLAIN, "F2"),  # after F1, the next fetches 2
        ([F, SEEN, SEEN, F], PLAIN, "F4"),  # seen ones are passed over
        ([F, DD], PLAIN, "V2"),
        ([F, FL, F], PLAIN, None),  # a removal comes first
        ([F, BIGX, F], PLAIN, None),  # a skip line comes first
        ([F, F], Policy(fetchlimit=1), None),  # the limit is reached
        ([F], PLAIN, None),
    ],
)
def test_peek_names_the_next_message_to_fetch_without_moving_on(
    actions: list[Action], policy: Policy, expected: str | None
) -> None:
    decisions = [Decision(m, a, C if a is DD else None) for m, a in zip(M, actions, strict=False)]
    plan = SessionPlan(decisions, policy)
    assert plan.next() == Fetch(M[0])
    peeked = plan.peek()
    assert (_short(peeked) if peeked is not None else None) == expected
    assert plan.peek() == peeked and plan.fetched == 1  # nothing changed
    if peeked is not None:
        assert plan.next() == peeked


def test_peek_waits_for_a_due_expunge() -> None:
    plan = SessionPlan([Decision(m, F) for m in M[:3]], PLAIN, expunge=1)
    first = plan.next()
    assert isinstance(first, Fetch)
    plan.deleted(first.message)
    assert plan.peek() is None and plan.next() == Expunge()


def test_an_orphan_record_asks_a_message_of_its_size_to_prove_itself() -> None:
    """After a UIDVALIDITY change: a message delivered under the old one may be there still,
    under a new UID. One of the same size is fetched and compared; others are new."""
    orphan = Identity(5000, "o" * 32)
    decisions = plan_mailbox(LISTING, set(), Policy(), {}, orphans=[orphan])
    assert [d.action for d in decisions] == [F, DD, F, F]
    assert decisions[1].expect == orphan
    kept = plan_mailbox(LISTING, set(), Policy(keep=True), {}, orphans=[orphan])
    assert [d.action for d in kept] == [F, F, F, F]  # keep: nothing is deleted anyway
