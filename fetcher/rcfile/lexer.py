"""Turn the bytes of a `.fetchmailrc` into tokens, the way fetchmail 6.4's flex scanner does.

fetchmail's scanner is a flex specification; its quirks are part of the file format that users
rely on, so this module reproduces flex's own rules rather than a tidier grammar:

* longest match wins; on a tie, the rule listed first wins. So `keepx` is a string, `pop3` is a
  protocol, `123` is a number but `123abc` a string, and `"a"b` is one unquoted string;
* three start states: NAME (after `user`, `pass`, `is`, `to`, `=`) makes the next word a string
  whatever it looks like (`password 1234`, `user keep`); AUTH (after `auth`) makes `password`
  an authentication type; states are changed by the scanner alone, never by the parser;
* escapes (`\\n`, `\\x41`, `\\0101`, `\\65`, ...) are decoded in quoted and unquoted strings;
* the fused negations (`nokeep`) give back `no` and scan the rest again;
* `#` starts a comment only where a token starts and only if a newline ends it.

Unlike fetchmail, a quote with no closing quote and a backslash as the last byte of the file
are errors here, reported at the line where they start: fetchmail silently reads them as
unquoted text, which hides a broken password from the user.

The scanner works on bytes, since escapes can produce any byte; strings are decoded as UTF-8
with `surrogateescape`, so no byte is lost.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass

from fetcher.errors import RcSyntaxError


class T(enum.Enum):
    """Token kinds; the names follow fetchmail's grammar tokens."""

    STRING = "STRING"
    NUMBER = "NUMBER"
    EOF = "EOF"
    MAP = "="
    NO = "no"
    PROTO = "PROTO"  # protocol names; value is the canonical name
    AUTHTYPE = "AUTHTYPE"  # authentication types; value is the canonical name
    KPOP = "kpop"
    SDPS = "sdps"
    # every other kind is a keyword whose value is its canonical spelling
    SET = "set"
    LOGFILE = "logfile"
    IDFILE = "idfile"
    PIDFILE = "pidfile"
    DAEMON = "daemon"
    SYSLOG = "syslog"
    INVISIBLE = "invisible"
    SHOWDOTS = "showdots"
    POSTMASTER = "postmaster"
    BOUNCEMAIL = "bouncemail"
    SPAMBOUNCE = "spambounce"
    SOFTBOUNCE = "softbounce"
    WARNINGS = "warnings"
    TRACEPOLLS = "tracepolls"
    DEFAULTS = "defaults"
    POLL = "poll"
    SKIP = "skip"
    VIA = "via"
    AKA = "aka"
    LOCALDOMAINS = "localdomains"
    PROTOCOL = "protocol"
    SERVICE = "service"
    PORT = "port"
    INTERVAL = "interval"
    AUTHENTICATE = "authenticate"
    TIMEOUT = "timeout"
    ENVELOPE = "envelope"
    QVIRTUAL = "qvirtual"
    PRINCIPAL = "principal"
    ESMTPNAME = "esmtpname"
    ESMTPPASSWORD = "esmtppassword"
    BADHEADER = "bad-header"
    ACCEPT = "accept"
    REJECT = "reject"
    USERNAME = "user"
    PASSWORD = "password"
    FOLDER = "folder"
    SMTPHOST = "smtphost"
    FETCHDOMAINS = "fetchdomains"
    SMTPADDRESS = "smtpaddress"
    SMTPNAME = "smtpname"
    SPAMRESPONSE = "antispam"
    MDA = "mda"
    BSMTP = "bsmtp"
    LMTP = "lmtp"
    PRECONNECT = "preconnect"
    POSTCONNECT = "postconnect"
    INTERFACE = "interface"
    MONITOR = "monitor"
    PLUGIN = "plugin"
    PLUGOUT = "plugout"
    BATCHLIMIT = "batchlimit"
    FETCHLIMIT = "fetchlimit"
    FETCHSIZELIMIT = "fetchsizelimit"
    FASTUIDL = "fastuidl"
    EXPUNGE = "expunge"
    PROPERTIES = "properties"
    IS = "is"
    HERE = "here"
    THERE = "there"
    TO = "to"
    KEEP = "keep"
    FLUSH = "flush"
    LIMITFLUSH = "limitflush"
    FETCHALL = "fetchall"
    REWRITE = "rewrite"
    FORCECR = "forcecr"
    STRIPCR = "stripcr"
    PASS8BITS = "pass8bits"
    DROPSTATUS = "dropstatus"
    DROPDELIVERED = "dropdelivered"
    MIMEDECODE = "mimedecode"
    IDLE = "idle"
    DNS = "dns"
    UIDL = "uidl"
    SSL = "ssl"
    SSLKEY = "sslkey"
    SSLCERT = "sslcert"
    SSLPROTO = "sslproto"
    SSLCERTCK = "sslcertck"
    SSLCERTFILE = "sslcertfile"
    SSLCERTPATH = "sslcertpath"
    SSLCOMMONNAME = "sslcommonname"
    SSLFINGERPRINT = "sslfingerprint"
    CHECKALIAS = "checkalias"
    LIMIT = "limit"


@dataclass(frozen=True, slots=True)
class Token:
    kind: T
    value: str | int | None  # decoded string, number, or canonical keyword/protocol/auth name
    text: str  # the source text as fetchmail's errors show it (`yytext`)
    line: int


class _State(enum.Enum):
    INITIAL = 0
    NAME = 1  # the next word is a string, whatever it looks like
    AUTH = 2  # `password` is an authentication type


# Keyword rules in fetchmail's order. Each is (pattern, kind, value, new state); a pattern is
# matched against a whole word here (see `_classify_word`): a rule that matches only a prefix
# of a word always loses to the generic string rule, which matches the whole word.
_KEEP = None  # "leave the state alone"
_AUTH_TYPES: list[tuple[str, str]] = [
    (r"any", "any"),
    (r"gssapi", "gssapi"),
    (r"kerberos(_v)?4", "kerberos_v4"),
    (r"kerberos(_v)?5", "kerberos_v5"),
    (r"kerberos", "kerberos_v4"),
    (r"ssh", "ssh"),
    (r"external", "external"),
    (r"otp|opie", "otp"),
    (r"cram(-md5)?", "cram-md5"),
    (r"msn", "msn"),
    (r"ntlm", "ntlm"),
]
_PROTOCOLS: list[tuple[str, T, str]] = [
    ("auto", T.PROTO, "auto"),
    ("pop2", T.PROTO, "POP2"),
    ("sdps", T.SDPS, "SDPS"),
    ("pop3", T.PROTO, "POP3"),
    ("imap", T.PROTO, "IMAP"),
    ("apop", T.PROTO, "APOP"),
    ("rpop", T.PROTO, "RPOP"),
    ("etrn", T.PROTO, "ETRN"),
    ("odmr", T.PROTO, "ODMR"),
    ("kpop", T.KPOP, "KPOP"),
]
_SIMPLE: dict[str, T] = {
    "set": T.SET,
    "logfile": T.LOGFILE,
    "idfile": T.IDFILE,
    "pidfile": T.PIDFILE,
    "daemon": T.DAEMON,
    "syslog": T.SYSLOG,
    "invisible": T.INVISIBLE,
    "showdots": T.SHOWDOTS,
    "postmaster": T.POSTMASTER,
    "bouncemail": T.BOUNCEMAIL,
    "spambounce": T.SPAMBOUNCE,
    "softbounce": T.SOFTBOUNCE,
    "warnings": T.WARNINGS,
    "tracepolls": T.TRACEPOLLS,
    "defaults": T.DEFAULTS,
    "server": T.POLL,
    "poll": T.POLL,
    "skip": T.SKIP,
    "via": T.VIA,
    "aka": T.AKA,
    "local": T.LOCALDOMAINS,
    "localdomains": T.LOCALDOMAINS,
    "proto": T.PROTOCOL,
    "protocol": T.PROTOCOL,
    "service": T.SERVICE,
    "port": T.PORT,
    "interval": T.INTERVAL,
    "timeout": T.TIMEOUT,
    "envelope": T.ENVELOPE,
    "qvirtual": T.QVIRTUAL,
    "principal": T.PRINCIPAL,
    "esmtpname": T.ESMTPNAME,
    "esmtppassword": T.ESMTPPASSWORD,
    "bad-header": T.BADHEADER,
    "accept": T.ACCEPT,
    "reject": T.REJECT,
    "folder": T.FOLDER,
    "folders": T.FOLDER,
    "smtp": T.SMTPHOST,
    "smtphost": T.SMTPHOST,
    "fetchdomains": T.FETCHDOMAINS,
    "smtpaddress": T.SMTPADDRESS,
    "smtpname": T.SMTPNAME,
    "antispam": T.SPAMRESPONSE,
    "mda": T.MDA,
    "bsmtp": T.BSMTP,
    "lmtp": T.LMTP,
    "pre": T.PRECONNECT,
    "preconnect": T.PRECONNECT,
    "post": T.POSTCONNECT,
    "postconnect": T.POSTCONNECT,
    "interface": T.INTERFACE,
    "monitor": T.MONITOR,
    "plugin": T.PLUGIN,
    "plugout": T.PLUGOUT,
    "batchlimit": T.BATCHLIMIT,
    "fetchlimit": T.FETCHLIMIT,
    "fetchsizelimit": T.FETCHSIZELIMIT,
    "fastuidl": T.FASTUIDL,
    "expunge": T.EXPUNGE,
    "properties": T.PROPERTIES,
    "here": T.HERE,
    "there": T.THERE,
    "no": T.NO,
    "keep": T.KEEP,
    "flush": T.FLUSH,
    "limitflush": T.LIMITFLUSH,
    "fetchall": T.FETCHALL,
    "rewrite": T.REWRITE,
    "forcecr": T.FORCECR,
    "stripcr": T.STRIPCR,
    "pass8": T.PASS8BITS,
    "pass8bits": T.PASS8BITS,
    "dropstatus": T.DROPSTATUS,
    "dropdelivered": T.DROPDELIVERED,
    "mimedec": T.MIMEDECODE,
    "mimedecode": T.MIMEDECODE,
    "idle": T.IDLE,
    "dns": T.DNS,
    "uidl": T.UIDL,
    "ssl": T.SSL,
    "sslkey": T.SSLKEY,
    "sslcert": T.SSLCERT,
    "sslproto": T.SSLPROTO,
    "sslcertck": T.SSLCERTCK,
    "sslcertfile": T.SSLCERTFILE,
    "sslcertpath": T.SSLCERTPATH,
    "sslcommonname": T.SSLCOMMONNAME,
    "sslfingerprint": T.SSLFINGERPRINT,
    "checkalias": T.CHECKALIAS,
    "limit": T.LIMIT,
}
# Keywords that put the scanner into NAME state: the next word is a string.
_TO_NAME: dict[str, T] = {
    "user": T.USERNAME,
    "username": T.USERNAME,
    "is": T.IS,
    "to": T.TO,
}
_PASSWORD_WORDS = ("pass", "password")
_AUTH_WORDS = ("auth", "authenticate", "preauth", "preauthenticate")
# The fused negations fetchmail knows; `nosoftbounce` is not one of them.
_FUSED_NO = re.compile(
    rb"no(?:bouncemail|uidl|checkalias|dns|envelope|keep|flush|limitflush|fetchall|rewrite"
    rb"|forcecr|stripcr|pass8(?:bits)?|dropstatus|dropdelivered|mimedec(?:ode)?|spambounce"
    rb"|idle)"
)
_NOISE = frozenset({"with", "and", "has", "wants", "options"})
_AUTH_RES = [(re.compile(p), v) for p, v in _AUTH_TYPES]

# A word as flex's generic string rule sees it: anything up to white space or `=;:,`.
_WORD = re.compile(rb"[^=;:, \t\r\n]+")
_BLANKS = re.compile(rb"[ \t\r]+")
_NUMBER = re.compile(rb"-?[0-9]+")


def _c_int(text: bytes) -> int:
    """What C's atoi() gives: strtol saturates at the long range, then the cast to int wraps."""
    n = max(-(2**63), min(2**63 - 1, int(text)))
    n &= 0xFFFFFFFF
    return n - 2**32 if n >= 2**31 else n


_HEX = b"0123456789abcdefABCDEF"


def unescape(raw: bytes) -> bytes:
    """Decode fetchmail's escapes, byte for byte as its `escapes()` does.

    `\\xHH` takes at most two hex digits, `\\0oo` at most three octal digits counting the
    leading 0, `\\ddd` at most three decimal digits (so `\\233` is decimal, unlike C); values
    wrap to a byte. `\\n \\t \\b \\r \\\\` are the C ones, any other `\\c` is `c`, backslash-newline
    vanishes and a lone trailing backslash is dropped. A decoded NUL ends the string, as it
    does in C.
    """
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c != 0x5C:  # not a backslash
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:  # a backslash at the very end is ignored
            break
        nxt = raw[i + 1]
        value = 0
        if nxt in b"0123456789xX":
            i += 1
            count = 0
            if nxt in b"xX":
                i += 1
                while i < n and raw[i] in _HEX and count < 2:
                    value = value * 16 + int(chr(raw[i]), 16)
                    i += 1
                    count += 1
            elif nxt == 0x30:  # "0": octal, the 0 counts as one of the three digits
                while i < n and raw[i] in b"01234567" and count < 3:
                    value = value * 8 + raw[i] - 0x30
                    i += 1
                    count += 1
            else:
                while i < n and raw[i] in b"0123456789" and count < 3:
                    value = value * 10 + raw[i] - 0x30
                    i += 1
                    count += 1
        else:
            i += 2
            if nxt == 0x0A:  # backslash-newline joins lines
                continue
            value = {0x6E: 0x0A, 0x74: 0x09, 0x62: 0x08, 0x72: 0x0D}.get(nxt, nxt)
        value &= 0xFF
        if value == 0:  # C string: a NUL ends it
            break
        out.append(value)
    return bytes(out)


def _ends_in_lone_backslash(raw: bytes) -> bool:
    """True if the last backslash is not itself escaped: `foo\\` at the end of the file."""
    stripped = raw.rstrip(b"\\")
    return (len(raw) - len(stripped)) % 2 == 1


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _classify_word(word: str, state: _State) -> tuple[T, str | int | None, _State | None] | None:
    """The keyword, protocol, auth type or number that the whole `word` is, if any.

    Returns (kind, value, new state or None to keep it); None means the generic string rule.
    """
    kind = _SIMPLE.get(word)
    if kind is not None:
        return kind, kind.value, None
    kind = _TO_NAME.get(word)
    if kind is not None:
        return kind, kind.value, _State.NAME
    if word in _AUTH_WORDS:
        return T.AUTHENTICATE, "authenticate", _State.AUTH
    for rx, auth in _AUTH_RES:
        if rx.fullmatch(word):
            return T.AUTHTYPE, auth, _State.INITIAL
    if word == "password" and state is _State.AUTH:
        return T.AUTHTYPE, "password", _State.INITIAL
    if word in _PASSWORD_WORDS and state is not _State.AUTH:
        return T.PASSWORD, "password", _State.NAME
    for name, pkind, canon in _PROTOCOLS:
        if word == name or word == name.upper():
            return pkind, canon, None
    return None


def tokenize(data: bytes, path: str) -> Iterator[Token]:
    """Yield the tokens of an rcfile; the last one is EOF. Raises RcSyntaxError."""
    state = _State.INITIAL
    line = 1
    pos, n = 0, len(data)
    while pos < n:
        ch = data[pos]
        if ch in b" \t\r":
            m = _BLANKS.match(data, pos)
            assert m is not None
            pos = m.end()
            continue
        if ch == 0x0A:
            line += 1
            pos += 1
            continue
        if ch in b";:,":  # punctuation is noise
            pos += 1
            continue
        if ch == 0x3D:  # "="
            yield Token(T.MAP, "=", "=", line)
            state = _State.NAME
            pos += 1
            continue

        word_m = _WORD.match(data, pos)
        assert word_m is not None  # every other byte starts a word
        word_end = word_m.end()

        if ch == 0x23:  # "#": a comment, when a newline ends it
            eol = data.find(b"\n", pos)
            if eol >= 0:
                pos = eol  # the newline itself is counted above
                continue
        if ch == 0x5C and pos + 1 < n and data[pos + 1] == 0x0A:  # backslash-newline
            line += 1
            pos += 2
            continue

        if ch in b"\"'":
            close = data.find(bytes([ch]), pos + 1)
            if close < 0:
                raise RcSyntaxError(path, line, "unterminated quoted string", _decode(data[pos:word_end]))
            quoted_end = close + 1
            # a quoted string loses only to a longer unquoted word such as `"a"b`
            if quoted_end >= word_end:
                raw = data[pos + 1 : close]
                value = _decode(unescape(raw))
                yield Token(T.STRING, value, _decode(data[pos:quoted_end]), line)
                line += raw.count(b"\n")
                state = _State.INITIAL
                pos = quoted_end
                continue

        raw_word = data[pos:word_end]
        text = _decode(raw_word)
        if word_end == n and _ends_in_lone_backslash(raw_word):
            raise RcSyntaxError(path, line, "backslash at end of file", text)

        if state is _State.NAME:
            yield Token(T.STRING, _decode(unescape(raw_word)), text, line)
            state = _State.INITIAL
            pos = word_end
            continue

        fused = _FUSED_NO.fullmatch(raw_word)
        if fused is not None:  # fetchmail's yyless(2): return `no`, then rescan the rest
            yield Token(T.NO, "no", "no", line)
            pos += 2
            continue
        if text in _NOISE:
            pos = word_end
            continue
        classified = _classify_word(text, state)
        if classified is not None:
            kind, value, new_state = classified
            yield Token(kind, value, text, line)
            if new_state is not None:
                state = new_state
            pos = word_end
            continue
        if _NUMBER.fullmatch(raw_word):
            yield Token(T.NUMBER, _c_int(raw_word), text, line)
            pos = word_end
            continue
        yield Token(T.STRING, _decode(unescape(raw_word)), text, line)
        pos = word_end
    yield Token(T.EOF, None, "end of input", line)
