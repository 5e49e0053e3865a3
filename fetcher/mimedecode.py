"""`mimedecode`, and the MIME analysis behind BODY=, as fetchmail 6.4 does them (its unmime.c).

Pure: bytes in, bytes out, no I/O. Three parts:

- `unmime_header`: RFC 2047 encoded words (`=?charset?Q?...?=`, `=?charset?B?...?=`) decoded in
  place, the charset dropped, as fetchmail's UnMimeHeader(). With `mimedecode` it is applied to
  every header field of the message (not only From/To/Cc/Subject) and to every header line of
  a part of a multipart/mixed message.
- `analyse`: fetchmail's MimeBodyType() over the header lines handed on. Under `MIME-Version:
  1.0` it tells whether the body is 8-bit or 7-bit (for BODY=), whether it is quoted-printable
  or a multipart/mixed (or message/*) with a boundary, and, with `mimedecode`, rewrites a
  quoted-printable `Content-Transfer-Encoding` of a text/* or message/rfc822 body to `8bit`.
- `BodyDecoder` / `decode_body`: fetchmail's UnMimeBodyline(), streaming: quoted-printable
  lines of a text part decoded (soft line breaks joined, `=XX` turned into its byte), part
  headers decoded as above and their quoted-printable encodings rewritten to 8bit. base64 is
  never decoded, and only the outer boundary is known: parts of a nested multipart stay as they
  are.

fetchmail's quirks are kept, so that the same mail gives the same bytes: `=?` that does not
start an encoded word is dropped, whitespace between two encoded words goes, an invalid base64
word decodes to nothing, the rewritten encoding line keeps its length (`8bit` and spaces), the
boundary line of an unquoted boundary carries the CR of its line end (so its closing `--`
form is not recognised), a last line ending in a soft break gets a CRLF.

Where pyfetch differs on purpose (README, "deliberate differences"):

- an encoded word that would decode to a CR, LF or NUL is left encoded: fetchmail writes them
  into the header, where a CR LF starts a header line the sender forged (`Bcc:`, say);
- an encoded base64 word left open at the end of a field decodes up to the end of the field;
  fetchmail writes a NUL and the rest of its buffer there;
- lines are decoded whole, whatever their length; fetchmail works in 8 KB pieces, which breaks
  an `=XX` cut by a piece boundary and puts a line break into a joined line past 8 KB;
- a decoded line that starts with a dot keeps it (fetchmail loses it over POP3, and a lone
  `=2e` line there ends the SMTP data early); the SMTP sink stuffs dots after decoding.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from fetcher.sinks.base import through

__all__ = [
    "BodyDecoder",
    "MimeInfo",
    "analyse",
    "decode_body",
    "nxtaddr",
    "set_encoding_8bit",
    "unmime_header",
]

CR, LF, TAB, SPACE = 0x0D, 0x0A, 0x09, 0x20
_C_SPACE = frozenset(b" \t\n\v\f\r")  # C's isspace() in the C locale
_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
_UNSAFE = re.compile(rb"[\r\n\0]")
_FOLD = re.compile(rb"\r\n[ \t]")

# ------------------------------------------------------------------------------------------
# nxtaddr: the first address of a header line, as fetchmail's rfc822.c finds it


def nxtaddr(line: bytes) -> bytes | None:
    """The first address in `line` (a header line from its name, with its line end), as
    fetchmail's nxtaddr() returns it; None if there is none.

    It is fetchmail's state machine, not an RFC 5322 parser: the text before the first colon is
    skipped, comments go, blanks outside quotes go, a `;` does not end an address (so
    `text/plain; charset=x` gives `text/plain;charset=x`), and the field ends at a LF not
    followed by a blank: a line without its line end gives None for a bare word.
    """
    start_hdr, skip_junk, bare, dquote, parens, brackets = range(6)
    state = start_hdr
    old = skip_junk
    depth = 0
    out = bytearray()
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == LF and (i + 1 >= n or line[i + 1] not in (SPACE, TAB)):
            if out:
                return bytes(out).rstrip(b" \t\n\v\f\r")
            return None
        if c == 0x5C:  # backslash: it and the byte after it are taken, outside comments
            if state != parens:
                out.append(c)
                i += 1
                if i < n:
                    out.append(line[i])
            i += 1
            continue
        if state == start_hdr:
            if c == 0x3A:
                state = skip_junk
        elif state == skip_junk:
            if c == 0x22:
                old, state = skip_junk, dquote
                out.append(c)
            elif c == 0x28:
                depth, old, state = 1, skip_junk, parens
            elif c == 0x3C:
                state = brackets
                out.clear()
            elif c != 0x2C and c not in _C_SPACE:
                state = bare
                continue  # this byte again, as part of the address
        elif state == bare:
            if c == 0x2C:
                if out:
                    return bytes(out)
            elif c == 0x28:
                depth, old, state = 1, bare, parens
            elif c == 0x3C:
                state = brackets
                out.clear()
            elif c == 0x22:
                old, state = bare, dquote
                out.append(c)
            elif c not in _C_SPACE:
                out.append(c)
        elif state == dquote:
            out.append(c)
            if c == 0x22:
                state = old
        elif state == parens:
            if c == 0x28:
                depth += 1
            elif c == 0x29:
                depth -= 1
            if depth == 0:
                state = old
        else:  # brackets
            if c == 0x3E:
                return bytes(out)
            if c == 0x3C:
                out.clear()
            elif c == 0x22:
                out.append(c)
                old, state = brackets, dquote
            else:
                out.append(c)
        i += 1
    return None


# ------------------------------------------------------------------------------------------
# RFC 2047 in headers


def _hex_byte(data: bytes, i: int) -> int | None:
    """The byte `=XY` at data[i-1] stands for, if data[i] and data[i+1] are hex digits."""
    if i + 1 >= len(data):
        return None
    high, low = _HEX.get(data[i]), _HEX.get(data[i + 1])
    if high is None or low is None:
        return None
    return high * 16 + low


def _b64_value(c: int) -> int | None:
    if 0x41 <= c <= 0x5A:
        return c - 0x41
    if 0x61 <= c <= 0x7A:
        return c - 0x61 + 26
    if 0x30 <= c <= 0x39:
        return c - 0x30 + 52
    if c == 0x2B:
        return 62
    if c == 0x2F:
        return 63
    return None


def _from64(text: bytes) -> bytes:
    """fetchmail's from64tobits() on an encoded word's text: groups of four decoded until the
    text ends (or a CR), a group with padding, or a bad character, which makes the whole word
    decode to nothing (fetchmail returns -1 and keeps none of it)."""
    data = text + b"\r"  # fetchmail puts a CR where the word ends
    i = 2 if data[:2] == b"+ " else 0
    if data[i] == CR:
        return b""
    out = bytearray()
    while True:
        if i + 3 >= len(data):
            return b""
        d1, d2, d3, d4 = data[i : i + 4]
        v1, v2 = _b64_value(d1), _b64_value(d2)
        v3 = 0 if d3 == 0x3D else _b64_value(d3)
        v4 = 0 if d4 == 0x3D else _b64_value(d4)
        if v1 is None or v2 is None or v3 is None or v4 is None:
            return b""
        i += 4
        out.append(((v1 << 2) | (v2 >> 4)) & 0xFF)
        if d3 != 0x3D:
            out.append(((v2 << 4) | (v3 >> 2)) & 0xFF)
            if d4 != 0x3D:
                out.append(((v3 << 6) | v4) & 0xFF)
        if data[i] == CR or d4 == 0x3D:
            return bytes(out)


def _decode_q(data: bytes, start: int, end: int) -> bytes:
    """A Q word's text data[start:end]: `=XY` a byte (its digits may lie past `end`, as in
    fetchmail, but never do for a word that ends in `?=`), `_` a space, an `=` without two hex
    digits kept."""
    out = bytearray()
    i = start
    while i < end:
        c = data[i]
        if c == 0x3D:
            value = _hex_byte(data, i + 1)
            if value is not None:
                out.append(value)
                i += 3
                continue
            out.append(c)
        elif c == 0x5F:
            out.append(SPACE)
        else:
            out.append(c)
        i += 1
    return bytes(out)


def _forges_lines(decoded: bytes, *, at_end: bool) -> bool:
    """Whether a decoded word holds a NUL, or a CR or LF other than a fold (CRLF and a blank)
    or, for a word left open to the end of the text, the line end of the text itself."""
    if not _UNSAFE.search(decoded):
        return False
    if at_end:
        decoded = decoded.removesuffix(b"\r\n")
    return _UNSAFE.search(_FOLD.sub(b"", decoded)) is not None


def unmime_header(text: bytes) -> bytes:
    """`text` (a header field, or one header line of a part) with its RFC 2047 encoded words
    decoded as fetchmail's UnMimeHeader() does. See the module's docstring for the quirks kept
    and the two places it differs."""
    if b"=?" not in text:
        return text
    out = bytearray()
    n = len(text)
    i = 0
    while i < n:
        skipped = b""  # the blanks dropped between this word and the one before
        # plain text up to the next `=?`
        p = text.find(b"=?", i)
        if p < 0:
            out += text[i:]
            break
        out += text[i:p]
        word_start = p
        i = p + 2
        while True:  # one encoded word, then the ones that follow it after blanks only
            q = text.find(b"?", i)
            if q < 0 or q + 2 >= n or text[q + 2] != 0x3F:
                # not an encoded word: fetchmail drops the `=?` (and the blanks before it)
                break
            encoding = text[q + 1] | 0x20
            i = q + 3
            end = text.find(b"?=", i)
            if end < 0:
                end = n
            if encoding == 0x71:  # q
                decoded = _decode_q(text, i, end)
            elif encoding == 0x62:  # b
                decoded = _from64(text[i:end].split(b"\r", 1)[0])
            else:
                decoded = text[i:end]
            i = end + 2 if end < n else n
            if _forges_lines(decoded, at_end=end == n):
                # a line break (or a NUL) the sender put into the header: keep the word as it
                # came, the blanks before it included
                out += skipped + text[word_start:i]
            else:
                out += decoded
            skipped = b""
            following = text.find(b"=?", i)
            if following < 0 or any(c not in _C_SPACE for c in text[i:following]):
                break
            skipped = text[i:following]
            word_start = following
            i = following + 2
    return bytes(out)


# ------------------------------------------------------------------------------------------
# The message's MIME structure: MimeBodyType()

_ENC8BIT = b"Content-Transfer-Encoding: 8bit"
_CTE = b"content-transfer-encoding:"
_CONTENT_TYPE = b"content-type:"
_MIME_VERSION = b"mime-version:"
_MAX_DELIMITER = 72  # "--" and a boundary of at most 70, in fetchmail's 73-byte buffer


def set_encoding_8bit(line: bytes) -> bytes:
    """fetchmail's SetEncoding8bit(): `Content-Transfer-Encoding: 8bit` written over the start
    of `line` (a quoted-printable encoding line, so at least 42 bytes), and what is left of
    the line up to its first control character turned into spaces: the line keeps its length."""
    size = len(_ENC8BIT)
    j = size
    while j < len(line) and line[j] >= SPACE:
        j += 1
    return _ENC8BIT + b" " * (j - size) + line[j:]


def _decoded_type(content_type: bytes | None) -> bool:
    """Whether quoted-printable of this Content-Type is decoded: text/* and message/rfc822 only
    (fetchmail's CheckContentType(); no Content-Type at all is not MIME)."""
    if content_type is None:
        return False
    value = content_type.lstrip(b" \t\n\v\f\r").lower()
    return value.startswith(b"text/") or value.startswith(b"message/rfc822")


def _boundary(content_type: bytes) -> bytes | None:
    """The boundary parameter, as fetchmail's GetBoundary() finds it: after a `;` and blanks,
    `boundary`, then blanks and at least one `=`; quoted up to the next quote, else up to the
    next `;` or the end of the value (its CR included)."""
    at = 0
    while True:
        semicolon = content_type.find(b";", at)
        if semicolon < 0:
            return None
        at = semicolon + 1
        while at < len(content_type) and content_type[at] in _C_SPACE:
            at += 1
        if content_type[at : at + 8].lower() == b"boundary":
            break
    at += 8
    equals = False
    while at < len(content_type) and (content_type[at] in _C_SPACE or content_type[at] == 0x3D):
        equals = equals or content_type[at] == 0x3D
        at += 1
    if not equals:
        return None
    if content_type[at : at + 1] == b'"':
        close = content_type.find(b'"', at + 1)
        if close < 0:
            return None
        value = content_type[at + 1 : close]
    else:
        semicolon = content_type.find(b";", at)
        value = content_type[at : semicolon if semicolon >= 0 else len(content_type)]
    return value or None


@dataclass(frozen=True)
class MimeInfo:
    """What fetchmail's MimeBodyType() finds in a header."""

    eight_bit: bool = False  # MSG_IS_8BIT: BODY=8BITMIME
    seven_bit: bool = False  # MSG_IS_7BIT: BODY=7BIT
    needs_decode: bool = False  # MSG_NEEDS_DECODE: the body goes through the decoder
    encoding: bytes | None = None  # the Content-Transfer-Encoding, as nxtaddr() reads it
    delimiter: bytes = b""  # `--boundary` of a multipart/mixed or message/*, or b""
    quoted_printable: bool = False  # the body (of a single-part message) is quoted-printable
    decoded_type: bool = False  # and of a type that is decoded (text/*, message/rfc822)


def analyse(lines: Sequence[bytes], *, want_decode: bool) -> tuple[MimeInfo, list[bytes]]:
    """fetchmail's MimeBodyType() over the header lines handed on (each a field with its CRLF,
    as `message._kept_fields` gives them): the MIME facts, and the lines, with the
    quoted-printable encoding rewritten to `8bit` if `want_decode` and the body will be decoded.

    As in fetchmail, the lines are looked at until three of Content-Transfer-Encoding,
    Content-Type and MIME-Version have been found (the same one twice counts twice), the last
    one of each counts, names match only when the colon follows at once, and nothing counts
    unless MIME-Version is `1.0`.
    """
    out = list(lines)
    encoding: bytes | None = None
    encoding_at = -1
    content_type: bytes | None = None
    version: bytes | None = None
    found = 0
    for index, line in enumerate(out):
        start = line[:26].lower()
        if start.startswith(_CTE):
            encoding_at = index
            value = nxtaddr(line)
            if value is not None:
                encoding = value
                found += 1
        elif start.startswith(_CONTENT_TYPE):
            # the whole value, folding included, up to the LF that ends the field: its CR stays
            content_type = line[13:].lstrip(b" \t").removesuffix(b"\n")
            found += 1
        elif start.startswith(_MIME_VERSION):
            value = nxtaddr(line)
            if value is not None:
                version = value
                found += 1
        if found == 3:
            break
    if version != b"1.0":
        return MimeInfo(encoding=encoding), out
    decoded_type = _decoded_type(content_type)
    if content_type is not None:
        media = content_type.lower()
        if media.startswith(b"multipart/mixed") or media.startswith(b"message/"):
            boundary = _boundary(content_type)
            if boundary is not None:
                delimiter = (b"--" + boundary)[:_MAX_DELIMITER]
                info = MimeInfo(True, False, True, encoding, delimiter, False, decoded_type)
                return info, out
    name = encoding.lower() if encoding is not None else None
    if name == b"quoted-printable":
        if want_decode and decoded_type:
            out[encoding_at] = set_encoding_8bit(out[encoding_at])
        return MimeInfo(True, False, True, encoding, b"", True, decoded_type), out
    if name == b"7bit":
        return MimeInfo(False, True, False, encoding, decoded_type=decoded_type), out
    if name == b"8bit":
        return MimeInfo(True, False, False, encoding, decoded_type=decoded_type), out
    return MimeInfo(encoding=encoding, decoded_type=decoded_type), out


# ------------------------------------------------------------------------------------------
# The body: UnMimeBodyline(), streaming

# An `=` that a2b_qp() would read as fetchmail does not: one not followed by two hex digits or
# by a line end. Where there is none, binascii decodes a whole block at C speed.
_QP_ODD = re.compile(rb"=(?![0-9A-Fa-f]{2}|\r?\n)")
_QP_ESCAPE = re.compile(rb"=(?:([0-9A-Fa-f]{2})|\r\n?|\n)")
_SOFT = re.compile(rb"=[\r\n]")
# fetchmail reads a line at most this long at a time; a part header line longer than that is
# taken in pieces of this size, as fetchmail does
_PIECE = 8191


def _qp_escape(match: re.Match[bytes]) -> bytes:
    digits = match.group(1)
    return bytes.fromhex(digits.decode()) if digits is not None else b""


def _decode_qp(data: bytes) -> bytes:
    """Quoted-printable lines as fetchmail's DoOneQPLine() decodes them, many at a time: `=XY`
    (either case) is its byte, an `=` before a CR and/or LF is a soft line break and goes with
    them, any other `=` stays."""
    if _QP_ODD.search(data) is None:
        return binascii.a2b_qp(data)
    return _QP_ESCAPE.sub(_qp_escape, data)


class BodyDecoder:
    """UnMimeBodyline() over a body fed in chunks of any size; `feed` and `finish` return the
    decoded bytes. Memory stays bounded: besides the chunk fed, at most a part header line
    (8 KB, as fetchmail reads it) and a few bytes of a line start are held."""

    def __init__(self, info: MimeInfo) -> None:
        self._delimiter = info.delimiter
        self._qp = info.quoted_printable
        self._decode = info.decoded_type
        self._in_part_header = False
        self._raw_line = False  # passing the rest of a boundary line on as it is
        self._buf = b""  # input not handled yet starts at _buf[_pos]
        self._pos = 0
        self._line_start = True  # _buf[_pos] starts a line
        # fetchmail ends a body whose last line ends in a soft break with a CRLF
        self._soft_line = False  # the line being read (since the last LF) has a soft break
        self._soft_last = False  # the last whole line had one
        self._line_empty = True  # nothing of the line being read yet

    def feed(self, chunk: bytes) -> bytes:
        self._buf = self._buf[self._pos :] + chunk if self._pos < len(self._buf) else chunk
        self._pos = 0
        return self._run(final=False)

    def finish(self) -> bytes:
        out = self._run(final=True)
        soft = self._soft_last if self._line_empty else self._soft_line
        return out + b"\r\n" if soft else out

    # -- the state machine ---------------------------------------------------------------------

    def _run(self, *, final: bool) -> bytes:
        out: list[bytes] = []
        buf = self._buf
        while self._pos < len(buf):
            if self._raw_line:
                end = buf.find(b"\n", self._pos)
                cut = len(buf) if end < 0 else end + 1
                out.append(buf[self._pos : cut])
                self._pos = cut
                if end >= 0:
                    self._raw_line = False
                    self._line_start = True
            elif self._in_part_header:
                end = buf.find(b"\n", self._pos, self._pos + _PIECE)
                if end >= 0:
                    cut = end + 1
                elif len(buf) - self._pos >= _PIECE or final:
                    cut = min(len(buf), self._pos + _PIECE)
                else:
                    break  # the rest of the line is still to come
                out.append(self._part_header(buf[self._pos : cut]))
                self._pos = cut
            else:
                taken = self._body_text(buf, final=final)
                if taken is None:
                    break
                out.append(taken)
        return b"".join(out)

    def _body_text(self, buf: bytes, *, final: bool) -> bytes | None:
        """Body text from _pos up to the next boundary line (which then starts being passed
        on), or as much as can be decoded now; None when more input is needed first."""
        pos = self._pos
        delimiter = self._delimiter
        cut = len(buf)
        boundary = False
        if delimiter:
            if self._line_start and buf.startswith(delimiter, pos):
                self._boundary_line()
                return b""
            at = buf.find(b"\n" + delimiter, pos)
            if at >= 0:
                cut, boundary = at + 1, True
            elif not final:
                # hold back a line start that may yet turn out to be a boundary
                last = buf.rfind(b"\n", pos)
                start = last + 1 if last >= 0 else pos
                if (last >= 0 or self._line_start) and delimiter.startswith(buf[start:]):
                    cut = start
        decoding = self._qp and self._decode
        if decoding and not final and not boundary:
            # an `=` is decoded together with the two bytes after it
            equals = buf.rfind(b"=", max(cut - 2, pos), cut)
            if equals >= 0:
                cut = equals
        if cut <= pos:
            return None
        text = buf[pos:cut]
        self._pos = cut
        self._line_start = text.endswith(b"\n")
        last = final and cut == len(buf)  # the end of the body, maybe without a line end
        if not decoding:
            self._track_lines(text, soft=False)
        else:
            self._track_lines(text, soft=True)
            if last and text.endswith(b"="):
                self._soft_line = True  # fetchmail: an `=` at the very end is a soft break
                text = text[:-1]
            text = _decode_qp(text)
        if boundary:
            self._boundary_line()
        return text

    def _boundary_line(self) -> None:
        """A boundary line starts: flags reset, the line passed on as it is, part headers next."""
        self._qp = self._decode = False
        self._in_part_header = True
        self._raw_line = True
        self._soft_line = self._soft_last = False
        self._line_empty = True

    def _track_lines(self, text: bytes, *, soft: bool) -> None:
        """Keep up with whether the last line read had a soft line break."""
        last = text.rfind(b"\n")
        if last < 0:
            if text:
                self._line_empty = False
                self._soft_line = self._soft_line or (soft and _SOFT.search(text) is not None)
            return
        before = text.rfind(b"\n", 0, last)
        had = self._soft_line if before < 0 else False
        self._soft_last = had or (soft and _SOFT.search(text, before + 1, last + 1) is not None)
        self._line_empty = last == len(text) - 1
        self._soft_line = soft and _SOFT.search(text, last + 1) is not None

    def _part_header(self, line: bytes) -> bytes:
        """One header line of a part (or a piece of one): decoded, and read for the part's
        encoding and type; a blank line ends the part's header."""
        line = unmime_header(line)
        self._line_start = line.endswith(b"\n")
        if line in (b"", b"\n", b"\r\n"):
            self._in_part_header = False
            return line
        start = line[:26].lower()
        if start.startswith(_CTE):
            value = nxtaddr(line)
            if value is not None and value.lower() == b"quoted-printable":
                self._qp = True
                # fetchmail decides with the Content-Type seen so far, which usually comes first
                if self._decode:
                    line = set_encoding_8bit(line)
        elif start.startswith(_CONTENT_TYPE):
            self._decode = _decoded_type(nxtaddr(line))
        return line


def decode_body(chunks: Iterable[bytes], info: MimeInfo) -> Iterator[bytes]:
    """The body in `chunks`, decoded as `mimedecode` wants it (see BodyDecoder)."""
    decoder = BodyDecoder(info)
    return through(chunks, decoder.feed, decoder.finish)
