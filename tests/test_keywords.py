"""Every rcfile keyword and every command-line option is honoured or refused, never read and
then ignored (README: "what pyfetch will not do is refused with a message").

The walks below go through the lexer's keyword table and fetcher.options.OPTIONS, find out by
parsing which fields of fetcher.model each keyword and option sets, and hold each field to its
one declaration in fetcher.features.SUPPORT: an `Honoured` field must be read by the code that
runs a poll and name a test that exists, a `Refused` one must make a poll refuse, and an
`Equivalent` one must name a test. A keyword or option added later lands in a field, so it
cannot go unnoticed: with no declaration, or no example here to parse, the walk fails.

The rest of the file holds the tests the declarations name for keywords that had none.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from functools import cache
from pathlib import Path

import pytest
from conftest import ROOT, ROOT_WARNING, TESTS
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.fixtures import unavailable
from servers.smtp import SMTPServer
from test_e2e_imap import run_fetchmail
from test_e2e_pop3 import pyfetch
from test_message import accounts, run_prepare
from test_plugin import preauth_tunnel, without_received

from fetcher import features
from fetcher.bounce import bounce_recipient
from fetcher.config import Environment, build
from fetcher.features import SUPPORT, Equivalent, Honoured, Refused, unsupported
from fetcher.interface import Link, MonitorCounts, interface_skip, monitor_skip, netdev_packets
from fetcher.model import GlobalOptions, ServerOptions, UserOptions
from fetcher.options import OPTIONS, CommandLine, parse_args
from fetcher.rcfile import lexer, parser
from fetcher.rcfile.lexer import T, tokenize
from fetcher.sinks.base import Delivery
from fetcher.sizewarning import build_size_warning

FETCHER = ROOT / "fetcher"
# Modules that read settings only to parse, merge, show or declare them: a field read only
# there is not acted on.
NOT_ACTING = {"model.py", "describe.py", "configdump.py", "tomlconfig.py", "options.py",
              "manpage.py", "features.py", "rcfile"}
BASE = "poll mail.isp.net user bob"
ENV = Environment(user="bob", home="/nonexistent", fetchmailhome=None, is_root=False)

# Words that shape the file rather than set anything: no field to hold them to.
SYNTAX = {
    "set": "starts a global option", "defaults": "an entry whose options the others inherit",
    "here": "ends a list of local names", "there": "marks a remote name",
    "no": "negates the keyword after it",
    "accept": "a value of bad-header", "reject": "a value of bad-header",
}
# Keywords that set what an entry is, not one of its options.
ENTRY_FIELDS = {"poll": ["server.pollname"], "server": ["server.pollname"],
                "skip": ["server.selected"], "user": ["user.remote"], "username": ["user.remote"]}
# How to write the keywords whose use the parser's tables do not say.
EXAMPLES = {
    "protocol": ["poll mail.isp.net protocol imap user bob password secret"],
    "proto": ["poll mail.isp.net proto imap user bob password secret"],
    "service": ["poll mail.isp.net service 110 user bob password secret"],
    "port": ["poll mail.isp.net port 110 user bob password secret"],
    "envelope": ["poll mail.isp.net envelope 1 X-Envelope-To user bob password secret",
                 "poll mail.isp.net no envelope user bob password secret"],
    "bad-header": ["poll mail.isp.net bad-header accept user bob password secret"],
    "interface": ['poll mail.isp.net interface "lo/127.0.0.1" user bob password secret'],
    "is": [f"{BASE} is carol here", f"{BASE} is * here"],
    "to": [f"{BASE} to carol = robert here"],
    "antispam": [f"{BASE} antispam 571 550"],
    "daemon": ["set daemon 300\n" + BASE],
}


def _kind(word: str) -> T:
    return tokenize(word.encode(), "-")[0].kind


def _keys(text: str) -> set[str]:
    """The fields `text` sets, as "global.NAME", "server.NAME", "user.NAME"."""
    tree = parser.parse(text.encode(), "rc")
    keys = {f"global.{k}" for k in tree.globals}
    for entry in tree.entries:
        keys |= {f"server.{k}" for k in entry.server}
        for block in entry.users:
            keys |= {f"user.{k}" for k in block.options}
    return keys


def _examples(word: str) -> list[str]:
    """rcfiles that use `word`, after the parser's own tables where they say how."""
    if word in EXAMPLES:
        return EXAMPLES[word]
    kind = _kind(word)
    if kind in parser._GLOBAL_STRING:
        return [f'set {word} "value"\n{BASE}']
    if kind in parser._GLOBAL_FLAG:
        return [f"set {word}\n{BASE}", f"set no {word}\n{BASE}"]
    if kind in parser._SERVER_FLAG:
        return [f"poll mail.isp.net {word} user bob", f"poll mail.isp.net no {word} user bob"]
    if kind in (*parser._SERVER_STRING, *parser._SERVER_LIST):
        return [f'poll mail.isp.net {word} "value" user bob password secret']
    if kind in parser._SERVER_NUMBER:
        return [f"poll mail.isp.net {word} 5 user bob password secret"]
    if kind in parser._USER_FLAG:
        return [f"{BASE} {word}", f"{BASE} no {word}"]
    if kind in (*parser._USER_STRING, *parser._USER_LIST):
        return [f'{BASE} {word} "value"']
    if kind in parser._USER_NUMBER:
        return [f"{BASE} {word} 5"]
    if kind is T.LMTP:
        return [f"{BASE} {word} smtphost localhost/24"]
    if kind is T.USERNAME:
        return [f"poll mail.isp.net {word} carol password secret"]
    if kind is T.AUTHENTICATE:
        return [f"poll mail.isp.net {word} password user bob password secret"]
    return []


def _keywords() -> list[str]:
    """Every word the lexer takes for a keyword (values of proto and auth are walked apart)."""
    words = [*lexer._SIMPLE, *lexer._TO_NAME, *lexer._AUTH_WORDS]
    return sorted(set(words) - set(lexer._PROTOCOLS) - set(lexer._AUTH_TYPES))


@cache
def _acting_reads() -> frozenset[str]:
    """Attribute names the modules that run a poll read (load), anywhere in them."""
    names: set[str] = set()
    for path in FETCHER.rglob("*.py"):
        if path.name in NOT_ACTING or path.parent.name in NOT_ACTING:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
    return frozenset(names)


def _test_exists(reference: str) -> bool:
    file, _, name = reference.partition("::")
    path = TESTS / file
    if not path.exists():
        return False
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


def _config_with(key: str, value: object) -> tuple[ServerOptions, UserOptions]:
    server, user = ServerOptions(pollname="mail.isp.net"), UserOptions(remote="bob")
    scope, name = key.split(".", 1)
    setattr(server if scope == "server" else user, name, value)
    return server, user


def _sample(key: str) -> object:
    """A value for the field other than its default."""
    scope, name = key.split(".", 1)
    record = {"global": GlobalOptions, "server": ServerOptions, "user": UserOptions}[scope]
    field = next(f for f in fields(record) if f.name == name)
    default = field.default
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    return "value"


def _hold(key: str, where: str) -> None:
    """The checks of the module's docstring, for field `key` set by `where`."""
    support = SUPPORT.get(key)
    assert support is not None, f"{where} sets {key}, which fetcher.features.SUPPORT lacks"
    if isinstance(support, Honoured):
        name = key.split(".", 1)[1]
        assert name in _acting_reads(), f"{key} ({where}) is declared honoured; nothing reads it"
        assert _test_exists(support.test), f"{key}: no test {support.test}"
    elif isinstance(support, Equivalent):
        assert support.why and _test_exists(support.test), f"{key}: no test {support.test}"
    else:
        assert isinstance(support, Refused)
        assert not key.startswith("global."), "refusals are per account"
        server, user = _config_with(key, _sample(key))
        assert support.reason in unsupported(server, user), f"{key} ({where}) is not refused"


@pytest.mark.parametrize("word", _keywords())
def test_every_rcfile_keyword_is_honoured_or_refused(word: str) -> None:
    if word in SYNTAX:
        return
    keys = set(ENTRY_FIELDS.get(word, []))
    examples = _examples(word)
    assert keys or examples, f"`{word}`: give an example of its use in EXAMPLES"
    for text in examples:
        keys |= _keys(text) - _keys(BASE)
    assert keys, f"`{word}` sets nothing in its examples"
    for key in keys:
        _hold(key, f"`{word}`")


@pytest.mark.parametrize("spec", OPTIONS, ids=lambda spec: spec.longs[0])
def test_every_command_line_option_is_honoured_or_refused(spec: object) -> None:
    assert spec in OPTIONS
    flag = f"--{spec.longs[0]}"  # type: ignore[attr-defined]
    arguments = {
        "proto": "imap", "type": "cram-md5", "{reject|accept}": "accept", "format": "toml",
        "interface/address[/mask]": "lo/127.0.0.1", "n": "2",
    }
    arg = spec.arg  # type: ignore[attr-defined]
    argv = [flag] if arg is None else [flag, arguments.get(arg, "5")]
    command = parse_args(argv, cwd="/")
    keys = {f"global.{k}" for k in command.global_overrides}
    keys |= {f"server.{k}" for k in command.server_overrides}
    keys |= {f"user.{k}" for k in command.user_overrides}
    for key in keys:
        _hold(key, flag)
    # What is not a setting is something to do: the CLI must look at it.
    plain = CommandLine()
    acted = {
        f.name for f in fields(CommandLine)
        if f.name not in ("given", "global_overrides", "server_overrides", "user_overrides")
        and getattr(command, f.name) != getattr(plain, f.name)
    }
    assert keys or acted, f"{flag} does nothing"
    if acted:
        read = sorted(acted & _acting_reads())
        assert read, f"{flag} sets CommandLine.{', '.join(sorted(acted))}; nothing reads it"


def test_every_declaration_is_for_a_field_of_the_model() -> None:
    model = {f"{scope}.{f.name}" for scope, record in
             (("global", GlobalOptions), ("server", ServerOptions), ("user", UserOptions))
             for f in fields(record)}  # fmt: skip
    assert set(SUPPORT) | features.NOT_SETTINGS == model


@pytest.mark.parametrize(
    "protocol", sorted({canon for _, canon in lexer._PROTOCOLS.values()} - {"KPOP", "SDPS"})
)
def test_every_protocol_is_spoken_or_refused(protocol: str) -> None:
    server = ServerOptions(pollname="mail.isp.net", protocol=protocol)
    spoken = protocol in features.supported_protocols()
    assert spoken != bool(unsupported(server, UserOptions())), protocol


@pytest.mark.parametrize("auth", sorted(set(lexer._AUTH_TYPES.values()) | {"password"}))
def test_every_authentication_is_done_or_refused(auth: str) -> None:
    """What the drivers do (fetcher.drivers: login) or what features refuses, never a poll
    that connects and then finds out."""
    done = {"any", "password", "cram-md5", "ssh", "xoauth2", "oauthbearer"}
    server = ServerOptions(pollname="mail.isp.net", auth=auth)
    assert (auth in done) != bool(unsupported(server, UserOptions())), auth


def test_a_refused_keyword_names_the_file_line_and_entry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    rc = home / ".fetchmailrc"
    rc.write_text(
        "poll good.isp.net user bob password secret\n"
        "poll mail.isp.net principal imap/mail auth gssapi user bob password secret\n"
    )
    rc.chmod(0o600)
    result = pyfetch(home)
    assert result.returncode == 5
    assert result.stderr == ROOT_WARNING + (
        f"pyfetch: {rc}:2: mail.isp.net: GSSAPI authentication is not supported\n"
        f"pyfetch: {rc}:2: mail.isp.net: 'principal' is for Kerberos, which is not supported\n"
    )


def test_yydebug_traces_the_tokens_and_no_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    rc = home / ".fetchmailrc"
    rc.write_text("poll mail.isp.net\n  user bob password s3cret keep\n")
    rc.chmod(0o600)
    result = pyfetch(home, "-y", "-V")
    assert result.returncode == 0
    assert [line for line in result.stderr.splitlines() if "yydebug" in line] == [
        f"pyfetch: yydebug: {rc}:1: token poll",
        f"pyfetch: yydebug: {rc}:1: token STRING",
        f"pyfetch: yydebug: {rc}:2: token user",
        f"pyfetch: yydebug: {rc}:2: token STRING",
        f"pyfetch: yydebug: {rc}:2: token password",
        f"pyfetch: yydebug: {rc}:2: token STRING",
        f"pyfetch: yydebug: {rc}:2: token keep",
        f"pyfetch: yydebug: {rc}:3: token EOF",
    ]
    assert "s3cret" not in result.stdout + result.stderr


# -- tests for keywords that had none ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "bouncemail", "postmaster", "told"),
    [
        ("alice@example.org", True, "pm", "alice@example.org"),
        ("alice@example.org", False, "pm", "pm"),  # `set no bouncemail`
        ("alice@example.org", False, None, None),
        ("", True, "pm", None),  # never to the null sender
    ],
)
def test_bounces_go_to_the_sender_or_the_postmaster(
    sender: str, bouncemail: bool, postmaster: str | None, told: str | None
) -> None:
    assert bounce_recipient(sender, bouncemail=bouncemail, postmaster=postmaster) == told


def test_a_skip_entry_is_polled_only_when_named() -> None:
    tree = parser.parse(b"skip off.isp.net user bob password x\npoll on.isp.net user bob\n", "rc")
    assert [s.selected for s in build(tree, ENV).servers] == [False, True]
    assert [s.selected for s in build(tree, ENV, servers=["off.isp.net"]).servers] == [
        True, False
    ]


def test_dropdelivered_drops_delivered_to() -> None:
    mail = b"Delivered-To: bob@mail.isp.net\r\nFrom: alice@example.org\r\n\r\nhi\r\n"
    for drop, kept in ((True, False), (False, True)):
        prepared = run_prepare(mail, *accounts(dropdelivered=drop))
        assert not isinstance(prepared, Delivery)
        assert (b"Delivered-To: bob@mail.isp.net\r\n" in prepared[1].header) is kept


def test_fastuidl_finds_the_same_new_messages(
    tmp_path: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    """fastuidl only makes fetchmail faster; pyfetch, which reads every UID at once, finds
    the same new messages with it."""
    home = tmp_path / "home"
    home.mkdir()
    host, port = smtpd.address
    rc = home / ".fetchmailrc"
    rc.write_text(
        f"poll mail.isp.net via 127.0.0.1 service {dovecot.pop3} proto pop3 uidl\n"
        f"  user bob is bob here password hidden keep fastuidl 1\n"
        f"  sslcertfile {test_ca.ca_cert} sslcommonname localhost smtphost {host}/{port}\n"
    )
    rc.chmod(0o600)
    mails = [b"Subject: %d\r\n\r\nbody\r\n" % n for n in range(3)]
    dovecot.seed("bob", mails[:2])
    assert pyfetch(home).returncode == 0
    dovecot.seed("bob", mails[2:])
    assert pyfetch(home).returncode == 0
    assert pyfetch(home).returncode == 1
    assert [without_received(t.data) for t in smtpd.transactions] == mails


def _reading_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("reading message")]


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_showdots_puts_fetchmails_progress_marks_in_the_log(
    tmp_path: Path, dovecot: Dovecot, smtpd: SMTPServer, protocol: str, need_fetchmail: None,
) -> None:
    """`set showdots`: fetchmail's marks on each message's line, where nobody watches a
    terminal (here a pipe): its dots per kilobyte and its `#` after the header. fetchmail
    writes a `*` after every line of the body, pyfetch one after the body."""
    home = tmp_path / "home"
    home.mkdir()
    tunnel = preauth_tunnel(tmp_path, dovecot, protocol)
    host, port = smtpd.address
    rc = home / ".fetchmailrc"
    rc.write_text(
        f'set showdots\npoll mail.isp.net via localhost proto {protocol} plugin "{tunnel}" '
        f"auth ssh\n  user bob is bob here smtphost {host}/{port} sslproto '' keep\n"
    )
    rc.chmod(0o600)
    long_body = b"".join(b"%04d " % n + b"x" * 70 + b"\r\n" for n in range(60))  # 4.5 KB
    dovecot.seed("bob", [b"Subject: small\r\n\r\nhi\r\n", b"Subject: big\r\n\r\n" + long_body])
    ours = pyfetch(home, "-a")
    theirs = run_fetchmail(home, "-a")
    assert ours.returncode == theirs.returncode == 0, ours.stderr + theirs.stderr
    lines = _reading_lines(ours.stdout)
    assert [line.replace("*", "") for line in lines] == [
        line.replace("*", "") for line in _reading_lines(theirs.stdout)
    ]
    assert lines[1].endswith(("# (4620 body octets) ....* not flushed",  # with keep
                              "(4636 octets) #....* not flushed")), lines


def test_a_daemon_warns_of_oversized_messages_by_mail(
    tmp_path: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, need_fetchmail: None,
) -> None:
    """In the background, `limit` leaves big messages and tells the user by mail, again every
    `warnings` seconds; the mail is fetchmail's. (fetchmail itself sends it only once.)"""
    from test_e2e_daemon import fetchmail, wait_until, write_rcfile
    from test_e2e_daemon import pyfetch as daemon_pyfetch

    home = tmp_path / "home"
    home.mkdir()
    host, port = smtpd.address
    big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 30
    entry = (
        f"set daemon 1\n"
        f"poll mail.isp.net via 127.0.0.1 service {dovecot.pop3} proto pop3\n"
        f"  user bob is bob here password hidden limit 100 warnings {{warnings}} keep\n"
        f"  sslcertfile {test_ca.ca_cert} sslcommonname localhost smtphost {host}/{port}\n"
    )

    def warnings_sent() -> list[bytes]:
        return [t.data for t in smtpd.transactions if t.mail_from.startswith("FETCHMAIL-")]

    mails: dict[str, bytes] = {}
    for name, program in (("fetchmail", fetchmail), ("pyfetch", daemon_pyfetch)):
        dovecot.reset()
        dovecot.seed("bob", [big, big + b"y\r\n"])
        smtpd.clear()
        write_rcfile(home, entry.format(warnings=1 if name == "pyfetch" else 3600))
        try:
            assert program(home).returncode == 0  # it goes into the background
            count = 2 if name == "pyfetch" else 1
            wait_until(f"{name}'s warning", lambda n=count: len(warnings_sent()) >= n)  # type: ignore[misc]
        finally:
            program(home, "-q")
        mails[name] = warnings_sent()[0]
        assert len(dovecot.messages("bob")) == 2  # the big ones stay
    transaction = smtpd.transactions[0]
    assert transaction.rcpt_tos == ["bob@127.0.0.1"]
    lines = mails["pyfetch"].decode().split("\r\n")
    assert lines[0].startswith("From: FETCHMAIL-DAEMON@")
    assert lines[2:] == [
        "MIME-Version: 1.0",
        "Content-Transfer-Encoding: 8bit",
        'Content-Type: text/plain; charset="US-ASCII"',
        "Subject: Fetchmail oversized-messages warning",
        "",
        "The following oversized messages remain on server mail.isp.net account bob:",
        "",
        "  1 message  146 octets long skipped by pyfetch.",
        "  1 message  149 octets long skipped by pyfetch.",
        "",
        "-- ",
        "The pyfetch daemon",
        "",
    ]
    # (fetchmail ends the line of its signature's dashes with a bare LF)
    theirs = mails["fetchmail"].decode().replace("-- \n", "-- \r\n").split("\r\n")
    ours = [line.replace("pyfetch", "fetchmail").replace("The fetchmail daemon",
                                                        "The Fetchmail Daemon") for line in lines]
    assert [ours[0], *ours[2:]] == [theirs[0], *theirs[2:]]  # all but the Date


def test_size_warning_lists_sizes_in_the_order_met() -> None:
    envelope, message = build_size_warning(
        sizes=[500, 900, 500], deleted=True, server="mail.isp.net", account="bob",
        recipients=["bob@localhost"], sender_domain="here.org", date="D",
    )
    assert envelope.sender == "FETCHMAIL-DAEMON@here.org"
    assert envelope.recipients == ["bob@localhost"]
    text = message.body.read().decode()
    assert text.startswith(
        "The following oversized messages were deleted on server mail.isp.net account bob:\r\n"
        "\r\n  2 messages 500 octets long deleted by pyfetch.\r\n"
        "  1 message  900 octets long deleted by pyfetch.\r\n"
    )
    assert envelope.size == len(message.header) + len(text.encode())


# -- interface and monitor ----------------------------------------------------------------------

LO = Link(packets=1000, address=0x7F000001, peer=0x7F000001)
PPP = Link(packets=1000, address=0x0A000005, peer=0xC0A80101)


@pytest.mark.parametrize(
    ("spec", "link", "skip"),
    [
        ("lo/127.0.0.1", LO, None),
        ("lo/127.0.0.0/255.0.0.0", LO, None),
        ("lo/10.0.0.1", LO, "IP address excluded"),
        ("lo/127.0.0.2", LO, "IP address excluded"),
        ("ppp0/192.168.1.0/255.255.255.0", PPP, None),  # the peer's address counts too
        ("ppp0/10.0.0.5", PPP, None),
        ("ppp0/10.0.0.6", PPP, "IP address excluded"),
        ("ppp0/10.0.0.5", None, "down"),
    ],
)
def test_interface_decides_as_fetchmail(spec: str, link: Link | None, skip: str | None) -> None:
    assert interface_skip(spec, link) == skip


@pytest.mark.parametrize(
    ("noted", "packets", "skip"),
    [
        (None, 3, True),  # fetchmail counts from 0: a fresh link with 5 packets is idle
        (None, 6, False),
        (100, 100, True),
        (100, 105, True),  # a link going down sends a few packets (MONITOR_SLOP)
        (100, 106, False),
        (100, 50, False),  # counts went back: pppd restarted; poll
    ],
)
def test_monitor_decides_as_fetchmail(noted: int | None, packets: int, skip: bool) -> None:
    assert monitor_skip(noted, Link(packets, 1)) is skip
    assert monitor_skip(noted, None) is False  # a link that is down never skips


def test_monitor_counts_are_noted_for_the_entry_and_those_before_it() -> None:
    counts = MonitorCounts()
    order = [("a", "ppp0"), ("b", None), ("c", "ppp0"), ("d", "ppp0")]
    counts.note(order, "c", 500)
    assert [counts.noted(name) for name in "abcd"] == [500, None, 500, None]


def test_netdev_counts_packets_in_and_out() -> None:
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets ...\n"
        "    lo: 2622 78    0    0    0     0          0         0 2622 78 0 0 0 0 0 0\n"
        "  ppp0:12345 7 0 0 0 0 0 0 999 5 0 0 0 0 0 0\n"
    )
    assert netdev_packets(text, "lo") == 156
    assert netdev_packets(text, "ppp0") == 12
    assert netdev_packets(text, "eth9") is None


def _skipping(result: subprocess.CompletedProcess[str], program: str) -> list[str]:
    return [line.removeprefix(f"{program}: ") for line in result.stdout.splitlines()
            if "skipping poll" in line]


def test_interface_skips_the_poll_unless_the_link_is_up_with_the_address(
    tmp_path: Path, dovecot: Dovecot, smtpd: SMTPServer, need_fetchmail: None
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    tunnel = preauth_tunnel(tmp_path, dovecot, "pop3")
    host, port = smtpd.address
    rc = home / ".fetchmailrc"
    dovecot.seed("bob", [b"Subject: hi\r\n\r\nhello\r\n"])
    for spec, said in (("lo/10.0.0.1", "IP address excluded"), ("nosuch0/127.0.0.1", "down")):
        rc.write_text(
            f'poll mail.isp.net via localhost proto pop3 plugin "{tunnel}" auth ssh '
            f'interface "{spec}"\n  user bob is bob here smtphost {host}/{port} sslproto \'\'\n'
        )
        rc.chmod(0o600)
        ours, theirs = pyfetch(home), run_fetchmail(home)
        skipped = [f"skipping poll of mail.isp.net, {spec} {said}"]
        assert _skipping(ours, "pyfetch") == _skipping(theirs, "fetchmail") == skipped
        # nothing was polled: pyfetch says no mail (fetchmail says 0, mail retrieved)
        assert (ours.returncode, theirs.returncode) == (1, 0)
        assert smtpd.transactions == []
    rc.write_text(rc.read_text().replace("nosuch0/127.0.0.1", "lo/127.0.0.0/255.0.0.0"))
    ours = pyfetch(home)
    assert ours.returncode == 0, ours.stderr
    assert _skipping(ours, "pyfetch") == []
    assert len(smtpd.transactions) == 1


def test_monitor_skips_the_poll_while_the_link_is_idle(
    tmp_path: Path, dovecot: Dovecot, need_fetchmail: None
) -> None:
    """In a network namespace of its own, whose only link (lo) has carried nothing: the poll
    is skipped, as fetchmail skips it; once the link carried more than a few packets, the
    poll goes ahead. The mail comes through the plugin and goes to an MDA: no network."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run(
        [unshare, "-n", "true"], capture_output=True, check=False
    ).returncode != 0:
        unavailable("unshare -n (a network namespace) is not available here")
    home = tmp_path / "home"
    home.mkdir()
    tunnel = preauth_tunnel(tmp_path, dovecot, "pop3")
    rc = home / ".fetchmailrc"
    delivered = tmp_path / "delivered"
    rc.write_text(
        f'poll mail.isp.net via localhost proto pop3 plugin "{tunnel}" auth ssh monitor lo\n'
        f"  user bob is bob here sslproto '' keep mda \"cat >> {delivered}\"\n"
    )
    rc.chmod(0o600)
    dovecot.seed("bob", [b"Subject: hi\r\n\r\nhello\r\n"])
    traffic = (
        f"{sys.executable} -c \"import socket; s = socket.socket(socket.AF_INET, "
        "socket.SOCK_DGRAM); [s.sendto(b'x', ('127.0.0.1', 9)) for _ in range(10)]\""
    )
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "FETCHMAILHOME": str(home),
           "LC_ALL": "C", "PYTHONPATH": str(ROOT)}
    programs = {
        "pyfetch": f"{sys.executable} -m fetcher --pidfile {home}/pyfetch.pid -f {rc}",
        "fetchmail": f"fetchmail --pidfile {home}/fetchmail.pid -f {rc}",
    }
    for name, program in programs.items():
        for state in home.glob(".fetchids*"):
            state.unlink()
        delivered.unlink(missing_ok=True)
        script = (
            f"ip link set lo up && {program} > {home}/idle.out 2>&1; echo $? > {home}/idle.rc; "
            f"{traffic} && {program} > {home}/busy.out 2>&1; echo $? > {home}/busy.rc"
        )
        subprocess.run([unshare, "-n", "sh", "-c", script], env=env, cwd=home, timeout=120,
                       check=True)
        idle = (home / "idle.out").read_text()
        assert f"{name}: skipping poll of mail.isp.net, lo inactive" in idle, idle
        # nothing polled: pyfetch says no mail (fetchmail says 0, mail retrieved)
        assert (home / "idle.rc").read_text().strip() == ("1" if name == "pyfetch" else "0")
        busy = (home / "busy.out").read_text()
        assert "skipping poll" not in busy, busy
        assert (home / "busy.rc").read_text().strip() == "0", busy
        assert delivered.read_bytes().count(b"Subject: hi") == 1  # by the second run only
