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

Every behaviour noted in a comment below was checked against fetchmail 6.4.37 by comparing
`fetchmail -f rc --configdump` with and without the option.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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


# --------------------------------------------------------------------------- help text

_HELP_ROWS: tuple[tuple[str, str], ...] = (
    ("-?, --help", "display this option help"),
    ("-V, --version", "display version info"),
    ("-c, --check", "check for messages without fetching"),
    ("-s, --silent", "work silently"),
    ("-v, --verbose", "work noisily (diagnostic output)"),
    ("-d, --daemon", "run as a daemon once per n seconds"),
    ("-N, --nodetach", "don't detach daemon process"),
    ("-q, --quit", "kill daemon process"),
    ("-L, --logfile", "specify logfile name"),
    ("    --syslog", "use syslog(3) for most messages when running as a daemon"),
    ("    --nosyslog", "turns off use of syslog(3)"),
    ("    --invisible", "don't write Received & enable host spoofing"),
    ("-f, --fetchmailrc", "specify alternate run control file"),
    ("-i, --idfile", "specify alternate UIDs file"),
    ("    --pidfile", "specify alternate PID (lock) file"),
    ("    --postmaster", "specify recipient of last resort"),
    ("    --nobounce", "redirect bounces from user to postmaster."),
    ("    --nosoftbounce", "delete permanently undeliverable messages."),
    ("    --softbounce", "keep permanently undeliverable messages on server (default)."),
    ("-I, --interface", "interface required specification"),
    ("-M, --monitor", "monitor interface for activity"),
    ("    --ssl", "enable ssl encrypted session"),
    ("    --sslkey", "ssl private key file"),
    ("    --sslcert", "ssl client certificate"),
    ("    --sslcertck", "do strict server certificate check (recommended)"),
    ("    --nosslcertck", "skip strict server certificate check (insecure)"),
    ("    --sslcertfile", "path to trusted-CA ssl certificate file"),
    ("    --sslcertpath", "path to trusted-CA ssl certificate directory"),
    ("    --sslcommonname", "expect this CommonName from server (discouraged)"),
    ("    --sslfingerprint", "fingerprint that must match that of the server's cert."),
    ("    --sslproto", "force ssl protocol (see manual)"),
    ("    --plugin", "specify external command to open connection"),
    ("    --plugout", "specify external command to open smtp connection"),
    ("    --bad-header {reject|accept}", ""),
    ("", "specify policy for handling messages with bad headers"),
    ("-p, --proto[col]", "specify retrieval protocol (see man page)"),
    ("-U, --uidl", "force the use of UIDLs (pop3 only)"),
    ("    --idle", "tells the IMAP server to send notice of new messages"),
    ("    --port", "TCP port to connect to (obsolete, use --service)"),
    ("-P, --service", "TCP service to connect to (can be numeric TCP port)"),
    ("    --auth", "authentication type (see manual)"),
    ("-t, --timeout", "server nonresponse timeout"),
    ("-E, --envelope", "envelope address header"),
    ("-Q, --qvirtual", "prefix to remove from local user id"),
    ("    --principal", "mail service principal"),
    ("    --tracepolls", "add poll-tracing information to Received header"),
    ("-u, --user[name]", "specify users's login on server"),
    ("-a, --[fetch]all", "retrieve old and new messages"),
    ("-K, --nokeep", "delete new messages after retrieval"),
    ("-k, --keep", "save new messages after retrieval"),
    ("-F, --flush", "delete old messages from server"),
    ("    --limitflush", "delete oversized messages"),
    ("-n, --norewrite", "don't rewrite header addresses"),
    ("-l, --limit", "don't fetch messages over given size"),
    ("-w, --warnings", "interval between warning mail notification"),
    ("-S, --smtphost", "set SMTP forwarding host"),
    ("    --fetchdomains", "fetch mail for specified domains"),
    ("-D, --smtpaddress", "set SMTP delivery domain to use"),
    ("    --smtpname", "set SMTP full name username@domain"),
    ("    --passwordeval", "take the password (or OAuth2 token) from a command's output"),
    ("    --parallel", "poll up to n mailboxes at once (1: one after the other)"),
    ("-Z, --antispam", "set antispam response values"),
    ("-b, --batchlimit", "set batch limit for SMTP connections"),
    ("-B, --fetchlimit", "set fetch limit for server connections"),
    ("    --fetchsizelimit", "set fetch message size limit"),
    ("    --fastuidl", "do a binary search for UIDLs"),
    ("-e, --expunge", "set max deletions between expunges"),
    ("-m, --mda", "set MDA to use for forwarding"),
    ("    --bsmtp", "set output BSMTP file"),
    ("    --lmtp", "use LMTP (RFC2033) for delivery"),
    ("-r, --folder", "specify remote folder name"),
    ("    --showdots", "show progress dots even in logfiles"),
    ("    --configdump", "dump the configuration and exit"),
    ("    --format", "format for --configdump: json (default) or toml"),
    ("-y, --yydebug", "trace the run control file parser"),
)


def _render_help() -> str:
    width = 22
    lines = [f"usage:  {PROG} [options] [server ...]", "  Options are as follows:"]
    for flags, text in _HELP_ROWS:
        if not text:
            lines.append(f"  {flags}")
        else:
            lines.append(f"  {flags:<{width}}{text}".rstrip())
    return "\n".join(lines) + "\n"


HELP_TEXT = _render_help()


# --------------------------------------------------------------------------- option table


@dataclass(frozen=True)
class _Option:
    name: str
    # getopt's `val`: synonyms (proto/protocol, port/service, user/username, all/fetchall)
    # share it, so a prefix matching only synonyms is not ambiguous (`--pro` is fine).
    ident: str
    has_arg: bool


def _opt(name: str, ident: str, has_arg: bool = False) -> _Option:
    return _Option(name, ident, has_arg)


# In fetchmail's order: glibc lists the candidates of an ambiguous prefix in table order.
# Verified against 6.4.37's messages for every first letter (`--s`, `--n`, `--p`, ...).
_LONG_OPTIONS: tuple[_Option, ...] = (
    _opt("help", "?"),
    _opt("version", "V"),
    _opt("check", "c"),
    _opt("silent", "s"),
    _opt("verbose", "v"),
    _opt("daemon", "d", True),
    _opt("nodetach", "N"),
    _opt("quit", "q"),
    _opt("logfile", "L", True),
    _opt("invisible", "invisible"),
    _opt("showdots", "showdots"),
    _opt("syslog", "syslog"),
    _opt("nosyslog", "nosyslog"),
    _opt("fetchmailrc", "f", True),
    _opt("idfile", "i", True),
    _opt("pidfile", "pidfile", True),
    _opt("postmaster", "postmaster", True),
    _opt("nobounce", "nobounce"),
    _opt("nosoftbounce", "nosoftbounce"),
    _opt("softbounce", "softbounce"),
    _opt("protocol", "p", True),
    _opt("proto", "p", True),
    _opt("uidl", "U"),
    _opt("idle", "idle"),
    _opt("port", "P", True),  # obsolete spelling of --service; same meaning in 6.4
    _opt("service", "P", True),
    _opt("auth", "auth", True),
    _opt("timeout", "t", True),
    _opt("envelope", "E", True),
    _opt("qvirtual", "Q", True),
    _opt("bad-header", "bad-header", True),
    _opt("user", "u", True),
    _opt("username", "u", True),
    _opt("all", "a"),
    _opt("fetchall", "a"),
    _opt("nokeep", "K"),
    _opt("keep", "k"),
    _opt("flush", "F"),
    _opt("limitflush", "limitflush"),
    _opt("norewrite", "n"),
    _opt("limit", "l", True),
    _opt("warnings", "w", True),
    _opt("folder", "r", True),
    _opt("smtphost", "S", True),
    _opt("fetchdomains", "fetchdomains", True),
    _opt("smtpaddress", "D", True),
    _opt("smtpname", "smtpname", True),
    _opt("antispam", "Z", True),
    _opt("batchlimit", "b", True),
    _opt("fetchlimit", "B", True),
    _opt("fetchsizelimit", "fetchsizelimit", True),
    _opt("fastuidl", "fastuidl", True),
    _opt("expunge", "e", True),
    _opt("mda", "m", True),
    _opt("bsmtp", "bsmtp", True),
    _opt("lmtp", "lmtp"),
    _opt("ssl", "ssl"),
    _opt("sslkey", "sslkey", True),
    _opt("sslcert", "sslcert", True),
    _opt("sslproto", "sslproto", True),
    _opt("sslcertck", "sslcertck"),
    _opt("nosslcertck", "nosslcertck"),
    _opt("sslcertfile", "sslcertfile", True),
    _opt("sslcertpath", "sslcertpath", True),
    _opt("sslcommonname", "sslcommonname", True),
    _opt("sslfingerprint", "sslfingerprint", True),
    _opt("principal", "principal", True),
    _opt("interface", "I", True),
    _opt("monitor", "M", True),
    _opt("plugin", "plugin", True),
    _opt("plugout", "plugout", True),
    _opt("configdump", "configdump"),
    _opt("yydebug", "y"),
    _opt("tracepolls", "tracepolls"),
)

# pyfetch's own long options. They are matched only when no fetchmail option matches, even
# by prefix, so every abbreviation fetchmail accepts keeps its meaning (`--fo` = --folder).
_EXTRA_LONG_OPTIONS: tuple[_Option, ...] = (
    _opt("format", "format", True),
    _opt("passwordeval", "passwordeval", True),  # the password from a command's output
    _opt("parallel", "parallel", True),  # how many mailboxes are polled at once
)

# fetchmail 6.4.37's short-option string. Unlike older releases it has no `A:`: `-A` is
# reported as an invalid option (checked), and so are -T and -h.
_SHORT_OPTSTRING = "?Vcsvd:NqL:f:i:p:UP:t:E:Q:u:akKFnl:r:S:Z:b:B:e:m:I:M:yw:D:"


def _short_table(optstring: str) -> dict[str, bool]:
    table: dict[str, bool] = {}
    for index, char in enumerate(optstring):
        if char != ":":
            table[char] = optstring[index + 1 : index + 2] == ":"
    return table


_SHORT_OPTIONS = _short_table(_SHORT_OPTSTRING)


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

_SILENT, _NORMAL, _VERBOSE, _DEBUG = 0, 1, 2, 3

# Options naming a delivery target. fetchmail allows only one of these occurrences in all
# (`-S a -S b` too): more prints the bare usage on stderr and exits 5. Use `-S a,b`.
_DESTINATIONS = frozenset({"S", "m", "bsmtp"})


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

    def append(self, target: dict[str, object], key: str, values: Sequence[object]) -> None:
        # Every occurrence appends (`-r a,b -r c` gives a, b, c), after the rcfile's entries,
        # duplicates included.
        existing = target.get(key)
        if not isinstance(existing, list):
            existing = target[key] = []
        existing.extend(values)

    def apply(self, ident: str, arg: str | None) -> None:
        result = self.result
        glob = result.global_overrides
        server = result.server_overrides
        user = result.user_overrides
        value = arg if arg is not None else ""
        if ident in _DESTINATIONS:
            self.destinations += 1
        result.given.add(ident)
        match ident:
            # ---- what to do
            case "?":
                result.help = True
                self.help_flag = True
            case "V":
                result.version = True
            case "c":
                result.check = True
            case "s":
                self.outlevel = _SILENT
            case "v":
                # Whichever of -s and -v comes last wins; -v after -s restarts at verbose,
                # so `-vv -s -v` is plain verbose. -vvv is no more than -vv.
                self.outlevel = _DEBUG if self.outlevel >= _VERBOSE else _VERBOSE
            case "N":
                result.nodetach = True
            case "q":
                result.quit = True
            case "f":
                result.rcfile = value
            case "y":
                result.yydebug = True
            case "configdump":
                result.configdump = True
            case "format":
                fmt = value.lower()
                if fmt not in DUMP_FORMATS:
                    raise _BadValue(f"Invalid dump format `{value}' specified.")
                result.dump_format = fmt
            # ---- global
            case "d":
                number = _xatoi(value)
                # A negative interval means "not given": the rcfile's `set daemon` stands,
                # and `-d 5 -d -1` cancels the -d 5. 0 forces a single foreground run.
                if number >= 0:
                    glob["poll_interval"] = number
                else:
                    glob.pop("poll_interval", None)
            case "L":
                # Made absolute against the cwd. At startup fetchmail then drops a logfile
                # that does not exist (with a warning) or that -N overrides.
                glob["logfile"] = self.path(value)
            case "i":
                glob["idfile"] = self.path(value)
            case "pidfile":
                glob["pidfile"] = self.path(value)  # not a configdump key
            case "postmaster":
                glob["postmaster"] = value
            case "nobounce":
                glob["bouncemail"] = False
            case "softbounce":
                glob["softbounce"] = True
            case "nosoftbounce":
                glob["softbounce"] = False
            case "invisible":
                glob["invisible"] = True
            case "showdots":
                glob["showdots"] = True
            case "syslog":
                glob["syslog"] = True
            case "nosyslog":
                glob["syslog"] = False
            # ---- server
            case "p":
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
            case "P":
                # -P, --service and the obsolete --port all store the text unchecked; a bad
                # service only fails later ("Cannot resolve service ... to port number.").
                server["service"] = value
            case "auth":
                auth = _AUTH_TYPES.get(value)
                if auth is None and value.lower() == "external":
                    auth = "external"
                if auth is None:
                    raise _BadValue(f"Invalid authentication `{value}' specified.")
                if auth == "any":
                    # "any" is fetchmail's 0, which the merge reads as "not given": it does
                    # not override `auth password` from the rcfile, and it cancels an earlier
                    # --auth (or the kerberos_v5 of -p kpop) on the same command line.
                    server.pop("auth", None)
                else:
                    server["auth"] = auth
            case "t":
                number = _xatoi(value)
                # "-t 0 means the default": 0 (and -1) force 300 over the rcfile's value.
                # Other negatives end up as 0 in configdump.
                if number in (0, -1):
                    server["timeout"] = DEFAULT_TIMEOUT
                else:
                    server["timeout"] = max(number, 0)
            case "E":
                # No count form on the command line: "-E '2 X-Foo'" is the header name
                # "2 X-Foo", and the rcfile's envskip stays as it was.
                server["envelope"] = value
            case "Q":
                server["qvirtual"] = value
            case "U":
                server["uidl"] = True
            case "plugin":
                server["plugin"] = value
            case "plugout":
                server["plugout"] = value
            case "principal":
                server["principal"] = value
            case "tracepolls":
                server["tracepolls"] = True
            case "bad-header":
                policy = value.lower()
                if policy not in ("accept", "reject"):
                    raise _BadValue(f"Invalid bad-header policy `{value}' specified.")
                if policy == "accept":
                    server["badheader"] = True
                else:
                    # "reject" is fetchmail's 0 = "not given", as for --auth any: it cannot
                    # undo `bad-header accept` from the rcfile.
                    server.pop("badheader", None)
            case "I":
                _check_interface(value)
                server["interface"] = value
            case "M":
                server["monitor"] = value
            # ---- user
            case "u":
                user["remote"] = value
            case "a":
                user["fetchall"] = True
            case "k":
                user["keep"] = True
            case "K":
                user["keep"] = False
            case "F":
                user["flush"] = True
            case "limitflush":
                user["limitflush"] = True
            case "n":
                user["rewrite"] = False
            case "l" | "w" | "B" | "fetchsizelimit" | "fastuidl" | "b" | "e":
                # An explicit 0 overrides a nonzero rcfile value, and so does a negative
                # number, which ends up as 0.
                user[_NUMERIC_USER_KEYS[ident]] = max(_xatoi(value), 0)
            case "m":
                # fetchmail also turns stripcr on by default once an MDA is set.
                user["mda"] = value
            case "bsmtp":
                user["bsmtp"] = self.path(value)
            case "lmtp":
                user["lmtp"] = True
            case "D":
                user["smtpaddress"] = value
            case "smtpname":
                user["smtpname"] = value
            case "passwordeval":
                user["passwordeval"] = value
            case "parallel":
                number = _xatoi(value)
                if number < 1:
                    raise _BadValue(f"Invalid number of parallel polls `{value}' specified.")
                result.parallel = number
            case "ssl":
                user["ssl"] = True
            case "sslkey" | "sslcert" | "sslcertfile" | "sslcertpath":
                user[ident] = self.path(value)
            case "sslproto" | "sslcommonname" | "sslfingerprint":
                user[ident] = value
            case "sslcertck":
                user["sslcertck"] = True
            case "nosslcertck":
                user["sslcertck"] = False
            case "idle":
                user["idle"] = True
            case "S":
                self.append(user, "smtphunt", _strtok(value))
            case "r":
                self.append(user, "mailboxes", _strtok(value))
            case "fetchdomains":
                self.append(user, "fetchdomains", _strtok(value))
            case "Z":
                tokens = _strtok(value) or [""]
                self.append(user, "antispam", [_xatoi(token) for token in tokens])
            case _:  # pragma: no cover - the tables and this match are kept in step
                raise AssertionError(f"unhandled option {ident!r}")

    def finish(self) -> None:
        self.result.silent = self.outlevel == _SILENT
        self.result.verbose = max(self.outlevel - _NORMAL, 0)


_NUMERIC_USER_KEYS: Mapping[str, str] = {
    "l": "limit",
    "w": "warnings",
    "B": "fetchlimit",
    "fetchsizelimit": "fetchsizelimit",
    "fastuidl": "fastuidl",
    "b": "batchlimit",
    "e": "expunge",
}


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
