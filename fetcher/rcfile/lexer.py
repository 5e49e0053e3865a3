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
from typing import NamedTuple

from fetcher.errors import RcSyntaxError


class T(enum.IntEnum):
    """Token kinds; the names follow fetchmail's grammar tokens.

    An IntEnum, not an Enum: the parser looks kinds up in sets and dicts on every token, and
    IntEnum hashes in C.
    """

    STRING = enum.auto()
    NUMBER = enum.auto()
    EOF = enum.auto()
    MAP = enum.auto()
    NO = enum.auto()
    PROTO = enum.auto()  # protocol names; value is the canonical name
    AUTHTYPE = enum.auto()  # authentication types; value is the canonical name
    KPOP = enum.auto()
    SDPS = enum.auto()
    # every other kind is a keyword whose value is its canonical spelling
    SET = enum.auto()
    LOGFILE = enum.auto()
    IDFILE = enum.auto()
    PIDFILE = enum.auto()
    DAEMON = enum.auto()
    SYSLOG = enum.auto()
    INVISIBLE = enum.auto()
    SHOWDOTS = enum.auto()
    POSTMASTER = enum.auto()
    BOUNCEMAIL = enum.auto()
    SPAMBOUNCE = enum.auto()
    SOFTBOUNCE = enum.auto()
    WARNINGS = enum.auto()
    TRACEPOLLS = enum.auto()
    DEFAULTS = enum.auto()
    POLL = enum.auto()
    SKIP = enum.auto()
    VIA = enum.auto()
    AKA = enum.auto()
    LOCALDOMAINS = enum.auto()
    PROTOCOL = enum.auto()
    SERVICE = enum.auto()
    PORT = enum.auto()
    INTERVAL = enum.auto()
    AUTHENTICATE = enum.auto()
    TIMEOUT = enum.auto()
    ENVELOPE = enum.auto()
    QVIRTUAL = enum.auto()
    PRINCIPAL = enum.auto()
    ESMTPNAME = enum.auto()
    ESMTPPASSWORD = enum.auto()
    BADHEADER = enum.auto()
    ACCEPT = enum.auto()
    REJECT = enum.auto()
    USERNAME = enum.auto()
    PASSWORD = enum.auto()
    FOLDER = enum.auto()
    SMTPHOST = enum.auto()
    FETCHDOMAINS = enum.auto()
    SMTPADDRESS = enum.auto()
    SMTPNAME = enum.auto()
    SPAMRESPONSE = enum.auto()
    MDA = enum.auto()
    BSMTP = enum.auto()
    LMTP = enum.auto()
    PRECONNECT = enum.auto()
    POSTCONNECT = enum.auto()
    INTERFACE = enum.auto()
    MONITOR = enum.auto()
    PLUGIN = enum.auto()
    PLUGOUT = enum.auto()
    BATCHLIMIT = enum.auto()
    FETCHLIMIT = enum.auto()
    FETCHSIZELIMIT = enum.auto()
    FASTUIDL = enum.auto()
    EXPUNGE = enum.auto()
    PROPERTIES = enum.auto()
    PASSWORDEVAL = enum.auto()  # pyfetch's own: the password from a command's output
    IS = enum.auto()
    HERE = enum.auto()
    THERE = enum.auto()
    TO = enum.auto()
    KEEP = enum.auto()
    FLUSH = enum.auto()
    LIMITFLUSH = enum.auto()
    FETCHALL = enum.auto()
    REWRITE = enum.auto()
    FORCECR = enum.auto()
    STRIPCR = enum.auto()
    PASS8BITS = enum.auto()
    DROPSTATUS = enum.auto()
    DROPDELIVERED = enum.auto()
    MIMEDECODE = enum.auto()
    IDLE = enum.auto()
    DNS = enum.auto()
    UIDL = enum.auto()
    SSL = enum.auto()
    SSLKEY = enum.auto()
    SSLCERT = enum.auto()
    SSLPROTO = enum.auto()
    SSLCERTCK = enum.auto()
    SSLCERTFILE = enum.auto()
    SSLCERTPATH = enum.auto()
    SSLCOMMONNAME = enum.auto()
    SSLFINGERPRINT = enum.auto()
    CHECKALIAS = enum.auto()
    LIMIT = enum.auto()


# The canonical spelling of each keyword kind, as `--configdump` and messages use it.
KEYWORD_NAMES: dict[T, str] = {
    T.STRING: "STRING",
    T.NUMBER: "NUMBER",
    T.EOF: "EOF",
    T.MAP: "=",
    T.NO: "no",
    T.PROTO: "PROTO",
    T.AUTHTYPE: "AUTHTYPE",
    T.KPOP: "kpop",
    T.SDPS: "sdps",
    T.SET: "set",
    T.LOGFILE: "logfile",
    T.IDFILE: "idfile",
    T.PIDFILE: "pidfile",
    T.DAEMON: "daemon",
    T.SYSLOG: "syslog",
    T.INVISIBLE: "invisible",
    T.SHOWDOTS: "showdots",
    T.POSTMASTER: "postmaster",
    T.BOUNCEMAIL: "bouncemail",
    T.SPAMBOUNCE: "spambounce",
    T.SOFTBOUNCE: "softbounce",
    T.WARNINGS: "warnings",
    T.TRACEPOLLS: "tracepolls",
    T.DEFAULTS: "defaults",
    T.POLL: "poll",
    T.SKIP: "skip",
    T.VIA: "via",
    T.AKA: "aka",
    T.LOCALDOMAINS: "localdomains",
    T.PROTOCOL: "protocol",
    T.SERVICE: "service",
    T.PORT: "port",
    T.INTERVAL: "interval",
    T.AUTHENTICATE: "authenticate",
    T.TIMEOUT: "timeout",
    T.ENVELOPE: "envelope",
    T.QVIRTUAL: "qvirtual",
    T.PRINCIPAL: "principal",
    T.ESMTPNAME: "esmtpname",
    T.ESMTPPASSWORD: "esmtppassword",
    T.BADHEADER: "bad-header",
    T.ACCEPT: "accept",
    T.REJECT: "reject",
    T.USERNAME: "user",
    T.PASSWORD: "password",
    T.FOLDER: "folder",
    T.SMTPHOST: "smtphost",
    T.FETCHDOMAINS: "fetchdomains",
    T.SMTPADDRESS: "smtpaddress",
    T.SMTPNAME: "smtpname",
    T.SPAMRESPONSE: "antispam",
    T.MDA: "mda",
    T.BSMTP: "bsmtp",
    T.LMTP: "lmtp",
    T.PRECONNECT: "preconnect",
    T.POSTCONNECT: "postconnect",
    T.INTERFACE: "interface",
    T.MONITOR: "monitor",
    T.PLUGIN: "plugin",
    T.PLUGOUT: "plugout",
    T.BATCHLIMIT: "batchlimit",
    T.FETCHLIMIT: "fetchlimit",
    T.FETCHSIZELIMIT: "fetchsizelimit",
    T.FASTUIDL: "fastuidl",
    T.EXPUNGE: "expunge",
    T.PROPERTIES: "properties",
    T.PASSWORDEVAL: "passwordeval",
    T.IS: "is",
    T.HERE: "here",
    T.THERE: "there",
    T.TO: "to",
    T.KEEP: "keep",
    T.FLUSH: "flush",
    T.LIMITFLUSH: "limitflush",
    T.FETCHALL: "fetchall",
    T.REWRITE: "rewrite",
    T.FORCECR: "forcecr",
    T.STRIPCR: "stripcr",
    T.PASS8BITS: "pass8bits",
    T.DROPSTATUS: "dropstatus",
    T.DROPDELIVERED: "dropdelivered",
    T.MIMEDECODE: "mimedecode",
    T.IDLE: "idle",
    T.DNS: "dns",
    T.UIDL: "uidl",
    T.SSL: "ssl",
    T.SSLKEY: "sslkey",
    T.SSLCERT: "sslcert",
    T.SSLPROTO: "sslproto",
    T.SSLCERTCK: "sslcertck",
    T.SSLCERTFILE: "sslcertfile",
    T.SSLCERTPATH: "sslcertpath",
    T.SSLCOMMONNAME: "sslcommonname",
    T.SSLFINGERPRINT: "sslfingerprint",
    T.CHECKALIAS: "checkalias",
    T.LIMIT: "limit",
}


class Token(NamedTuple):
    kind: T
    value: str | int | None  # decoded string, number, or canonical keyword/protocol/auth name
    text: str  # the source text as fetchmail's errors show it (`yytext`)
    line: int


class _State(enum.Enum):
    INITIAL = 0
    NAME = 1  # the next word is a string, whatever it looks like
    AUTH = 2  # `password` is an authentication type


# The keywords, as whole words. A keyword rule that matches only a prefix of a word always loses
# to the generic string rule, which matches the whole word, so a dictionary lookup of the whole
# word is exactly flex's longest-match choice. Value: (kind, canonical value, new state or None).
# kind (None for a noise word), value, new state, source text
_Rule = tuple["T | None", str, "_State | None", str]
_AUTH_TYPES = {
    "any": "any",
    "gssapi": "gssapi",
    "kerberos4": "kerberos_v4",
    "kerberos_v4": "kerberos_v4",
    "kerberos5": "kerberos_v5",
    "kerberos_v5": "kerberos_v5",
    "kerberos": "kerberos_v4",
    "ssh": "ssh",
    "external": "external",
    "otp": "otp",
    "opie": "otp",
    "cram": "cram-md5",
    "cram-md5": "cram-md5",
    "msn": "msn",
    "ntlm": "ntlm",
    "xoauth2": "xoauth2",
    "oauthbearer": "oauthbearer",
}
_PROTOCOLS: dict[str, tuple[T, str]] = {
    "auto": (T.PROTO, "auto"),
    "pop2": (T.PROTO, "POP2"),
    "sdps": (T.SDPS, "SDPS"),
    "pop3": (T.PROTO, "POP3"),
    "imap": (T.PROTO, "IMAP"),
    "apop": (T.PROTO, "APOP"),
    "rpop": (T.PROTO, "RPOP"),
    "etrn": (T.PROTO, "ETRN"),
    "odmr": (T.PROTO, "ODMR"),
    "kpop": (T.KPOP, "KPOP"),
}
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
    "passwordeval": T.PASSWORDEVAL,
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
_AUTH_WORDS = ("auth", "authenticate", "preauth", "preauthenticate")
# The fused negations fetchmail knows; `nosoftbounce` is not one of them.
_FUSED_NO = frozenset(
    f"no{word}".encode()
    for word in [
        "bouncemail", "uidl", "checkalias", "dns", "envelope", "keep", "flush", "limitflush",
        "fetchall", "rewrite", "forcecr", "stripcr", "pass8", "pass8bits", "dropstatus",
        "dropdelivered", "mimedec", "mimedecode", "spambounce", "idle",
    ]
)
_NOISE = frozenset(w.encode() for w in ("with", "and", "has", "wants", "options"))


def _build_rules() -> tuple[dict[bytes, _Rule], dict[bytes, _Rule]]:
    """Word -> rule, for the INITIAL and the AUTH states (NAME state has no keywords)."""
    rules: dict[bytes, tuple[T | None, str, _State | None]] = {}
    for word, kind in _SIMPLE.items():
        rules[word.encode()] = (kind, KEYWORD_NAMES[kind], None)
    for word, kind in _TO_NAME.items():
        rules[word.encode()] = (kind, KEYWORD_NAMES[kind], _State.NAME)
    for word in _AUTH_WORDS:
        rules[word.encode()] = (T.AUTHENTICATE, "authenticate", _State.AUTH)
    for word, auth in _AUTH_TYPES.items():
        rules[word.encode()] = (T.AUTHTYPE, auth, _State.INITIAL)
    for word, (kind, canon) in _PROTOCOLS.items():  # all-lower or all-upper only
        rules[word.encode()] = rules[word.upper().encode()] = (kind, canon, None)
    auth_rules = dict(rules)
    # `pass`/`password` start a password, except right after `auth`, where `password` is
    # an authentication type and `pass` is just a word.
    for password_word in (b"pass", b"password"):
        rules[password_word] = (T.PASSWORD, "password", _State.NAME)
        auth_rules.pop(password_word, None)
    auth_rules[b"password"] = (T.AUTHTYPE, "password", _State.INITIAL)
    for table in (rules, auth_rules):
        for noise in _NOISE:
            table[noise] = (None, "", None)
        for fused in _FUSED_NO:  # scanned as `no`; the scanner then reads the rest again
            table[fused] = (T.NO, "no", None)
    return _with_text(rules), _with_text(auth_rules)


def _with_text(rules: dict[bytes, tuple[T | None, str, _State | None]]) -> dict[bytes, _Rule]:
    # a fused negation's text is `no`, as fetchmail's yytext is after yyless(2)
    return {
        word: (*rule, "no" if rule[1] == "no" else word.decode()) for word, rule in rules.items()
    }


_RULES, _AUTH_RULES = _build_rules()

# One step of the scanner: blanks, a newline, punctuation, `=`, or a word as flex's generic
# string rule sees it (anything up to white space or `=;:,`).
_SPECIAL_STARTS = frozenset(b"#\\\"'")
_STEP = re.compile(rb"[ \t\r]*(?:(\n)|([;:,])|(=)|([^=;:, \t\r\n]+)|$)")


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


def tokenize(data: bytes, path: str) -> list[Token]:
    """The tokens of an rcfile; the last one is EOF. Raises RcSyntaxError."""
    tokens: list[Token] = []
    emit = tokens.append
    # tuple.__new__ directly: NamedTuple's own constructor adds a Python-level call per token
    new = tuple.__new__
    string, name_state, auth_state = T.STRING, _State.NAME, _State.AUTH
    rules, auth_rules = _RULES, _AUTH_RULES
    state = _State.INITIAL
    line = 1
    pos, n = 0, len(data)
    step = _STEP.match
    while pos < n:
        m = step(data, pos)
        assert m is not None  # the alternatives cover every byte, and the end
        group = m.lastindex
        if group == 4:  # a word: the common case first
            pos, word_end = m.span(4)
        elif group == 1:  # newline
            line += 1
            pos = m.end()
            continue
        elif group == 2:  # punctuation is noise
            pos = m.end()
            continue
        elif group == 3:  # "="
            emit(new(Token, (T.MAP, "=", "=", line)))
            state = name_state
            pos = m.end()
            continue
        else:  # trailing blanks
            break

        raw_word = data[pos:word_end]
        ch = raw_word[0]
        if ch in _SPECIAL_STARTS:
            if ch == 0x23:  # "#": a comment, when a newline ends it
                eol = data.find(b"\n", pos)
                if eol >= 0:
                    pos = eol  # the newline itself is counted above
                    continue
            elif ch == 0x5C:
                if word_end == pos + 1 and data[word_end : word_end + 1] == b"\n":
                    line += 1  # backslash-newline between tokens
                    pos += 2
                    continue
            else:  # a quote
                close = data.find(raw_word[:1], pos + 1)
                if close < 0:
                    raise RcSyntaxError(path, line, "unterminated quoted string", _decode(raw_word))
                # a quoted string loses only to a longer unquoted word such as `"a"b`
                if close + 1 >= word_end:
                    raw = data[pos + 1 : close]
                    text = data[pos : close + 1].decode("utf-8", "surrogateescape")
                    value = text[1:-1] if b"\\" not in raw else _decode(unescape(raw))
                    emit(new(Token, (string, value, text, line)))
                    line += raw.count(b"\n")
                    state = _State.INITIAL
                    pos = close + 1
                    continue

        pos = word_end
        if word_end == n and raw_word[-1] == 0x5C and _ends_in_lone_backslash(raw_word):
            raise RcSyntaxError(path, line, "backslash at end of file", _decode(raw_word))
        if state is not name_state:
            rule = (auth_rules if state is auth_state else rules).get(raw_word)
            if rule is not None:
                kind, value, new_state, text = rule
                if kind is None:  # a noise word
                    continue
                emit(new(Token, (kind, value, text, line)))
                if new_state is not None:
                    state = new_state
                if value == "no" and len(raw_word) > 2:
                    # a fused negation: fetchmail's yyless(2) gives `no`, then rescans the rest
                    pos = word_end - len(raw_word) + 2
                continue
        text = raw_word.decode("utf-8", "surrogateescape")
        if state is name_state:
            state = _State.INITIAL
        else:
            body = raw_word[1:] if raw_word[0] == 0x2D else raw_word  # "-"
            if body.isdigit():
                emit(new(Token, (T.NUMBER, _c_int(raw_word), text, line)))
                continue
        value = text if b"\\" not in raw_word else _decode(unescape(raw_word))
        emit(new(Token, (string, value, text, line)))
    emit(new(Token, (T.EOF, None, "end of input", line)))
    return tokens
