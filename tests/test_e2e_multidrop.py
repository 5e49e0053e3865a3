"""Multidrop as a user runs it: one Dovecot mailbox holds a whole domain's mail, and each
message must reach exactly the local users it was written for, through a real SMTP or LMTP
listener; and the real fetchmail, on the same mailbox and rcfile, routes the same way wherever
it routes right.

The mailbox is bob's on the test Dovecot; the account's local names are alice, bob and hurkle
(delivered as happy), the domain example.com is passed through whole (`localdomains`), and
`no dns` keeps both programs off the network.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from reference import FETCHMAIL, private_pidfile_args
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer, Transaction
from test_e2e_pop3 import pyfetch

from fetcher import session
from fetcher.exitcodes import ExitCode
from fetcher.model import GlobalOptions, ServerOptions, UserOptions
from fetcher.report import Reporter
from fetcher.resolver import GetAddrInfo, TimedResolver
from fetcher.run import default_driver
from fetcher.session import AccountPoll
from fetcher.sinks.factory import sink_for

SERVER_OPTIONS = "no dns aka mail.isp.net localdomains example.com"
USERS = "to alice bob 'hurkle'='happy' here"


def rcfile(
    home: Path,
    dovecot: Dovecot,
    test_ca: TestCA,
    listener: SMTPServer,
    *,
    server_options: str = SERVER_OPTIONS,
    users: str = USERS,
    options: str = "",
    globals_: str = "",
    protocol: str = "pop3",
) -> Path:
    host, port = listener.address
    path = home / ".fetchmailrc"
    path.write_text(
        f"{globals_}\n"
        f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports[protocol]} proto {protocol}\n"
        f"  {server_options}\n"
        f"  user bob {users} password hidden\n"
        f"  sslcertfile {test_ca.ca_cert} sslcommonname localhost\n"
        f"  smtphost {host}/{port} {options}\n"
    )
    path.chmod(0o600)
    return path


def run_fetchmail(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real fetchmail on home/.fetchmailrc, with a private FETCHMAILHOME and pidfile."""
    assert FETCHMAIL is not None
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "FETCHMAILHOME": str(home), "LC_ALL": "C"}
    argv = [FETCHMAIL, "-f", str(home / ".fetchmailrc"),
            *private_pidfile_args(home / "fetchmail-run"), *args]  # fmt: skip
    return subprocess.run(
        argv, env=env, cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        errors="replace", timeout=120, check=False,
    )  # fmt: skip


def message(subject: str, fields: str) -> bytes:
    return (
        f"Return-Path: <sender@example.org>\r\nFrom: Sender <sender@example.org>\r\n"
        f"{fields}Subject: {subject}\r\n\r\nFor whom is {subject}?\r\n"
    ).encode()


def server_received(recipient: str) -> str:
    """The line the domain's MTA wrote when the message reached the mailbox."""
    return (
        "Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n"
        "\tby mail.isp.net (Postfix) with ESMTP id 4AB\r\n"
        f"\tfor <{recipient}>; Mon, 30 Nov 2026 10:00:00 +0000\r\n"
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


POSTMASTER = "postmaster@127.0.0.1"  # both run as root: the postmaster is `postmaster`

# subject -> (header fields, RCPT TO set pyfetch gives, fetchmail's where it routes worse)
CORPUS: dict[str, tuple[str, set[str], set[str] | None]] = {
    "received-for": (server_received("alice@mail.isp.net") + "To: bob@mail.isp.net\r\n",
                     {"alice@127.0.0.1"}, None),
    "received-elsewhere": (
        "Received: from a.example.org by relay.example.net for <bob@mail.isp.net>; Mon\r\n"
        "To: alice@mail.isp.net\r\n", {"alice@127.0.0.1"}, None),
    "to-and-cc": ("To: alice@mail.isp.net\r\nCc: Bob <bob@mail.isp.net>\r\n",
                  {"alice@127.0.0.1", "bob@127.0.0.1"}, None),
    "resent": ("To: alice@mail.isp.net\r\nResent-To: hurkle@mail.isp.net\r\n",
               {"happy@127.0.0.1"}, None),
    "mixed-case": ("To: BOB@Mail.ISP.Net\r\n", {"bob@127.0.0.1"}, None),
    "local-domain": ("To: carol@sub.example.com, dave@example.com\r\n",
                     {"carol@sub.example.com", "dave@example.com"}, None),
    "nobody-here": ("To: stranger@elsewhere.org\r\n", {POSTMASTER}, None),
    "unqualified": ("To: alice\r\n", {"alice@127.0.0.1"}, None),
    "duplicates": ("To: bob@mail.isp.net, Bob <BOB@mail.isp.net>\r\nCc: bob@mail.isp.net\r\n",
                   {"bob@127.0.0.1"}, None),
    "comments": ("To: (the boss) bob@mail.isp.net (at home)\r\n", {"bob@127.0.0.1"}, None),
    "encoded-word": ("To: =?utf-8?q?Doe,_John?= <hurkle@mail.isp.net>\r\n",
                     {"happy@127.0.0.1"}, None),
    # fetchmail glues a group's name to its first address and keeps its `;` on the last one
    "group": ("To: Team: alice@mail.isp.net, bob@mail.isp.net;\r\n",
              {"alice@127.0.0.1", "bob@127.0.0.1"}, {POSTMASTER}),
    # fetchmail keeps the quotes, and no local name is `"hurkle"`
    "quoted-local-part": ('To: "hurkle"@mail.isp.net\r\n', {"happy@127.0.0.1"}, {POSTMASTER}),
}


def corpus() -> list[bytes]:
    return [message(subject, fields) for subject, (fields, _, _) in CORPUS.items()]


def by_subject(transactions: list[Transaction]) -> dict[str, set[str]]:
    routed: dict[str, set[str]] = {}
    for transaction in transactions:
        parsed = email.message_from_bytes(transaction.data, policy=email.policy.compat32)
        routed.setdefault(str(parsed["Subject"]), set()).update(transaction.rcpt_tos)
    return routed


@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_each_message_reaches_exactly_its_recipients(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, protocol: str
) -> None:
    dovecot.seed("bob", corpus())
    rcfile(home, dovecot, test_ca, smtpd, protocol=protocol)
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert by_subject(smtpd.transactions) == {s: rcpt for s, (_, rcpt, _) in CORPUS.items()}
    assert len(smtpd.transactions) == len(CORPUS)  # one transaction per message
    assert dovecot.messages("bob") == []
    # no `envelope` line: fetchmail's warning, word for word
    assert "pyfetch: warning: multidrop for mail.isp.net requires envelope option!\n" in (
        result.stderr
    )
    for transaction in smtpd.transactions:
        data = transaction.data
        if len(transaction.rcpt_tos) == 1:
            assert f"\tfor <{transaction.rcpt_tos[0]}> (multi-drop); ".encode() in data
        else:
            assert b"\tfor <" not in data.split(b"\r\n\r\n")[0]
        warned = b"X-Fetchmail-Warning: " in data
        assert warned is (transaction.rcpt_tos == [POSTMASTER]), data
    nobody = next(t for t in smtpd.transactions if b"Subject: nobody-here" in t.data)
    assert (b"X-Fetchmail-Warning: recipient address stranger@elsewhere.org didn't match any "
            b"local name\r\n\r\n") in nobody.data


# Messages whose routing depends on the `envelope` option, and who gets each under each of the
# options below (the corpus's "received-for" too: its Received line is read by default only).
ENVELOPES = {
    "original-to": "X-Original-To: hurkle@mail.isp.net\r\nTo: bob@mail.isp.net\r\n",
    "delivered-to": "Delivered-To: isp-bob@mail.isp.net\r\n"
    "Delivered-To: isp-hurkle@mail.isp.net\r\n"
    "To: alice@mail.isp.net\r\n",
}
ALICE, BOB, HAPPY = {"alice@127.0.0.1"}, {"bob@127.0.0.1"}, {"happy@127.0.0.1"}


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize(
    ("server_options", "expected"),
    [
        # the server's Received line, else the header
        ("", {"received-for": ALICE, "original-to": BOB, "delivered-to": ALICE}),
        ("no envelope", {"received-for": BOB, "original-to": BOB, "delivered-to": ALICE}),
        ("envelope X-Original-To",
         {"received-for": BOB, "original-to": HAPPY, "delivered-to": ALICE}),
        # the second Delivered-To, qmail's prefix taken off
        ("envelope 1 Delivered-To qvirtual isp-",
         {"received-for": BOB, "original-to": BOB, "delivered-to": HAPPY}),
    ],
)
def test_routes_as_fetchmail_does_where_fetchmail_is_right(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, server_options: str,
    expected: dict[str, set[str]],
) -> None:
    """The same mailbox, the same rcfile: the RCPT TO set of each message, fetchmail's against
    pyfetch's. They differ only where fetchmail's address reader goes wrong (README)."""
    messages = [*corpus(), *(message(s, fields) for s, fields in ENVELOPES.items())]
    rcfile(home, dovecot, test_ca, smtpd, server_options=f"{SERVER_OPTIONS} {server_options}")
    dovecot.seed("bob", messages)
    theirs = run_fetchmail(home)
    assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    assert dovecot.messages("bob") == []
    done = len(smtpd.transactions)
    dovecot.seed("bob", messages)
    ours = pyfetch(home)
    assert ours.returncode == 0, ours.stdout + ours.stderr
    fetchmails, pyfetchs = smtpd.transactions[:done], smtpd.transactions[done:]

    expected = {**{s: rcpt for s, (_, rcpt, _) in CORPUS.items()}, **expected}
    assert by_subject(pyfetchs) == expected
    fetchmail_wrong = {s: worse for s, (_, _, worse) in CORPUS.items() if worse is not None}
    assert by_subject(fetchmails) == {**expected, **fetchmail_wrong}
    # one transaction per message in both; fetchmail names bob thrice where pyfetch does once
    assert len(fetchmails) == len(pyfetchs) == len(messages)
    assert all(len(set(t.rcpt_tos)) == len(t.rcpt_tos) for t in pyfetchs)
    assert max(len(t.rcpt_tos) for t in fetchmails if b"Subject: duplicates" in t.data) == 3
    # the same warning on the same message, the same startup warnings
    theirs_right = {s: w for s, w in warnings_of(fetchmails).items() if s not in fetchmail_wrong}
    assert theirs_right == warnings_of(pyfetchs) != {}
    assert ("requires envelope option" in theirs.stderr) is (server_options == "")
    assert ("requires envelope option" in ours.stderr) is (server_options == "")


def warnings_of(transactions: list[Transaction]) -> dict[str, str]:
    """Subject -> its X-Fetchmail-Warning, for the messages that have one."""
    found = {}
    for transaction in transactions:
        parsed = email.message_from_bytes(transaction.data, policy=email.policy.compat32)
        if parsed["X-Fetchmail-Warning"] is not None:
            found[str(parsed["Subject"])] = str(parsed["X-Fetchmail-Warning"])
    return found


@pytest.mark.smtp_fault(step="rcpt", recipient="bob@127.0.0.1", code=550,
                        text="5.1.1 bob: no such user")
def test_a_refused_recipient_is_bounced_and_the_others_get_it(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", [message("for two", "To: alice@mail.isp.net, bob@mail.isp.net\r\n")])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    delivered, bounce = smtpd.transactions
    assert delivered.rcpt_tos == ["alice@127.0.0.1"]
    assert b"Subject: for two" in delivered.data
    assert (bounce.mail_from, bounce.rcpt_tos) == ("<>", ["sender@example.org"])
    assert b"Final-Recipient: rfc822; bob@127.0.0.1" in bounce.data
    assert b"550 5.1.1 bob: no such user" in bounce.data
    assert b"alice@127.0.0.1" not in bounce.data
    assert "pyfetch: SMTP error: 550 5.1.1 bob: no such user" in result.stderr
    assert dovecot.messages("bob") == []


@pytest.mark.smtp_fault(step="rcpt", recipient="alice@127.0.0.1", code=550, text="5.1.1 no")
@pytest.mark.smtp_fault(step="rcpt", recipient="bob@127.0.0.1", code=550, text="5.1.1 no")
def test_every_recipient_refused_goes_to_the_postmaster(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", [message("refused", "To: alice@mail.isp.net, bob@mail.isp.net\r\n")])
    rcfile(home, dovecot, test_ca, smtpd, globals_="set postmaster pm")
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    to_postmaster, bounce = smtpd.transactions
    assert to_postmaster.rcpt_tos == ["pm@127.0.0.1"]
    assert b"\tfor <pm@127.0.0.1> (by default); " in to_postmaster.data
    assert (b"X-Fetchmail-Warning: SMTP listener rejected local recipient addresses: "
            b"alice@127.0.0.1, bob@127.0.0.1\r\n\r\n") in to_postmaster.data
    assert bounce.rcpt_tos == ["sender@example.org"]
    assert dovecot.messages("bob") == []


@pytest.mark.smtp_fault(step="rcpt", recipient="bob@127.0.0.1", code=452, text="4.2.2 full",
                        times=1)
def test_a_deferred_recipient_keeps_the_whole_message_for_the_next_poll(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", [message("later", "To: alice@mail.isp.net, bob@mail.isp.net\r\n")])
    rcfile(home, dovecot, test_ca, smtpd)
    first = pyfetch(home)
    assert "pyfetch: SMTP error: 452 4.2.2 full" in first.stderr
    assert smtpd.transactions == []  # alice did not get it either: no DATA was sent
    assert len(dovecot.messages("bob")) == 1
    second = pyfetch(home)
    assert second.returncode == 0, second.stdout + second.stderr
    assert [sorted(t.rcpt_tos) for t in smtpd.transactions] == [
        ["alice@127.0.0.1", "bob@127.0.0.1"]
    ]
    assert dovecot.messages("bob") == []


@pytest.mark.lmtp_fault(step="eom", recipient="bob@127.0.0.1", code=550, text="5.2.1 closed")
def test_lmtp_refusal_of_one_recipient_delivers_to_the_others_and_tells_the_postmaster(
    home: Path, dovecot: Dovecot, test_ca: TestCA, lmtpd: SMTPServer
) -> None:
    dovecot.seed("bob", [message("lmtp", "To: alice@mail.isp.net, bob@mail.isp.net\r\n")])
    rcfile(home, dovecot, test_ca, lmtpd, options="lmtp", globals_="set no bouncemail")
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    delivered, notice = lmtpd.transactions
    assert delivered.rcpt_tos == ["alice@127.0.0.1", "bob@127.0.0.1"]
    assert delivered.reply_for("alice@127.0.0.1").startswith("250")
    assert delivered.reply_for("bob@127.0.0.1").startswith("550")
    assert notice.rcpt_tos == ["postmaster"]  # `no bouncemail`: not the sender
    assert b"Final-Recipient: rfc822; bob@127.0.0.1" in notice.data
    assert "pyfetch: LMTP error: 550 5.2.1 closed" in result.stderr
    assert dovecot.messages("bob") == []


def test_nobody_named_and_no_postmaster_refuses_the_message(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", [message("lost", "To: stranger@elsewhere.org\r\n")])
    rcfile(home, dovecot, test_ca, smtpd, globals_='set postmaster ""')
    result = pyfetch(home)
    assert "pyfetch: no address matches; no postmaster set." in result.stderr
    assert smtpd.transactions == []
    assert len(dovecot.messages("bob")) == 1  # softbounce: kept


def test_the_poll_name_is_the_servers_without_aka(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", [message("poll name", "To: hurkle@mail.isp.net\r\n")])
    rcfile(home, dovecot, test_ca, smtpd, server_options="no dns envelope X-Original-To")
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [t.rcpt_tos for t in smtpd.transactions] == [["happy@127.0.0.1"]]
    assert "requires envelope option" not in result.stderr


@pytest.mark.parametrize(
    ("options", "rcpt"),
    [
        ("smtpaddress example.net", ["alice@example.net", "bob@example.net"]),
        # every local name becomes the one address: given once, not twice
        ("smtpname catchall@example.net", ["catchall@example.net"]),
    ],
)
def test_smtpaddress_and_smtpname_shape_the_rcpt_addresses(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, options: str,
    rcpt: list[str],
) -> None:
    dovecot.seed("bob", [message("shaped", "To: alice@mail.isp.net, bob@mail.isp.net\r\n")])
    rcfile(home, dovecot, test_ca, smtpd, options=options)
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [t.rcpt_tos for t in smtpd.transactions] == [rcpt]


def test_an_mda_gets_only_the_routed_names(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", [
        message("one", "To: alice@mail.isp.net, hurkle@mail.isp.net\r\n"),
        message("two", "To: nobody@elsewhere.org\r\n"),
    ])
    names = home / "names"
    rcfile(home, dovecot, test_ca, smtpd, options=f'mda "echo %T >> {names}; cat >/dev/null"')
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    assert names.read_text().splitlines() == ["alice happy", "postmaster"]
    assert smtpd.transactions == []


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.smtp_fault(step="rcpt", recipient="bob@127.0.0.1", code=550, text="5.1.1 no bob")
@pytest.mark.smtp_fault(step="rcpt", recipient="happy@127.0.0.1", code=550, text="5.1.1 no")
def test_refused_recipients_as_fetchmail_handles_them(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    """One recipient of two refused: the other gets it; both refused: the postmaster does.
    Either way the message leaves the server. (fetchmail sends its notices to port 25 of
    localhost, which nothing here listens on; `no bouncemail` keeps them local anyway.)"""
    messages = [
        message("one-refused", "To: alice@mail.isp.net, bob@mail.isp.net\r\n"),
        message("all-refused", "To: bob@mail.isp.net, hurkle@mail.isp.net\r\n"),
    ]
    rcfile(home, dovecot, test_ca, smtpd, globals_="set no bouncemail\nset postmaster pm")
    routed = []
    for run in (run_fetchmail, pyfetch):
        dovecot.seed("bob", messages)
        done = len(smtpd.transactions)
        result = run(home)
        assert result.returncode == 0, result.stdout + result.stderr
        assert dovecot.messages("bob") == []
        mail = [t for t in smtpd.transactions[done:] if t.mail_from != "<>"]
        routed.append(by_subject(mail))
        assert "SMTP error: 550 5.1.1 no bob" in result.stderr
    fetchmails, pyfetchs = routed
    assert pyfetchs == fetchmails == {"one-refused": {"alice@127.0.0.1"},
                                      "all-refused": {"pm@127.0.0.1"}}


# -- DNS: a real poll, a fake resolver (the tests never ask the network) -------------------------


def poll_in_process(
    dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, getaddrinfo: GetAddrInfo,
    monkeypatch: pytest.MonkeyPatch, *, checkalias: bool = False,
) -> tuple[int, list[str]]:
    """One poll of the multidrop mailbox with `dns` on, pyfetch's DNS look-ups answered by
    `getaddrinfo`: the exit code and the error lines."""
    monkeypatch.setattr(
        session, "TimedResolver", lambda timeout: TimedResolver(timeout, getaddrinfo)
    )
    host, port = smtpd.address
    server = ServerOptions(
        pollname="mail.isp.net", via="127.0.0.1", protocol="POP3",
        service=str(dovecot.ports["pop3"]), timeout=1, dns=True, checkalias=checkalias,
    )  # fmt: skip
    user = UserOptions(
        remote="bob", password="hidden", localnames=[("alice", None), ("bob", None)],
        sslcertfile=str(test_ca.ca_cert), sslcommonname="localhost", smtphunt=[f"{host}/{port}"],
    )  # fmt: skip
    errors: list[str] = []
    reporter = Reporter(silent=True)
    monkeypatch.setattr(reporter, "error", errors.append)
    account = AccountPoll(
        server, user, GlobalOptions(postmaster="pm"), None, reporter, default_driver, sink_for
    )
    result = asyncio.run(account.run())
    return result.status, errors


def answers(table: dict[str, tuple[str, str] | int]) -> GetAddrInfo:
    """A getaddrinfo: name -> (canonical name, address), or an EAI_* error number."""
    def getaddrinfo(name: str, *args: object) -> list[tuple[Any, ...]]:
        answer = table.get(name, socket.EAI_NONAME)
        if isinstance(answer, int):
            raise socket.gaierror(answer, f"error {answer}")
        canonical, address = answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, canonical, (address, 0))]
    return getaddrinfo


@pytest.mark.parametrize(
    ("table", "checkalias", "rcpt"),
    [
        # DNS says mx.isp.test is the server (its canonical name): bob's
        ({"mx.isp.test": ("mail.isp.net", "192.0.2.7")}, False, ["bob@127.0.0.1"]),
        # another name for the same address: the server's only with `checkalias`
        ({"mx.isp.test": ("mx.isp.test", "127.0.0.1"), "127.0.0.1": ("localhost", "127.0.0.1")},
         True, ["bob@127.0.0.1"]),
        ({"mx.isp.test": ("mx.isp.test", "127.0.0.1"), "127.0.0.1": ("localhost", "127.0.0.1")},
         False, ["pm@127.0.0.1"]),
        ({}, False, ["pm@127.0.0.1"]),  # no such name: nobody here
    ],
)
def test_dns_says_which_names_are_the_servers(
    dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, monkeypatch: pytest.MonkeyPatch,
    table: dict[str, tuple[str, str] | int], checkalias: bool, rcpt: list[str],
) -> None:
    dovecot.seed("bob", [message("dns", "To: bob@mx.isp.test\r\n")])
    status, errors = poll_in_process(
        dovecot, test_ca, smtpd, answers(table), monkeypatch, checkalias=checkalias
    )
    assert (status, errors) == (ExitCode.SUCCESS, [])
    assert [t.rcpt_tos for t in smtpd.transactions] == [rcpt]
    assert dovecot.messages("bob") == []


def test_a_failing_resolver_keeps_the_message_for_the_next_poll(
    dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dovecot.seed("bob", [
        message("unsure", "To: bob@mx.isp.test\r\n"),
        message("sure", "To: alice@mail.isp.net\r\n"),  # no look-up needed
    ])
    status, errors = poll_in_process(
        dovecot, test_ca, smtpd, answers({"mx.isp.test": socket.EAI_AGAIN}), monkeypatch
    )
    assert status is ExitCode.SUCCESS
    assert errors == [f"nameserver failure while looking for 'mx.isp.test' during poll of "
                      f"mail.isp.net: error {socket.EAI_AGAIN}"]
    assert by_subject(smtpd.transactions) == {"sure": {"alice@127.0.0.1"}}
    assert [b"Subject: unsure" in m for m in dovecot.messages("bob")] == [True]


def test_a_resolver_that_never_answers_costs_a_message_a_wait_not_the_poll(
    dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def hanging(name: str, *args: object) -> list[tuple[Any, ...]]:
        release.wait()
        raise socket.gaierror(socket.EAI_AGAIN, "too late")

    dovecot.seed("bob", [
        message("first", "To: bob@mx1.isp.test\r\n"),
        message("second", "To: bob@mx2.isp.test\r\n"),
        message("third", "To: alice@mail.isp.net\r\n"),
    ])
    try:
        status, errors = poll_in_process(dovecot, test_ca, smtpd, hanging, monkeypatch)
    finally:
        release.set()
    assert status is ExitCode.SUCCESS
    # each name costs one timeout (the server's own is never reached: the first question
    # already failed); the messages that need DNS wait for the next poll, the others go
    assert errors == [
        "nameserver failure while looking for 'mx1.isp.test' during poll of mail.isp.net: "
        "no answer within 1 seconds",
        "nameserver failure while looking for 'mx2.isp.test' during poll of mail.isp.net: "
        "no answer within 1 seconds",
    ]
    assert by_subject(smtpd.transactions) == {"third": {"alice@127.0.0.1"}}
    assert len(dovecot.messages("bob")) == 2


@pytest.mark.smtp_fault(step="rcpt", recipient="alice@127.0.0.1", code=550, text="5.1.1 no")
@pytest.mark.smtp_fault(step="rcpt", recipient="bob@127.0.0.1", code=550, text="5.1.1 no")
def test_a_large_streamed_message_refused_to_all_reaches_the_postmaster_whole(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    """A message large enough to be streamed to the listener while the server still sends it
    is read a second time for the postmaster, from its first octet to its last."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n"
    body = line * ((session.STREAM_OCTETS + (1 << 20)) // len(line))
    dovecot.seed("bob", [message("big", "To: alice@mail.isp.net, bob@mail.isp.net\r\n") + body])
    rcfile(home, dovecot, test_ca, smtpd, globals_="set postmaster pm")
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr
    to_postmaster = next(t for t in smtpd.transactions if t.mail_from != "<>")
    assert to_postmaster.rcpt_tos == ["pm@127.0.0.1"]
    assert to_postmaster.data.endswith(b"For whom is big?\r\n" + body)
    assert dovecot.messages("bob") == []
