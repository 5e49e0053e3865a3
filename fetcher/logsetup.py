"""Where a run's lines go: the terminal, fetchmail's logfile, or syslog.

fetchmail 6.4.37's rules, which pyfetch follows (checked side by side):

- `-L FILE` / `set logfile FILE`: every line of the run is appended to FILE, a single run's
  as well as a daemon's (fetchmail points its stdout and stderr at the file), and nothing goes
  to the terminal. FILE must exist already; one that does not is ignored with a warning, and so
  is any logfile under `-N`; one that exists but cannot be written ends the run (exit 23).
  These checks live in fetcher.config, where fetchmail makes them: before -V and --configdump.
- `--syslog` / `set syslog`: every line goes to syslog, in the foreground too, with facility
  mail and the tag `pyfetch[PID]:`; errors and warnings at LOG_ERR, the rest at LOG_INFO.
  `--nosyslog` / `set no syslog` turn it off. A logfile wins over syslog.
- Neither: the terminal. A detached daemon has no terminal, and fetchmail sends its lines to
  /dev/null.

Where pyfetch goes further, so that errors always reach the user somewhere:

- A detached daemon with neither a logfile nor syslog sends its errors (not its progress lines,
  which the user did not ask to keep) to syslog instead of /dev/null.
- A line syslog does not take (nothing listens at the socket) goes to the terminal instead; a
  detached daemon has none, so when syslog cannot be reached as it starts, that is said in the
  foreground, before it detaches. Syslog is tried again for every line: a syslog daemon that
  starts later gets the lines from then on.
- A line the logfile does not take (a full disk) goes to syslog instead.
- A daemon's logfile lines start with the time, as syslog's do (`Nov 30 14:13:23 pyfetch:
  ...`); fetchmail 6.4.37 writes none, which leaves a daemon's log without any time but that of
  `sleeping at` lines.

The syslog socket is `$PYFETCH_SYSLOG_SOCKET` when set, else the first of /dev/log (Linux),
/var/run/syslog (macOS) and /var/run/log (the BSDs) that is a socket. The variable is for systems
where syslog listens elsewhere: a container that has the host's /dev/log mounted under another
name, or journald's /run/systemd/journal/dev-log where /dev/log is missing.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from fetcher.console import Console, Sink, Stream, Terminal, writes_to_file
from fetcher.model import GlobalOptions

PROG = "pyfetch"
SOCKET_ENV = "PYFETCH_SYSLOG_SOCKET"
DEFAULT_SOCKETS = ("/dev/log", "/var/run/syslog", "/var/run/log")
ROOT_WARNING = f"{PROG}: WARNING: Running as root is discouraged.\n"  # fetchmail's, word for word


def syslog_socket(environ: Mapping[str, str] | None = None) -> str:
    """The Unix socket syslog listens at (see the module's docstring)."""
    env = os.environ if environ is None else environ
    chosen = env.get(SOCKET_ENV)
    if chosen:
        return chosen
    for path in DEFAULT_SOCKETS:
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):  # /var/run/log is a directory on Linux
                return path
        except OSError:
            continue
    return DEFAULT_SOCKETS[0]


def unreachable(path: str) -> str | None:
    """Why syslog cannot be reached at `path` (an OS error's words), or None if it can.
    Datagram first, as syslog(3) does, then stream for a syslog daemon that wants that."""
    reason = ""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        probe = socket.socket(socket.AF_UNIX, kind)
        try:
            probe.connect(path)
            return None
        except OSError as err:
            reason = reason or err.strerror or str(err)
        finally:
            probe.close()
    return reason


@dataclass(frozen=True)
class Outputs:
    """Where this run's lines go, decided before it starts (and shown by -V)."""

    logfile: str | None  # every line is appended here
    syslog: bool  # every line goes to syslog
    errors_to_syslog: bool  # only errors go to syslog: a detached daemon without either
    timestamps: bool  # logfile lines start with the time (a daemon)
    detached: bool  # no terminal once the run has started
    socket: str  # where syslog listens

    @property
    def uses_syslog(self) -> bool:
        return self.syslog or self.errors_to_syslog

    def describe(self) -> list[str]:
        """-V's lines about what fetchmail's `Logfile is` and `... logged via syslog` lines
        leave unsaid (those come from the configuration)."""
        lines: list[str] = []
        if self.logfile is not None and self.timestamps:
            lines.append("Logfile lines will start with the time.")
        if not self.uses_syslog:
            return lines
        if self.errors_to_syslog:
            lines.append("Errors will be logged via syslog (no logfile, no terminal); "
                         "progress messages will be discarded.")
        reason = unreachable(self.socket)
        if reason is not None:
            instead = "be lost" if self.detached else "go to the terminal"
            lines.append(f"Syslog socket {self.socket} cannot be reached ({reason}): "
                         f"messages will {instead} until it can.")
        elif self.socket != DEFAULT_SOCKETS[0]:
            lines.append(f"Syslog socket is {self.socket}.")
        return lines

    def warnings_before_detaching(self) -> list[str]:
        """What the user must hear while there still is a terminal: a detached daemon whose
        lines would go nowhere."""
        if not self.detached or not self.uses_syslog:
            return []
        reason = unreachable(self.socket)
        if reason is None:
            return []
        if self.syslog:
            return [f"{PROG}: syslog cannot be reached at {self.socket} ({reason}): the "
                    "daemon's messages will be lost until it can."]
        return [f"{PROG}: no logfile, and syslog cannot be reached at {self.socket} ({reason}): "
                "the daemon's errors will be lost until it can (-L FILE would keep them)."]


def plan(
    options: GlobalOptions, *, detached: bool, environ: Mapping[str, str] | None = None
) -> Outputs:
    """`options` as fetcher.config left them: a logfile that is set exists and is writable,
    and `syslog` is off when there is a logfile (fetchmail's precedence)."""
    logfile = options.logfile
    syslog = options.syslog and logfile is None
    return Outputs(
        logfile=logfile,
        syslog=syslog,
        errors_to_syslog=detached and logfile is None and not syslog,
        timestamps=logfile is not None and options.poll_interval > 0,
        detached=detached,
        socket=syslog_socket(environ),
    )


# How late a progress line written to a file may be flushed (fetcher.console): long enough to
# gather the dozen lines a verbose poll writes per message into one write, short enough that
# a daemon's logfile, or a pipe somebody watches, still shows them as they happen.
FLUSH_DELAY = 0.05


def open_console(outputs: Outputs) -> Console:
    """The run's console, writing where `outputs` says. Call it once the run is what it will
    be: after detaching, so that syslog's tag carries the daemon's PID."""
    terminal = Terminal(sys.stdout, sys.stderr)  # for warnings and as the last resort
    last_resort = _LastResort(terminal)
    if outputs.logfile is not None:
        try:
            logfile = Logfile(outputs.logfile, timestamps=outputs.timestamps,
                              fallback=_LazySyslog(outputs.socket, last_resort), buffered=True)
        except OSError as err:  # fetchmail's words, and it goes on with the terminal
            terminal.emit("err", f"{PROG}: could not open {outputs.logfile} to append logs to "
                                 f"({err.strerror})\n")
            return _terminal_console()
        if not outputs.detached:
            # as fetchmail's freopen(): what else the run writes (an MDA's complaints, BSMTP
            # to "-") goes to the logfile too; a daemon's output was pointed there on detaching
            logfile.take_standard_output()
        return Console(sinks=[logfile], flush_delay=FLUSH_DELAY)
    if outputs.uses_syslog:
        if outputs.syslog and not outputs.detached:
            reason = unreachable(outputs.socket)
            if reason is not None:
                terminal.emit("err", f"{PROG}: syslog cannot be reached at {outputs.socket} "
                                     f"({reason}): writing to the terminal instead.\n")
        # one datagram per line whatever is done: nothing to gather
        return Console(sinks=[Syslog(outputs.socket, last_resort,
                                     errors_only=outputs.errors_to_syslog)])
    return _terminal_console()


def _terminal_console() -> Console:
    """The terminal as the console's sink: gathering lines where stdout is a file or a pipe,
    every line at once on a tty."""
    if writes_to_file(sys.stdout):
        return Console(sinks=[Terminal(sys.stdout, sys.stderr, buffered=True)],
                       flush_delay=FLUSH_DELAY)
    return Console(sinks=[Terminal(sys.stdout, sys.stderr)])


class Logfile:
    """fetchmail's logfile, appended to a line, or with `buffered` the lines gathered until
    flush(), at a time (O_APPEND, and each write whole lines: the lines of an MDA writing to
    the same file are never overwritten nor cut into)."""

    def __init__(
        self, path: str, *, timestamps: bool, fallback: Sink, buffered: bool = False
    ) -> None:
        self.path = path
        self.timestamps = timestamps
        self.fallback = fallback
        self.buffered = buffered
        self._held: list[tuple[Stream, str, bytes]] = []  # what emit() kept, and its octets
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def take_standard_output(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._fd, 1)
        os.dup2(self._fd, 2)

    def emit(self, stream: Stream, text: str) -> None:
        lines = text
        if self.timestamps:  # the time the line was written, not the time it was flushed
            stamp = _syslog_time(time.time())
            lines = "".join(f"{stamp} {line}\n" for line in text.splitlines())
        self._held.append((stream, text, lines.encode("utf-8", "replace")))
        if not self.buffered or stream == "err":
            self.flush()

    def flush(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        data = b"".join(octets for _, _, octets in held)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            # each line not wholly written goes to the fallback, as a line written alone would
            end = 0
            for stream, text, octets in held:
                end += len(octets)
                if end > written:
                    self.fallback.emit(stream, text)  # syslog gives them a time of its own

    def close(self) -> None:
        self.flush()
        os.close(self._fd)
        self.fallback.close()


class Syslog:
    """Lines to syslog through the standard library's handler, one message per line, in the
    form syslog(3) gives them: `<19>Nov 30 14:13:23 pyfetch[4242]: MESSAGE`."""

    def __init__(self, path: str, fallback: Sink, *, errors_only: bool = False) -> None:
        # logging is loaded here, by the runs that write to syslog, not by every start
        import logging
        import logging.handlers

        class Handler(logging.handlers.SysLogHandler):
            def __init__(self, path: str) -> None:
                super().__init__(address=path, facility=logging.handlers.SysLogHandler.LOG_MAIL)
                self.append_nul = False  # syslog(3) sends none
                self.failed = False

            def format(self, record: logging.LogRecord) -> str:
                # The header syslog(3) writes before the message; SysLogHandler writes none.
                return (f"{_syslog_time(record.created)} {PROG}[{record.process}]: "
                        f"{record.getMessage()}")

            def handleError(self, record: logging.LogRecord) -> None:
                # Not the standard traceback on stderr: the line goes to the fallback instead.
                self.failed = True

        self.handler = Handler(path)
        self._record = logging.LogRecord
        self._levels = {"err": logging.ERROR, "out": logging.INFO}
        self.fallback = fallback
        self.errors_only = errors_only

    def emit(self, stream: Stream, text: str) -> None:
        if self.errors_only and stream != "err":
            return
        level = self._levels[stream]
        for line in text.splitlines():
            if not line.strip():
                continue
            message = line.removeprefix(f"{PROG}: ")  # the tag names the program
            record = self._record(PROG, level, __file__, 0, message, None, None)
            self.handler.failed = False
            self.handler.handle(record)
            if self.handler.failed:
                self.fallback.emit(stream, line + "\n")

    def flush(self) -> None:
        pass  # each line went as a datagram of its own

    def close(self) -> None:
        self.handler.close()


class _LazySyslog:
    """Syslog opened only if the logfile ever fails."""

    def __init__(self, path: str, fallback: Sink) -> None:
        self.path = path
        self.fallback = fallback
        self._syslog: Syslog | None = None

    def emit(self, stream: Stream, text: str) -> None:
        if self._syslog is None:
            self._syslog = Syslog(self.path, self.fallback)
        self._syslog.emit(stream, text)

    def flush(self) -> None:
        pass  # Syslog holds nothing

    def close(self) -> None:
        if self._syslog is not None:
            self._syslog.close()


class _LastResort:
    """The terminal as the place of last resort for lines the logfile and syslog did not take:
    a daemon's is the logfile or /dev/null, and if even that fails, the run goes on."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal

    def emit(self, stream: Stream, text: str) -> None:
        with contextlib.suppress(OSError):
            self.terminal.emit(stream, text)

    def flush(self) -> None:
        pass  # the terminal it writes to flushes every line

    def close(self) -> None:
        pass


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _syslog_time(when: float) -> str:
    """`Nov  3 14:13:23`: syslog(3)'s `%h %e %T`, in English whatever the locale."""
    moment = time.localtime(when)
    month = _MONTHS[moment.tm_mon - 1]
    return f"{month} {moment.tm_mday:2d} {time.strftime('%H:%M:%S', moment)}"
