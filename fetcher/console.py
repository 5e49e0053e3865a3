"""Where the run's lines go, so that polls running side by side never interleave them.

Each poll writes inside a group (`Console.group()`). The oldest group still open is live: its
lines go out as they come, as they would in fetchmail. The lines of the groups opened after it
are held, in order, and go out whole once every group opened before them has closed. Polls
start in rcfile order, so the output reads as fetchmail's would, one account after the other,
whatever order they actually finish in.

Lines written outside any group (start-up, daemon and IDLE-watch messages) go out at once.
Which group a line belongs to is a context variable, so it follows a poll onto the worker
thread of its connection (fetcher.worker copies the context), where the -v trace is written.

Going out means going to the console's sinks: the terminal (stdout and stderr) by default, or
the logfile or syslog (fetcher.logsetup decides which). Every line the run writes (the
reporter's, errors, the -v trace, warnings) passes through here, so none bypasses them.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Literal, Protocol, TextIO

Stream = Literal["out", "err"]  # progress (stdout, syslog's LOG_INFO), errors (stderr, LOG_ERR)


class Sink(Protocol):
    """Somewhere lines go."""

    def emit(self, stream: Stream, text: str) -> None:
        """Write `text` (whole lines, newline included)."""

    def close(self) -> None:
        """Release what the sink holds (a file, a socket)."""


class Terminal:
    """Progress lines to stdout, errors to stderr."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err

    def emit(self, stream: Stream, text: str) -> None:
        target = self.out if stream == "out" else self.err
        target.write(text)
        target.flush()

    def close(self) -> None:
        pass  # the streams belong to the process


class _Group:
    def __init__(self) -> None:
        self.held: list[tuple[Stream, str]] = []
        self.closed = False


_current: contextvars.ContextVar[_Group | None] = contextvars.ContextVar(
    "pyfetch_console_group", default=None
)


class Console:
    def __init__(
        self,
        out: TextIO | None = None,
        err: TextIO | None = None,
        *,
        sinks: Sequence[Sink] | None = None,
    ) -> None:
        """The terminal's `out` and `err` (sys.stdout and sys.stderr if not given), or
        `sinks` instead."""
        if sinks is None:
            sinks = [Terminal(out if out is not None else sys.stdout,
                              err if err is not None else sys.stderr)]
        self.sinks = list(sinks)
        self._lock = threading.Lock()  # lines come from the loop and from worker threads
        self._open: list[_Group] = []  # in the order they were opened; the first is live

    def write(self, stream: Stream, text: str) -> None:
        """Write `text` (whole lines, newline included): progress ("out") or an error ("err").
        """
        group = _current.get()
        with self._lock:
            if group is not None and not group.closed and self._open and group is not self._open[0]:
                group.held.append((stream, text))
                return
            self._emit(stream, text)

    def is_live(self) -> bool:
        """Whether what the current poll writes goes out now (it is the oldest poll running,
        or not a poll at all), rather than being held."""
        group = _current.get()
        with self._lock:
            return group is None or not self._open or group is self._open[0]

    def terminal(self) -> Terminal | None:
        """The terminal, when the lines go to it (not to a logfile or syslog)."""
        return next((sink for sink in self.sinks if isinstance(sink, Terminal)), None)

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """Keep the lines written inside together (see the module's docstring)."""
        group = _Group()
        with self._lock:
            self._open.append(group)
        token = _current.set(group)
        try:
            yield
        finally:
            _current.reset(token)
            with self._lock:
                group.closed = True
                self._release()

    def _release(self) -> None:
        """Drop closed groups from the head, sending out what each held; the next open one
        becomes live once its own held lines are out."""
        while self._open:
            head = self._open[0]
            for stream, text in head.held:
                self._emit(stream, text)
            head.held.clear()
            if not head.closed:
                return
            self._open.pop(0)

    def _emit(self, stream: Stream, text: str) -> None:
        for sink in self.sinks:
            sink.emit(stream, text)

    def close(self) -> None:
        """The run is over: what is still held goes out, then the sinks are closed. A line that
        comes later still (a worker thread of a poll given up on) goes to the process's own
        stdout and stderr, never to a closed file or socket."""
        with self._lock:
            for group in self._open:
                group.closed = True
            self._release()
            for sink in self.sinks:
                sink.close()
            self.sinks = [Terminal(sys.stdout, sys.stderr)]
