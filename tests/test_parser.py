"""The grammar: what each construct records, and where errors point."""

from __future__ import annotations

import pytest

from fetcher.errors import RcSyntaxError
from fetcher.rcfile.parser import RcFile, parse


def tree(text: str) -> RcFile:
    return parse(text.encode(), "/home/bob/.fetchmailrc")


def test_the_seed_configuration() -> None:
    rc = tree("poll mail.isp.net proto POP3 user bob is bob here password hidden\n")
    (entry,) = rc.entries
    assert entry.name == "mail.isp.net"
    assert entry.server == {"protocol": "POP3"}
    (user,) = entry.users
    assert user.options == {"remote": "bob", "localnames": [("bob", None)], "password": "hidden"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("poll h user bob", {"remote": "bob"}),
        ("poll h user bob there", {"remote": "bob"}),
        ("poll h user bob here", {"localnames": [("bob", None)]}),
        ("poll h user a b here", {"localnames": [("a", None), ("b", None)]}),
        ("poll h user a = b here", {"localnames": [("a", "b")]}),
        ("poll h user jim here is jimmy there", {"localnames": [("jim", None)], "remote": "jimmy"}),
        ("poll h user r to a b * here", {"remote": "r", "localnames": [("a", None), ("b", None)],
                                         "wildcard": True}),
        ("poll h user r is *", {"remote": "r", "wildcard": True}),
        ("poll h user r folder a, b folder c", {"remote": "r", "mailboxes": ["a", "b", "c"]}),
        ("poll h user r antispam 571 550 antispam 501",
         {"remote": "r", "antispam": [571, 550, 501]}),
        ("poll h user r nokeep no fetchall ssl no sslcertck",
         {"remote": "r", "keep": False, "fetchall": False, "ssl": True, "sslcertck": False}),
        ("poll h user r limit 0 expunge 5", {"remote": "r", "limit": 0, "expunge": 5}),
    ],
)
def test_user_clauses(text: str, expected: dict[str, object]) -> None:
    (entry,) = tree(text).entries
    assert entry.users[0].options == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("poll h via 10.0.0.1 port 1110", {"via": "10.0.0.1", "service": "1110"}),
        ("poll h service pop3s", {"service": "pop3s"}),
        ("poll h proto kpop", {"protocol": "POP3", "service": "kpop"}),
        ("poll h auth password proto kpop", {"auth": "kerberos_v5", "protocol": "POP3",
                                             "service": "kpop"}),
        ("poll h proto kpop auth password", {"auth": "password", "protocol": "POP3",
                                             "service": "kpop"}),
        ("poll h proto sdps", {"protocol": "POP3", "sdps": True}),
        ("poll h envelope 2 X-Envelope-To", {"envelope": "X-Envelope-To", "envskip": 2}),
        ("poll h no envelope", {"envelope": None, "envskip": 0}),
        ("poll h aka a b localdomains c d", {"aka": ["a", "b"], "localdomains": ["c", "d"]}),
        ("poll h bad-header accept nodns no uidl", {"badheader": True, "dns": False,
                                                    "uidl": False}),
        ("poll h auth cram-md5 timeout 60 interval 3", {"auth": "cram-md5", "timeout": 60,
                                                        "interval": 3}),
    ],
)
def test_server_options(text: str, expected: dict[str, object]) -> None:
    (entry,) = tree(text).entries
    assert entry.server == expected


def test_globals_and_entry_kinds() -> None:
    rc = tree(
        "set daemon 300\nset logfile = log\nset no bouncemail\nset nospambounce\n"
        "defaults proto imap\nskip h1 user a\nserver h2 user b user c\n"
    )
    assert rc.globals == {"poll_interval": 300, "logfile": "log", "bouncemail": False,
                          "spambounce": False}
    assert [(e.name, e.skip, e.is_defaults) for e in rc.entries] == [
        ("defaults", False, True), ("h1", True, False), ("h2", False, False)
    ]
    assert [u.options for u in rc.entries[2].users] == [{"remote": "b"}, {"remote": "c"}]


def test_implicit_user_block() -> None:
    (entry,) = tree("poll h proto pop3 password secret keep").entries
    (user,) = entry.users
    assert not user.explicit
    assert user.options == {"password": "secret", "keep": True}


@pytest.mark.parametrize(
    ("text", "line", "message", "token"),
    [
        ("poll h user bob keep uidl\n", 1, "server option after user options", "uidl"),
        ("poll h user bob keep\n  aka x y\npoll z", 3, "server option after user options", "poll"),
        ("poll h keep user bob", 1, "syntax error", "user"),
        ("\n\nPoll h", 3, "syntax error", "Poll"),
        ("poll h folder 1234", 1, "syntax error", "1234"),
        ("poll h auth bogus", 1, "syntax error", "bogus"),
        ("set daemon = 300", 1, "syntax error", "300"),
        ("set nosoftbounce", 1, "syntax error", "nosoftbounce"),
        ("poll h user a b", 1, "syntax error", "end of input"),
        ("poll", 1, "syntax error", "end of input"),
        ("poll h here", 1, "syntax error", "here"),
    ],
)
def test_errors_name_line_and_token(text: str, line: int, message: str, token: str) -> None:
    with pytest.raises(RcSyntaxError) as info:
        tree(text)
    err = info.value
    assert (err.line, err.reason, err.token) == (line, message, token)
    assert str(err) == f"/home/bob/.fetchmailrc:{line}: {message} at {token}"
