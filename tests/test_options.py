"""The command line. Expected values come from fetchmail 6.4.37's --configdump and its output.

Pure: no network and no fetchmail binary needed.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from fetcher.errors import ConfigError
from fetcher.exitcodes import ExitCode
from fetcher.options import HELP_TEXT, CommandLine, UsageError, parse_args

CWD = "/home/bob/mail"


def parse(*argv: str, posix: bool = False) -> CommandLine:
    return parse_args(list(argv), cwd=CWD, environ={"POSIXLY_CORRECT": "1"} if posix else {})


def failure(*argv: str) -> UsageError:
    with pytest.raises(UsageError) as info:
        parse(*argv)
    return info.value


# --------------------------------------------------------------------------- overrides

GLOBAL_CASES: list[tuple[list[str], dict[str, object]]] = [
    (["-d", "30"], {"poll_interval": 30}),
    (["-d0"], {"poll_interval": 0}),
    (["--daemon=7"], {"poll_interval": 7}),
    (["-d", "0x10"], {"poll_interval": 16}),
    (["-d", "-5"], {}),  # negative: as if not given
    (["-d", "5", "-d", "-1"], {}),
    (["-L", "log"], {"logfile": f"{CWD}/log"}),
    (["-L", "./sub/../log"], {"logfile": f"{CWD}/./sub/../log"}),
    (["-L", "/var/log/f"], {"logfile": "/var/log/f"}),
    (["-L", "-"], {"logfile": "-"}),
    (["-i", "ids"], {"idfile": f"{CWD}/ids"}),
    (["-i", "~/ids"], {"idfile": f"{CWD}/~/ids"}),
    (["-i", ""], {"idfile": ""}),
    (["--pidfile", "run/p"], {"pidfile": f"{CWD}/run/p"}),
    (["--postmaster", "pm"], {"postmaster": "pm"}),
    (["--nobounce"], {"bouncemail": False}),
    (["--softbounce"], {"softbounce": True}),
    (["--nosoftbounce"], {"softbounce": False}),
    (["--softbounce", "--nosoftbounce"], {"softbounce": False}),
    (["--invisible"], {"invisible": True}),
    (["--showdots"], {"showdots": True}),
    (["--syslog"], {"syslog": True}),
    (["--nosyslog"], {"syslog": False}),
]

SERVER_CASES: list[tuple[list[str], dict[str, object]]] = [
    (["-p", "auto"], {"protocol": "auto"}),
    (["-p", "Auto"], {"protocol": "auto"}),
    (["-p", "pop2"], {"protocol": "POP2"}),
    (["-p", "pop3"], {"protocol": "POP3"}),
    (["-p", "IMAP"], {"protocol": "IMAP"}),
    (["-p", "apop"], {"protocol": "APOP"}),
    (["-p", "rpop"], {"protocol": "RPOP"}),
    (["-p", "Etrn"], {"protocol": "ETRN"}),
    (["-p", "odmr"], {"protocol": "ODMR"}),
    (["-p", "sdps"], {"protocol": "POP3", "sdps": True}),
    (["-p", "sdps", "-p", "imap"], {"protocol": "IMAP", "sdps": True}),
    (["-p", "KPOP"], {"protocol": "POP3", "service": "kpop", "auth": "kerberos_v5"}),
    (["-p", "kpop", "-P", "110"], {"protocol": "POP3", "service": "110", "auth": "kerberos_v5"}),
    (["--auth", "password", "-p", "kpop"], {"protocol": "POP3", "service": "kpop",
                                            "auth": "kerberos_v5"}),
    (["--proto", "imap"], {"protocol": "IMAP"}),
    (["--pro", "imap"], {"protocol": "IMAP"}),  # protocol and proto are one option
    (["--protocol=imap"], {"protocol": "IMAP"}),
    (["-P", "110"], {"service": "110"}),
    (["--port", "110"], {"service": "110"}),
    (["--service=pop3s"], {"service": "pop3s"}),
    (["-t", "0"], {"timeout": 300}),
    (["-t", "-1"], {"timeout": 300}),
    (["-t", "-2"], {"timeout": 0}),
    (["-t", "5"], {"timeout": 5}),
    (["-t", "010"], {"timeout": 8}),
    (["-t", " +5"], {"timeout": 5}),
    (["--auth", "password"], {"auth": "password"}),
    (["--auth", "kerberos"], {"auth": "kerberos_v5"}),
    (["--auth", "kerberos_v5"], {"auth": "kerberos_v5"}),
    (["--auth", "kerberos_v4"], {"auth": "kerberos_v4"}),
    (["--auth", "ssh"], {"auth": "ssh"}),
    (["--auth", "external"], {"auth": "external"}),
    (["--auth", "EXTERNAL"], {"auth": "external"}),
    (["--auth", "otp"], {"auth": "otp"}),
    (["--auth", "opie"], {"auth": "otp"}),
    (["--auth", "ntlm"], {"auth": "ntlm"}),
    (["--auth", "cram"], {"auth": "cram-md5"}),
    (["--auth", "cram-md5"], {"auth": "cram-md5"}),
    (["--auth", "gssapi"], {"auth": "gssapi"}),
    (["--auth", "msn"], {"auth": "msn"}),
    (["--auth", "any"], {}),  # 0 = not given: cannot override the rcfile
    (["--auth", "password", "--auth", "any"], {}),
    (["-p", "kpop", "--auth", "any"], {"protocol": "POP3", "service": "kpop"}),
    (["-E", "X-Foo"], {"envelope": "X-Foo"}),
    (["-E", "2 X-Foo"], {"envelope": "2 X-Foo"}),  # no count form on the command line
    (["-E", ""], {"envelope": ""}),
    (["-Q", "qq"], {"qvirtual": "qq"}),
    (["-U"], {"uidl": True}),
    (["--plugin", "a b"], {"plugin": "a b"}),
    (["--plugout", "x"], {"plugout": "x"}),
    (["--principal", "p"], {"principal": "p"}),
    (["--tracepolls"], {"tracepolls": True}),
    (["--bad-header", "accept"], {"badheader": True}),
    (["--bad-header", "ACCEPT"], {"badheader": True}),
    (["--bad-header", "reject"], {}),  # 0 = not given, like --auth any
    (["--bad-header", "accept", "--bad-header", "reject"], {}),
    (["-I", "eth0/1.2.3.4/255.255.255.0"], {"interface": "eth0/1.2.3.4/255.255.255.0"}),
    (["-I", "eth0/1.2.3.4"], {"interface": "eth0/1.2.3.4"}),
    (["-I", "ppp0/10.0.0"], {"interface": "ppp0/10.0.0"}),  # inet_aton's short form
    (["-I", "/1.2.3.4"], {"interface": "/1.2.3.4"}),
    (["-M", "eth0"], {"monitor": "eth0"}),
]

USER_CASES: list[tuple[list[str], dict[str, object]]] = [
    (["-u", "bob"], {"remote": "bob"}),
    (["-u", "bob", "-u", "al"], {"remote": "al"}),
    (["--user=x"], {"remote": "x"}),
    (["--username", "y"], {"remote": "y"}),
    (["-u", ""], {"remote": ""}),
    # a required argument is taken even when it looks like an option, or is "--"
    (["-u", "-v"], {"remote": "-v"}),
    (["--mda", "--"], {"mda": "--"}),
    (["-a"], {"fetchall": True}),
    (["--all"], {"fetchall": True}),
    (["--fetchall"], {"fetchall": True}),
    (["-k"], {"keep": True}),
    (["-K"], {"keep": False}),
    (["-k", "-K"], {"keep": False}),
    (["--nokeep", "--keep"], {"keep": True}),
    (["-F"], {"flush": True}),
    (["--limitflush"], {"limitflush": True}),
    (["-n"], {"rewrite": False}),
    (["-l", "0"], {"limit": 0}),
    (["-l", "-3"], {"limit": 0}),
    (["-l", "12"], {"limit": 12}),
    (["--limit=0x10"], {"limit": 16}),
    (["-w", "0"], {"warnings": 0}),
    (["-B", "5"], {"fetchlimit": 5}),
    (["--fetchsizelimit", "0"], {"fetchsizelimit": 0}),
    (["--fastuidl", "9"], {"fastuidl": 9}),
    (["-b", "-1"], {"batchlimit": 0}),
    (["-e", "3"], {"expunge": 3}),
    (["-m", "procmail -d %T"], {"mda": "procmail -d %T"}),
    (["--bsmtp", "out"], {"bsmtp": f"{CWD}/out"}),
    (["--bsmtp", "-"], {"bsmtp": "-"}),
    (["--bsmtp", "/abs"], {"bsmtp": "/abs"}),
    (["--lmtp"], {"lmtp": True}),
    (["-D", "x", "-D", "y"], {"smtpaddress": "y"}),
    (["--smtpname", "a@b"], {"smtpname": "a@b"}),
    (["--ssl"], {"ssl": True}),
    (["--sslkey", "k"], {"sslkey": f"{CWD}/k"}),
    (["--sslcert", "./c"], {"sslcert": f"{CWD}/./c"}),
    (["--sslcertfile", "/etc/ca.pem"], {"sslcertfile": "/etc/ca.pem"}),
    (["--sslcertpath", "certs"], {"sslcertpath": f"{CWD}/certs"}),
    (["--sslproto", "tls1.3"], {"sslproto": "tls1.3"}),
    (["--sslproto", ""], {"sslproto": ""}),
    (["--sslcertck"], {"sslcertck": True}),
    (["--nosslcertck"], {"sslcertck": False}),
    (["--sslcertck", "--nosslcertck"], {"sslcertck": False}),
    (["--sslcommonname", "cn"], {"sslcommonname": "cn"}),
    (["--sslfingerprint", "AB:CD"], {"sslfingerprint": "AB:CD"}),
    (["--idle"], {"idle": True}),
    (["-S", "b"], {"smtphunt": ["b"]}),
    (["-S", "b,c"], {"smtphunt": ["b", "c"]}),
    (["-S", ",b,,c,"], {"smtphunt": ["b", "c"]}),
    (["-S", "/var/run/lmtp"], {"smtphunt": ["/var/run/lmtp"]}),
    (["-S", ""], {"smtphunt": []}),
    (["-r", "x,y", "-r", "z"], {"mailboxes": ["x", "y", "z"]}),
    (["--folder", "a,,b"], {"mailboxes": ["a", "b"]}),
    (["--fetchdomains", "d2,d3"], {"fetchdomains": ["d2", "d3"]}),
    (["--fetchdomains", "d2", "--fetchdomains", "d2"], {"fetchdomains": ["d2", "d2"]}),
    (["-Z", "554"], {"antispam": [554]}),
    (["-Z", "554,552", "-Z", "553"], {"antispam": [554, 552, 553]}),
    (["-Z", ",0x10,"], {"antispam": [16]}),
    (["-Z", "-1"], {"antispam": [-1]}),
]


@pytest.mark.parametrize(("argv", "expected"), GLOBAL_CASES)
def test_global_overrides(argv: list[str], expected: dict[str, object]) -> None:
    result = parse(*argv)
    assert result.global_overrides == expected
    assert result.server_overrides == {}
    assert result.user_overrides == {}


@pytest.mark.parametrize(("argv", "expected"), SERVER_CASES)
def test_server_overrides(argv: list[str], expected: dict[str, object]) -> None:
    result = parse(*argv)
    assert result.server_overrides == expected
    assert result.global_overrides == {}
    assert result.user_overrides == {}


@pytest.mark.parametrize(("argv", "expected"), USER_CASES)
def test_user_overrides(argv: list[str], expected: dict[str, object]) -> None:
    result = parse(*argv)
    assert result.user_overrides == expected
    assert result.global_overrides == {}
    assert result.server_overrides == {}


def test_paths_default_to_the_process_cwd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    result = parse_args(["-i", "ids"], environ={})
    assert result.global_overrides == {"idfile": f"{tmp_path}/ids"}


def test_cwd_with_trailing_slash() -> None:
    assert parse_args(["-i", "ids"], cwd="/", environ={}).global_overrides == {"idfile": "/ids"}


# --------------------------------------------------------------------------- flags

FLAG_CASES: list[tuple[list[str], dict[str, object]]] = [
    ([], {}),
    (["-v"], {"verbose": 1}),
    (["-vv"], {"verbose": 2}),
    (["-vvv"], {"verbose": 2}),
    (["--verb", "--verbose"], {"verbose": 2}),
    (["-s"], {"silent": True}),
    (["-s", "-v"], {"verbose": 1}),  # the last of -s and -v wins
    (["-v", "-s"], {"silent": True}),
    (["-vv", "-s", "-v"], {"verbose": 1}),
    (["-c"], {"check": True}),
    (["--check"], {"check": True}),
    (["-V"], {"version": True}),
    (["--vers"], {"version": True}),
    (["-?"], {"help": True}),
    (["--help"], {"help": True}),
    (["--he"], {"help": True}),
    (["--h"], {"help": True}),
    (["-?", "-S", "a", "-S", "b"], {"help": True}),
    (["--configdump"], {"configdump": True}),
    (["--configdump", "--format", "toml"], {"configdump": True, "dump_format": "toml"}),
    (["--form=TOML"], {"dump_format": "toml"}),
    (["--format", "json"], {}),
    (["-N"], {"nodetach": True}),
    (["-y"], {"yydebug": True}),
    (["--yydebug"], {"yydebug": True}),
    (["-f", "rc"], {"rcfile": "rc"}),
    (["-f", "-"], {"rcfile": "-"}),
    (["-f", "a", "--fetchm", "b"], {"rcfile": "b"}),
    (["-frc"], {"rcfile": "rc"}),
    (["-q"], {"quit": True, "quit_is_last": True}),
    (["--quit"], {"quit": True, "quit_is_last": True}),
    (["-vq"], {"quit": True, "quit_is_last": True, "verbose": 1}),
    (["-qv"], {"quit": True, "verbose": 1}),
    (["-q", "-v"], {"quit": True, "verbose": 1}),
    (["-q", "--"], {"quit": True}),
    (["-q", "-q"], {"quit": True, "quit_is_last": True}),
    (["-q", "host"], {"quit": True, "servers": ["host"]}),
    # getopt moves server names behind the options, so this -q counts as last
    (["host", "-q"], {"quit": True, "quit_is_last": True, "servers": ["host"]}),
    (["a", "-v", "b"], {"verbose": 1, "servers": ["a", "b"]}),
    (["-v", "--", "-X", "b"], {"verbose": 1, "servers": ["-X", "b"]}),
    (["a", "--", "-v"], {"servers": ["a", "-v"]}),
    (["-"], {"servers": ["-"]}),
    (["", "h"], {"servers": ["", "h"]}),
]


@pytest.mark.parametrize(("argv", "changes"), FLAG_CASES)
def test_flags(argv: list[str], changes: dict[str, object]) -> None:
    result = parse(*argv)
    defaults = CommandLine()
    for name in ("verbose", "silent", "check", "version", "help", "configdump", "dump_format",
                 "quit", "quit_is_last", "nodetach", "yydebug", "rcfile", "servers"):
        assert getattr(result, name) == changes.get(name, getattr(defaults, name)), name


def test_combined_short_options_with_arguments() -> None:
    result = parse("-vak", "-d0", "-kvl5", "-Sa,b", "host")
    assert result.verbose == 2
    assert result.global_overrides == {"poll_interval": 0}
    assert result.user_overrides == {"fetchall": True, "keep": True, "limit": 5,
                                     "smtphunt": ["a", "b"]}
    assert result.servers == ["host"]


def test_long_option_argument_forms() -> None:
    assert parse("--limit=5").user_overrides == {"limit": 5}
    assert parse("--limit", "5").user_overrides == {"limit": 5}
    assert parse("--fetchl", "5").user_overrides == {"fetchlimit": 5}
    assert parse("--smtph=h").user_overrides == {"smtphunt": ["h"]}


def test_fetchmail_abbreviations_win_over_pyfetch_extras() -> None:
    # --fo is --folder in fetchmail; pyfetch's --format must not make it ambiguous
    assert parse("--fo", "f1").user_overrides == {"mailboxes": ["f1"]}
    assert parse("--for", "toml").dump_format == "toml"


def test_posixly_correct_stops_at_the_first_server() -> None:
    result = parse("h", "-v", posix=True)
    assert result.servers == ["h", "-v"]
    assert result.verbose == 0


def test_overrides_are_fresh_per_call() -> None:
    parse("-S", "a")
    assert parse("-S", "b").user_overrides == {"smtphunt": ["b"]}


# --------------------------------------------------------------------------- errors

HELP_USAGE = ("stderr", ExitCode.SYNTAX)  # fetchmail: stdout and exit 0, see GETOPT_ERROR_EXIT
HELP_REQUESTED = ("stdout", ExitCode.SUCCESS)  # -? on the line wins over any error
BAD_VALUE = ("stderr", ExitCode.SYNTAX)
FATAL = (None, ExitCode.SYNTAX)

ERROR_CASES: list[tuple[list[str], list[str], tuple[str | None, ExitCode]]] = [
    # getopt's complaints: fetchmail's messages, but exit 5 with the usage on stderr
    (["--bouncemail"], ["pyfetch: unrecognized option '--bouncemail'"], HELP_USAGE),
    (["--bogus=1"], ["pyfetch: unrecognized option '--bogus=1'"], HELP_USAGE),
    (["--ide"], ["pyfetch: unrecognized option '--ide'"], HELP_USAGE),
    (["-X"], ["pyfetch: invalid option -- 'X'"], HELP_USAGE),
    (["-h"], ["pyfetch: invalid option -- 'h'"], HELP_USAGE),
    (["-A", "x"], ["pyfetch: invalid option -- 'A'"], HELP_USAGE),
    (["-T", "x"], ["pyfetch: invalid option -- 'T'"], HELP_USAGE),
    (["-l"], ["pyfetch: option requires an argument -- 'l'"], HELP_USAGE),
    (["-vl"], ["pyfetch: option requires an argument -- 'l'"], HELP_USAGE),
    (["--limit"], ["pyfetch: option '--limit' requires an argument"], HELP_USAGE),
    (["--sslcertf"], ["pyfetch: option '--sslcertfile' requires an argument"], HELP_USAGE),
    (["--verbose=1"], ["pyfetch: option '--verbose' doesn't allow an argument"], HELP_USAGE),
    (["--verb=1"], ["pyfetch: option '--verbose' doesn't allow an argument"], HELP_USAGE),
    (["--lim", "5"], ["pyfetch: option '--lim' is ambiguous; possibilities: '--limitflush' "
                      "'--limit'"], HELP_USAGE),
    (["--p", "x"], ["pyfetch: option '--p' is ambiguous; possibilities: '--pidfile' "
                    "'--postmaster' '--protocol' '--proto' '--port' '--principal' '--plugin' "
                    "'--plugout'"], HELP_USAGE),
    (["--u", "x"], ["pyfetch: option '--u' is ambiguous; possibilities: '--uidl' '--user' "
                    "'--username'"], HELP_USAGE),
    (["--n"], ["pyfetch: option '--n' is ambiguous; possibilities: '--nodetach' '--nosyslog' "
               "'--nobounce' '--nosoftbounce' '--nokeep' '--norewrite' '--nosslcertck'"],
     HELP_USAGE),
    (["--s=1"], ["pyfetch: option '--s=1' is ambiguous; possibilities: '--silent' "
                 "'--showdots' '--syslog' '--softbounce' '--service' '--smtphost' "
                 "'--smtpaddress' '--smtpname' '--ssl' '--sslkey' '--sslcert' '--sslproto' "
                 "'--sslcertck' '--sslcertfile' '--sslcertpath' '--sslcommonname' "
                 "'--sslfingerprint'"], HELP_USAGE),
    (["--f"], ["pyfetch: option '--f' is ambiguous; possibilities: '--fetchmailrc' "
               "'--fetchall' '--flush' '--folder' '--fetchdomains' '--fetchlimit' "
               "'--fetchsizelimit' '--fastuidl'"], HELP_USAGE),
    # parsing goes on after a getopt complaint, and the usage still goes to stdout
    (["-X", "-l", "abc"], ["pyfetch: invalid option -- 'X'",
                           "String 'abc' is not a valid number string."], HELP_USAGE),
    (["-X", "--auth", "bogus"], ["pyfetch: invalid option -- 'X'",
                                 "Invalid authentication `bogus' specified."], HELP_USAGE),
    (["-S", "a", "-S", "b", "-X"], ["pyfetch: invalid option -- 'X'"], HELP_USAGE),
    (["-?", "-l", "abc"], ["String 'abc' is not a valid number string."], HELP_REQUESTED),
    # bad values: usage on stderr, exit 5; parsing stops at the first one
    (["-l", "abc"], ["String 'abc' is not a valid number string."], BAD_VALUE),
    (["-l", "abc", "-X"], ["String 'abc' is not a valid number string."], BAD_VALUE),
    (["-l", "abc", "-l", "def"], ["String 'abc' is not a valid number string."], BAD_VALUE),
    (["-l", "5x"], ["String '5x' is not a valid number string."], BAD_VALUE),
    (["-l", "5 "], ["String '5 ' is not a valid number string."], BAD_VALUE),
    (["-t", "08"], ["String '08' is not a valid number string."], BAD_VALUE),
    (["-t", "0x"], ["String '0x' is not a valid number string."], BAD_VALUE),
    (["--limit="], ["String '' is not a valid number string."], BAD_VALUE),
    (["-d", ""], ["String '' is not a valid number string."], BAD_VALUE),
    (["-l", "99999999999"], ["Value of string '99999999999' is larger than 2147483647."],
     BAD_VALUE),
    (["-t", "-2147483649"], ["Value of string '-2147483649' is smaller than -2147483648."],
     BAD_VALUE),
    (["-t", "9223372036854775808"],
     ["Value of string '9223372036854775808' is larger than 2147483647."], BAD_VALUE),
    (["-Z", "abc"], ["String 'abc' is not a valid number string."], BAD_VALUE),
    (["-Z", "554,5x"], ["String '5x' is not a valid number string."], BAD_VALUE),
    (["-Z", ""], ["String '' is not a valid number string."], BAD_VALUE),  # fetchmail crashes
    (["-p", "bogus"], ["Invalid protocol `bogus' specified."], BAD_VALUE),
    (["-p", "imap-k4"], ["Invalid protocol `imap-k4' specified."], BAD_VALUE),
    (["-p", ""], ["Invalid protocol `' specified."], BAD_VALUE),
    (["-p", "bogus", "-l", "abc"], ["Invalid protocol `bogus' specified."], BAD_VALUE),
    (["--auth", "bogus", "-X"], ["Invalid authentication `bogus' specified."], BAD_VALUE),
    (["--auth", "CRAM-MD5"], ["Invalid authentication `CRAM-MD5' specified."], BAD_VALUE),
    (["--auth", "Password"], ["Invalid authentication `Password' specified."], BAD_VALUE),
    (["--auth", "login"], ["Invalid authentication `login' specified."], BAD_VALUE),
    (["--bad-header", "x"], ["Invalid bad-header policy `x' specified."], BAD_VALUE),
    (["--format", "yaml"], ["Invalid dump format `yaml' specified."], BAD_VALUE),
    # only one of -S, -m, --bsmtp in all: fetchmail prints just the usage
    (["-S", "a", "-S", "b"], [], BAD_VALUE),
    (["-S", "a", "-m", "b"], [], BAD_VALUE),
    (["-m", "a", "-m", "b"], [], BAD_VALUE),
    (["--bsmtp", "x", "-S", "a"], [], BAD_VALUE),
    # a bad -I spec ends the run at once, without the usage
    (["-I", "bogus"], ["pyfetch: missing IP interface address"], FATAL),
    (["-I", ""], ["pyfetch: missing IP interface address"], FATAL),
    (["-I", "eth0/1.2.3.x"], ["pyfetch: invalid IP interface address"], FATAL),
    (["-I", "eth0/1.2.3.4/bad"], ["pyfetch: invalid IP interface mask"], FATAL),
    (["-I", "eth0/1.2.3.4/255.0.0.0/x"], ["pyfetch: invalid IP interface mask"], FATAL),
    (["-I", "bogus", "-X"], ["pyfetch: missing IP interface address"], FATAL),
    (["-X", "-I", "bogus"], ["pyfetch: invalid option -- 'X'",
                             "pyfetch: missing IP interface address"], FATAL),
    (["-?", "-I", "bogus"], ["pyfetch: missing IP interface address"], FATAL),
]


@pytest.mark.parametrize(("argv", "diagnostics", "outcome"), ERROR_CASES)
def test_errors(
    argv: list[str], diagnostics: list[str], outcome: tuple[str | None, ExitCode]
) -> None:
    stream, code = outcome
    err = failure(*argv)
    assert isinstance(err, ConfigError)
    assert err.exit_code == code
    assert list(err.diagnostics) == diagnostics
    assert err.usage_stream == stream
    assert str(err)  # always something to log, even when fetchmail prints no diagnostic


def test_emit_reproduces_fetchmail_output() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert failure("-l", "abc").emit(out, err) == 5
    assert out.getvalue() == ""
    assert err.getvalue() == "String 'abc' is not a valid number string.\n" + HELP_TEXT

    out, err = io.StringIO(), io.StringIO()
    assert failure("--bogus").emit(out, err) == 5
    assert out.getvalue() == ""
    assert err.getvalue() == "pyfetch: unrecognized option '--bogus'\n" + HELP_TEXT

    out, err = io.StringIO(), io.StringIO()
    assert failure("-I", "eth0").emit(out, err) == 5
    assert out.getvalue() == ""
    assert err.getvalue() == "pyfetch: missing IP interface address\n"


def test_message_drops_the_program_prefix() -> None:
    assert failure("-X").message == "invalid option -- 'X'"
    assert failure("-I", "x").message == "missing IP interface address"


# --------------------------------------------------------------------------- help text

# Every long option `fetchmail --help` (6.4.37) lists, in its own notation.
FETCHMAIL_HELP_OPTIONS = [
    "--help", "--version", "--check", "--silent", "--verbose", "--daemon", "--nodetach",
    "--quit", "--logfile", "--syslog", "--nosyslog", "--invisible", "--fetchmailrc",
    "--idfile", "--pidfile", "--postmaster", "--nobounce", "--nosoftbounce", "--softbounce",
    "--interface", "--monitor", "--ssl", "--sslkey", "--sslcert", "--sslcertck",
    "--nosslcertck", "--sslcertfile", "--sslcertpath", "--sslcommonname", "--sslfingerprint",
    "--sslproto", "--plugin", "--plugout", "--bad-header", "--proto[col]", "--uidl", "--idle",
    "--port", "--service", "--auth", "--timeout", "--envelope", "--qvirtual", "--principal",
    "--tracepolls", "--user[name]", "--[fetch]all", "--nokeep", "--keep", "--flush",
    "--limitflush", "--norewrite", "--limit", "--warnings", "--smtphost", "--fetchdomains",
    "--smtpaddress", "--smtpname", "--antispam", "--batchlimit", "--fetchlimit",
    "--fetchsizelimit", "--fastuidl", "--expunge", "--mda", "--bsmtp", "--lmtp", "--folder",
    "--showdots",
]


def _help_option_words() -> set[str]:
    return set(re.findall(r"--[\w\[\]-]+", HELP_TEXT))


@pytest.mark.parametrize("option", FETCHMAIL_HELP_OPTIONS)
def test_help_lists_every_fetchmail_option(option: str) -> None:
    assert option in _help_option_words()


def test_help_lists_pyfetch_extras_and_says_pyfetch() -> None:
    words = _help_option_words()
    assert {"--configdump", "--format", "--yydebug"} <= words
    assert HELP_TEXT.startswith("usage:  pyfetch [options] [server ...]\n")
    assert "fetchmail " not in HELP_TEXT
    assert all(len(line) <= 100 for line in HELP_TEXT.splitlines())


@pytest.mark.parametrize("option", FETCHMAIL_HELP_OPTIONS)
def test_every_listed_option_parses(option: str) -> None:
    # "--proto[col]" stands for --proto and --protocol, "--[fetch]all" for --all/--fetchall
    match = re.fullmatch(r"--(\[(\w+)\])?([\w-]+)(\[(\w+)\])?", option)
    assert match is not None
    head, stem, tail = match.group(2) or "", match.group(3), match.group(5) or ""
    for name in {stem, head + stem, stem + tail}:
        argv = [f"--{name}"]
        if name in {"bad-header"}:
            argv.append("accept")
        elif name in {"proto", "protocol"}:
            argv.append("imap")
        elif name == "auth":
            argv.append("password")
        elif name == "interface":
            argv.append("eth0/1.2.3.4")
        elif name in {"daemon", "limit", "warnings", "antispam", "batchlimit", "fetchlimit",
                      "fetchsizelimit", "fastuidl", "expunge", "timeout"}:
            argv.append("1")
        elif name in {"logfile", "fetchmailrc", "idfile", "pidfile", "postmaster", "monitor",
                      "sslkey", "sslcert", "sslcertfile", "sslcertpath", "sslcommonname",
                      "sslfingerprint", "sslproto", "plugin", "plugout", "port", "service",
                      "envelope", "qvirtual", "principal", "user", "username", "smtphost",
                      "fetchdomains", "smtpaddress", "smtpname", "mda", "bsmtp", "folder"}:
            argv.append("x")
        parse(*argv)


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_oauth2_auth_on_the_command_line(mechanism: str) -> None:
    assert parse("--auth", mechanism).server_overrides == {"auth": mechanism}
