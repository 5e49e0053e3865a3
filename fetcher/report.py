"""What a run tells the user, in fetchmail's words: counts, one line per message, errors.

`-s` silences the progress lines; errors are always shown. Trace lines (-v) go through
`fetcher.trace` and appear between these lines in the order things happen. All of them go
through the console, which sends progress lines to stdout and errors to stderr, or all of them
to the logfile or syslog (fetcher.logsetup).
"""

from __future__ import annotations

import time

from fetcher import __version__
from fetcher.console import Console
from fetcher.errors import (
    AuthenticationError,
    DNSError,
    ListenerUnavailableError,
    PyfetchError,
    ServerConnectionError,
    ServerTimeoutError,
)
from fetcher.model import ServerOptions, UserOptions

DOT_OCTETS = 1024  # fetchmail's SIZETICKER: `showdots` prints a dot per this many octets


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


class Reporter:
    def __init__(
        self,
        *,
        verbose: int = 0,
        silent: bool = False,
        daemon: bool = False,
        console: Console | None = None,
        showdots: bool = False,
    ) -> None:
        self.verbose = verbose
        self.silent = silent and not verbose  # fetchmail: the last of -s and -v wins
        self.daemon = daemon  # a daemon keeps quiet about polls that found nothing
        self.console = console or Console()
        # `set showdots` (not with syslog): fetchmail's progress marks on each message's line,
        # wherever the lines go, logfiles included.
        self.showdots = showdots

    def _progress(self, line: str) -> None:
        if not self.silent:
            self.console.write("out", line + "\n")

    def info(self, line: str) -> None:
        """A prefixed line, as fetchmail's report() writes it."""
        self._progress(f"pyfetch: {line}")

    def error(self, line: str) -> None:
        """Errors are shown even with -s."""
        self.console.write("err", f"pyfetch: {line}\n")

    # -- the poll ----------------------------------------------------------------------

    def poll_started(self, pollname: str, protocol: str) -> None:
        if self.verbose:
            self.info(f"{__version__} querying {pollname} (protocol {protocol}) at "
                      f"{time.ctime()}: poll started")

    def poll_completed(self, pollname: str, protocol: str) -> None:
        if self.verbose:
            self.info(f"{__version__} querying {pollname} (protocol {protocol}) at "
                      f"{time.ctime()}: poll completed")

    def message_count(
        self, user: str, server: str, count: int, seen: int, octets: int | None
    ) -> None:
        if self.silent:  # nothing is formatted for a line that is not shown
            return
        seen_part = f" ({seen} seen)" if seen else ""
        size = f" ({octets} octets)" if octets is not None else ""
        self._progress(f"{_plural(count, 'message')}{seen_part} for {user} at {server}{size}.")

    def no_mail(self, user: str, server: str) -> None:
        if self.verbose or not self.daemon:
            self.info(f"No mail for {user} at {server}")

    def message_read(
        self, user: str, server: str, number: int, total: int, octets: int, flushed: bool,
        header_octets: int | None = None,
    ) -> None:
        """With `header_octets` (IMAP), the sizes of header and body, as fetchmail shows them.
        With showdots, fetchmail's marks too: a dot per kilobyte read, `#` once the header
        was handed on and `*` once the body was."""
        if self.silent:
            return
        result = "flushed" if flushed else "not flushed"
        marks = self.showdots
        dots = octets // DOT_OCTETS
        if header_octets is None:
            size = f"({octets} octets)" + (f" #{'.' * dots}*" if marks else "")
        else:
            body = f"({octets - header_octets} body octets)"
            if marks:
                head_dots = header_octets // DOT_OCTETS
                body += f" {'.' * (dots - head_dots)}*"
                size = f"({header_octets} header octets) {'.' * head_dots}# {body}"
            else:
                size = f"({header_octets} header octets) {body}"
        self._progress(f"reading message {user}@{server}:{number} of {total} {size} {result}")

    def message_skipped(
        self, user: str, server: str, number: int, octets: int, reason: str, flushed: bool
    ) -> None:
        if self.silent:
            return
        reason_part = f" ({reason})" if reason else ""
        result = " flushed" if flushed else " not flushed"
        self._progress(
            f"skipping message {user}@{server}:{number} ({octets} octets){reason_part}{result}"
        )

    def fetchlimit_reached(self, limit: int, left: int, server: str, user: str) -> None:
        self.info(
            f"fetchlimit {limit} reached; {_plural(left, 'message')} left on server {server} "
            f"account {user}"
        )


def describe_failure(err: PyfetchError, server: ServerOptions, user: UserOptions) -> str:
    """An account's failure as fetchmail words it."""
    account = f"{user.remote}@{server.pollname}"
    if isinstance(err, AuthenticationError):
        return f"Authorization failure on {account} ({err.message})"
    if isinstance(err, ListenerUnavailableError):
        return (
            f"{err.message}\npyfetch: SMTP transaction error while fetching from {account} "
            f"and delivering to SMTP host {', '.join(user.smtphunt)}"
        )
    if isinstance(err, DNSError):  # fetchmail 6.4.37 says this one line, and no more
        return err.message
    if isinstance(err, ServerTimeoutError):  # fetchmail 6.4.37's words for a timeout
        return f"{err.message}\npyfetch: socket error while fetching from {account}"
    if isinstance(err, ServerConnectionError):
        return f"{err.message}\npyfetch: Socket or TLS error on {account}"
    return f"{err.message} ({account})"
