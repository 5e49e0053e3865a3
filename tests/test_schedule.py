"""The run loop's decisions, as tables: when a mailbox is polled again, what a daemon says
about a failing one, and the run's exit status."""

from __future__ import annotations

import pytest

from fetcher.exitcodes import ExitCode
from fetcher.schedule import (
    Health,
    after_poll,
    due,
    period,
    retry_delay,
    run_status,
    together,
)

OK, NONE, SOCK, AUTH, FULL = (
    ExitCode.SUCCESS, ExitCode.NOMAIL, ExitCode.SOCKET, ExitCode.AUTHFAIL, ExitCode.MAXFETCH,
)
ACCOUNT = "bob@mail.isp.net"
REFUSED = "connection to 127.0.0.1:110 failed: Connection refused"


@pytest.mark.parametrize(
    ("daemon", "interval", "expected"),
    [(300, 0, 300.0), (300, 1, 300.0), (300, 3, 900.0), (1, 0, 1.0)],
)
def test_period_is_the_daemon_interval_times_the_servers_interval(
    daemon: int, interval: int, expected: float
) -> None:
    assert period(daemon, interval) == expected


@pytest.mark.parametrize(
    ("seconds", "failures", "expected"),
    [
        (300.0, 0, 300.0),
        (300.0, 1, 300.0),
        (300.0, 2, 600.0),
        (300.0, 3, 1200.0),
        (300.0, 4, 2400.0),
        (300.0, 5, 3600.0),  # at most an hour ...
        (300.0, 50, 3600.0),
        (1.0, 4, 8.0),
        (1.0, 6, 16.0),  # ... and at most sixteen periods
        (1.0, 60, 16.0),
        (7200.0, 3, 7200.0),  # never less often than the period itself
    ],
)
def test_retry_delay_doubles_up_to_a_bound(seconds: float, failures: int, expected: float) -> None:
    assert retry_delay(seconds, failures) == expected


@pytest.mark.parametrize(
    ("health", "status", "failure", "verbose", "say", "note", "after", "delay"),
    [
        # a poll that works: the next at the period
        (Health(), OK, None, False, False, None, Health(), 60.0),
        (Health(), NONE, None, False, False, None, Health(), 60.0),
        (Health(), FULL, None, False, False, None, Health(), 60.0),
        # the first failure is said, the next poll is at the period
        (Health(), SOCK, REFUSED, False, True, None, Health(1, REFUSED), 60.0),
        # the same failure again: said no more (a note says so, once), polled less often
        (Health(1, REFUSED), SOCK, REFUSED, False, False,
         f"{ACCOUNT} keeps failing: polling it less often, and saying so again only when "
         "that changes", Health(2, REFUSED), 120.0),
        (Health(2, REFUSED), SOCK, REFUSED, False, False, None, Health(3, REFUSED), 240.0),
        # ... unless -v asks to hear everything
        (Health(2, REFUSED), SOCK, REFUSED, True, True, None, Health(3, REFUSED), 240.0),
        # a different failure is news
        (Health(2, REFUSED), AUTH, "Authorization failure", False, True, None,
         Health(3, "Authorization failure"), 240.0),
        # working again after failures that were said: said too
        (Health(3, REFUSED), OK, None, False, False, f"{ACCOUNT} works again", Health(), 60.0),
        (Health(3, REFUSED), NONE, None, False, False, f"{ACCOUNT} works again", Health(),
         60.0),
        # a failure with no text to say: nothing said before, so nothing to take back
        (Health(1, None), OK, None, False, False, None, Health(), 60.0),
        (Health(1, REFUSED), SOCK, None, False, True, None, Health(2, REFUSED), 120.0),
    ],
)
def test_after_poll(
    health: Health, status: ExitCode, failure: str | None, verbose: bool, say: bool,
    note: str | None, after: Health, delay: float,
) -> None:
    decision = after_poll(
        health, status, failure, account=ACCOUNT, period_seconds=60.0, verbose=verbose
    )
    assert (decision.say, decision.note, decision.health, decision.delay) == (
        say, note, after, delay
    )


def test_due_takes_the_mailboxes_whose_time_has_come_in_their_order() -> None:
    times = {"c": 100.0, "a": 50.0, "b": 105.0, "d": 200.0}
    assert due(times, 100.0, 0.0) == ["c", "a"]
    assert due(times, 100.0, together(60)) == ["c", "a", "b"]  # 6 s early joins this cycle
    assert due({}, 100.0, 6.0) == []


@pytest.mark.parametrize(
    ("statuses", "retrieved", "expected"),
    [
        ([], False, NONE),
        ([NONE, NONE], False, NONE),
        ([SOCK, NONE], False, NONE),  # the last mailbox's status, as fetchmail
        ([NONE, SOCK], False, SOCK),
        ([NONE, SOCK, None], False, SOCK),  # never polled (a run stopped first): not counted
        ([SOCK, AUTH], True, OK),  # any mail at all: 0
        ([NONE, SOCK, AUTH], False, AUTH),
    ],
)
def test_run_status(statuses: list[ExitCode | None], retrieved: bool, expected: ExitCode) -> None:
    assert run_status(statuses, retrieved) is expected


def test_polls_a_tenth_of_the_interval_apart_join_one_cycle() -> None:
    assert together(60) == 6.0
    assert together(0) == 0.0


def test_without_verbose_a_repeated_failure_is_not_said_again() -> None:
    decision = after_poll(Health(2, REFUSED), SOCK, REFUSED, account=ACCOUNT, period_seconds=60.0)
    assert not decision.say
