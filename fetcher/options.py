"""The command line: every fetchmail 6.4.37 option, parsed the way fetchmail parses it.

`parse_args` turns argv (without the program name) into a `CommandLine`: what to do (check,
quit, dump, ...) plus three dicts of overrides keyed by the key names of `fetchmail
--configdump`. Each override value is the value fetchmail's own configdump ends up showing
after the merge, so the merge code can assign it as it is. The list keys (smtphunt,
mailboxes, fetchdomains, antispam) are the exception: their values are *appended* to the
rcfile's lists, as fetchmail does.

fetchmail reads its options with glibc's getopt_long, and scripts lean on its quirks
(abbreviated long options, permuted arguments, `-d0`, `-vak`), so this module re-implements
that getopt rather than using argparse, whose abbreviation, error and exit rules differ.

Each option is declared once, as an `OptionSpec` in `OPTIONS`: its names, its argument, its
`--help` line, its description in pyfetch(1) and what it does. The getopt tables, `HELP_TEXT`
and the man page's OPTIONS section (fetcher.manpage) are all made from those specs; only the
order of fetchmail's long-option table, which decides glibc's ambiguity messages, is a list of
its own (`_GETOPT_ORDER`).

Every behaviour noted in a comment below was checked against fetchmail 6.4.37 by comparing
`fetchmail -f rc --configdump` with and without the option.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Literal, TextIO

from fetcher.config import DEFAULT_TIMEOUT  # fetchmail's CLIENT_TIMEOUT: what -t 0 selects
from fetcher.errors import ConfigError
from fetcher.exitcodes import ExitCode
from fetcher.interface import interface_problem

PROG = "pyfetch"


DUMP_FORMATS = ("json", "toml")

# fetchmail exits 0 after printing the usage when getopt itself complains (unknown option,
# missing argument, ambiguous abbreviation), because it treats every getopt error like `-?`.
# That lets a typo in a cron line pass as success, so pyfetch exits 5 ("syntax error in the
# arguments", as the man page defines it) and prints the usage on stderr; `-?` given as well
# still means help: usage on stdout, exit 0.
GETOPT_ERROR_EXIT = ExitCode.SYNTAX

_INT_MIN = -(2**31)
_INT_MAX = 2**31 - 1


@dataclass
class CommandLine:
    """What the command line asked for. Options not given leave no trace in the overrides."""

    # what to do
    verbose: int = 0  # 0, 1 (-v) or 2 (-vv or more); see _Parser for how -s and -v interact
    silent: bool = False  # -s, when no -v came after it
    check: bool = False  # -c
    version: bool = False  # -V
    help: bool = False  # -? or --help (any unique prefix, e.g. --he); -h is NOT accepted
    configdump: bool = False  # --configdump
    dump_format: str = "json"  # pyfetch extra: --format json|toml (for --configdump)
    quit: bool = False  # -q
    quit_is_last: bool = False  # the last -q ended argv: fetchmail exits after killing then
    nodetach: bool = False  # -N
    yydebug: bool = False  # -y
    rcfile: str | None = None  # -f FILE, as given ("-" = stdin); fetchmail prefixes the cwd
    parallel: int | None = None  # pyfetch extra: --parallel N, polls at once (None: default)
    given: set[str] = field(default_factory=set)  # every option seen, by its short/long ident
    servers: list[str] = field(default_factory=list)  # positional server names, in order
    # overrides, keyed by the key names of `fetchmail --configdump`
    global_overrides: dict[str, object] = field(default_factory=dict)
    server_overrides: dict[str, object] = field(default_factory=dict)
    user_overrides: dict[str, object] = field(default_factory=dict)


UsageStream = Literal["stdout", "stderr"]


class UsageError(ConfigError):
    """The command line was refused. `emit` reproduces fetchmail's output for it exactly.

    Three shapes, as in fetchmail:
    - a bad option *value* (number, protocol, auth, bad-header policy) or more than one of
      -S/-m/--bsmtp: diagnostics, then the usage on stderr, exit 5;
    - a getopt complaint (unknown option, missing argument, ambiguous prefix), or any error
      when -? was also given: diagnostics, then the usage on **stdout**, exit **0**;
    - a bad -I spec: only the diagnostic, no usage, exit 5, at once.
    """

    def __init__(
        self,
        message: str,
        *,
        diagnostics: Sequence[str] | None = None,
        usage_stream: UsageStream | None = "stderr",
        exit_code: ExitCode = ExitCode.SYNTAX,
    ) -> None:
        super().__init__(message, exit_code)
        # The stderr lines in final form: some carry the "pyfetch: " prefix and some do
        # not, exactly where fetchmail's do and don't.
        self.diagnostics: tuple[str, ...] = (
            tuple(diagnostics) if diagnostics is not None else (message,)
        )
        self.usage_stream: UsageStream | None = usage_stream

    def emit(self, stdout: TextIO, stderr: TextIO) -> int:
        """Print what fetchmail prints for this error and return the exit status."""
        for line in self.diagnostics:
            stderr.write(line + "\n")
        if self.usage_stream is not None:
            (stdout if self.usage_stream == "stdout" else stderr).write(HELP_TEXT)
        return int(self.exit_code)


# --------------------------------------------------------------------------- what options do

_SILENT, _NORMAL, _VERBOSE, _DEBUG = 0, 1, 2, 3

Scope = Literal["global", "server", "user"]

# What an option does with its argument ("" for an option that takes none). Most options only
# set one override; the small classes below say which, so that OPTIONS reads as data. The few
# with rules of their own are the functions after them.
_Handler = Callable[["_Parser", str], None]


@dataclass(frozen=True)
class _Action:
    """Sets a CommandLine flag: something to do rather than a setting (-c, -V, -q, ...)."""

    field: str

    def __call__(self, parser: _Parser, value: str) -> None:
        setattr(parser.result, self.field, True)


@dataclass(frozen=True)
class _Sets:
    """Sets an override to a fixed value (--keep, --nokeep, --ssl, ...)."""

    scope: Scope
    key: str
    value: object

    def __call__(self, parser: _Parser, value: str) -> None:
        parser.overrides(self.scope)[self.key] = self.value


@dataclass(frozen=True)
class _Text:
    """Sets an override to the argument as given, unchecked (fetchmail checks these later)."""

    scope: Scope
    key: str

    def __call__(self, parser: _Parser, value: str) -> None:
        parser.overrides(self.scope)[self.key] = value


@dataclass(frozen=True)
class _Path:
    """Sets an override to the argument made absolute against the cwd, as fetchmail does."""

    scope: Scope
    key: str

    def __call__(self, parser: _Parser, value: str) -> None:
        parser.overrides(self.scope)[self.key] = parser.path(value)


@dataclass(frozen=True)
class _Count:
    """Sets a numeric override. An explicit 0 overrides a nonzero rcfile value, and so does a
    negative number, which ends up as 0."""

    scope: Scope
    key: str

    def __call__(self, parser: _Parser, value: str) -> None:
        parser.overrides(self.scope)[self.key] = max(_xatoi(value), 0)


@dataclass(frozen=True)
class _Append:
    """Appends the comma-separated argument to a list (-S, -r, --fetchdomains)."""

    scope: Scope
    key: str

    def __call__(self, parser: _Parser, value: str) -> None:
        parser.append(parser.overrides(self.scope), self.key, _strtok(value))


def _help(parser: _Parser, value: str) -> None:
    parser.result.help = True
    parser.help_flag = True


def _silent(parser: _Parser, value: str) -> None:
    parser.outlevel = _SILENT


def _verbose(parser: _Parser, value: str) -> None:
    # Whichever of -s and -v comes last wins; -v after -s restarts at verbose, so
    # `-vv -s -v` is plain verbose. -vvv is no more than -vv.
    parser.outlevel = _DEBUG if parser.outlevel >= _VERBOSE else _VERBOSE


def _rcfile(parser: _Parser, value: str) -> None:
    parser.result.rcfile = value


def _dump_format(parser: _Parser, value: str) -> None:
    fmt = value.lower()
    if fmt not in DUMP_FORMATS:
        raise _BadValue(f"Invalid dump format `{value}' specified.")
    parser.result.dump_format = fmt


def _daemon(parser: _Parser, value: str) -> None:
    number = _xatoi(value)
    # A negative interval means "not given": the rcfile's `set daemon` stands, and
    # `-d 5 -d -1` cancels the -d 5. 0 forces a single foreground run.
    if number >= 0:
        parser.result.global_overrides["poll_interval"] = number
    else:
        parser.result.global_overrides.pop("poll_interval", None)


def _protocol(parser: _Parser, value: str) -> None:
    server = parser.result.server_overrides
    protocol = _PROTOCOLS.get(value.lower())
    if protocol is None:
        raise _BadValue(f"Invalid protocol `{value}' specified.")
    server["protocol"] = protocol
    if value.lower() == "kpop":
        server["service"] = "kpop"
        server["auth"] = "kerberos_v5"
    elif value.lower() == "sdps":
        # Never cleared by a later -p, as in fetchmail.
        server["sdps"] = True


def _auth(parser: _Parser, value: str) -> None:
    server = parser.result.server_overrides
    auth = _AUTH_TYPES.get(value)
    if auth is None and value.lower() == "external":
        auth = "external"
    if auth is None:
        raise _BadValue(f"Invalid authentication `{value}' specified.")
    if auth == "any":
        # "any" is fetchmail's 0, which the merge reads as "not given": it does not override
        # `auth password` from the rcfile, and it cancels an earlier --auth (or the
        # kerberos_v5 of -p kpop) on the same command line.
        server.pop("auth", None)
    else:
        server["auth"] = auth


def _timeout(parser: _Parser, value: str) -> None:
    number = _xatoi(value)
    # "-t 0 means the default": 0 (and -1) force 300 over the rcfile's value. Other negatives
    # end up as 0 in configdump.
    if number in (0, -1):
        parser.result.server_overrides["timeout"] = DEFAULT_TIMEOUT
    else:
        parser.result.server_overrides["timeout"] = max(number, 0)


def _bad_header(parser: _Parser, value: str) -> None:
    policy = value.lower()
    if policy not in ("accept", "reject"):
        raise _BadValue(f"Invalid bad-header policy `{value}' specified.")
    if policy == "accept":
        parser.result.server_overrides["badheader"] = True
    else:
        # "reject" is fetchmail's 0 = "not given", as for --auth any: it cannot undo
        # `bad-header accept` from the rcfile.
        parser.result.server_overrides.pop("badheader", None)


def _interface(parser: _Parser, value: str) -> None:
    _check_interface(value)
    parser.result.server_overrides["interface"] = value


def _parallel(parser: _Parser, value: str) -> None:
    number = _xatoi(value)
    if number < 1:
        raise _BadValue(f"Invalid number of parallel polls `{value}' specified.")
    parser.result.parallel = number


def _antispam(parser: _Parser, value: str) -> None:
    tokens = _strtok(value) or [""]
    parser.append(parser.result.user_overrides, "antispam", [_xatoi(t) for t in tokens])


# --------------------------------------------------------------------------- the options


@dataclass(frozen=True)
class OptionSpec:
    """One command-line option: the one place its names, help line, man page text and effect
    are declared. The getopt tables, `HELP_TEXT` and the man page's OPTIONS are made from it.
    """

    short: str | None  # the letter of -x, or None
    longs: tuple[str, ...]  # its long names; more than one are synonyms (--proto/--protocol)
    arg: str | None  # what its argument is called in the man page; None: it takes none
    handler: _Handler | None  # what it does; None only for a synonym_of
    help: str  # its line in --help, fetchmail's words where fetchmail has the option
    man: str  # its description in pyfetch(1): `code`, *argument*, blank-line paragraphs
    synonym_of: str | None = None  # parsed as this option (--port is -P), though listed apart
    destination: bool = False  # one of -S, -m, --bsmtp: fetchmail takes only one of them
    pyfetch_only: bool = False  # not fetchmail's: matched only when no fetchmail name matches
    help_shows_arg: bool = False  # --help shows the argument (fetchmail does for --bad-header)

    @property
    def ident(self) -> str:
        """getopt's `val`: what synonyms share, and what CommandLine.given records."""
        return self.synonym_of or self.short or self.longs[0]

    @property
    def has_arg(self) -> bool:
        return self.arg is not None

    @property
    def help_flags(self) -> str:
        """The left column of --help: `-p, --proto[col]`, `    --idle`."""
        head = f"-{self.short}, " if self.short else "    "
        names = "--" + _bracketed(self.longs)
        return head + names + (f" {self.arg}" if self.help_shows_arg else "")


def _bracketed(names: tuple[str, ...]) -> str:
    # fetchmail's help writes two synonyms as one: proto[col], user[name], [fetch]all
    if len(names) == 1:
        return names[0]
    short, long = sorted(names, key=len)
    if len(names) == 2 and long.startswith(short):
        return f"{short}[{long[len(short):]}]"
    if len(names) == 2 and long.endswith(short):
        return f"[{long[: -len(short)]}]{short}"
    raise ValueError(f"no help notation for the synonyms {names}")


# In the order of `fetchmail --help`, which --help and the man page follow. Each `man` says
# what pyfetch does, and where pyfetch reads an option but does not act on it, says so.
OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "?", ("help",), None, _help,
        help="display this option help",
        man="""
            Print the option summary on standard output and exit 0, even when the command line
            has errors as well. `-h` is not an option, as in fetchmail.
        """,
    ),
    OptionSpec(
        "V", ("version",), None, _Action("version"),
        help="display version info",
        man="""
            Print pyfetch's version, then for every server that would be polled how its
            configuration is understood once the rcfile, its `defaults` and the command line
            are merged, in fetchmail's words. Nothing is fetched. Useful to check that the
            options are set the way you want them.
        """,
    ),
    OptionSpec(
        "c", ("check",), None, _Action("check"),
        help="check for messages without fetching",
        man="""
            Only say whether mail is waiting, without fetching or deleting any: exit 0 if there
            is some, 1 if not. Turns daemon mode off, and nothing is watched with IDLE. Beside a
            running daemon it is refused (exit 8).
        """,
    ),
    OptionSpec(
        "s", ("silent",), None, _silent,
        help="work silently",
        man="""
            Print nothing but errors. Whichever of `-s` and `-v` comes last on the line wins.
        """,
    ),
    OptionSpec(
        "v", ("verbose",), None, _verbose,
        help="work noisily (diagnostic output)",
        man="""
            Print more: the dialogue with the servers (never a password or anything derived
            from one), polls that found no mail, and a daemon's `sleeping at` and `awakened
            at` lines. Given twice (`-vv`), more detail still. A `-v` after `-s`
            starts again at plain verbose.
        """,
    ),
    OptionSpec(
        "d", ("daemon",), "seconds", _daemon,
        help="run as a daemon once per n seconds",
        man="""
            Run as a daemon: poll every account, then again *seconds* after each poll ended,
            until stopped (rcfile: `set daemon`). It goes into the background once it holds
            the lock; see DAEMON MODE. `-d0` polls once in the foreground whatever the rcfile
            says; a negative number leaves the rcfile's interval as it is and cancels an
            earlier `-d` on the same line.
        """,
    ),
    OptionSpec(
        "N", ("nodetach",), None, _Action("nodetach"),
        help="don't detach daemon process",
        man="""
            Keep a daemon in the foreground, as a systemd unit or a supervisor wants it. As in
            fetchmail, a logfile (`-L`) is then not used.
        """,
    ),
    OptionSpec(
        "q", ("quit",), None, _Action("quit"),
        help="kill daemon process",
        man="""
            Stop the pyfetch or fetchmail that holds the lock: `background pyfetch at PID
            killed.`, exit 0 once it has ended; with nothing running, `no other pyfetch is
            running`, exit 8. Unlike fetchmail, pyfetch never polls after `-q`, wherever it
            stands on the line.
        """,
    ),
    OptionSpec(
        "L", ("logfile",), "file", _Path("global", "logfile"),
        help="specify logfile name",
        man="""
            Append the run's lines to *file* instead of writing them to the terminal, a
            daemon's and a single run's alike (rcfile: `set logfile`). As in fetchmail, *file*
            must exist already: one that does not is ignored with a warning, and so is any
            logfile under `-N`. A relative name is taken from the current directory.
        """,
    ),
    OptionSpec(
        None, ("syslog",), None, _Sets("global", "syslog", True),
        help="use syslog(3) for most messages when running as a daemon",
        man="""
            Send the run's lines to syslog(3), with facility mail, in the foreground too
            (rcfile: `set syslog`). A logfile (`-L`) wins over it.
        """,
    ),
    OptionSpec(
        None, ("nosyslog",), None, _Sets("global", "syslog", False),
        help="turns off use of syslog(3)",
        man="""
            Turn off `set syslog` from the rcfile; see `--syslog`.
        """,
    ),
    OptionSpec(
        None, ("invisible",), None, _Sets("global", "invisible", True),
        help="don't write Received & enable host spoofing",
        man="""
            Add no Received header to the messages, and greet the MTA with the mail server's
            name rather than this machine's (rcfile: `set invisible`).
        """,
    ),
    OptionSpec(
        "f", ("fetchmailrc",), "file", _rcfile,
        help="specify alternate run control file",
        man="""
            Read the configuration from *file* instead of the default one (see CONFIGURATION);
            `-f -` reads it from standard input. A name ending in `.toml` is read as TOML. The
            file must be private: more open than 0710, or owned by someone else, exits 6.
        """,
    ),
    OptionSpec(
        "i", ("idfile",), "file", _Path("global", "idfile"),
        help="specify alternate UIDs file",
        man="""
            Keep the UIDs of the messages delivered in *file* instead of `~/.fetchids` (rcfile:
            `set idfile`). Each delivery is first appended to *file*`.journal` and flushed to
            disk, before the message is deleted on the server.
        """,
    ),
    OptionSpec(
        None, ("pidfile",), "file", _Path("global", "pidfile"),  # not a configdump key
        help="specify alternate PID (lock) file",
        man="""
            Use *file* as the lock instead of fetchmail's default (see DAEMON MODE and FILES;
            rcfile: `set pidfile`). A pyfetch and a fetchmail that use the same file never
            poll at once.
        """,
    ),
    OptionSpec(
        None, ("postmaster",), "name", _Text("global", "postmaster"),
        help="specify recipient of last resort",
        man="""
            Who gets mail that has no local recipient, and the bounces with `--nobounce`
            (rcfile: `set postmaster`). The default is the user running pyfetch, or
            `postmaster` for root.
        """,
    ),
    OptionSpec(
        None, ("nobounce",), None, _Sets("global", "bouncemail", False),
        help="redirect bounces from user to postmaster.",
        man="""
            Send the notice about a message the MTA refused to the postmaster instead of its
            sender (rcfile: `set no bouncemail`).
        """,
    ),
    OptionSpec(
        None, ("nosoftbounce",), None, _Sets("global", "softbounce", False),
        help="delete permanently undeliverable messages.",
        man="""
            Delete on the server a message the MTA refused for good (a 5xx reply), once its
            sender was told (rcfile: `set no softbounce`).
        """,
    ),
    OptionSpec(
        None, ("softbounce",), None, _Sets("global", "softbounce", True),
        help="keep permanently undeliverable messages on server (default).",
        man="""
            Leave a message the MTA refused for good on the server, to be tried again at the
            next poll. The default, as in fetchmail 6.4.
        """,
    ),
    OptionSpec(
        "I", ("interface",), "interface/address[/mask]", _interface,
        help="interface required specification",
        man="""
            fetchmail polls only while *interface* is up with an address in the range. pyfetch
            checks the specification as fetchmail does (a malformed one exits 5 at once) and
            shows it with `-V`, but does not look at the interface before polling.
        """,
    ),
    OptionSpec(
        "M", ("monitor",), "interface", _Text("server", "monitor"),
        help="monitor interface for activity",
        man="""
            fetchmail skips a daemon's poll while *interface* saw no other traffic, so that a
            dial-up link can go down. pyfetch reads it and shows it with `-V` and
            `--configdump`, but does not act on it.
        """,
    ),
    OptionSpec(
        None, ("ssl",), None, _Sets("user", "ssl", True),
        help="enable ssl encrypted session",
        man="""
            Use TLS from the first byte (implicit TLS, on port 995 for POP3 and 993 for IMAP
            unless `-P` says otherwise). Without it, the connection is upgraded with STLS or
            STARTTLS, which is required while certificates are checked (the default, as in
            fetchmail 6.4); `--sslproto ''` turns TLS off.
        """,
    ),
    OptionSpec(
        None, ("sslkey",), "file", _Path("user", "sslkey"),
        help="ssl private key file",
        man="""
            The private key for a client certificate (`--sslcert`), for servers that
            authenticate clients by certificate.
        """,
    ),
    OptionSpec(
        None, ("sslcert",), "file", _Path("user", "sslcert"),
        help="ssl client certificate",
        man="""
            A client certificate to present to the server; see `--sslkey`.
        """,
    ),
    OptionSpec(
        None, ("sslcertck",), None, _Sets("user", "sslcertck", True),
        help="do strict server certificate check (recommended)",
        man="""
            Check the server's certificate: its chain against the trusted certificates and
            its name against the server's. The default, as in fetchmail 6.4. A failed check
            ends the session before any password is sent.
        """,
    ),
    OptionSpec(
        None, ("nosslcertck",), None, _Sets("user", "sslcertck", False),
        help="skip strict server certificate check (insecure)",
        man="""
            Accept a certificate that does not verify: the traffic is still encrypted, but
            anyone on the path can read it. pyfetch prints fetchmail's warning before any
            password goes out. Prefer `--sslfingerprint`.
        """,
    ),
    OptionSpec(
        None, ("sslcertfile",), "file", _Path("user", "sslcertfile"),
        help="path to trusted-CA ssl certificate file",
        man="""
            Trust the CA certificates in *file* (PEM) instead of the system's, unless
            `FETCHMAIL_INCLUDE_DEFAULT_X509_CA_CERTS` is set and not empty.
        """,
    ),
    OptionSpec(
        None, ("sslcertpath",), "directory", _Path("user", "sslcertpath"),
        help="path to trusted-CA ssl certificate directory",
        man="""
            Trust the CA certificates in *directory* (hashed as OpenSSL's `c_rehash` makes
            it) instead of the system's; see `--sslcertfile`.
        """,
    ),
    OptionSpec(
        None, ("sslcommonname",), "name", _Text("user", "sslcommonname"),
        help="expect this CommonName from server (discouraged)",
        man="""
            Expect *name* in the server's certificate instead of the server's host name.
            Better: ask the server's operator for a certificate with the right name.
        """,
    ),
    OptionSpec(
        None, ("sslfingerprint",), "fingerprint", _Text("user", "sslfingerprint"),
        help="fingerprint that must match that of the server's cert.",
        man="""
            The digest the server's certificate must have: MD5 as fetchmail prints it
            (`AA:BB:...`), or SHA-1 or SHA-256, with or without colons. A mismatch always
            refuses. Unlike fetchmail, a match is enough on its own, so a pinned self-signed
            certificate is accepted.
        """,
    ),
    OptionSpec(
        None, ("sslproto",), "version", _Text("user", "sslproto"),
        help="force ssl protocol (see manual)",
        man="""
            The TLS versions to allow, named as in fetchmail 6.4: `auto` (TLS 1 or newer,
            within what the TLS library still allows), `TLS1.2+`, `TLS1.3+`, `TLS1.2`, ...;
            any of them requires TLS. `''` (empty) turns STARTTLS off. SSLv2 and SSLv3 are
            refused.
        """,
    ),
    OptionSpec(
        None, ("plugin",), "command", _Text("server", "plugin"),
        help="specify external command to open connection",
        man="""
            fetchmail's command that makes the connection to the server (through ssh, say).
            pyfetch reads it and shows it with `-V` and `--configdump`, but connects directly.
        """,
    ),
    OptionSpec(
        None, ("plugout",), "command", _Text("server", "plugout"),
        help="specify external command to open smtp connection",
        man="""
            As `--plugin`, for the connection to the MTA; pyfetch does not act on it either.
        """,
    ),
    OptionSpec(
        None, ("bad-header",), "{reject|accept}", _bad_header,
        help="specify policy for handling messages with bad headers",
        help_shows_arg=True,
        man="""
            What to do with a message whose header does not parse: `reject` it (the default:
            it is refused like a delivery the MTA refused) or `accept` it and deliver it as
            it is. `reject` does not undo `bad-header accept` in the rcfile.
        """,
    ),
    OptionSpec(
        "p", ("protocol", "proto"), "proto", _protocol,
        help="specify retrieval protocol (see man page)",
        man="""
            The protocol, in any case: `auto` (the default: IMAP, then POP3), `pop3`, `apop`
            (POP3 with APOP login) or `imap`. `pop2`, `rpop`, `kpop`, `sdps`, `etrn` and
            `odmr` are accepted as fetchmail accepts them, and refused with a message when a
            poll would use them.
        """,
    ),
    OptionSpec(
        "U", ("uidl",), None, _Sets("server", "uidl", True),
        help="force the use of UIDLs (pop3 only)",
        man="""
            POP3: tell new messages from old by their UIDs (UIDL), recorded in the idfile, as
            fetchmail's `uidl` does.
        """,
    ),
    OptionSpec(
        None, ("idle",), None, _Sets("user", "idle", True),
        help="tells the IMAP server to send notice of new messages",
        man="""
            Set `idle` on every account: each IMAP folder is watched with IDLE and its mail is
            fetched as it arrives, until pyfetch is stopped (see IDLE). Unlike fetchmail, on
            any number of folders and accounts. POP3 accounts are polled once.
        """,
    ),
    OptionSpec(
        None, ("port",), "port", None,
        synonym_of="P",
        help="TCP port to connect to (obsolete, use --service)",
        man="""
            The obsolete spelling of `--service`.
        """,
    ),
    OptionSpec(
        # -P, --service and the obsolete --port store the text unchecked; a bad service only
        # fails later ("Cannot resolve service ... to port number.").
        "P", ("service",), "service", _Text("server", "service"),
        help="TCP service to connect to (can be numeric TCP port)",
        man="""
            The port to connect to, as a number or a service name. The default is the
            protocol's: 110 (POP3) or 143 (IMAP), 995 or 993 with `--ssl`. A name that does
            not resolve fails the poll, not the command line.
        """,
    ),
    OptionSpec(
        None, ("auth",), "type", _auth,
        help="authentication type (see manual)",
        man="""
            How to log in: `any` (the default: CRAM-MD5 if the server offers it, else the
            password), `password`, `cram-md5`, `ssh` (no login: the connection is already
            authenticated, as through an ssh tunnel), and pyfetch's `xoauth2` and
            `oauthbearer`, which send an OAuth2 access token (see IMAP AND OAUTH2).
            `kerberos`, `kerberos_v4`, `kerberos_v5`, `gssapi`, `otp`, `opie`, `ntlm`, `msn`
            and `external` are accepted as in fetchmail and refused when a poll would use them.
        """,
    ),
    OptionSpec(
        "t", ("timeout",), "seconds", _timeout,
        help="server nonresponse timeout",
        man="""
            Give up on a server that has not answered for *seconds* (default 300; `-t 0`
            means the default). Every connection has it, TLS handshakes included; a timeout
            costs only its own poll.
        """,
    ),
    OptionSpec(
        # No count form on the command line: "-E '2 X-Foo'" is the header name "2 X-Foo", and
        # the rcfile's envskip stays as it was.
        "E", ("envelope",), "header", _Text("server", "envelope"),
        help="envelope address header",
        man="""
            The header that names a multidrop message's recipient, as the mail server wrote
            it (`Delivered-To`, `X-Original-To`, ...; rcfile: `envelope [N] header`, N of them
            skipped). The default is the server's own `Received` line; without either, the
            recipients are guessed from Resent-To/Cc/Bcc, else To/Cc/Bcc (see MULTIDROP).
        """,
    ),
    OptionSpec(
        "Q", ("qvirtual",), "prefix", _Text("server", "qvirtual"),
        help="prefix to remove from local user id",
        man="""
            A prefix taken off the recipient addresses of a multidrop message before they are
            matched (qmail's virtual domains write `example.org-bob@...`).
        """,
    ),
    OptionSpec(
        None, ("principal",), "principal", _Text("server", "principal"),
        help="mail service principal",
        man="""
            A Kerberos service principal. Accepted, and refused when a poll would use it:
            pyfetch does not do Kerberos.
        """,
    ),
    OptionSpec(
        None, ("tracepolls",), None, _Sets("server", "tracepolls", True),
        help="add poll-tracing information to Received header",
        man="""
            Name the poll entry, the account and the folder in the Received header pyfetch
            adds, so that mail can be filtered by the account it came from.
        """,
    ),
    OptionSpec(
        "u", ("user", "username"), "name", _Text("user", "remote"),
        help="specify users's login on server",
        man="""
            The login name on the server. The default is your login name here.
        """,
    ),
    OptionSpec(
        "a", ("all", "fetchall"), None, _Sets("user", "fetchall", True),
        help="retrieve old and new messages",
        man="""
            Fetch old (seen) messages as well as new ones.
        """,
    ),
    OptionSpec(
        "K", ("nokeep",), None, _Sets("user", "keep", False),
        help="delete new messages after retrieval",
        man="""
            Delete each message on the server once the MTA has accepted it: the default, and
            what overrides `keep` in the rcfile.
        """,
    ),
    OptionSpec(
        "k", ("keep",), None, _Sets("user", "keep", True),
        help="save new messages after retrieval",
        man="""
            Leave the messages on the server. pyfetch remembers which it delivered (in the
            idfile), so a kept message is not fetched again.
        """,
    ),
    OptionSpec(
        "F", ("flush",), None, _Sets("user", "flush", True),
        help="delete old messages from server",
        man="""
            Delete old (seen) messages on the server before fetching new ones. Dangerous, as
            in fetchmail: it deletes mail pyfetch never fetched, such as mail read with
            another client.
        """,
    ),
    OptionSpec(
        None, ("limitflush",), None, _Sets("user", "limitflush", True),
        help="delete oversized messages",
        man="""
            Delete the messages over the `-l` limit on the server instead of leaving them.
        """,
    ),
    OptionSpec(
        "n", ("norewrite",), None, _Sets("user", "rewrite", False),
        help="don't rewrite header addresses",
        man="""
            Leave the addresses in the header as they are. By default, as in fetchmail, an
            address without a domain gets `@` and the server's name, so that replies work.
        """,
    ),
    OptionSpec(
        "l", ("limit",), "bytes", _Count("user", "limit"),
        help="don't fetch messages over given size",
        man="""
            Leave messages over *bytes* on the server, unread, and say so at each poll. 0 (the
            default) means no limit; an explicit 0 overrides the rcfile's limit.
        """,
    ),
    OptionSpec(
        "w", ("warnings",), "seconds", _Count("user", "warnings"),
        help="interval between warning mail notification",
        man="""
            fetchmail's interval between mails warning of oversized messages. pyfetch reads it
            and shows it, but sends no such mail.
        """,
    ),
    OptionSpec(
        "S", ("smtphost",), "hosts", _Append("user", "smtphunt"),
        destination=True,
        help="set SMTP forwarding host",
        man="""
            The MTAs to hand mail to, comma-separated and tried in turn: `host`,
            `host/port`, `[address]/port`, or the absolute path of an LMTP socket; added after
            the rcfile's. The default is `localhost`. Only one of `-S`, `-m` and `--bsmtp` may
            be given.
        """,
    ),
    OptionSpec(
        None, ("fetchdomains",), "domains", _Append("user", "fetchdomains"),
        help="fetch mail for specified domains",
        man="""
            The domains to ask for with ETRN or ODMR, which pyfetch refuses; read and shown.
        """,
    ),
    OptionSpec(
        "D", ("smtpaddress",), "domain", _Text("user", "smtpaddress"),
        help="set SMTP delivery domain to use",
        man="""
            The domain of the addresses pyfetch gives the MTA (RCPT TO). The default is the
            SMTP host's name.
        """,
    ),
    OptionSpec(
        None, ("smtpname",), "user@domain", _Text("user", "smtpname"),
        help="set SMTP full name username@domain",
        man="""
            The whole address pyfetch gives the MTA (RCPT TO), instead of the local name and
            `-D`'s domain.
        """,
    ),
    OptionSpec(
        None, ("passwordeval",), "command", _Text("user", "passwordeval"),
        pyfetch_only=True,
        help="take the password (or OAuth2 token) from a command's output",
        man="""
            pyfetch's own, as `passwordeval` in the rcfile: run *command* with `/bin/sh` and
            take what it prints, without the final line end, as the password or the OAuth2
            token, e.g. `--passwordeval "pass show mail/isp"`. It is run again at every login,
            and what it prints is never logged; a command that fails or prints nothing is an
            authentication failure (exit 3).
        """,
    ),
    OptionSpec(
        None, ("parallel",), "n", _parallel,
        pyfetch_only=True,
        help="poll up to n mailboxes at once (1: one after the other)",
        man="""
            pyfetch's own: poll at most *n* mailboxes at once, and at most *n* against one
            server host. Without it, 4 at once and 4 against one host, so that many accounts
            on one ISP do not run into its connection limit. `--parallel 1` polls them one
            after the other in rcfile order, as fetchmail does.
        """,
    ),
    OptionSpec(
        "Z", ("antispam",), "codes", _antispam,
        help="set antispam response values",
        man="""
            The MTA's reply codes, comma-separated, that mean it refused a message as spam:
            with `--nosoftbounce` such a message is deleted without a bounce. Added after the
            rcfile's.
        """,
    ),
    OptionSpec(
        "b", ("batchlimit",), "count", _Count("user", "batchlimit"),
        help="set batch limit for SMTP connections",
        man="""
            Hand at most *count* messages to the MTA over one connection, then open a new one
            (0: no limit).
        """,
    ),
    OptionSpec(
        "B", ("fetchlimit",), "count", _Count("user", "fetchlimit"),
        help="set fetch limit for server connections",
        man="""
            Fetch at most *count* messages from a server in one poll (0: no limit).
        """,
    ),
    OptionSpec(
        None, ("fetchsizelimit",), "count", _Count("user", "fetchsizelimit"),
        help="set fetch message size limit",
        man="""
            IMAP: ask for the sizes of *count* messages at a time (default 100; 0: all at
            once), so that the first message comes sooner in a large mailbox.
        """,
    ),
    OptionSpec(
        None, ("fastuidl",), "n", _Count("user", "fastuidl"),
        help="do a binary search for UIDLs",
        man="""
            fetchmail's binary search for the first new POP3 UID. pyfetch reads it and shows
            it, but always lists every UID.
        """,
    ),
    OptionSpec(
        "e", ("expunge",), "count", _Count("user", "expunge"),
        help="set max deletions between expunges",
        man="""
            Make deletions final after every *count* deletions (IMAP: EXPUNGE; POP3: end the
            session and log in again), so that a dropped connection costs less; 0 makes them
            final at the end of the session only.
        """,
    ),
    OptionSpec(
        # fetchmail also turns stripcr on by default once an MDA is set.
        "m", ("mda",), "command", _Text("user", "mda"),
        destination=True,
        help="set MDA to use for forwarding",
        man="""
            Hand each message to *command* (a delivery agent, run with `/bin/sh`) instead of an
            MTA: `%T` is replaced by the recipient and `%F` by the sender, each quoted.
            Exit 0 means delivered; anything else leaves the message on the server. Use an
            agent that fails on a full disk; never one that reads the recipients from the
            header, such as `sendmail -t`.
        """,
    ),
    OptionSpec(
        None, ("bsmtp",), "file", _Path("user", "bsmtp"),
        destination=True,
        help="set output BSMTP file",
        man="""
            Append the messages to *file* as batched SMTP instead of delivering them; `-` is
            standard output.
        """,
    ),
    OptionSpec(
        None, ("lmtp",), None, _Sets("user", "lmtp", True),
        help="use LMTP (RFC2033) for delivery",
        man="""
            Speak LMTP to the `-S` hosts, which then need an explicit port or a socket path.
            A message is delivered when every recipient took it.
        """,
    ),
    OptionSpec(
        "r", ("folder",), "folders", _Append("user", "mailboxes"),
        help="specify remote folder name",
        man="""
            IMAP: the folders to poll, comma-separated, in turn; added after the rcfile's.
        """,
    ),
    OptionSpec(
        None, ("showdots",), None, _Sets("global", "showdots", True),
        help="show progress dots even in logfiles",
        man="""
            fetchmail's progress dots. pyfetch reads it and shows it, and prints no dots.
        """,
    ),
    OptionSpec(
        None, ("configdump",), None, _Action("configdump"),
        help="dump the configuration and exit",
        man="""
            Print the configuration as it would be used, the rcfile merged with the command
            line, and exit. It is JSON with the keys and nesting of `fetchmail --configdump`
            (which prints Python), or TOML with `--format toml`.
        """,
    ),
    OptionSpec(
        None, ("format",), "format", _dump_format,
        pyfetch_only=True,
        help="format for --configdump: json (default) or toml",
        man="""
            pyfetch's own: `json` (the default) or `toml`, for `--configdump`. The TOML is a
            configuration pyfetch reads back (see CONFIGURATION).
        """,
    ),
    OptionSpec(
        "y", ("yydebug",), None, _Action("yydebug"),
        help="trace the run control file parser",
        man="""
            Accepted for fetchmail's sake; pyfetch's rcfile parser has no trace to print. A
            syntax error names its file, line and token.
        """,
    ),
)

# fetchmail 6.4.37's long-option table in its order: glibc lists the candidates of an ambiguous
# prefix in table order (verified against 6.4.37's messages for every first letter: `--s`,
# `--n`, `--p`, ...). pyfetch's own come after them; they are matched only when no fetchmail
# name matches, even by prefix, so every abbreviation fetchmail accepts keeps its meaning
# (`--fo` is --folder).
_GETOPT_ORDER: tuple[str, ...] = (
    "help", "version", "check", "silent", "verbose", "daemon", "nodetach", "quit", "logfile",
    "invisible", "showdots", "syslog", "nosyslog", "fetchmailrc", "idfile", "pidfile",
    "postmaster", "nobounce", "nosoftbounce", "softbounce", "protocol", "proto", "uidl", "idle",
    "port", "service", "auth", "timeout", "envelope", "qvirtual", "bad-header", "user",
    "username", "all", "fetchall", "nokeep", "keep", "flush", "limitflush", "norewrite",
    "limit", "warnings", "folder", "smtphost", "fetchdomains", "smtpaddress", "smtpname",
    "antispam", "batchlimit", "fetchlimit", "fetchsizelimit", "fastuidl", "expunge", "mda",
    "bsmtp", "lmtp", "ssl", "sslkey", "sslcert", "sslproto", "sslcertck", "nosslcertck",
    "sslcertfile", "sslcertpath", "sslcommonname", "sslfingerprint", "principal", "interface",
    "monitor", "plugin", "plugout", "configdump", "yydebug", "tracepolls",
    # pyfetch's own
    "format", "passwordeval", "parallel",
)


# --------------------------------------------------------------------------- help text


def _render_help() -> str:
    width = 22
    lines = [f"usage:  {PROG} [options] [server ...]", "  Options are as follows:"]
    for spec in OPTIONS:
        flags = spec.help_flags
        if len(flags) >= width:
            # too wide for the column (--bad-header {reject|accept}): the text goes below
            lines.append(f"  {flags}")
            lines.append(f"  {'':<{width}}{spec.help}")
        else:
            lines.append(f"  {flags:<{width}}{spec.help}".rstrip())
    lines.append(f"  See {PROG}(1) for the full description (man {PROG}).")
    return "\n".join(lines) + "\n"


HELP_TEXT = _render_help()


# --------------------------------------------------------------------------- getopt tables


@dataclass(frozen=True)
class _Option:
    name: str
    # getopt's `val`: synonyms (proto/protocol, port/service, user/username, all/fetchall)
    # share it, so a prefix matching only synonyms is not ambiguous (`--pro` is fine).
    ident: str
    has_arg: bool


def _long_tables() -> tuple[tuple[_Option, ...], tuple[_Option, ...]]:
    by_name = {name: spec for spec in OPTIONS for name in spec.longs}
    if sorted(by_name) != sorted(_GETOPT_ORDER) or len(by_name) != len(_GETOPT_ORDER):
        raise AssertionError("_GETOPT_ORDER must name every long option of OPTIONS once")
    fetchmails: list[_Option] = []
    extras: list[_Option] = []
    for name in _GETOPT_ORDER:
        spec = by_name[name]
        (extras if spec.pyfetch_only else fetchmails).append(
            _Option(name, spec.ident, spec.has_arg)
        )
    return tuple(fetchmails), tuple(extras)


_LONG_OPTIONS, _EXTRA_LONG_OPTIONS = _long_tables()

# -x letters and whether each takes an argument. fetchmail 6.4.37 has no `-A` (older releases
# did): `-A` is an invalid option (checked), and so are -T and -h.
_SHORT_OPTIONS: dict[str, bool] = {
    spec.short: spec.has_arg for spec in OPTIONS if spec.short is not None
}

def _handlers() -> dict[str, OptionSpec]:
    """What each getopt `val` does. A synonym_of is parsed as the option it names."""
    by_ident = {spec.ident: spec for spec in OPTIONS if spec.handler is not None}
    flags = {f.name for f in fields(CommandLine) if f.type == "bool"}
    for spec in OPTIONS:
        target = by_ident.get(spec.ident)
        if target is None or target.has_arg != spec.has_arg:
            raise AssertionError(f"--{spec.longs[0]} needs a handler or a matching synonym_of")
        if isinstance(spec.handler, _Action) and spec.handler.field not in flags:
            raise AssertionError(f"--{spec.longs[0]} sets {spec.handler.field}, not a flag")
    return by_ident


_BY_IDENT = _handlers()


# --------------------------------------------------------------------------- getopt


@dataclass(frozen=True)
class _Event:
    ident: str | None  # None: getopt refused the argument and `diagnostic` says why
    arg: str | None = None
    diagnostic: str | None = None
    at_end: bool = False  # getopt's optind reached argc with this option


def _find_long(name: str, shown: str) -> _Option | str:
    """Resolve a long option name, or return glibc's complaint about it."""
    for option in _LONG_OPTIONS:
        if option.name == name:
            return option
    matches = [option for option in _LONG_OPTIONS if option.name.startswith(name)]
    if not matches:
        for option in _EXTRA_LONG_OPTIONS:
            if option.name.startswith(name):
                return option
        return f"{PROG}: unrecognized option '--{shown}'"
    first = matches[0]
    # glibc tolerates matches that behave like the first one; the rest make it ambiguous.
    ambiguous = [first] + [
        option
        for option in matches[1:]
        if option.ident != first.ident or option.has_arg != first.has_arg
    ]
    if len(ambiguous) > 1:
        names = " ".join(f"'--{option.name}'" for option in ambiguous)
        return f"{PROG}: option '--{shown}' is ambiguous; possibilities: {names}"
    return first


def _getopt(argv: Sequence[str], positionals: list[str], posix: bool) -> Iterator[_Event]:
    """glibc getopt_long in its default permuting mode (POSIXLY_CORRECT: stop at a non-option).

    Non-options go to `positionals` in their original order, wherever they stand.
    """
    count = len(argv)
    index = 0
    while index < count:
        arg = argv[index]
        if arg == "--":
            positionals.extend(argv[index + 1 :])
            return
        if not arg.startswith("-") or arg == "-":
            if posix:
                positionals.extend(argv[index:])
                return
            positionals.append(arg)
            index += 1
            continue
        if arg.startswith("--"):
            index += 1
            body = arg[2:]
            name, has_value, value = body.partition("=")
            found = _find_long(name, body)
            if isinstance(found, str):
                yield _Event(None, diagnostic=found)
                continue
            if found.has_arg:
                if has_value:
                    yield _Event(found.ident, value, at_end=index == count)
                elif index < count:
                    index += 1
                    yield _Event(found.ident, argv[index - 1], at_end=index == count)
                else:
                    yield _Event(
                        None, diagnostic=f"{PROG}: option '--{found.name}' requires an argument"
                    )
            elif has_value:
                yield _Event(
                    None, diagnostic=f"{PROG}: option '--{found.name}' doesn't allow an argument"
                )
            else:
                yield _Event(found.ident, at_end=index == count)
            continue
        # a cluster of short options: -vak, -d0, -l 5
        pos = 1
        while pos < len(arg):
            char = arg[pos]
            pos += 1
            last_in_cluster = pos == len(arg)
            takes_arg = _SHORT_OPTIONS.get(char)
            if takes_arg is None:
                if last_in_cluster:
                    index += 1
                yield _Event(None, diagnostic=f"{PROG}: invalid option -- '{char}'")
                continue
            if not takes_arg:
                if last_in_cluster:
                    index += 1
                yield _Event(char, at_end=index == count)
                continue
            if not last_in_cluster:
                index += 1
                yield _Event(char, arg[pos:], at_end=index == count)
            elif index + 1 < count:
                index += 2
                yield _Event(char, argv[index - 1], at_end=index == count)
            else:
                index += 1
                yield _Event(None, diagnostic=f"{PROG}: option requires an argument -- '{char}'")
            break


# --------------------------------------------------------------------------- value parsing


class _BadValue(Exception):
    """An option value fetchmail refuses (it sets errflag: usage on stderr, exit 5)."""


class _Fatal(Exception):
    """An option value fetchmail refuses by exiting on the spot (exit 5, no usage)."""


# strtol(s, &end, 0) accepting the whole string: C-locale spaces, a sign, then hex, octal or
# decimal. So " 5", "+5", "0x10" (16) and "010" (8) are numbers; "5 ", "08", "0x" are not.
_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def _xatoi(text: str) -> int:
    """fetchmail's xatoi(): a C int, with its two messages (no program-name prefix)."""
    match = _STRTOL.fullmatch(text)
    if match is None:
        raise _BadValue(f"String '{text}' is not a valid number string.")
    sign, digits = match.groups()
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    if sign == "-":
        value = -value
    if value > _INT_MAX:
        raise _BadValue(f"Value of string '{text}' is larger than {_INT_MAX}.")
    if value < _INT_MIN:
        raise _BadValue(f"Value of string '{text}' is smaller than {_INT_MIN}.")
    return value


def _strtok(text: str) -> list[str]:
    # strtok drops empty fields: "a,,b" and ",a," give a and b. When nothing at all is left
    # ("" or ","), fetchmail appends a NULL entry (shown as `["a", ]` in configdump, and a
    # crash for -Z); appending nothing is the sane reading of that.
    return [part for part in text.split(",") if part]


def _prependdir(path: str, directory: str) -> str:
    # fetchmail's prependdir(): no normalisation ("./x" stays "/cwd/./x"), no ~ expansion;
    # "", "-" and absolute paths are left alone.
    if not path or path.startswith("/") or path == "-" or not directory:
        return path
    if directory.endswith("/"):
        return directory + path
    return f"{directory}/{path}"


def _check_interface(spec: str) -> None:
    # fetchmail exits 5 right away, without the usage
    problem = interface_problem(spec)
    if problem is not None:
        raise _Fatal(f"{PROG}: {problem}")


# -p values are compared case-insensitively (strcasecmp). Values are configdump's spellings.
_PROTOCOLS: dict[str, str] = {
    "auto": "auto",
    # Accepted by 6.4.37's parser, but configdump prints "unknown?!?" and a poll fails with
    # "POP2 support is not configured." (status 4, PROTOCOL).
    "pop2": "POP2",
    "pop3": "POP3",
    "apop": "APOP",
    "rpop": "RPOP",
    "kpop": "POP3",  # plus service "kpop" and auth "kerberos_v5"
    "sdps": "POP3",  # plus the sdps flag, which configdump does not show
    "imap": "IMAP",
    "etrn": "ETRN",
    "odmr": "ODMR",
    # imap-k4 and imap-gss, known to older releases, are "Invalid protocol" in 6.4.37.
}

# --auth values are compared case-sensitively ("CRAM-MD5" is refused), except "external",
# which fetchmail compares with strcasecmp. Values are configdump's spellings.
_AUTH_TYPES: dict[str, str] = {
    "password": "password",
    "kerberos": "kerberos_v5",
    "kerberos_v5": "kerberos_v5",
    # Accepted here; 6.4.37 then stops with "KERBEROS v4 support is configured, but not
    # compiled in." (exit 5) once the configuration is checked, as for `auth kerberos_v4`
    # in the rcfile.
    "kerberos_v4": "kerberos_v4",
    "ssh": "ssh",
    "otp": "otp",
    "opie": "otp",
    "ntlm": "ntlm",
    "cram": "cram-md5",
    "cram-md5": "cram-md5",
    "gssapi": "gssapi",
    "any": "any",
    "msn": "msn",
    # pyfetch's own: an OAuth2 bearer token (from password or passwordeval)
    "xoauth2": "xoauth2",
    "oauthbearer": "oauthbearer",
    # configdump leaves the "auth" key out altogether for external.
    "external": "external",
}


# --------------------------------------------------------------------------- the parser


class _Parser:
    def __init__(self, cwd: str) -> None:
        self.result = CommandLine()
        self.cwd = cwd
        self.outlevel = _NORMAL
        self.destinations = 0
        self.diagnostics: list[str] = []
        # fetchmail's helpflag: -? or any getopt complaint. Parsing goes on after it.
        self.help_flag = False
        self.getopt_failed = False

    def path(self, value: str) -> str:
        return _prependdir(value, self.cwd)

    def overrides(self, scope: Scope) -> dict[str, object]:
        result = self.result
        if scope == "global":
            return result.global_overrides
        return result.server_overrides if scope == "server" else result.user_overrides

    def append(self, target: dict[str, object], key: str, values: Sequence[object]) -> None:
        # Every occurrence appends (`-r a,b -r c` gives a, b, c), after the rcfile's entries,
        # duplicates included.
        existing = target.get(key)
        if not isinstance(existing, list):
            existing = target[key] = []
        existing.extend(values)

    def apply(self, ident: str, arg: str | None) -> None:
        spec = _BY_IDENT[ident]
        if spec.destination:
            # fetchmail allows only one of -S, -m and --bsmtp in all (`-S a -S b` too): more
            # prints the bare usage on stderr and exits 5. Use `-S a,b`.
            self.destinations += 1
        self.result.given.add(ident)
        assert spec.handler is not None  # _BY_IDENT holds only options with a handler
        spec.handler(self, arg if arg is not None else "")

    def finish(self) -> None:
        self.result.silent = self.outlevel == _SILENT
        self.result.verbose = max(self.outlevel - _NORMAL, 0)


def _current_directory() -> str:
    try:
        return os.getcwd()
    except OSError:
        # Like fetchmail without a cwd: relative paths stay relative.
        return ""


def parse_args(
    argv: Sequence[str],
    cwd: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> CommandLine:
    """Parse argv (without the program name) as fetchmail 6.4.37 does.

    `cwd` anchors the relative paths fetchmail makes absolute (-L, -i, --pidfile, --bsmtp,
    --sslkey, --sslcert, --sslcertfile, --sslcertpath); it defaults to os.getcwd().
    `environ` (default os.environ) is consulted only for POSIXLY_CORRECT, which makes
    option parsing stop at the first server name, as glibc does.

    Raises UsageError; its `emit` prints what fetchmail prints. When `help` is set on the
    result, the caller prints HELP_TEXT to stdout and exits 0 before anything else.
    """
    env = os.environ if environ is None else environ
    parser = _Parser(cwd if cwd is not None else _current_directory())
    positionals: list[str] = []
    bad_value = False
    try:
        for event in _getopt(argv, positionals, posix="POSIXLY_CORRECT" in env):
            if event.ident is None:
                assert event.diagnostic is not None
                parser.diagnostics.append(event.diagnostic)
                parser.help_flag = True
                parser.getopt_failed = True
                continue
            try:
                parser.apply(event.ident, event.arg)
            except _BadValue as err:
                # fetchmail stops reading options at the first bad value.
                parser.diagnostics.append(str(err))
                bad_value = True
                break
            if event.ident == "q":
                # fetchmail compares optind after -q with argc, so "-q --" and "-qv" are
                # not last, while "server -q" is (getopt moves server names to the end).
                parser.result.quit_is_last = event.at_end
    except _Fatal as err:
        parser.diagnostics.append(str(err))
        raise UsageError(
            str(err).removeprefix(f"{PROG}: "),
            diagnostics=parser.diagnostics,
            usage_stream=None,
        ) from None
    parser.finish()
    result = parser.result
    message = "; ".join(line.removeprefix(f"{PROG}: ") for line in parser.diagnostics)
    if result.help and (parser.getopt_failed or bad_value):
        # -? wins: the usage on stdout and exit 0, even with errors on the line as well
        raise UsageError(
            message or "bad command line",
            diagnostics=parser.diagnostics,
            usage_stream="stdout",
            exit_code=ExitCode.SUCCESS,
        )
    if parser.getopt_failed:
        raise UsageError(
            message or "bad command line",
            diagnostics=parser.diagnostics,
            usage_stream="stderr",
            exit_code=GETOPT_ERROR_EXIT,
        )
    if result.help:
        return result
    if bad_value:
        raise UsageError(message, diagnostics=parser.diagnostics)
    if parser.destinations > 1:
        # fetchmail says nothing but the usage here.
        raise UsageError(
            "only one of --smtphost, --mda and --bsmtp may be given",
            diagnostics=(),
        )
    result.servers = positionals
    return result
