"""A folder watch's decisions, as tables: server lines -> poll or not, and what comes next."""

from __future__ import annotations

import pytest

from fetcher.exitcodes import ExitCode
from fetcher.idleplan import (
    IDLE_RENEWAL,
    LONGEST_RETRY,
    News,
    Next,
    classify,
    gives_up,
    react,
    repoll_delay,
    retry_delay,
)


@pytest.mark.parametrize(
    ("line", "news"),
    [
        (b"* 4 EXISTS", News.NEW_MAIL),
        (b"* 1 RECENT", News.NEW_MAIL),
        (b"* 12 exists", News.NEW_MAIL),
        (b"* 0 RECENT", News.NOTHING),  # Dovecot says this after another session took the mail
        (b"* 0 EXISTS", News.NOTHING),
        (b"* 3 EXPUNGE", News.NOTHING),  # our own poll deleting: not news
        (b"* 2 FETCH (FLAGS (\\Seen))", News.NOTHING),  # our own poll marking read
        (b"* OK Still here", News.NOTHING),
        (b"+ idling", News.NOTHING),
        (b"* BYE Server shutting down.", News.GONE),
        (b"* bye idle too long", News.GONE),
        (b"A0005 OK Idle completed (0.001 + 1.264 secs).", News.ENDED),
        (b"A0005 BAD Expected DONE.", News.ENDED),
        (b"* 5 EXISTSX", News.NOTHING),
    ],
)
def test_what_a_line_means(line: bytes, news: News) -> None:
    assert classify(line) is news


@pytest.mark.parametrize(
    ("lines", "idling", "expected"),
    [
        ([], True, (False, Next.RENEW)),  # the wait ran out: renew before 29 minutes
        ([], False, (False, Next.WAIT)),  # NOOP needs no renewal
        ([b"* 3 EXISTS", b"* 1 RECENT"], True, (True, Next.WAIT)),
        ([b"* 1 EXPUNGE"], True, (False, Next.WAIT)),
        ([b"* 1 EXPUNGE", b"* 3 EXISTS"], True, (True, Next.WAIT)),  # both in one burst
        ([b"* OK Still here"], True, (False, Next.WAIT)),
        ([b"* 3 EXISTS", b"* BYE going down"], True, (True, Next.RECONNECT)),
        ([b"* BYE going down"], False, (False, Next.RECONNECT)),
        ([b"A1 OK IDLE terminated"], True, (False, Next.RENEW)),  # the server ended IDLE
        ([b"* 2 EXISTS", b"A7 OK NOOP completed"], False, (True, Next.WAIT)),
    ],
)
def test_what_follows_the_news(
    lines: list[bytes], idling: bool, expected: tuple[bool, Next]
) -> None:
    assert react(lines, idling=idling) == expected


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, LONGEST_RETRY), (60, LONGEST_RETRY)],
)
def test_reconnecting_backs_off(failures: int, delay: float) -> None:
    assert retry_delay(failures) == delay


@pytest.mark.parametrize(
    ("status", "ever_watched", "stop"),
    [
        (ExitCode.AUTHFAIL, False, True),  # a wrong password: say so and stop
        (ExitCode.AUTHFAIL, True, False),  # it worked before: the server is having trouble
        (ExitCode.SYNTAX, False, True),  # e.g. a preconnect command that fails
        (ExitCode.SOCKET, False, False),  # server down at start: keep trying
        (ExitCode.ERROR, False, False),  # the server said something went wrong
        (ExitCode.PROTOCOL, True, False),
        (ExitCode.LOCKBUSY, False, False),
        # every lasting failure, one by one: another try would not cure it
        (ExitCode.IOERR, False, True),
        (ExitCode.BSMTP, False, True),
        (ExitCode.UNDEFINED, False, True),
        (ExitCode.SMTP, False, False),  # the listener may come back
        (ExitCode.DNS, False, False),
    ],
)
def test_which_failures_end_a_watch(status: ExitCode, ever_watched: bool, stop: bool) -> None:
    assert gives_up(status, ever_watched=ever_watched) is stop


@pytest.mark.parametrize(
    ("status", "failures", "delay"),
    [
        (ExitCode.SUCCESS, 0, None),
        (ExitCode.NOMAIL, 0, None),
        (ExitCode.MAXFETCH, 0, 0.0),  # fetchlimit: go on with the rest now
        (ExitCode.SMTP, 1, 1.0),  # the listener is down: the mail is there, try again
        (ExitCode.SMTP, 4, 8.0),
        (ExitCode.SOCKET, 2, 2.0),
    ],
)
def test_when_a_watched_folder_is_polled_again(
    status: ExitCode, failures: int, delay: float | None
) -> None:
    assert repoll_delay(status, failures) == delay


def test_idle_is_renewed_before_a_server_may_drop_it() -> None:
    """RFC 2177: a server may end an IDLE after 30 minutes; re-issue it before 29."""
    assert 25 * 60 <= IDLE_RENEWAL < 29 * 60
