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

Written to a file (the logfile, or stdout when it is a file or a pipe), a line costs a system
call, and a verbose poll writes a dozen per message. With a `flush_delay`, the live poll's
progress lines are therefore gathered and flushed together, in order: when the poll ends, when
an error or a line from outside any poll is written (each of which goes out at once, after
what was gathered), when the console closes, and at the latest `flush_delay` seconds after the
first of them, by a thread that sleeps while there is nothing to flush. A terminal (a tty)
gets every line at once: somebody is watching it.
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
        """Write `text` (whole lines, newline included). A sink made to buffer may keep it
        until flush(); an error line never waits, and takes what was kept before it along."""

    def flush(self) -> None:
        """Send out what emit() kept."""

    def close(self) -> None:
        """Release what the sink holds (a file, a socket)."""


class Terminal:
    """Progress lines to stdout, errors to stderr. `buffered`: progress lines may stay in
    stdout's buffer until flush() (or until anything else flushes stdout, as the BSMTP sink
    does before its records)."""

    def __init__(self, out: TextIO, err: TextIO, *, buffered: bool = False) -> None:
        self.out = out
        self.err = err
        self.buffered = buffered
        self._unflushed = False  # stdout holds progress lines not flushed yet

    def emit(self, stream: Stream, text: str) -> None:
        if stream == "out":
            self.out.write(text)
            if self.buffered:
                self._unflushed = True
            else:
                self.out.flush()
            return
        self.flush()  # the progress lines before an error come before it
        self.err.write(text)
        self.err.flush()

    def flush(self) -> None:
        if self._unflushed:
            self._unflushed = False
            self.out.flush()

    def close(self) -> None:
        self.flush()  # the streams themselves belong to the process


def writes_to_file(stream: TextIO) -> bool:
    """Whether `stream` is a file or a pipe, where each flush is a system call, rather than a
    terminal or an in-memory stream."""
    try:
        stream.fileno()
        return not stream.isatty()
    except (AttributeError, OSError, ValueError):  # no descriptor (StringIO), or closed
        return False


class _Group:
    def __init__(self) -> None:
        self.held: list[tuple[Stream, str]] = []
        self.closed = False


_current: contextvars.ContextVar[_Group | None] = contextvars.ContextVar(
    "pyfetch_console_group", default=None
)


# How long a flusher thread with nothing to flush waits for more before it ends (a daemon
# sleeping between polls needs none; the next line starts another).
_FLUSHER_IDLE = 5.0


class Console:
    def __init__(
        self,
        out: TextIO | None = None,
        err: TextIO | None = None,
        *,
        sinks: Sequence[Sink] | None = None,
        flush_delay: float = 0.0,
    ) -> None:
        """The terminal's `out` and `err` (sys.stdout and sys.stderr if not given), or
        `sinks` instead. `flush_delay` > 0: the sinks buffer, and the live poll's progress
        lines are flushed together, at most that many seconds late (see the module's
        docstring); 0: every line is flushed as it is written."""
        if sinks is None:
            sinks = [Terminal(out if out is not None else sys.stdout,
                              err if err is not None else sys.stderr)]
        self.sinks = list(sinks)
        self._lock = threading.Lock()  # lines come from the loop and from worker threads
        self._open: list[_Group] = []  # in the order they were opened; the first is live
        self._delay = flush_delay
        self._unflushed = False  # lines were emitted since the sinks were last flushed
        self._wake = threading.Condition(self._lock)  # the flusher waits on it
        self._flusher: threading.Thread | None = None
        self._closed = False

    def write(self, stream: Stream, text: str) -> None:
        """Write `text` (whole lines, newline included): progress ("out") or an error ("err").
        """
        group = _current.get()
        with self._lock:
            if group is not None and not group.closed and self._open and group is not self._open[0]:
                group.held.append((stream, text))
                return
            self._emit(stream, text)
            if self._delay and group is not None and not group.closed and stream == "out":
                self._flush_soon()
            else:
                self._flush()

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
                self._flush()

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

    def flush(self) -> None:
        """Send out at once what the sinks gathered: before a child process (an MDA) or a
        sink (BSMTP to stdout) writes to the same file, so that our lines come first."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self._unflushed = False
        for sink in self.sinks:
            sink.flush()

    def _flush_soon(self) -> None:
        """Have the lines emitted so far flushed within the delay (the lock is held)."""
        if self._unflushed:
            return  # the flusher is on it already
        self._unflushed = True
        if self._flusher is None:
            self._flusher = threading.Thread(
                target=self._flush_later, name="pyfetch-console", daemon=True
            )
            self._flusher.start()  # it waits for the lock we hold
        else:
            self._wake.notify()

    def _flush_later(self) -> None:
        """The flusher thread: once lines are waiting, let more gather for the delay, then
        flush them all; end after a quiet spell or when the console closes."""
        with self._lock:
            try:
                while not self._closed:
                    if not self._unflushed:
                        self._wake.wait(_FLUSHER_IDLE)
                        if not self._unflushed:
                            break
                    self._wake.wait(self._delay)  # what is written meanwhile joins them
                    if self._unflushed:
                        self._flush()
            except Exception:
                # A sink that cannot write (stdout a closed pipe): from now on every line is
                # flushed by its writer, who meets the error as it would without the delay.
                self._delay = 0.0
                self._unflushed = False
            finally:
                self._flusher = None

    def close(self) -> None:
        """The run is over: what is still held goes out, then the sinks are closed. A line that
        comes later still (a worker thread of a poll given up on) goes to the process's own
        stdout and stderr, never to a closed file or socket."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()  # a flusher ends
            for group in self._open:
                group.closed = True
            self._release()
            self._flush()
            for sink in self.sinks:
                sink.close()
            self.sinks = [Terminal(sys.stdout, sys.stderr)]
            self._delay = 0.0
