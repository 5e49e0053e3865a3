"""The POP3 driver's copy of a multi-line reply, block by block, held against the line-by-line
reading RFC 1939 describes, whatever the lines and wherever the network splits them.

The blocks come from a reader that hands out a few bytes at a time, so a terminator, a
stuffed dot or a CRLF falls across every possible boundary.
"""

from __future__ import annotations

import io
import itertools
from types import SimpleNamespace
from typing import BinaryIO, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher.drivers.pop3 import Pop3Driver, _terminator, _unstuff
from fetcher.errors import ServerConnectionError
from fetcher.message import DataStuffer, smtp_data_chunks
from fetcher.model import ServerOptions, UserOptions
from fetcher.spool import GrowingSpool

LIMIT = 40  # a small part of a line held at once, so that long lines are easy to make


class Trickle(io.RawIOBase):
    """A raw stream that gives at most the next of `sizes` bytes per read."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data = data
        self.sizes = sizes or [1]
        self.at = 0
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        size = min(len(buffer), self.sizes[self.reads % len(self.sizes)])
        self.reads += 1
        chunk = self.data[self.at : self.at + size]
        buffer[: len(chunk)] = chunk
        self.at += len(chunk)
        return len(chunk)


def copy(wire: bytes, sizes: list[int]) -> tuple[bytes, bytes]:
    """(what the driver wrote, what it left unread) for `wire` arriving in `sizes` pieces."""
    out = io.BytesIO()
    left = copy_to(out, wire, sizes)
    return out.getvalue(), left


def copy_to(out: BinaryIO, wire: bytes, sizes: list[int], buffer_size: int = 16) -> bytes:
    """Let the driver copy `wire` to `out`; what it left unread."""
    d = Pop3Driver(ServerOptions(pollname="h", protocol="POP3"), UserOptions(remote="bob"))
    reader = io.BufferedReader(Trickle(wire, sizes), buffer_size=buffer_size)
    d._conn = SimpleNamespace(file=reader, sock=None, close=lambda: None)  # type: ignore[assignment]
    written = d._copy_text(out, LIMIT, what="test")
    assert written == out.tell()
    return reader.read()


def spooled(wire: bytes, sizes: list[int], buffer_size: int = 16) -> list[tuple[bytes, bool]]:
    """The text the driver wrote into a large message's spool, as the listener's side reads
    it: chunks, each marked plain (DATA as it stands) or not."""
    spool = GrowingSpool()
    try:
        copy_to(cast(BinaryIO, spool), wire, sizes, buffer_size)
        spool.finish()
        return list(spool.reader().marked_chunks(64))  # type: ignore[attr-defined]
    finally:
        spool.close()


def line_by_line(wire: bytes) -> bytes:
    """RFC 1939, one line at a time: the reading the block copy must equal."""
    out = b""
    for raw in io.BytesIO(wire):
        assert len(raw) <= LIMIT + 2 and raw.endswith(b"\n")
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        if line == b".":
            return out
        out += (line[1:] if line.startswith(b".") else line) + b"\r\n"
    raise AssertionError("no terminator")


lines = st.lists(
    st.tuples(
        st.text(alphabet=".a\r ", max_size=LIMIT - 1).map(str.encode),
        st.sampled_from([b"\r\n", b"\n"]),
    ),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(lines=lines, sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_block_copy_reads_as_line_by_line(
    lines: list[tuple[bytes, bytes]], sizes: list[int]
) -> None:
    # the server's side: a line starting with a dot gets another one; "." CRLF ends it
    body = b"".join((b"." + text if text.startswith(b".") else text) + end for text, end in lines)
    wire = body + b".\r\n"
    written, left = copy(wire + b"+OK next reply\r\n", sizes)
    assert written == line_by_line(wire)
    assert left == b"+OK next reply\r\n"  # nothing past the terminator is taken


@settings(max_examples=400, deadline=None)
@given(lines=lines, sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_what_the_driver_marks_plain_is_smtp_data_as_it_stands(
    lines: list[tuple[bytes, bytes]], sizes: list[int]
) -> None:
    """A large message's spool: the same text as any copy, and the parts marked plain are
    whole CRLF lines none of which starts with a dot, so that the listener's side may send
    them unsearched and still send what it would have."""
    body = b"".join((b"." + text if text.startswith(b".") else text) + end for text, end in lines)
    wire = body + b".\r\n"
    chunks = spooled(wire, sizes)
    text = b"".join(chunk for chunk, _ in chunks)
    assert text == line_by_line(wire)
    for chunk, plain in chunks:
        if plain:
            assert chunk.endswith(b"\r\n")
            for line in chunk[:-2].split(b"\r\n"):
                assert not line.startswith(b".") and b"\r" not in line and b"\n" not in line
    stuffer = DataStuffer()
    data = b"".join(stuffer.pass_plain(c) if p else stuffer.feed(c) for c, p in chunks)
    assert data + stuffer.end() == b"".join(smtp_data_chunks([text]))


def test_ordinary_crlf_text_is_marked_plain() -> None:
    """The point of the marks: the usual text (CRLF lines, a stuffed dot now and then) is
    sent on unsearched, all but the blocks that hold a dot at a line start."""
    lines = [b"line %d of the message\r\n" % n for n in range(400)]
    lines[200] = b"..a stuffed line\r\n"
    chunks = spooled(b"".join(lines) + b".\r\n", [256], buffer_size=256)
    plain = sum(len(chunk) for chunk, plain in chunks if plain)
    assert plain > 0.8 * sum(len(chunk) for chunk, _ in chunks)
    assert b"".join(chunk for chunk, _ in chunks) == line_by_line(b"".join(lines) + b".\r\n")


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (b".\r\n", b""),
        (b".\n", b""),  # a bare LF ends the terminator too
        (b"..\r\n.\r\n", b".\r\n"),  # a line of one dot
        (b"a\nb\r\n.\r\n", b"a\r\nb\r\n"),
        (b"x\r.y\r\n.\r\n", b"x\r.y\r\n"),  # a dot after a bare CR is not at a line start
        (b".\r\r\n.\r\n", b"\r\r\n"),  # ".\r" is a stuffed line, not the end
    ],
)
def test_edge_cases(wire: bytes, expected: bytes) -> None:
    for size in (1, 2, 3, 100):
        assert copy(wire, [size]) == (expected, b"")


def test_a_line_longer_than_what_is_held_at_once_passes_whole() -> None:
    line = b"y" * (LIMIT * 3 + 1) + b"\r\n"
    assert copy(b"ok\r\n" + line + b".\r\n", [7])[0] == b"ok\r\n" + line


def test_end_of_stream_before_the_terminator_is_a_lost_connection() -> None:
    with pytest.raises(ServerConnectionError, match="lost"):
        copy(b"a\r\nb\r\n", [3])


def _reference_terminator(data: bytes) -> tuple[int, int]:
    """The plain reading: the first line that is a lone dot, ended by CRLF or a bare LF."""
    marked = b"\n" + data
    found = [
        (at, len(term) - 1) for term in (b"\n.\r\n", b"\n.\n") if (at := marked.find(term)) >= 0
    ]
    return min(found) if found else (-1, 0)


def _reference_unstuff(lines: bytes) -> bytes:
    text = (b"\n" + lines.replace(b"\r\n", b"\n")).replace(b"\n.", b"\n")[1:]
    return text.replace(b"\n", b"\r\n")


def test_the_fast_crlf_path_finds_and_unstuffs_what_the_plain_reading_does() -> None:
    """Every string of up to 7 octets of dot, CR, LF and a letter: the one-search path for
    CRLF-only blocks and the general one agree with the plain reading."""
    for length in range(8):
        for parts in itertools.product((b".", b"\r", b"\n", b"a"), repeat=length):
            data = b"".join(parts)
            crlf = data.count(b"\n") == data.count(b"\r\n")
            expected = _reference_terminator(data)
            assert _terminator(data, crlf=crlf) == expected, data
            assert _terminator(data) == expected, data
            if not data or data.endswith(b"\n"):  # whole lines only, as the driver gives it
                assert _unstuff(data, crlf=crlf) == _reference_unstuff(data), data
