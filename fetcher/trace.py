"""The -v protocol trace, in fetchmail's format: `pyfetch: POP3> USER bob`, `POP3> PASS *`.

Every driver and sink writes its dialogue through `sent()` and `received()`. A secret (the
password, an OAuth token, a base64 AUTH blob) is replaced by `*` before anything is written, as
fetchmail does, so no log can hold it.

The trace is the `pyfetch.trace` logger, so that a program or a test can catch it with logging's
own tools. A run (`setup()`) gives it one handler, writing to the run's console; while the
logger is still set up that way, a line goes straight to the console instead of through a
LogRecord, a formatter and the handler: a verbose poll writes a dozen lines per message, and
logging's machinery cost more than the rest of the line's way. Whichever way a line goes, it is
the same line, and nothing is computed for one that is not shown.
"""

from __future__ import annotations

import logging

from fetcher.console import Console

TRACE_LOGGER = "pyfetch.trace"
_log = logging.getLogger(TRACE_LOGGER)
_INFO, _WARNING = logging.INFO, logging.WARNING


def setup(verbose: int, console: Console) -> None:
    """Where trace lines go, through the run's console (so that a poll's lines stay together,
    and reach the logfile or syslog when the run writes there): -v shows the dialogue as
    progress lines (stdout, LOG_INFO), prefixed as fetchmail prefixes it; warnings (a listener
    that did not answer, an unverified certificate) are errors (stderr, LOG_ERR), with or
    without -v."""
    _log.handlers.clear()
    _log.propagate = False
    _log.addHandler(_ConsoleHandler(console))
    _log.setLevel(logging.INFO if verbose else logging.WARNING)


class _ConsoleHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        line = f"pyfetch: {record.getMessage()}\n"
        self.console.write("err" if record.levelno >= logging.WARNING else "out", line)


def _direct() -> _ConsoleHandler | None:
    """The handler `setup()` installed, if the logger is still as it left it: then a line may
    skip logging and go to that handler's console, with the same result. A test that attaches a
    handler of its own, turns propagation back on or adds a filter gets logging's way."""
    handlers = _log.handlers
    if len(handlers) == 1 and not _log.propagate and not _log.filters:
        handler = handlers[0]
        if type(handler) is _ConsoleHandler and not handler.filters and handler.level == 0:
            return handler
    return None


def _write(level: int, text: str) -> None:
    """`text` as one trace line at `level`; the caller has checked that the level is enabled."""
    handler = _direct()
    if handler is None:
        _log.log(level, "%s", text)
    else:  # what handler.emit() would write, without the LogRecord
        handler.console.write("err" if level >= _WARNING else "out", f"pyfetch: {text}\n")


def flush_console() -> None:
    """Send out the lines the run's console gathered (fetcher.console): before something else
    writes to the same stdout or logfile."""
    for handler in _log.handlers:
        if isinstance(handler, _ConsoleHandler):
            handler.console.flush()


def enabled() -> bool:
    return _log.isEnabledFor(_INFO)


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every occurrence of each non-empty secret replaced by `*`."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "*")
    return text


# Control characters a server sends (ESC, NUL, ...) would reach the terminal or the log as
# they are: shown as "?", as fetchmail shows them in a listener's replies. A tab stays.
_CONTROLS = {code: "?" for code in (*range(0x20), 0x7F) if code != 0x09}


def _shown(text: str) -> str:
    # Every control character is unprintable: a printable line (nearly every one) needs no
    # translation, which goes through a dict per character.
    return text if text.isprintable() else text.translate(_CONTROLS)


def sent(protocol: str, line: str, *secrets: str | None) -> None:
    """A command we sent, e.g. sent("POP3", "PASS hunter2", "hunter2") -> `POP3> PASS *`."""
    if _log.isEnabledFor(_INFO):
        _write(_INFO, f"{protocol}> {_shown(redact(line, *secrets) if secrets else line)}")


def received(protocol: str, line: str, *secrets: str | None) -> None:
    """A reply line we received, e.g. `POP3< +OK Logged in.`"""
    if _log.isEnabledFor(_INFO):
        _write(_INFO, f"{protocol}< {_shown(redact(line, *secrets) if secrets else line)}")


def note(text: str) -> None:
    """A -v line that is not protocol dialogue, e.g. `Trying to connect to H/P...connected.`"""
    if _log.isEnabledFor(_INFO):
        _write(_INFO, text)


def warning(text: str) -> None:
    """A line the user must see, -v or not (on stderr): fetchmail's warnings."""
    if _log.isEnabledFor(_WARNING):
        _write(_WARNING, text)
