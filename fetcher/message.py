"""From the message a driver downloaded to what a sink hands to the MTA, as fetchmail 6.4 does.

Pure: no I/O except reading (and, in `read_header`, seeking) the spool file handed in. Everything
works on bytes, because mail is 8-bit, may hold invalid UTF-8 or NULs, and may use bare LF line
ends. Only the header block is held in memory (fetchmail buffers it too: it decides the sender,
the recipients and where the Received line goes); the body stays in the spool and is streamed
in bounded chunks (`Message.body_chunks`, then `convert_line_ends` or `smtp_data_chunks`;
docs/design.md, rule 6).

Steps, in the order a poll uses them:

1. `read_header` reads the header block off the spool and leaves the spool at the first body
   byte; with `mimedecode`, `decode_header` decodes its RFC 2047 words (`fetcher.mimedecode`);
2. `envelope_sender` and `recipient_addresses` give MAIL FROM and RCPT TO;
3. `received_header` builds fetchmail's trace line and `edit_header` the header block handed
   on (or raises `BadHeaderError`); `mimedecode.analyse` reads its MIME structure, which gives
   `body_type` the BODY= parameter and, with `mimedecode`, the body's decoder;
4. the sink streams header and body (decoded as it goes) through `convert_line_ends` (stripcr,
   forcecr) for an MDA, or `smtp_data_chunks` (CRLF line ends, dot-stuffing) for SMTP, LMTP
   and BSMTP; an MDA command line comes from `mda_command`.

`prepare` strings steps 1 to 3 together for the session. For a multidrop account (several
local names, or `*`) the recipients come from the header, as `fetcher.recipients` decides.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, NamedTuple

from fetcher import __version__
from fetcher.errors import ConfigError
from fetcher.mimedecode import MimeInfo, analyse, decode_body, unmime_header
from fetcher.model import GlobalOptions, LocalName, ServerOptions, UserOptions
from fetcher.recipients import Resolve, Routing, route
from fetcher.sinks.base import Delivery, Envelope, Message, Outcome, through

__all__ = [
    "MAX_HEADER_OCTETS",
    "BadHeaderError",
    "BodyType",
    "DataStuffer",
    "HeaderField",
    "RawHeader",
    "TracePoll",
    "body_type",
    "check_mda_template",
    "convert_line_ends",
    "edit_header",
    "envelope_sender",
    "first_address",
    "headerless_header",
    "mda_command",
    "prepare",
    "read_chunks",
    "read_header",
    "received_header",
    "recipient_addresses",
    "rewrite_addresses",
    "smtp_data_chunks",
]

# fetchmail grows its header buffer without bound; a hostile server could then make us hold
# any amount. Past this size the header is cut at the last whole line that fits, and what
# follows is handed on as body, as if the message had no blank line (see `read_header`).
MAX_HEADER_OCTETS = 1 << 20

CR, LF = 0x0D, 0x0A
_WSP = b" \t"

BAD_HEADER_MESSAGE = "incorrect header line found - see manpage for bad-header option"
NUL_WARNING = b"X-Fetchmail-Warning: message has embedded NULs\r\n"
NUL_TEXT = "message has embedded NULs"
NO_POSTMASTER = "no address matches; no postmaster set."
DNS_SUPPRESSED = "forwarding and deletion suppressed due to DNS errors"


_ENVELOPE_FIRST = (b"F", b"f", b">")


class BadHeaderError(ValueError):
    """A header line is neither a field (no colon) nor a continuation, and the server is not
    set to `bad-header accept`: fetchmail refuses such a message."""

    def __init__(self, line: bytes) -> None:
        super().__init__(BAD_HEADER_MESSAGE)
        self.line = line


# ------------------------------------------------------------------------------------------
# Reading the header block


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field as received: its physical lines joined by CRLF, without the final
    CRLF, NULs removed.

    `name` is the lower-cased field name (blanks before the colon dropped), or None for a line
    without a colon or one that starts with a blank (a continuation with nothing before it).
    """

    raw: bytes
    name: bytes | None

    @classmethod
    def parse(cls, raw: bytes) -> HeaderField:
        colon = raw.find(b":")
        # no colon on the first line (a CRLF before it), or a continuation with nothing before
        if colon == -1 or raw.find(b"\r\n", 0, colon) != -1 or raw[:1] in (b" ", b"\t"):
            return cls(raw, None)
        return cls(raw, raw[:colon].rstrip(_WSP).lower())

    @property
    def value(self) -> bytes:
        """Everything after the first colon, folding included."""
        colon = self.raw.find(b":")
        return self.raw[colon + 1 :] if colon != -1 else b""

    @property
    def is_envelope_line(self) -> bool:
        """An mbox `From ` line or its escaped `>From ` form, which fetchmail drops."""
        if self.raw[:1] not in _ENVELOPE_FIRST:  # nearly every field: no need to look further
            return False
        low = self.raw[:6].lower()
        if not (low.startswith(b"from ") or low.startswith(b">from ")):
            return False
        # `From : alice` is an (obsolete-syntax) From: field, not an envelope line
        return self.name != b"from"


@dataclass(frozen=True)
class RawHeader:
    """The header block of a message, field by field, as `read_header` found it."""

    fields: tuple[HeaderField, ...]
    separator: bool  # the blank line that ends the header was found
    truncated: bool = False  # stopped at MAX_HEADER_OCTETS; the rest is left in the body
    had_nuls: bool = False  # NUL bytes were removed
    octets: int = 0  # bytes consumed from the spool, blank line included

    def all(self, name: bytes) -> list[HeaderField]:
        """The fields called `name` (lower case), in message order."""
        # A message's sender and body type ask for a dozen names: the fields are sorted by
        # name once, on the first question, rather than looked through for each.
        index: dict[bytes | None, list[HeaderField]] | None = self.__dict__.get("_by_name")
        if index is None:
            index = {}
            for field in self.fields:
                index.setdefault(field.name, []).append(field)
            object.__setattr__(self, "_by_name", index)
        return list(index.get(name, ()))


def read_header(spool: BinaryIO, *, limit: int = MAX_HEADER_OCTETS) -> RawHeader:
    """Read the header block from the current position of `spool` and leave the file at the
    first body byte. `spool` must be seekable: the header is read in blocks, and what was read
    past its end is given back.

    - A line is ended by LF, with any CRs before it dropped; a line of nothing but CRs ends the
      header (fetchmail's `end_of_header`). A last line without LF counts as a line.
    - A line starting with a blank continues the field before it.
    - NULs are removed before anything else, as fetchmail does, so a line of NULs and CRLF is
      the blank line.
    - No blank line before the end of the file: every line is header and the body is empty.
    - More than `limit` octets before the blank line: the header ends after the last whole
      line that fits, the spool is put back at the start of the first line that did not fit,
      and that line and the rest are body. The message is still delivered, never dropped;
      `edit_header` then adds the missing blank line.

    The header is found and split with a few searches over the whole block rather than line
    by line: this runs for every message, and mail headers run to dozens of lines.
    """
    start = spool.tell()
    # A line end in front of the first line, so that a blank first line is found like any
    # other: index i of `data` is octet i - 1 of the spool.
    data = b"\n"
    searched = 0  # where a blank line not found yet can start: at the last line end read
    size = _FIRST_READ
    while True:
        want = min(size, limit + 2 - len(data))  # never more than limit + 1 octets in all
        chunk = spool.read(want)
        data += chunk
        found = _BLANK_LINE.search(data, searched)
        if found is not None or len(chunk) < want or len(data) > limit + 1:
            break
        searched = data.rfind(b"\n", searched)
        size *= 2
    read = len(data) - 1
    separator = truncated = False
    if found is not None and found.end() - 1 <= limit:
        # the header's lines, then the blank line; the body starts after its LF
        header_end, consumed, separator = found.start(), found.end() - 1, True
    elif read <= limit and len(chunk) < want:
        # the end of the message came first: everything is header; a last line without LF
        # that holds nothing but CRs and NULs is a blank line all the same
        consumed = read
        last = data.rfind(b"\n")
        tail = data[last + 1 :]
        header_end = last if tail and not tail.strip(b"\r\0") else read
    else:
        # more than `limit` octets before the blank line: cut after the last whole line
        truncated = True
        header_end = consumed = max(data.rfind(b"\n", 0, limit + 1), 0)
    spool.seek(start + consumed)
    block = data[1 : header_end + 1]
    had_nuls = b"\0" in data[1 : consumed + 1]
    if had_nuls:
        block = block.replace(b"\0", b"")
    # every line ends in CRLF, then the last line end goes; a last line without LF loses its
    # trailing CRs as the others do
    if b"\r\r" in block:  # rare: a line end with several CRs
        block = _LINE_END.sub(b"\r\n", block)
    else:  # two plain replaces do the same much faster than the expression, octet by octet
        block = block.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    block = block[:-2] if block.endswith(b"\r\n") else block.rstrip(b"\r")
    if not block:
        fields: tuple[HeaderField, ...] = ()
    else:
        # a field is its first line and the lines after it that start with a blank
        parse = HeaderField.parse
        fields = tuple([parse(raw) for raw in _FIELD_START.split(block)])
    return RawHeader(fields, separator, truncated, had_nuls, consumed)


# How much of a message `read_header` reads at first: most headers fit; a longer one is read
# on in blocks twice as large each time.
_FIRST_READ = 8192
# A blank line, the line end before it included: nothing but CRs and NULs up to its LF.
_BLANK_LINE = re.compile(rb"\n[\r\0]*\n")
_LINE_END = re.compile(rb"\r*\n")
_FIELD_START = re.compile(rb"\r\n(?![ \t])")


def decode_header(header: RawHeader) -> RawHeader:
    """`mimedecode`: the header with the RFC 2047 encoded words of every field decoded, as
    fetchmail does before anything looks at the header (`mimedecode.unmime_header`)."""
    fields: list[HeaderField] = []
    for field in header.fields:
        if b"=?" in field.raw:
            # decoded with its line end, as fetchmail does: it can matter to an unended word
            raw = unmime_header(field.raw + b"\r\n").removesuffix(b"\r\n")
            if raw != field.raw:
                field = HeaderField.parse(raw)
        fields.append(field)
    return dataclasses.replace(header, fields=tuple(fields))


def _bad_header_line(header: RawHeader) -> bytes | None:
    """The first line that `edit_header` would refuse without `bad-header accept`, if any."""
    for field in header.fields:
        bad = field.name is None and field.raw[:1] not in (b" ", b"\t")
        if bad and not field.is_envelope_line:
            return field.raw.split(b"\r\n", 1)[0]
    return None


# ------------------------------------------------------------------------------------------
# Addresses: a small RFC 5322 tokenizer, enough for fetchmail's nxtaddr() and reply_hack()


class _Kind(enum.Enum):
    WSP = "wsp"
    ATOM = "atom"
    QUOTED = "quoted"
    COMMENT = "comment"
    ANGLE = "angle"  # <...>, brackets included
    COMMA = ","
    COLON = ":"
    SEMICOLON = ";"


class _Token(NamedTuple):
    kind: _Kind
    start: int
    end: int  # exclusive
    closed: bool = True  # quotes, comments, angles: the closing character was found


_SPECIALS = {0x2C: _Kind.COMMA, 0x3A: _Kind.COLON, 0x3B: _Kind.SEMICOLON}
_BLANKS = frozenset(b" \t\r\n")

_WSP_RUN = re.compile(rb"[ \t\r\n]+")
_QUOTED_TEXT = rb'"(?:[^"\\]+|\\[\x00-\xff]?)*'
_QUOTED = re.compile(_QUOTED_TEXT + rb'(")?')  # group 1: the closing quote
# `<...>`: a quoted `>` does not close it
_ANGLE = re.compile(rb'<(?:[^>"\\]+|\\[\x00-\xff]?|' + _QUOTED_TEXT + rb'"?)*(>)?')
_ATOM = re.compile(rb'(?:[^ \t\r\n"(<,:;\\]+|\\[\x00-\xff]?)+')
_COMMENT_STOPS = re.compile(rb"[()\\]")

# What kind of token a byte starts, and the regular expression that matches the whole token
# (None: a comment, which nests, or a one-byte special); with a group for its closing
# character where it has one. Matching a token at once rather than byte by byte matters: every
# address field of every message is tokenized. A backslash takes the byte after it, whatever
# it is, in atoms, quoted strings and angle addresses alike.
_Start = tuple[_Kind, Callable[[bytes, int], "re.Match[bytes] | None"] | None, bool]
_ATOM_START: _Start = (_Kind.ATOM, _ATOM.match, False)
_STARTS: dict[int, _Start] = {
    **{c: (_Kind.WSP, _WSP_RUN.match, False) for c in _BLANKS},
    0x22: (_Kind.QUOTED, _QUOTED.match, True),
    0x28: (_Kind.COMMENT, None, False),
    0x3C: (_Kind.ANGLE, _ANGLE.match, True),
    **{c: (kind, None, False) for c, kind in _SPECIALS.items()},
}


def _skip_comment(data: bytes, i: int) -> tuple[int, bool]:
    """`data[i]` is an opening parenthesis: the index after its matching one (comments nest)."""
    depth = 0
    find = _COMMENT_STOPS.search
    while (stop := find(data, i)) is not None:
        i = stop.start()
        c = data[i]
        if c == 0x5C:  # backslash
            i += 2
            continue
        if c == 0x28:
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i + 1, True
        i += 1
    return len(data), False


def _tokenize(data: bytes) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(data)
    starts = _STARTS
    while i < n:
        kind, match, has_close = starts.get(data[i], _ATOM_START)
        closed = True
        if match is not None:
            found = match(data, i)
            assert found is not None  # data[i] starts a token of this kind
            j = found.end()
            if has_close:
                closed = found.start(1) != -1
        elif kind is _Kind.COMMENT:
            j, closed = _skip_comment(data, i)
        else:
            j = i + 1
        tokens.append(_Token(kind, i, j, closed))
        i = j
    return tokens


def _angle_inner(data: bytes, token: _Token) -> bytes:
    inner = data[token.start + 1 : token.end - 1 if token.closed else token.end].strip(b" \t\r\n")
    if inner.startswith(b"@") and b":" in inner:
        inner = inner[inner.index(b":") + 1 :]  # a source route, `<@relay:user@host>`
    return inner


def first_address(value: bytes) -> bytes | None:
    """The first address in a header field's value, as fetchmail's nxtaddr() finds it.

    `<...>` wins over anything before it in the same mailbox (display names, quoted or not);
    comments are dropped; a bare address loses its blanks; a group's name (`name:`) is
    skipped. `<>` gives b"" (the null address); no address at all gives None.
    """
    collected: list[bytes] = []
    for token in _tokenize(value):
        kind = token.kind
        if kind is _Kind.ANGLE:
            return _angle_inner(value, token)
        if kind in (_Kind.COMMA, _Kind.SEMICOLON):
            if collected:
                break
        elif kind is _Kind.COLON:
            collected = []
        elif kind in (_Kind.ATOM, _Kind.QUOTED):
            collected.append(value[token.start : token.end])
    return b"".join(collected) if collected else None


def _has_host_part(address: bytes) -> bool:
    return b"@" in address or b"!" in address  # `!`: a UUCP bang path counts as qualified


def _rewrite_mailbox(value: bytes, tokens: list[_Token]) -> int | None:
    """Where to insert `@host` in one mailbox of an address list, or None to leave it."""
    angles = [t for t in tokens if t.kind is _Kind.ANGLE]
    if angles:
        angle = angles[-1]
        inner = value[angle.start + 1 : angle.end - 1]
        if not angle.closed or not inner.strip(b" \t\r\n") or _has_host_part(inner):
            return None  # `<>` above all must stay the null address
        return angle.start + 1 + len(inner.rstrip(b" \t\r\n"))
    # a bare address: rewritten only if it is a single word with an atom in it, so that
    # phrases without an address (`To: Bob Smith`) and lone quoted strings are left alone
    words: list[list[_Token]] = []
    joined = False
    for token in tokens:
        if token.kind in (_Kind.ATOM, _Kind.QUOTED):
            if joined:
                words[-1].append(token)
            else:
                words.append([token])
            joined = True
        else:
            joined = False
    if len(words) != 1:
        return None
    word = words[0]
    if not any(t.kind is _Kind.ATOM for t in word) or any(
        t.kind is _Kind.QUOTED and not t.closed for t in word
    ):
        return None
    if _has_host_part(value[word[0].start : word[-1].end]):
        return None
    return word[-1].end


def rewrite_addresses(value: bytes, host: bytes) -> bytes:
    """Append `@host` to every unqualified address in an address-list value (fetchmail's
    `rewrite`, reply_hack()). Conservative: display names, comments, quoted strings, groups
    and `<>` are kept as they are; a mailbox that is not clearly one address is not touched."""
    tokens = _tokenize(value)
    inserts: list[int] = []
    mailbox: list[_Token] = []
    for token in [*tokens, None]:
        if token is None or token.kind in (_Kind.COMMA, _Kind.SEMICOLON):
            where = _rewrite_mailbox(value, mailbox) if mailbox else None
            if where is not None:
                inserts.append(where)
            mailbox = []
        elif token.kind is _Kind.COLON:
            mailbox = []  # what came before was a group's name
        else:
            mailbox.append(token)
    if not inserts:
        return value
    parts: list[bytes] = []
    last = 0
    for where in inserts:
        parts += [value[last:where], b"@", host]
        last = where
    parts.append(value[last:])
    return b"".join(parts)


# the fields reply_hack() rewrites, in fetchmail's list
REWRITTEN_FIELDS = frozenset(
    {
        b"from", b"to", b"reply-to", b"return-path", b"cc", b"bcc",
        b"resent-from", b"resent-to", b"resent-cc", b"resent-bcc",
        b"apparently-from", b"apparently-to", b"sender", b"resent-sender",
    }
)  # fmt: skip


# ------------------------------------------------------------------------------------------
# Envelope: MAIL FROM, RCPT TO, BODY=

_SENDER_FALLBACKS = (
    b"resent-sender",
    b"sender",
    b"resent-from",
    b"from",
    b"reply-to",
    b"apparently-from",
)
_QUAD = r"(?:25[0-5]|2[0-4]\d|1\d\d|\d{1,2})"
_DOTTED_QUAD = re.compile(rf"(?:{_QUAD}\.){{3}}{_QUAD}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _domain_literal(host: str) -> str:
    """A host name fit for the right of an @: an IP address goes in brackets (RFC 5321)."""
    if _DOTTED_QUAD.fullmatch(host):
        return f"[{host}]"
    if ":" in host:  # IPv6; fetchmail would write it bare, which no MTA parses
        return f"[IPv6:{host}]"
    return host


def return_path(header: RawHeader) -> HeaderField | None:
    """The Return-Path field fetchmail uses: the first one with an address in it. Later ones
    (spam carries several) are neither used nor stripped."""
    for field in header.all(b"return-path"):
        if first_address(field.value) is not None:
            return field
    return None


def envelope_sender(
    header: RawHeader, *, remote_user: str, server_name: str, rewrite: bool = False
) -> str:
    """MAIL FROM as fetchmail computes it, without the angle brackets; "" is the null sender.

    As in fetchmail, `rewrite` (reply_hack) qualifies the header's addresses first, and the
    sender is picked from what it made of them: the first Return-Path; else, of each in this
    order, the last Resent-Sender, Sender (either only if it holds @ or !, so `Sender: carol`
    counts once `rewrite` made it `carol@server`), Resent-From, From, Reply-To,
    Apparently-From, the first that has an address. `<>` in Return-Path stays the null sender;
    no address, an empty one or one starting with @ gives `remote_user@server_name` (a dotted
    quad in brackets, the remote user alone if it has @ or !); an address without @ or ! gets
    `@server_name`. An address with control characters (folded across lines, or a CR that
    could end an SMTP command) is not used either.
    """
    host = server_name.encode("utf-8", "replace")

    def value(field: HeaderField) -> bytes:
        if rewrite and field.name in REWRITTEN_FIELDS:
            return rewrite_addresses(field.value, host)
        return field.value

    address: bytes | None = None
    rp = return_path(header)
    if rp is not None:
        address = first_address(value(rp))
        if address == b"":
            return ""
    else:
        for name in _SENDER_FALLBACKS:
            values = [value(field) for field in header.all(name)]
            if name in (b"sender", b"resent-sender"):
                values = [v for v in values if _has_host_part(v)]
            # fetchmail keeps where the last one of each is; one without an address there
            # passes to the next name, not to an earlier field of the same name
            address = first_address(values[-1]) if values else None
            if address is not None:
                break
    text = address.decode("utf-8", "replace") if address is not None else ""
    if not text or text.startswith("@") or _CONTROL.search(text):
        if "@" in remote_user or "!" in remote_user:
            return remote_user
        return f"{remote_user}@{_domain_literal(server_name)}"
    if "@" in text or "!" in text:
        return text
    return f"{text}@{_domain_literal(server_name)}"


def recipient_addresses(
    localnames: Sequence[str],
    *,
    smtpaddress: str | None = None,
    smtpname: str | None = None,
    smtphost: str | None = None,
) -> list[str]:
    """RCPT TO for each local name, without brackets, as fetchmail's rcpt_address() does.

    A name with @ is used as it is; otherwise `smtpname` replaces the whole address if set;
    otherwise `name@destaddr`, where destaddr is `smtpaddress`, else `smtphost` (the hunt
    entry the sink talks to) without its `/port`, else `localhost` (no host, or a socket
    path). An MDA sink has no smtphost and uses no smtpaddress (fetchmail's open_mda_sink
    forces localhost); BSMTP uses smtpaddress but no smtphost.
    """
    if smtpaddress:
        destaddr = smtpaddress
    elif smtphost and not smtphost.startswith("/"):
        host = smtphost.rsplit("/", 1)[0] if "/" in smtphost else smtphost
        destaddr = _rcpt_domain(host) if host else "localhost"
    else:
        destaddr = "localhost"
    addresses: list[str] = []
    for name in localnames:
        if "@" in name:
            addresses.append(name)
        elif smtpname:
            addresses.append(smtpname)
        else:
            addresses.append(f"{name}@{destaddr}")
    return addresses


def _rcpt_domain(host: str) -> str:
    # fetchmail writes an IPv4 smtphost bare (`bob@127.0.0.1`, observed); only IPv6 needs help
    return f"[IPv6:{host}]" if ":" in host else host


class BodyType(enum.Enum):
    """The BODY= parameter for MAIL FROM (only sent when the listener offers 8BITMIME)."""

    EIGHT_BIT = "8BITMIME"
    SEVEN_BIT = "7BIT"
    UNDECLARED = ""  # no BODY= at all, as fetchmail does for plain non-MIME mail


def body_type(mime: MimeInfo, *, header: bytes = b"", pass8bits: bool = False) -> BodyType:
    """What to declare in BODY=, as fetchmail does, from `mimedecode.analyse`'s reading of the
    header handed on (the body is not read):

    - `pass8bits` → 8BITMIME;
    - under `MIME-Version: 1.0`: a multipart/mixed (or message/*) with a boundary, or a
      Content-Transfer-Encoding of quoted-printable or 8bit → 8BITMIME; 7bit → 7BIT;
    - otherwise nothing.

    Two cases go further than fetchmail, because declaring 7BIT (or nothing, which means the
    same) for 8-bit data breaks RFC 6152 while declaring 8BITMIME for 7-bit data is harmless:
    a `binary` encoding, and a `header` (the one handed on) that holds 8-bit bytes, raw or
    decoded by `mimedecode`, are declared 8BITMIME.
    """
    if pass8bits or mime.eight_bit:
        return BodyType.EIGHT_BIT
    if (mime.encoding or b"").lower() == b"binary" or not header.isascii():
        return BodyType.EIGHT_BIT
    if mime.seven_bit:
        return BodyType.SEVEN_BIT
    return BodyType.UNDECLARED


# ------------------------------------------------------------------------------------------
# The header handed on


@dataclass(frozen=True)
class TracePoll:
    """`tracepolls`: which poll entry, account and folder the Received line names."""

    label: str
    account: str
    folder: str | None = None


def _clean(text: str) -> str:
    # names from the rcfile or the server: a CR or LF here would start a forged header line.
    # A printable text has no control character (the usual case: nothing to replace).
    return text if text.isprintable() else _CONTROL.sub(" ", text)


def _header_lines(*lines: str) -> bytes:
    return b"".join(line.encode("utf-8", "replace") + b"\r\n" for line in lines)


def rfc822_timestamp(now: datetime | None = None) -> str:
    """fetchmail's rfc822timestamp(): `Wed, 25 Nov 2026 05:38:19 +0000 (UTC)`, local time, in
    English whatever the locale."""
    global _last_stamp
    if now is not None:
        return _timestamp(now)
    # Every message's Received line has one, to the second: made once a second, not for each
    # of the messages a fast poll delivers within it.
    moment = datetime.now().replace(microsecond=0)
    last = _last_stamp
    if last is not None and last[0] == moment:
        return last[1]
    stamp = _timestamp(moment)
    _last_stamp = (moment, stamp)
    return stamp


_last_stamp: tuple[datetime, str] | None = None  # the last second stamped, and its stamp
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.astimezone()
    # email.utils.format_datetime's form, without loading the email package for it
    stamp = (
        f"{_DAYS[moment.weekday()]}, {moment.day:02d} {_MONTHS[moment.month - 1]} "
        f"{moment.year:04d} {moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} "
        f"{moment.strftime('%z')}"
    )
    zone = moment.tzname()
    return f"{stamp} ({zone})" if zone else stamp


def received_header(
    *,
    server_name: str,
    server_address: str | None,
    local_host: str,
    protocol: str,
    recipients: Sequence[str],
    multidrop: bool = False,
    trace: TracePoll | None = None,
    now: datetime | None = None,
    by_default: bool = False,
) -> bytes:
    """fetchmail's Received line, three physical lines ending in CRLF:

    ```
    Received: from <server> [<IP>]
    \tby <local host> with <PROTOCOL> (pyfetch-<version>[ polling <label> account <user>
        [ folder <f>]])
    \tfor <bob@localhost> (single-drop); <date>
    ```

    (the second line is one line, wrapped here).

    `[IP]` only when the address is known; the `for` clause only with exactly one recipient
    (the RCPT TO address), labelled multi-drop when the account has several local names, and
    `by default` when the message goes to the postmaster because the listener refused every
    recipient.
    """
    first = f"Received: from {_clean(server_name)}"
    if server_address:
        first += f" [{_clean(server_address)}]"
    second = f"\tby {_clean(local_host)} with {_clean(protocol)} (pyfetch-{__version__}"
    if trace is not None:
        second += f" polling {_clean(trace.label)} account {_clean(trace.account)}"
        if trace.folder:
            second += f" folder {_clean(trace.folder)}"
    second += ")"
    third = "\t"
    if len(recipients) == 1:
        drop = "by default" if by_default else "multi-drop" if multidrop else "single-drop"
        third += f"for <{_clean(recipients[0])}> ({drop}); "
    third += rfc822_timestamp(now)
    return _header_lines(first, second, third)


def headerless_header(
    *, local_user: str, local_host: str, remote_user: str, server_name: str
) -> bytes:
    """The stand-in fetchmail gives a message that has no header lines at all."""
    return _header_lines(
        "From: FETCHMAIL-DAEMON",
        _clean(f"To: {local_user}@{local_host}"),
        _clean(f"Subject: Headerless mail from {remote_user}'s mailbox on {server_name}"),
    )


_STATUS_FIELDS = (b"status", b"x-mozilla-status")


def edit_header(
    header: RawHeader,
    *,
    received: bytes | None,
    for_mda: bool,
    server_name: str,
    rewrite: bool = True,
    dropstatus: bool = False,
    dropdelivered: bool = False,
    accept_bad_header: bool = False,
    if_headerless: bytes = b"",
) -> bytes:
    """The header block handed to the sink: CRLF line ends and the closing blank line.

    fetchmail's edits, field by field:

    - a line that is not a field (no colon) nor a continuation raises `BadHeaderError`,
      unless `accept_bad_header` (`bad-header accept`); an mbox `From ` line is not checked,
      it is dropped anyway;
    - `From ` and `>From ` envelope lines are dropped;
    - Delivered-To is dropped with `dropdelivered`;
    - an empty Status or X-Mozilla-Status is always dropped, a non-empty one with `dropstatus`;
    - with `rewrite`, unqualified addresses in From, To, Cc, Bcc, Reply-To, Sender,
      Return-Path, Apparently-* and Resent-* get `@server_name`;
    - the Return-Path used for MAIL FROM is dropped unless the sink is an MDA (an SMTP
      listener writes its own on final delivery);
    - `received` (None with `invisible`) goes before the first Received field, else on top;
    - `if_headerless` stands in when no field is left (fetchmail's "Headerless mail");
    - NULs were removed by `read_header`; if there were any, an
      `X-Fetchmail-Warning: message has embedded NULs` field is added at the end.
    """
    kept, first_received = _kept_fields(
        header, for_mda=for_mda, server_name=server_name, rewrite=rewrite,
        dropstatus=dropstatus, dropdelivered=dropdelivered, accept_bad_header=accept_bad_header,
    )
    return _assembled(header, kept, first_received, received, if_headerless)


def _kept_fields(
    header: RawHeader,
    *,
    for_mda: bool,
    server_name: str,
    rewrite: bool,
    dropstatus: bool,
    dropdelivered: bool,
    accept_bad_header: bool,
) -> tuple[list[bytes], int]:
    """`edit_header`'s field by field edits: the lines kept, each with its CRLF, and the index
    of the first Received field among them (0 if there is none)."""
    host = server_name.encode("utf-8", "replace")
    used_return_path = None if for_mda else return_path(header)
    kept: list[bytes] = []
    first_received = -1
    for field in header.fields:
        if field.is_envelope_line:
            continue
        name = field.name
        if name is None and field.raw[:1] not in (b" ", b"\t") and not accept_bad_header:
            raise BadHeaderError(field.raw.split(b"\r\n", 1)[0])
        if name == b"delivered-to" and dropdelivered:
            continue
        if name in _STATUS_FIELDS and (dropstatus or not field.value.strip(b" \t\r\n")):
            continue
        if field is used_return_path:
            continue
        raw = field.raw
        if rewrite and name in REWRITTEN_FIELDS:
            colon = raw.index(b":") + 1
            raw = raw[:colon] + rewrite_addresses(raw[colon:], host)
        # fetchmail's strstr() also finds `>Received:` (kept from an mbox), so this does too;
        # a line without a field name (a continuation, no colon) is not one
        if first_received < 0 and name is not None and name.lstrip(b">") == b"received":
            first_received = len(kept)
        kept.append(raw + b"\r\n")
    return kept, max(first_received, 0)


def _assembled(
    header: RawHeader,
    kept: list[bytes],
    first_received: int,
    received: bytes | None,
    if_headerless: bytes,
    *,
    unmatched: str | None = None,
    refused: Sequence[str] = (),
) -> bytes:
    """The header block from `_kept_fields`' lines: the stand-in for a header with nothing
    left, the Received line, the warnings and the blank line.

    fetchmail's warnings share one X-Fetchmail-Warning field, `; ` between them, in its order:
    nobody here was named (`unmatched`), NULs were removed, the listener refused recipients."""
    if not kept and if_headerless:
        kept.append(if_headerless)
    if received is not None:
        kept.insert(first_received, received)
    warnings = [unmatched] if unmatched else []
    if header.had_nuls:
        warnings.append(NUL_TEXT)
    if refused:
        warnings.append(
            "SMTP listener rejected local recipient addresses: " + ", ".join(refused)
        )
    if warnings:
        kept.append(_clean("X-Fetchmail-Warning: " + "; ".join(warnings)).encode(
            "utf-8", "replace") + b"\r\n")
    kept.append(b"\r\n")
    return b"".join(kept)


# ------------------------------------------------------------------------------------------
# Streaming the body


def read_chunks(body: BinaryIO, chunk_size: int = 65536) -> Iterator[bytes]:
    """The rest of `body`, `chunk_size` octets at a time."""
    while chunk := body.read(chunk_size):
        yield chunk


def _strip_cr(chunks: Iterable[bytes]) -> Iterator[bytes]:
    held = b""  # a CR at the end of a chunk: only the next chunk says whether an LF follows
    for chunk in chunks:
        if not chunk:
            continue
        data = held + chunk
        held = b""
        if data.endswith(b"\r"):
            held, data = b"\r", data[:-1]
        if data:
            yield data.replace(b"\r\n", b"\n")
    if held:
        yield held


def _force_cr(chunks: Iterable[bytes]) -> Iterator[bytes]:
    after_cr = False
    for chunk in chunks:
        if not chunk:
            continue
        if after_cr and chunk[0] == LF:
            out = b"\n" + chunk[1:].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        else:
            out = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        after_cr = chunk[-1] == CR
        yield out


def convert_line_ends(
    chunks: Iterable[bytes], *, stripcr: bool = False, forcecr: bool = False
) -> Iterator[bytes]:
    """Line-end conversion over a stream of chunks, the same whatever the chunk boundaries.

    `stripcr` turns CRLF into LF (for MDAs; lone CRs stay, where fetchmail drops every CR);
    `forcecr` turns a bare LF into CRLF. With both, `stripcr` wins, as in fetchmail. Output
    chunks are at most twice the size of input chunks (plus one byte held back).
    """
    if stripcr:
        return _strip_cr(chunks)
    if forcecr:
        return _force_cr(chunks)
    return (chunk for chunk in chunks if chunk)


# A line end in mail that may break RFC 5322: an LF, or a run of CRs with or without an LF after
# it (a run of CRs before an LF counts once, as `read_header` counts it in the header).
_ANY_LINE_END = re.compile(rb"\r+\n?|\n")


def smtp_data_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """SMTP DATA bytes (RFC 5321 4.5.2) from a message's bytes: every line end made CRLF, a `.`
    that starts a line doubled, and the data ended with CRLF; the caller sends the final
    `.` CRLF. Feed it the header too, `smtp_data_chunks(chain([message.header], body))`: with
    `bad-header accept` a header line may start with a dot. The same whatever the chunk
    boundaries; nothing in, nothing out.

    A line end is an LF, or a run of CRs with or without an LF after it (see
    `_ANY_LINE_END`). Servers that break the RFC send bare LFs, and the odd message has bare
    CRs: every listener reads CRLF lines alike, whereas a bare LF or CR is a line end to some
    and not to others. So, after this, the lines the listener sees are the lines the dots were
    stuffed by: no line gains a dot, and no `.` after a bare CR or LF can end the data early
    (SMTP smuggling). A message of bare-LF lines is so delivered in lines, rather than refused
    as one line megabytes long.

    Chunks that are CRLF lines already (all that a well-behaved server sends) are checked by
    counting, not rewritten.
    """
    stuffer = DataStuffer()
    return through(chunks, stuffer.feed, stuffer.end)


class DataStuffer:
    """`smtp_data_chunks` a chunk at a time, for a sink that also has chunks known to be SMTP
    DATA as they stand (`pass_plain`): a large message's text, as the POP3 driver marked it
    in its spool (fetcher/spool.py), goes out without being searched a second time."""

    def __init__(self) -> None:
        self._swallow = False  # the last chunk ended in a CR: further CRs and one LF are its end
        self._line_start = True
        self._any_out = False

    def feed(self, chunk: bytes) -> bytes:
        """The chunk as DATA octets (b"" when all of it belongs to the last line end)."""
        if self._swallow and chunk:
            rest = chunk.lstrip(b"\r")
            if not rest:
                return b""  # still the same run of CRs
            self._swallow = False
            chunk = rest[1:] if rest[0] == LF else rest
        if not chunk:
            return b""
        crlf = chunk.count(b"\r\n")
        if chunk.count(b"\r") == crlf:
            if chunk.count(b"\n") != crlf:  # bare LFs, and every CR is part of a CRLF
                chunk = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        else:  # lone CRs, or runs of them: rare enough for a regular expression
            self._swallow = chunk[-1] == CR
            chunk = _ANY_LINE_END.sub(b"\r\n", chunk)
        out = chunk.replace(b"\n.", b"\n..")
        if self._line_start and out[0] == 0x2E:
            out = b"." + out
        self._line_start = out[-1] == LF
        self._any_out = True
        return out

    def pass_plain(self, chunk: bytes) -> bytes:
        """A chunk that is DATA already: whole CRLF lines (it ends with an LF), no other CR or
        LF, no line starting with a dot. It goes out as it is, unless what came before leaves
        it short of that (then it is fed like any other: the caller's word is not trusted
        where it would matter)."""
        if self._swallow or not self._line_start or not chunk.endswith(b"\n") or (
            chunk[0] == 0x2E
        ):
            return self.feed(chunk)
        self._any_out = True
        return chunk

    def end(self) -> bytes:
        """What the data needs before the caller's final `.` CRLF: a CRLF if the last line
        has none."""
        return b"\r\n" if self._any_out and not self._line_start else b""


# ------------------------------------------------------------------------------------------
# MDA command line

_EXPANSIONS = "sTF"


def check_mda_template(template: str) -> None:
    """Refuse an `mda` string whose %T, %s or %F the shell would not see as a word of its own.

    fetchmail 6.4 refuses `'%T'`: the value's own single quotes would then unquote it. The
    same holds inside double quotes or backquotes (where `$(...)` in a sender would run), after
    a backslash (which eats the opening quote) and after `$` (bash's `$'...'` reads backslash
    escapes), so those are refused too. Raises ConfigError.
    """
    state = ""  # "" outside quotes, or the quote character we are inside
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        expansion = c == "%" and i + 1 < n and template[i + 1] in _EXPANSIONS
        if state == "'":
            if c == "'":
                state = ""
            elif expansion:
                _refuse("single-quoted", template[i + 1])
        elif c == "\\":
            if i + 2 < n and template[i + 1] == "%" and template[i + 2] in _EXPANSIONS:
                _refuse("backslash-escaped", template[i + 2])
            i += 2
            continue
        elif state:
            if c == state:
                state = ""
            elif expansion:
                _refuse("double-quoted" if state == '"' else "backquoted", template[i + 1])
        elif c in "'\"`":
            state = c
        elif expansion and i > 0 and template[i - 1] == "$":
            _refuse("$-prefixed", template[i + 1])
        i += 1


def _refuse(how: str, letter: str) -> None:
    raise ConfigError(
        f"MDA option contains {how} %{letter} expansion. "
        "Refusing to deliver. Check the manual and fix your mda option."
    )


def _shell_word(value: str) -> str:
    # inside single quotes only a quote is special; NUL cannot be passed to exec at all
    return "'" + value.replace("'", "_").replace("\0", "_") + "'"


def mda_command(template: str, recipients: Sequence[str], sender: str) -> str:
    """The command line for `/bin/sh -c`, with fetchmail's substitutions.

    `%T` (and the old `%s`) becomes the local names, `%F` the envelope sender (`<>` for the
    null sender, as fetchmail passes the Return-Path). Each value is wrapped in single quotes
    after any `'` (and NUL) in it is replaced by `_`, so it is one shell word whatever it
    holds. Several recipients become several words, each quoted (fetchmail puts them all in
    one pair of quotes, which an MDA taking several arguments cannot use). Any other `%` is
    kept. Raises ConfigError for a template `check_mda_template` refuses.
    """
    check_mda_template(template)
    names = " ".join(_shell_word(name) for name in recipients)
    sender_word = _shell_word(sender or "<>")
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        if template[i] == "%" and i + 1 < n and template[i + 1] in _EXPANSIONS:
            out.append(sender_word if template[i + 1] == "F" else names)
            i += 2
        else:
            out.append(template[i])
            i += 1
    return "".join(out)


# ------------------------------------------------------------------------------------------
# All together, for the session


def _delivery_names(user: UserOptions, globals_: GlobalOptions) -> list[str]:
    """The local name of a single-drop account's messages: its first one, as fetchmail."""
    names: list[LocalName] = user.localnames
    if not names:
        return [globals_.postmaster or user.remote]
    return [names[0][0]]


def _multidrop_names(
    header: RawHeader,
    server: ServerOptions,
    user: UserOptions,
    globals_: GlobalOptions,
    resolve: Resolve | None,
    note: Callable[[str], None] | None,
) -> tuple[list[str], str | None] | Delivery:
    """The local recipients of a multidrop message as `fetcher.recipients` finds them in its
    header, and the warning for a message nobody here was named in (it goes to the
    postmaster). A failed DNS look-up keeps the message for the next poll, as in fetchmail;
    no postmaster (`set postmaster ""`) refuses it."""
    found = route(header, Routing.of(server, user), resolve if server.dns else None)
    if note is not None:
        for line in found.notes:
            note(line)
    if found.dns_errors:
        if note is not None:
            note(DNS_SUPPRESSED)
        name, why = found.dns_errors[0]
        return Delivery(
            Outcome.TEMPFAIL,
            reply=f"nameserver failure while looking for '{name}' during poll of "
            f"{server.pollname}: {why}",
        )
    if found.recipients:
        return list(found.recipients), None
    postmaster = globals_.postmaster
    if not postmaster:
        return Delivery(Outcome.PERMFAIL, reply=NO_POSTMASTER)
    if note is not None:
        note(f"no local matches, forwarding to {postmaster}")
    return [postmaster], found.warning


def _once(addresses: list[str]) -> list[str]:
    """The addresses in order, each once (case folded, as MTAs compare them)."""
    seen: set[str] = set()
    kept: list[str] = []
    for address in addresses:
        if address.casefold() not in seen:
            seen.add(address.casefold())
            kept.append(address)
    return kept


def prepare(
    spool: BinaryIO,
    *,
    server: ServerOptions,
    user: UserOptions,
    globals_: GlobalOptions,
    protocol: str,
    peer_address: str | None,
    for_mda: bool,
    folder: str | None = None,
    local_host: str | None = None,
    now: datetime | None = None,
    size: int = 0,
    resolve: Resolve | None = None,
    note: Callable[[str], None] | None = None,
    refused: Sequence[str] = (),
) -> tuple[Envelope, Message] | Delivery:
    """Read the header from `spool` (positioned at the message start) and build what the sink
    needs. The returned Message's body is `spool` itself, at the first body byte, with the
    `mimedecode` decoder as its filter when there is something to decode.

    `size` is the message's size as the server listed it, which fetchmail declares in SIZE=
    (0: none is declared).

    A message refused for a bad header comes back as a PERMFAIL Delivery with fetchmail's
    wording, so the session handles it like any other refusal; so does a multidrop message
    with no local recipient and no postmaster, and one whose routing needed a DNS look-up that
    failed comes back as TEMPFAIL (`resolve` does the look-ups, `note` hears the routing's
    -vv lines).

    Envelope recipients are RCPT TO addresses for SMTP, LMTP and BSMTP (for SMTP computed
    with the first smtphost; fetchmail uses the one that answered) and the bare local names
    for an MDA (`%T`). A single-drop account's message goes to its first local name; a
    multidrop account's to the recipients its header names (`fetcher.recipients`), or to the
    postmaster. `refused`, for a multidrop message whose every recipient the listener refused
    for good: the postmaster gets it instead, `for <postmaster> (by default)`, with the refused
    addresses in an X-Fetchmail-Warning (fetchmail's open_smtp_sink()). The server's name is
    its `via` or poll name (fetchmail's DNS canonical name is not looked up); the local host
    name is `socket.gethostname()` unless given. Only the header is read from `spool`: the
    text may still be arriving (streamed).
    """
    header = read_header(spool)
    accept_bad_header = server.badheader
    if user.mimedecode:
        # fetchmail finds a bad header line as it reads it, before it decodes the header
        bad = None if accept_bad_header else _bad_header_line(header)
        if bad is not None:
            return Delivery(Outcome.PERMFAIL, reply=str(BadHeaderError(bad)))
        header, accept_bad_header = decode_header(header), True

    server_name = server.queryname
    host = local_host or socket.gethostname()
    try:
        kept, first_received = _kept_fields(
            header,
            for_mda=for_mda,
            server_name=server_name,
            rewrite=user.rewrite,
            dropstatus=user.dropstatus,
            dropdelivered=user.dropdelivered,
            accept_bad_header=accept_bad_header,
        )
    except BadHeaderError as err:
        return Delivery(Outcome.PERMFAIL, reply=str(err))
    # what fetchmail's MimeBodyType() reads (and, with mimedecode, edits) is this header
    mime, kept = analyse(kept, want_decode=user.mimedecode)
    unmatched: str | None = None
    smtpname = user.smtpname
    if refused:
        if not globals_.postmaster:
            return Delivery(Outcome.PERMFAIL, reply=NO_POSTMASTER)
        names = [globals_.postmaster]
        smtpname = None  # fetchmail: rcpt_address(ctl, run.postmaster, 0)
    elif user.multidrop:
        chosen = _multidrop_names(header, server, user, globals_, resolve, note)
        if isinstance(chosen, Delivery):
            return chosen
        names, unmatched = chosen
    else:
        names = _delivery_names(user, globals_)
    if for_mda:
        rcpt = recipient_addresses(names, smtpname=smtpname)
    elif user.bsmtp is not None:
        rcpt = recipient_addresses(names, smtpaddress=user.smtpaddress, smtpname=smtpname)
    else:
        rcpt = recipient_addresses(
            names,
            smtpaddress=user.smtpaddress,
            smtpname=smtpname,
            smtphost=user.smtphunt[0] if user.smtphunt else None,
        )
    # `smtpname` makes every local name one address; that address is given once
    rcpt = _once(rcpt)
    received = None
    if not globals_.invisible:
        received = received_header(
            server_name=server_name,
            server_address=peer_address,
            local_host=host,
            protocol=protocol,
            recipients=rcpt,
            multidrop=user.multidrop,
            trace=TracePoll(server.pollname, user.remote, folder) if server.tracepolls else None,
            now=now,
            by_default=bool(refused),
        )
    # edit_header's work, with the stand-in made only for a message that needs it
    headerless = b"" if kept else headerless_header(
        local_user=names[0], local_host=host, remote_user=user.remote, server_name=server_name
    )
    edited = _assembled(
        header, kept, first_received, received, headerless, unmatched=unmatched, refused=refused
    )
    sender = envelope_sender(
        header, remote_user=user.remote, server_name=server_name, rewrite=user.rewrite
    )
    body = body_type(mime, header=b"".join(kept), pass8bits=user.pass8bits)
    envelope = Envelope(
        sender=sender, recipients=names if for_mda else rcpt, size=max(size, 0), body=body.value
    )
    decoder = None
    if user.mimedecode and mime.needs_decode:
        decoder = functools.partial(decode_body, info=mime)
    return envelope, Message(edited, spool, decoder)
