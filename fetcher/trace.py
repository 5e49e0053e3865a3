"""The -v protocol trace, in fetchmail's format: `pyfetch: POP3> USER bob`, `POP3> PASS *`.

Every driver and sink writes its dialogue through `sent()` and `received()`. A secret (the
password, an OAuth token, a base64 AUTH blob) is replaced by `*` before anything is written, as
fetchmail does, so no log can hold it.
"""

from __future__ import annotations

import logging

from fetcher.console import Console

TRACE_LOGGER = "pyfetch.trace"
_log = logging.getLogger(TRACE_LOGGER)


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


def enabled() -> bool:
    return _log.isEnabledFor(logging.INFO)


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
    return text.translate(_CONTROLS)


def sent(protocol: str, line: str, *secrets: str | None) -> None:
    """A command we sent, e.g. sent("POP3", "PASS hunter2", "hunter2") -> `POP3> PASS *`."""
    if _log.isEnabledFor(logging.INFO):
        _log.info("%s> %s", protocol, _shown(redact(line, *secrets)))


def received(protocol: str, line: str, *secrets: str | None) -> None:
    """A reply line we received, e.g. `POP3< +OK Logged in.`"""
    if _log.isEnabledFor(logging.INFO):
        _log.info("%s< %s", protocol, _shown(redact(line, *secrets)))


def note(text: str) -> None:
    """A -v line that is not protocol dialogue, e.g. `Trying to connect to H/P...connected.`"""
    if _log.isEnabledFor(logging.INFO):
        _log.info("%s", text)


def warning(text: str) -> None:
    """A line the user must see, -v or not (on stderr): fetchmail's warnings."""
    _log.warning("%s", text)
