"""What a folder watch does next: IDLE's decisions, pure and free of I/O (the loop is
fetcher.idle, which asks these functions and does what they say).

A watch is one IMAP connection per idle folder that only listens: it EXAMINEs the folder (so it
changes nothing) and waits in IDLE (RFC 2177), or polls with NOOP where IDLE is not offered.
What the server says while it waits decides whether the folder is polled, the IDLE renewed or
the connection made again.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable

from fetcher.exitcodes import ExitCode

# RFC 2177: a server may drop a client idle for 30 minutes; re-issue IDLE before 29.
IDLE_RENEWAL = 28 * 60.0
# Where IDLE is not offered, how often NOOP asks for news (fetchmail: its poll interval, 300
# s by default; a watch that waits five minutes would hardly be worth the connection).
NOOP_INTERVAL = 60.0
# Reconnecting after a failure: 1 s, then twice as long each time, at most this long.
FIRST_RETRY = 1.0
LONGEST_RETRY = 300.0

# Failures that another try will not cure unless somebody changes something: a refused
# password, a configuration the driver rejects. Before a watch was ever set up they end it.
_LASTING_FAILURES = frozenset(
    {ExitCode.AUTHFAIL, ExitCode.SYNTAX, ExitCode.IOERR, ExitCode.BSMTP, ExitCode.UNDEFINED}
)
# Poll outcomes after which the folder is fine until the next news.
_POLL_DONE = frozenset({ExitCode.SUCCESS, ExitCode.NOMAIL})


class News(enum.Enum):
    """What one line the server sent to a waiting watch means."""

    NOTHING = "nothing"  # "* OK Still here", EXPUNGE, FETCH (flags changed), continuation
    NEW_MAIL = "new mail"  # "* n EXISTS", "* n RECENT" with n > 0
    ENDED = "ended"  # a tagged reply: the server ended our IDLE (or answered our NOOP)
    GONE = "gone"  # "* BYE": the server is closing the connection


class Next(enum.Enum):
    """What the watch does once it has looked at what the server sent."""

    WAIT = "wait"  # go on waiting on this connection
    RENEW = "renew"  # end IDLE with DONE and start it again
    RECONNECT = "reconnect"  # this connection is finished: make a new one


_UNTAGGED_COUNT = re.compile(rb"^\* (\d+) (EXISTS|RECENT)\b", re.IGNORECASE)


def classify(line: bytes) -> News:
    """One response line (without CRLF), as read during IDLE or after NOOP."""
    if line.startswith(b"+"):
        return News.NOTHING
    if not line.startswith(b"* "):
        return News.ENDED
    if line[2:].upper().startswith(b"BYE"):
        return News.GONE
    count = _UNTAGGED_COUNT.match(line)
    if count is not None and int(count.group(1)) > 0:
        return News.NEW_MAIL
    return News.NOTHING


def react(lines: Iterable[bytes], *, idling: bool) -> tuple[bool, Next]:
    """(whether to poll the folder, what the connection does next) after `lines`.

    No lines at all means the wait ran out: time to renew IDLE (NOOP needs no renewal). Even
    when the server says BYE, mail it announced first is fetched; the poll has a connection
    of its own.
    """
    news = {classify(line) for line in lines}
    poll = News.NEW_MAIL in news
    if News.GONE in news:
        return poll, Next.RECONNECT
    if idling and (not news or News.ENDED in news):
        return poll, Next.RENEW
    return poll, Next.WAIT


def retry_delay(failures: int) -> float:
    """Seconds before the next try after `failures` failures in a row (1, 2, 4, ... 300)."""
    if failures < 1:
        return 0.0
    return min(LONGEST_RETRY, FIRST_RETRY * 2.0 ** (failures - 1))


def gives_up(status: ExitCode, *, ever_watched: bool) -> bool:
    """Whether a failed connection ends the watch for good.

    A watch that never got going because of a lasting failure (a wrong password) stops and says
    why, rather than knock at the server every few minutes. Once a watch has worked, every
    failure is taken as passing (a server restarting, an authentication backend down) and
    retried with the delays of retry_delay().
    """
    return not ever_watched and status in _LASTING_FAILURES


def repoll_delay(
    status: ExitCode, failures: int, delays: Callable[[int], float] | None = None
) -> float | None:
    """After a poll of a watched folder ended with `status` (and `failures` failed polls in a
    row, this one included): seconds until the folder is polled again without news, or None
    to wait for news.

    A poll cut short by `fetchlimit` goes on at once with what is left. A failed poll (the
    listener down, a dropped connection) leaves its mail on the server; it is tried again after
    a growing delay, because no news will come for mail that is already there.
    """
    if status in _POLL_DONE:
        return None
    if status is ExitCode.MAXFETCH:
        return 0.0
    return (delays or retry_delay)(failures)
