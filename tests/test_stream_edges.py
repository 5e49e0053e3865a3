"""Line ends and dot-stuffing across every chunk boundary: a message streams through in
pieces, and where the pieces are cut must never change a byte of what is delivered.

Each case is cut at every position (and at every pair of positions), so a mistake at a
boundary is found every time, not by chance.
"""

from __future__ import annotations

import itertools

import pytest

from fetcher.message import convert_line_ends, dot_stuff_chunks

SAMPLES = [
    b"one\r\ntwo\r\n",
    b"bare\nlines\n\nend",
    b"mixed\r\nbare\nlone\rcr\r\n",
    b"\r\n\r\n\n\r",
    b".dot\r\n..two\r\n.\r\nend.\r\n",
    b"\r.\r\n\n.x\n",
]


def cuts(data: bytes) -> list[list[bytes]]:
    """`data` cut into pieces in every way with at most two cuts (empty pieces included)."""
    out: list[list[bytes]] = [[data]]
    for i, j in itertools.combinations_with_replacement(range(len(data) + 1), 2):
        out.append([data[:i], data[i:j], data[j:]])
    return out


def whole(chunks: list[bytes], **options: bool) -> bytes:
    return b"".join(convert_line_ends(chunks, **options))


@pytest.mark.parametrize("data", SAMPLES)
def test_forcecr_gives_crlf_everywhere_whatever_the_cut(data: bytes) -> None:
    expected = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for pieces in cuts(data):
        assert whole(pieces, forcecr=True) == expected, pieces


@pytest.mark.parametrize("data", SAMPLES)
def test_stripcr_drops_the_cr_of_crlf_only_whatever_the_cut(data: bytes) -> None:
    expected = data.replace(b"\r\n", b"\n")
    for pieces in cuts(data):
        assert whole(pieces, stripcr=True) == expected, pieces
        assert whole(pieces, stripcr=True, forcecr=True) == expected, pieces  # stripcr wins


@pytest.mark.parametrize("data", SAMPLES)
def test_unconverted_bytes_pass_unchanged(data: bytes) -> None:
    for pieces in cuts(data):
        assert whole(pieces) == data


def stuffed(data: bytes) -> bytes:
    """What dot-stuffing must give: a dot at a line start (after LF or CR, or at the very
    start) doubled, and the data ended with CRLF (a last bare LF or lone CR completed into
    one, anything else followed by one)."""
    out = bytearray()
    line_start = True
    for byte in data:
        if line_start and byte == ord("."):
            out += b"."
        out.append(byte)
        line_start = byte in (ord("\n"), ord("\r"))
    if not out:
        return b""
    if out.endswith(b"\r\n"):
        return bytes(out)
    if out.endswith(b"\r"):  # a last lone CR is completed into the final CRLF
        return bytes(out) + b"\n"
    return bytes(out[:-1] + b"\r\n") if out.endswith(b"\n") else bytes(out) + b"\r\n"


@pytest.mark.parametrize("data", SAMPLES)
def test_dot_stuffing_whatever_the_cut(data: bytes) -> None:
    expected = stuffed(data)
    for pieces in cuts(data):
        assert b"".join(dot_stuff_chunks(pieces)) == expected, pieces
