"""What the speed work must not change, and what it must keep true (timings live in bench/).

- The header reader and the address tokenizer work on whole blocks with regular expressions;
  they must find exactly what the plain line-by-line and byte-by-byte readings find. Those
  readings are kept here as the reference.
- The -v trace skips logging's machinery while the logger is as the run set it up: the same
  lines must come out either way, and nothing is computed for a line that is not shown.
- A console writing to a file gathers a poll's lines: they still come out whole, in order, an
  error at once with what came before it, and every one of them before the run ends.
- `pyfetch -V` and importing the command line load neither the run loop nor the drivers,
  sinks, TOML reader or logging.
"""

from __future__ import annotations

import email.utils
import io
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher import message, trace
from fetcher.console import Console, Terminal
from fetcher.logsetup import Logfile
from fetcher.message import (
    BadHeaderError,
    HeaderField,
    edit_header,
    read_header,
    rfc822_timestamp,
)

# --- the header block, against a line-by-line reading ----------------------------------------


def reference_read_header(
    spool: io.BytesIO, limit: int
) -> tuple[list[tuple[bytes, bytes | None]], bool, bool, bool, int]:
    """read_header as it was written first: one readline() at a time."""
    fields: list[bytes] = []
    current: list[bytes] = []
    consumed = 0
    had_nuls = separator = truncated = False
    start = spool.tell()
    while True:
        room = limit - consumed
        line = spool.readline(room + 1)
        if not line:
            break
        if len(line) > room:
            spool.seek(start + consumed)
            truncated = True
            break
        consumed += len(line)
        if b"\0" in line:
            had_nuls = True
            line = line.replace(b"\0", b"")
        content = (line[:-1] if line.endswith(b"\n") else line).rstrip(b"\r")
        if not content:
            separator = line.endswith(b"\n")
            break
        if content[:1] in (b" ", b"\t") and current:
            current.append(content)
            continue
        if current:
            fields.append(b"\r\n".join(current))
        current = [content]
    if current:
        fields.append(b"\r\n".join(current))
    parsed = [(raw, HeaderField.parse(raw).name) for raw in fields]
    return parsed, separator, truncated, had_nuls, consumed


# Bytes that matter to the reader, and a few that do not.
HEADER_BYTES = st.lists(
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\0", b" ", b"\t", b":", b"A", b"b", b"From ", b"x"]),
    max_size=40,
).map(b"".join)


@settings(max_examples=600, deadline=None)
@given(
    prefix=st.binary(max_size=3),
    data=HEADER_BYTES,
    body=st.binary(max_size=8),
    limit=st.integers(min_value=0, max_value=50),
    first_read=st.integers(min_value=1, max_value=9),
)
def test_the_header_reader_finds_what_reading_line_by_line_finds(
    prefix: bytes, data: bytes, body: bytes, limit: int, first_read: int
) -> None:
    whole = prefix + data + body
    expected_spool = io.BytesIO(whole)
    expected_spool.seek(len(prefix))
    fields, separator, truncated, had_nuls, consumed = reference_read_header(
        expected_spool, limit
    )
    spool = io.BytesIO(whole)
    spool.seek(len(prefix))
    # small first reads, so that blank lines, CR runs and the limit fall across reads
    with mock.patch.object(message, "_FIRST_READ", first_read):
        header = read_header(spool, limit=limit)
    assert [(f.raw, f.name) for f in header.fields] == fields
    assert (header.separator, header.truncated, header.had_nuls) == (
        separator, truncated, had_nuls
    )
    assert header.octets == consumed
    assert spool.tell() == expected_spool.tell()
    assert spool.read() == expected_spool.read()


def test_a_long_header_is_read_in_growing_blocks() -> None:
    fields = [b"X-%d: %s" % (i, b"v" * 100) for i in range(500)]  # about 55 KB
    spool = io.BytesIO(b"\r\n".join(fields) + b"\r\n\r\nbody")
    header = read_header(spool)
    assert [f.raw for f in header.fields] == fields
    assert header.separator and spool.read() == b"body"


# --- the address tokenizer, against a byte-by-byte reading -----------------------------------

_BLANKS = frozenset(b" \t\r\n")
_ATOM_ENDS = _BLANKS | frozenset(b'"(<,:;')
_SPECIALS = {0x2C: ",", 0x3A: ":", 0x3B: ";"}


def _skip_quoted(data: bytes, i: int) -> tuple[int, bool]:
    i += 1
    while i < len(data):
        if data[i] == 0x5C:
            i += 2
            continue
        if data[i] == 0x22:
            return i + 1, True
        i += 1
    return len(data), False


def _skip_comment(data: bytes, i: int) -> tuple[int, bool]:
    depth = 0
    while i < len(data):
        c = data[i]
        if c == 0x5C:
            i += 2
            continue
        if c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                return i + 1, True
        i += 1
    return len(data), False


def _skip_angle(data: bytes, i: int) -> tuple[int, bool]:
    i += 1
    while i < len(data):
        c = data[i]
        if c == 0x5C:
            i += 2
            continue
        if c == 0x22:
            i, _ = _skip_quoted(data, i)
            continue
        if c == 0x3E:
            return i + 1, True
        i += 1
    return len(data), False


def reference_tokens(data: bytes) -> list[tuple[str, int, int, bool]]:
    tokens: list[tuple[str, int, int, bool]] = []
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        closed = True
        if c in _BLANKS:
            j = i + 1
            while j < n and data[j] in _BLANKS:
                j += 1
            kind = "wsp"
        elif c == 0x22:
            j, closed = _skip_quoted(data, i)
            kind = "quoted"
        elif c == 0x28:
            j, closed = _skip_comment(data, i)
            kind = "comment"
        elif c == 0x3C:
            j, closed = _skip_angle(data, i)
            kind = "angle"
        elif c in _SPECIALS:
            j = i + 1
            kind = _SPECIALS[c]
        else:
            j = i
            while j < n and data[j] not in _ATOM_ENDS:
                j += 2 if data[j] == 0x5C else 1
            kind = "atom"
        j = min(j, n)
        tokens.append((kind, i, j, closed))
        i = j
    return tokens


ADDRESS_BYTES = st.lists(
    st.sampled_from([bytes([c]) for c in b'ab@.!"\\()<>,:; \t\r\n\xe9']), max_size=30
).map(b"".join)


@settings(max_examples=1500, deadline=None)
@given(ADDRESS_BYTES)
def test_the_tokenizer_finds_what_reading_byte_by_byte_finds(data: bytes) -> None:
    tokens = message._tokenize(data)
    assert [(t.kind.value, t.start, t.end, t.closed) for t in tokens] == reference_tokens(data)


# --- the header handed on: where the Received line goes ---------------------------------------


def reference_received_at(lines: list[bytes]) -> int:
    """The first line fetchmail's strstr() takes for a Received field (`>Received:` too)."""
    for i, line in enumerate(lines):
        name, colon, _ = line.partition(b":")
        if colon and name.lstrip(b">").rstrip(b" \t").lower() == b"received":
            return i
    return 0


FIELD_LINES = st.lists(
    st.sampled_from([
        b"Received: a", b">Received: b", b">>RECEIVED : c", b" Received: d", b"Received\r\n : e",
        b"X-Received: f", b"Subject: g", b"From x", b"received:", b"Receivedx: h", b"no colon",
    ]),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(FIELD_LINES)
def test_the_received_line_goes_where_it_went(lines: list[bytes]) -> None:
    header = read_header(io.BytesIO(b"".join(line + b"\r\n" for line in lines) + b"\r\n"))
    try:
        plain = edit_header(header, received=None, for_mda=True, server_name="s",
                            accept_bad_header=True)
    except BadHeaderError:  # pragma: no cover - accept_bad_header
        raise
    kept = plain.split(b"\r\n")[:-2]  # the lines kept, without the blank line
    kept_lines: list[bytes] = []
    for line in kept:  # folded fields back into one entry, as edit_header keeps them
        if line[:1] in (b" ", b"\t") and kept_lines:
            kept_lines[-1] += b"\r\n" + line
        else:
            kept_lines.append(line)
    edited = edit_header(header, received=b"R: new\r\n", for_mda=True, server_name="s",
                         accept_bad_header=True)
    expected = list(kept_lines)
    expected.insert(reference_received_at(kept_lines), b"R: new")
    assert edited == b"".join(line + b"\r\n" for line in expected) + b"\r\n"


# --- the Received line's date ------------------------------------------------------------------


@given(
    st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 1, 1)),
    st.one_of(
        st.none(),
        st.integers(min_value=-14 * 60, max_value=14 * 60).map(
            lambda m: timezone(timedelta(minutes=m))
        ),
    ),
)
def test_the_date_is_the_email_packages(moment: datetime, zone: timezone | None) -> None:
    if zone is not None:
        moment = moment.replace(tzinfo=zone)
    aware = moment if moment.tzinfo is not None else moment.astimezone()
    expected = email.utils.format_datetime(aware)
    name = aware.tzname()
    assert rfc822_timestamp(moment) == (f"{expected} ({name})" if name else expected)


def test_the_date_of_now_is_made_once_a_second() -> None:
    first = rfc822_timestamp()
    assert rfc822_timestamp() in (first, rfc822_timestamp())  # the same second, or the next
    now = datetime.now().replace(microsecond=0)
    assert rfc822_timestamp() in (rfc822_timestamp(now), rfc822_timestamp(now + timedelta(0, 1)))


# --- the -v trace ------------------------------------------------------------------------------


@pytest.fixture
def restore_trace_logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(trace.TRACE_LOGGER)
    saved = (list(log.handlers), log.propagate, log.level)
    yield log
    log.handlers[:], log.propagate = saved[0], saved[1]
    log.setLevel(saved[2])


def trace_some_lines() -> None:
    trace.sent("POP3", "PASS hunter2", "hunter2")
    trace.received("POP3", "+OK \x1b[31mhello\tthere")
    trace.sent("SMTP", "MAIL FROM:<a@b>")
    trace.note("Trying to connect to h/1...connected.")
    trace.warning("a warning")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_trace_writes_the_same_lines_with_or_without_logging(
    restore_trace_logger: logging.Logger,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    trace.setup(1, Console(out, err))
    trace_some_lines()  # straight to the console
    direct = (out.getvalue(), err.getvalue())
    assert direct[0].splitlines() == [
        "pyfetch: POP3> PASS *",
        "pyfetch: POP3< +OK ?[31mhello\tthere",
        "pyfetch: SMTP> MAIL FROM:<a@b>",
        "pyfetch: Trying to connect to h/1...connected.",
    ]
    assert direct[1] == "pyfetch: a warning\n"

    out2, err2 = io.StringIO(), io.StringIO()
    trace.setup(1, Console(out2, err2))
    records = Records()
    restore_trace_logger.addHandler(records)  # now the lines go through logging
    trace_some_lines()
    assert (out2.getvalue(), err2.getvalue()) == direct
    assert [f"pyfetch: {r.getMessage()}\n" for r in records.records] == [
        *direct[0].splitlines(keepends=True), direct[1]
    ]


def test_without_v_only_warnings_are_written_and_nothing_is_formatted(
    restore_trace_logger: logging.Logger,
) -> None:
    out, err = io.StringIO(), io.StringIO()
    trace.setup(0, Console(out, err))
    with mock.patch.object(trace, "redact", side_effect=AssertionError("formatted")), \
            mock.patch.object(trace, "_shown", side_effect=AssertionError("formatted")):
        trace.sent("POP3", "PASS hunter2", "hunter2")
        trace.received("POP3", "+OK")
        trace.note("connected")
    assert not trace.enabled()
    trace.warning("a warning")
    assert (out.getvalue(), err.getvalue()) == ("", "pyfetch: a warning\n")


# --- a console that gathers lines --------------------------------------------------------------


class Recording:
    """A sink that keeps what it is given, and says when it was flushed."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, str]] = []
        self.flushed: list[list[tuple[str, str]]] = []
        self.lock = threading.Lock()

    def emit(self, stream: Any, text: str) -> None:
        with self.lock:
            self.emitted.append((stream, text))

    def flush(self) -> None:
        with self.lock:
            if self.emitted:
                self.flushed.append(self.emitted)
                self.emitted = []

    def close(self) -> None:
        pass

    def out(self) -> list[tuple[str, str]]:
        with self.lock:
            return [line for batch in self.flushed for line in batch]


def wait_for(condition: Any) -> None:
    """Liveness, not timing: the flusher gets there, however loaded the machine is."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "never flushed"
        time.sleep(0.01)


def test_a_polls_lines_are_flushed_together_in_order() -> None:
    sink = Recording()
    console = Console(sinks=[sink], flush_delay=3600)  # only the events below flush
    console.write("out", "start\n")  # outside any poll: at once
    assert sink.out() == [("out", "start\n")]
    with console.group():
        console.write("out", "a\n")
        console.write("out", "b\n")
        assert sink.out() == [("out", "start\n")]  # gathered
        console.write("err", "oops\n")  # an error goes out at once, after what came before
        assert sink.out()[1:] == [("out", "a\n"), ("out", "b\n"), ("err", "oops\n")]
        console.write("out", "c\n")
    assert sink.out()[-1] == ("out", "c\n")  # the poll's end flushes
    with console.group():
        console.write("out", "d\n")
    console.close()
    assert [text for _, text in sink.out()] == ["start\n", "a\n", "b\n", "oops\n", "c\n", "d\n"]


def test_a_gathered_line_is_flushed_without_waiting_for_the_poll_to_end() -> None:
    sink = Recording()
    console = Console(sinks=[sink], flush_delay=0.01)
    with console.group():
        console.write("out", "waiting on a slow server\n")
        wait_for(lambda: sink.out() == [("out", "waiting on a slow server\n")])
        console.write("out", "again\n")  # the flusher is woken for the next batch too
        wait_for(lambda: len(sink.out()) == 2)
    console.close()


def test_polls_side_by_side_still_come_out_whole_when_gathered() -> None:
    sink = Recording()
    console = Console(sinks=[sink], flush_delay=0.001)
    first, second = console.group(), console.group()
    first.__enter__()
    second.__enter__()
    console.write("out", "second 1\n")  # held: not the live poll
    second.__exit__(None, None, None)
    first.__exit__(None, None, None)
    console.close()
    assert sink.out() == [("out", "second 1\n")]


def test_a_console_that_cannot_flush_goes_back_to_flushing_every_line() -> None:
    class Broken(Recording):
        def flush(self) -> None:
            raise BrokenPipeError("closed")

    console = Console(sinks=[Broken()], flush_delay=0.001)
    poll = console.group()
    poll.__enter__()
    console.write("out", "lost\n")
    wait_for(lambda: console._flusher is None)  # the flusher met the error and gave up
    with pytest.raises(BrokenPipeError):  # the writer meets it now, as without the delay
        console.write("out", "next\n")
    with pytest.raises(BrokenPipeError):
        poll.__exit__(None, None, None)


def test_a_buffered_terminal_keeps_lines_in_stdout_until_flushed(tmp_path: Path) -> None:
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        terminal = Terminal(out, err, buffered=True)
        terminal.emit("out", "one\n")
        assert (tmp_path / "out").read_text() == ""
        out.flush()  # as the BSMTP sink does before its records: the lines come first
        assert (tmp_path / "out").read_text() == "one\n"
        terminal.emit("out", "two\n")
        terminal.emit("err", "bad\n")  # an error takes the progress lines along
        assert (tmp_path / "out").read_text() == "one\ntwo\n"
        assert (tmp_path / "err").read_text() == "bad\n"


def test_a_buffered_logfile_writes_whole_lines_at_once(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("")
    fallback = Recording()
    logfile = Logfile(str(path), timestamps=False, fallback=fallback, buffered=True)
    logfile.emit("out", "one\n")
    logfile.emit("out", "two\n")
    assert path.read_text() == ""
    logfile.emit("err", "three\n")
    assert path.read_text() == "one\ntwo\nthree\n"
    logfile.emit("out", "four\n")
    with mock.patch("os.write", side_effect=OSError("disk full")):
        logfile.emit("err", "five\n")
    assert fallback.emitted == [("out", "four\n"), ("err", "five\n")]
    logfile.close()


# --- what starting loads -----------------------------------------------------------------------

NOT_FOR_VERSION = [
    "fetcher.run", "fetcher.session", "fetcher.drivers.imap", "fetcher.drivers.pop3",
    "fetcher.sinks.smtp", "fetcher.lock", "fetcher.tomlconfig", "fetcher.configdump",
    "fetcher.trace", "asyncio", "imapclient", "aiosmtplib", "tomllib", "logging", "email",
]


def loaded_modules(code: str, home: Path) -> set[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "PYTHONPATH": str(ROOT)}
    listing = home / "modules"
    script = f"import sys\n{code}\nopen({str(listing)!r}, 'w').write('\\n'.join(sys.modules))\n"
    subprocess.run([sys.executable, "-c", script], env=env, cwd=home, capture_output=True,
                   timeout=60, check=True)
    return set(listing.read_text().split())


def test_importing_the_command_line_loads_none_of_the_run(tmp_path: Path) -> None:
    loaded = loaded_modules("import fetcher.cli", tmp_path)
    assert loaded.isdisjoint(NOT_FOR_VERSION)


def test_version_loads_none_of_the_run(tmp_path: Path) -> None:
    rcfile = tmp_path / ".fetchmailrc"
    rcfile.write_text("poll mail.isp.net proto pop3 user bob is bob here password hidden\n")
    rcfile.chmod(0o600)
    loaded = loaded_modules("from fetcher.cli import main\nmain(['-V'])", tmp_path)
    assert "fetcher.describe" in loaded
    assert loaded.isdisjoint(NOT_FOR_VERSION)
