"""Line ends and dot-stuffing across every chunk boundary: a message streams through in
pieces, and where the pieces are cut must never change a byte of what is delivered.

Each case is cut at every position (and at every pair of positions), so a mistake at a
boundary is found every time, not by chance.
"""

from __future__ import annotations

import itertools

import pytest

from fetcher.message import convert_line_ends, smtp_data_chunks

SAMPLES = [
    b"one\r\ntwo\r\n",
    b"bare\nlines\n\nend",
    b"mixed\r\nbare\nlone\rcr\r\n",
    b"\r\n\r\n\n\r",
    b".dot\r\n..two\r\n.\r\nend.\r\n",
    b"\r.\r\n\n.x\n",
    b"a\r\r\n.b\r\r\rc\r",
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


def smtp_data(data: bytes) -> bytes:
    """What SMTP data must be, worked out byte by byte: every line end (an LF, or a run of
    CRs with or without an LF after it) one CRLF, a dot that starts a line doubled, and the
    data ended with CRLF."""
    out = bytearray()
    line_start = True
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == ord("\r") or byte == ord("\n"):
            if byte == ord("\r"):
                while i < len(data) and data[i] == ord("\r"):
                    i += 1
                if i < len(data) and data[i] == ord("\n"):
                    i += 1
            else:
                i += 1
            out += b"\r\n"
            line_start = True
            continue
        if line_start and byte == ord("."):
            out += b"."
        out.append(byte)
        line_start = False
        i += 1
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return bytes(out)


@pytest.mark.parametrize("data", SAMPLES)
def test_smtp_data_whatever_the_cut(data: bytes) -> None:
    expected = smtp_data(data)
    for pieces in cuts(data):
        assert b"".join(smtp_data_chunks(pieces)) == expected, pieces
