"""When each mailbox is polled, what a daemon says about failures, and the run's exit status:
the run loop's decisions, pure and free of I/O (fetcher.run asks, and does what they say).

A daemon (`-d N`) polls each mailbox every N seconds, counted from the end of its last poll
(fetchmail's rule), or every K*N with the server's `interval K`. Mailboxes are scheduled one
by one rather than in lockstep, so that one server that hangs never holds back the others'
next polls; mailboxes due within a moment of each other are started together, so that the
usual case still looks like fetchmail's cycles: poll everything, sleep, poll everything.

A mailbox whose polls keep failing is polled less and less often (twice the period after each
failure in a row, up to sixteen periods and at most an hour), and its failure is said once:
the same failure again is not repeated at every poll (with -v it is). When it works again,
that is said too. A wake-up (SIGUSR1, a second `pyfetch`) polls everything at once, as
fetchmail does, whatever the delays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fetcher.exitcodes import ExitCode

# The longest delay a failing mailbox is given, in periods and in seconds.
MOST_PERIODS = 16
MOST_SECONDS = 3600.0

# Poll outcomes after which a mailbox is simply polled again at its next time.
_WORKED = frozenset({ExitCode.SUCCESS, ExitCode.NOMAIL, ExitCode.MAXFETCH})


def period(daemon_interval: int, server_interval: int) -> float:
    """Seconds between two polls of a server: `set daemon N` times its `interval K`."""
    return float(daemon_interval * max(server_interval, 1))


def together(daemon_interval: int) -> float:
    """How close to its time a mailbox may be polled early, to join polls starting now: a
    tenth of the daemon's interval (so polls finishing a moment apart stay in one cycle)."""
    return daemon_interval / 10.0


def retry_delay(period_seconds: float, failures: int) -> float:
    """Seconds until the next poll after `failures` failed polls in a row (0: it worked)."""
    if failures < 1:
        return period_seconds
    longest = max(period_seconds, min(period_seconds * MOST_PERIODS, MOST_SECONDS))
    return min(longest, period_seconds * 2.0 ** (failures - 1))


@dataclass(frozen=True)
class Health:
    """What the daemon remembers of a mailbox's recent polls."""

    failures: int = 0  # failed polls in a row
    said: str | None = None  # the failure last reported, not to be repeated


@dataclass(frozen=True)
class AfterPoll:
    health: Health
    delay: float  # seconds until the mailbox is polled again
    say: bool  # report this poll's failure (False: the same failure was already said)
    note: str | None = None  # a line about the mailbox's state, to print as well


def after_poll(
    health: Health,
    status: ExitCode,
    failure: str | None,
    *,
    account: str,
    period_seconds: float,
    verbose: bool = False,
) -> AfterPoll:
    """What a daemon does after a poll of one mailbox ended with `status`; `failure` is the
    text of its error, if it failed with one, and `account` names the mailbox."""
    if status in _WORKED:
        note = f"{account} works again" if health.failures and health.said else None
        return AfterPoll(Health(), period_seconds, say=False, note=note)
    failures = health.failures + 1
    repeated = failure is not None and failure == health.said
    note = None
    if repeated and health.failures == 1:
        note = f"{account} keeps failing: polling it less often, and saying so again only " \
               "when that changes"
    return AfterPoll(
        Health(failures, failure if failure is not None else health.said),
        retry_delay(period_seconds, failures),
        say=not repeated or verbose,
        note=note,
    )


def due(next_poll: dict[str, float], now: float, slack: float) -> list[str]:
    """The mailboxes whose time has come (or comes within `slack` seconds), in their order."""
    return [name for name, at in next_poll.items() if at <= now + slack]


def run_status(statuses: Iterable[ExitCode | None], retrieved: bool) -> ExitCode:
    """fetchmail's exit status for a run over several mailboxes: 0 if any poll brought mail,
    else the status of the last mailbox polled, in rcfile order (`None`: never polled)."""
    if retrieved:
        return ExitCode.SUCCESS
    polled = [status for status in statuses if status is not None]
    return polled[-1] if polled else ExitCode.NOMAIL
