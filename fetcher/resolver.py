"""The DNS look-ups of multidrop routing (`dns`, `checkalias`), bounded in time.

fetcher.recipients decides; this asks. A look-up runs getaddrinfo() on a daemon thread and is
given up after `timeout` seconds: getaddrinfo() cannot be interrupted, and a resolver that does
not answer must cost the message a wait for the next poll, never the poll itself (docs/design.md,
rule 4). A thread given up on ends on its own when the resolver answers or gives up; as a
daemon thread it never holds up the end of the run.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable
from typing import Any

from fetcher.recipients import HostInfo, LookupFailed

__all__ = ["DEFAULT_TIMEOUT", "TimedResolver"]

DEFAULT_TIMEOUT = 10.0  # seconds per name; the server's own timeout if that is shorter

# What getaddrinfo() says of a name that does not exist (fetchmail: EAI_NONAME, EAI_NODATA).
_NO_SUCH_NAME = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)
# A host name as DNS writes it. Anything else a header offers (a domain literal, a NUL, a
# thousand characters) is no name of the server's and is not sent to the resolver.
_LABEL = r"[A-Za-z0-9][A-Za-z0-9-]{0,62}"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")

GetAddrInfo = Callable[..., list[tuple[Any, ...]]]


class TimedResolver:
    """A `fetcher.recipients.Resolve` function: what DNS says of a name, None if it does not
    exist, LookupFailed if the resolver failed or did not answer in time. Answers are kept for
    the life of the object (one poll), failures too, so a dead resolver costs one timeout per
    name, not one per message."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, getaddrinfo: GetAddrInfo | None = None):
        self.timeout = timeout
        self._getaddrinfo = getaddrinfo or socket.getaddrinfo
        self._answers: dict[str, HostInfo | LookupFailed | None] = {}

    def __call__(self, name: str) -> HostInfo | None:
        key = name.lower().rstrip(".")
        if key not in self._answers:
            self._answers[key] = self._ask(key) if _HOST_NAME.fullmatch(key) else None
        answer = self._answers[key]
        if isinstance(answer, LookupFailed):
            raise answer
        return answer

    def _ask(self, name: str) -> HostInfo | LookupFailed | None:
        outcome: list[HostInfo | LookupFailed | None] = []
        done = threading.Event()

        def look_up() -> None:
            try:
                outcome.append(self._look_up(name))
            finally:
                done.set()

        threading.Thread(target=look_up, name=f"dns {name}", daemon=True).start()
        if not done.wait(self.timeout):
            return LookupFailed(f"no answer within {self.timeout:g} seconds")
        return outcome[0] if outcome else LookupFailed("the look-up failed")

    def _look_up(self, name: str) -> HostInfo | LookupFailed | None:
        try:
            answers = self._getaddrinfo(
                name, None, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_CANONNAME
            )
        except socket.gaierror as err:
            if err.errno in _NO_SUCH_NAME:
                return None
            return LookupFailed(err.strerror or str(err))
        except (OSError, UnicodeError, ValueError) as err:
            return LookupFailed(str(err))
        if not answers:
            return None
        canonical = next((a[3] for a in answers if a[3]), name)
        addresses = frozenset(str(a[4][0]) for a in answers)
        return HostInfo(str(canonical), addresses)
