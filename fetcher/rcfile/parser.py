"""Tokens to a parse tree, following fetchmail 6.4's yacc grammar (rcfile_y.y).

The tree keeps only what the file says: a field is present in an `options` dict when the file
set it, absent when it did not. Defaults, the `defaults` entry and the command line are applied
later, in `fetcher.config`, because fetchmail's merge rules depend on exactly that difference.

Grammar, as fetchmail has it::

    rcfile      := { "set" global | entry }
    entry       := ("poll"|"skip"|"server") NAME | "defaults"
                   { server_opt } [ user_opt { user_opt }          # the implicit user
                                  | { "user" userdef { user_opt } } ]
    userdef     := STRING | STRING "there" | mapping { mapping } "here"
    mapping     := STRING [ "=" STRING ]                            # "*" is the wildcard

A server option after a user option is the classic mistake, so it gets its own message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from fetcher.errors import RcSyntaxError
from fetcher.gcpause import paused_gc
from fetcher.interface import interface_problem
from fetcher.rcfile.lexer import KEYWORD_NAMES, T, Token, tokenize

# What a field of the tree can hold. Local names are (name, mapped-to or None) pairs.
LocalName = tuple[str, str | None]
Value = str | int | bool | None | list[str] | list[int] | list[LocalName]
Options = dict[str, Value]

# Fields fetchmail records as lists: a repeated keyword appends.
LIST_FIELDS = frozenset(
    {"aka", "localdomains", "localnames", "mailboxes", "smtphunt", "fetchdomains", "antispam"}
)

# Paths fetchmail makes absolute against the rcfile's directory.
RELATIVE_TO_RCFILE = frozenset(
    {"logfile", "idfile", "pidfile", "bsmtp", "sslkey", "sslcert", "sslcertfile", "sslcertpath"}
)

# Server options, by the token that starts them, and the field each one sets.
_SERVER_STRING: dict[T, str] = {
    T.VIA: "via",
    T.PRINCIPAL: "principal",
    T.ESMTPNAME: "esmtpname",
    T.ESMTPPASSWORD: "esmtppassword",
    T.QVIRTUAL: "qvirtual",
    T.INTERFACE: "interface",
    T.MONITOR: "monitor",
    T.PLUGIN: "plugin",
    T.PLUGOUT: "plugout",
}
_SERVER_NUMBER: dict[T, str] = {T.INTERVAL: "interval", T.TIMEOUT: "timeout"}
_SERVER_LIST: dict[T, str] = {T.AKA: "aka", T.LOCALDOMAINS: "localdomains"}
_SERVER_FLAG: dict[T, str] = {
    kind: KEYWORD_NAMES[kind] for kind in (T.UIDL, T.CHECKALIAS, T.DNS, T.TRACEPOLLS)
}
_SERVER_NO_ONLY: dict[T, str] = {T.ENVELOPE: "envelope"}

# User options.
_USER_STRING: dict[T, str] = {
    T.PASSWORD: "password",
    T.SMTPADDRESS: "smtpaddress",
    T.SMTPNAME: "smtpname",
    T.MDA: "mda",
    T.BSMTP: "bsmtp",
    T.PRECONNECT: "preconnect",
    T.POSTCONNECT: "postconnect",
    T.SSLKEY: "sslkey",
    T.SSLCERT: "sslcert",
    T.SSLPROTO: "sslproto",
    T.SSLCERTFILE: "sslcertfile",
    T.SSLCERTPATH: "sslcertpath",
    T.SSLCOMMONNAME: "sslcommonname",
    T.SSLFINGERPRINT: "sslfingerprint",
    T.PROPERTIES: "properties",
    T.PASSWORDEVAL: "passwordeval",
}
_USER_LIST: dict[T, str] = {
    T.FOLDER: "mailboxes",
    T.SMTPHOST: "smtphunt",
    T.FETCHDOMAINS: "fetchdomains",
}
_USER_NUMBER: dict[T, str] = {
    T.LIMIT: "limit",
    T.WARNINGS: "warnings",
    T.FETCHLIMIT: "fetchlimit",
    T.FETCHSIZELIMIT: "fetchsizelimit",
    T.FASTUIDL: "fastuidl",
    T.BATCHLIMIT: "batchlimit",
    T.EXPUNGE: "expunge",
}
# Flags that take `no` as well; each sets the field named like its keyword.
_USER_FLAG: dict[T, str] = {
    kind: KEYWORD_NAMES[kind]
    for kind in (
        T.KEEP, T.FLUSH, T.LIMITFLUSH, T.FETCHALL, T.REWRITE, T.FORCECR, T.STRIPCR,
        T.PASS8BITS, T.DROPSTATUS, T.DROPDELIVERED, T.MIMEDECODE, T.IDLE, T.SSL, T.SSLCERTCK,
    )
}

_GLOBAL_STRING: dict[T, str] = {
    T.LOGFILE: "logfile",
    T.IDFILE: "idfile",
    T.PIDFILE: "pidfile",
    T.POSTMASTER: "postmaster",
    T.PROPERTIES: "properties",
}
_GLOBAL_FLAG: dict[T, str] = {
    kind: KEYWORD_NAMES[kind]
    for kind in (T.BOUNCEMAIL, T.SPAMBOUNCE, T.SOFTBOUNCE, T.SYSLOG, T.INVISIBLE, T.SHOWDOTS)
}

# `proto kpop`: POP3 on the kpop service (port 1109).
KPOP_SERVICE = "kpop"

SERVER_OPTION_STARTS = frozenset(
    {
        *_SERVER_STRING,
        *_SERVER_NUMBER,
        *_SERVER_LIST,
        *_SERVER_FLAG,
        T.PROTOCOL,
        T.SERVICE,
        T.PORT,
        T.AUTHENTICATE,
        T.ENVELOPE,
        T.BADHEADER,
    }
)
_SERVER_NO_TARGETS = frozenset({*_SERVER_FLAG, *_SERVER_NO_ONLY})
_USER_OPTION_STARTS = frozenset(
    {
        *_USER_STRING,
        *_USER_LIST,
        *_USER_NUMBER,
        *_USER_FLAG,
        T.IS,
        T.TO,
        T.SPAMRESPONSE,
        T.LMTP,
    }
)


@dataclass
class UserBlock:
    """One account: fetchmail's query record, minus the server part."""

    line: int
    options: Options = field(default_factory=dict)
    explicit: bool = True  # False for the implicit block that has no `user` keyword


@dataclass
class Entry:
    """A `poll`, `skip` or `defaults` entry."""

    name: str
    line: int
    skip: bool = False
    server: Options = field(default_factory=dict)
    users: list[UserBlock] = field(default_factory=list)

    @property
    def is_defaults(self) -> bool:
        # fetchmail tells the defaults record by its name only, so `poll defaults` is one too.
        return self.name == "defaults"


@dataclass
class RcFile:
    path: str
    globals: Options = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)


class _Parser:
    def __init__(self, tokens: list[Token], path: str) -> None:
        self._tokens = tokens  # always ends with EOF
        self._pos = 0
        self._path = path
        self.tok = tokens[0]  # the current token
        self._last = tokens[0]  # the last token of the latest server option

    # -- token helpers -------------------------------------------------------------------

    def peek(self) -> Token:
        return self._tokens[min(self._pos + 1, len(self._tokens) - 1)]

    def advance(self) -> Token:
        tok = self.tok
        if tok.kind is not T.EOF:
            self._pos += 1
            self.tok = self._tokens[self._pos]
        return tok

    def error(self, message: str = "syntax error", tok: Token | None = None) -> RcSyntaxError:
        tok = tok or self.tok
        return RcSyntaxError(self._path, tok.line, message, tok.text)

    def expect(self, kind: T) -> Token:
        if self.tok.kind is not kind:
            raise self.error()
        return self.advance()

    def string(self) -> str:
        value = self.expect(T.STRING).value
        assert isinstance(value, str)
        return value

    def number(self) -> int:
        value = self.expect(T.NUMBER).value
        assert isinstance(value, int)
        return value

    def strings(self) -> list[str]:
        out = [self.string()]
        while self.tok.kind is T.STRING:
            out.append(self.string())
        return out

    # -- statements ----------------------------------------------------------------------

    def parse(self) -> RcFile:
        rc = RcFile(self._path)
        while self.tok.kind is not T.EOF:
            if self.tok.kind is T.SET:
                self.advance()
                self.set_statement(rc.globals)
            elif self.tok.kind in (T.POLL, T.SKIP, T.DEFAULTS):
                rc.entries.append(self.entry())
            else:
                raise self.error()
        return rc

    def set_statement(self, globals_: Options) -> None:
        kind = self.tok.kind
        if kind in _GLOBAL_STRING:
            self.advance()
            if self.tok.kind is T.MAP:
                self.advance()
            globals_[_GLOBAL_STRING[kind]] = self.string()
        elif kind is T.DAEMON:
            self.advance()
            if self.tok.kind is T.MAP:
                self.advance()
            globals_["poll_interval"] = self.number()
        elif kind in _GLOBAL_FLAG:
            self.advance()
            globals_[_GLOBAL_FLAG[kind]] = True
        elif kind is T.NO:
            self.advance()
            if self.tok.kind not in _GLOBAL_FLAG:
                raise self.error()
            globals_[_GLOBAL_FLAG[self.advance().kind]] = False
        else:
            raise self.error()

    def entry(self) -> Entry:
        start = self.advance()
        if start.kind is T.DEFAULTS:
            entry = Entry("defaults", start.line)
        else:
            name_line = self.tok.line
            entry = Entry(self.string(), name_line, skip=start.kind is T.SKIP)
        while self.server_option(entry.server):
            pass
        if self.tok.kind is T.USERNAME:
            while self.tok.kind is T.USERNAME:
                block = UserBlock(self.tok.line)
                self.advance()
                self.userdef(block.options)
                while self.user_option(block.options):
                    pass
                entry.users.append(block)
        elif self.starts_user_option():
            block = UserBlock(self.tok.line, explicit=False)
            while self.user_option(block.options):
                pass
            entry.users.append(block)
        else:
            # fetchmail records an entry with no user options as one account
            entry.users.append(UserBlock(start.line, explicit=False))
            return entry
        if self.starts_server_option():
            # the option is read whole first: fetchmail names its last token (or, for a
            # list, the token after it) in this message
            self.server_option({})
            raise RcSyntaxError(
                self._path, self._last.line, "server option after user options", self._last.text
            )
        return entry

    # -- server options ------------------------------------------------------------------

    def starts_server_option(self) -> bool:
        if self.tok.kind is T.NO:
            return self.peek_after_no() in _SERVER_NO_TARGETS
        return self.tok.kind in SERVER_OPTION_STARTS

    def starts_user_option(self) -> bool:
        # fetchmail's parser takes any `no` here as the start of a user option (yacc prefers
        # the shift), so `no <anything else>` is a syntax error at the word after `no`
        return self.tok.kind is T.NO or self.tok.kind in _USER_OPTION_STARTS

    def peek_after_no(self) -> T:
        # `no` is always followed by the word it negates
        return self.peek().kind

    def server_option(self, server: Options) -> bool:
        """Parse one server option into `server`; False if the next token starts none."""
        if not self.starts_server_option():
            return False
        kind = self.tok.kind
        last = self.tok
        if kind is T.NO:
            self.advance()
            target = self.advance()
            last = target
            if target.kind in _SERVER_FLAG:
                server[_SERVER_FLAG[target.kind]] = False
            else:  # `no envelope`
                server["envelope"] = None
                server["envskip"] = 0
        elif kind in _SERVER_FLAG:
            self.advance()
            server[_SERVER_FLAG[kind]] = True
        elif kind in _SERVER_STRING:
            self.advance()
            last = self.tok
            value = self.string()
            if kind is T.INTERFACE:  # fetchmail checks the spec as it reads it
                problem = interface_problem(value)
                if problem is not None:
                    raise self.error(problem, last)
            server[_SERVER_STRING[kind]] = value
        elif kind in _SERVER_NUMBER:
            self.advance()
            last = self.tok
            server[_SERVER_NUMBER[kind]] = self.number()
        elif kind in _SERVER_LIST:
            self.advance()
            values = self.strings()
            last = self.tok  # a list ends only when the parser sees the token after it
            _extend(server, _SERVER_LIST[kind], values)
        elif kind is T.PROTOCOL:
            self.advance()
            last = self.tok
            self.protocol(server)
        elif kind in (T.SERVICE, T.PORT):
            self.advance()
            last = self.tok
            if self.tok.kind is T.NUMBER or kind is T.PORT:
                server["service"] = str(self.number())
            else:
                server["service"] = self.string()
        elif kind is T.AUTHENTICATE:
            self.advance()
            last = self.tok
            auth = self.expect(T.AUTHTYPE).value
            server["auth"] = auth
        elif kind is T.ENVELOPE:
            self.advance()
            skip = 0
            if self.tok.kind is T.NUMBER:
                skip = self.number()
            last = self.tok
            server["envelope"] = self.string()
            server["envskip"] = skip
        elif kind is T.BADHEADER:
            self.advance()
            last = self.tok
            if self.tok.kind is T.ACCEPT:
                server["badheader"] = True
            elif self.tok.kind is T.REJECT:
                server["badheader"] = False
            else:
                raise self.error()
            self.advance()
        else:  # pragma: no cover - starts_server_option() lists exactly the kinds above
            raise self.error()
        self._last = last
        return True

    def protocol(self, server: Options) -> None:
        tok = self.tok
        if tok.kind is T.PROTO:
            server["protocol"] = tok.value
        elif tok.kind is T.KPOP:
            # POP3 on the kpop service; Kerberos V replaces only an `auth password` written
            # before it (fetchmail 6.4 built with Kerberos V, as Debian's is)
            server["protocol"] = "POP3"
            server["service"] = KPOP_SERVICE
            if server.get("auth") == "password":
                server["auth"] = "kerberos_v5"
        elif tok.kind is T.SDPS:
            server["protocol"] = "POP3"
            server["sdps"] = True
        else:
            raise self.error()
        self.advance()

    # -- user options --------------------------------------------------------------------

    def userdef(self, user: Options) -> None:
        first = self.string()
        if self.tok.kind is T.THERE:
            self.advance()
            user["remote"] = first
        elif self.tok.kind in (T.HERE, T.MAP, T.STRING):
            self.mapping_list(user, first)
            self.expect(T.HERE)
        else:
            user["remote"] = first

    def mapping_list(self, user: Options, first: str) -> None:
        self.mapping(user, first)
        while self.tok.kind is T.STRING:
            self.mapping(user, self.string())

    def mapping(self, user: Options, name: str) -> None:
        if self.tok.kind is T.MAP:
            self.advance()
            _extend(user, "localnames", [(name, self.string())])
        elif name == "*":
            user["wildcard"] = True
        else:
            _extend(user, "localnames", [(name, None)])

    def user_option(self, user: Options) -> bool:
        """Parse one user option into `user`; False if the next token starts none."""
        if not self.starts_user_option():
            return False
        kind = self.advance().kind
        if kind is T.NO:
            if self.tok.kind not in _USER_FLAG:
                raise self.error()
            user[_USER_FLAG[self.advance().kind]] = False
        elif kind in _USER_FLAG:
            user[_USER_FLAG[kind]] = True
        elif kind in (T.IS, T.TO):
            first = self.string()
            if kind is T.IS and self.tok.kind is T.THERE:
                self.advance()
                user["remote"] = first
                return True
            self.mapping_list(user, first)
            if self.tok.kind is T.HERE:
                self.advance()
        elif kind in _USER_STRING:
            user[_USER_STRING[kind]] = self.string()
        elif kind in _USER_LIST:
            _extend(user, _USER_LIST[kind], self.strings())
        elif kind in _USER_NUMBER:
            user[_USER_NUMBER[kind]] = self.number()
        elif kind is T.SPAMRESPONSE:
            codes = [self.number()]
            while self.tok.kind is T.NUMBER:
                codes.append(self.number())
            _extend(user, "antispam", codes)
        elif kind is T.LMTP:
            user["lmtp"] = True
        return True


def _extend(options: Options, key: str, values: Sequence[str | int | LocalName]) -> None:
    current = options.get(key)
    if isinstance(current, list):
        current.extend(values)  # type: ignore[arg-type]
    else:
        options[key] = list(values)  # type: ignore[assignment]


def parse(data: bytes, path: str) -> RcFile:
    """Parse rcfile bytes. Raises RcSyntaxError naming `path`, the line and the token."""
    with paused_gc():
        return _Parser(tokenize(data, path), path).parse()
