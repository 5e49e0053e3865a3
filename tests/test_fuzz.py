"""Random and mutated rcfiles: the front end returns a configuration or its own error, nothing else.

Whatever the bytes, `pyfetch` must end with a configuration or a ConfigError (exit 5), never
a traceback.
"""

from __future__ import annotations

from pathlib import Path

from conftest import TESTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fetcher.config import Environment, build
from fetcher.configdump import configdump
from fetcher.errors import ConfigError
from fetcher.exitcodes import ExitCode
from fetcher.rcfile import parse
from fetcher.rcfile.lexer import KEYWORD_NAMES

ENV = Environment(user="bob", home="/home/bob", fetchmailhome=None, is_root=False)
CORPUS = [p.read_bytes() for p in sorted((TESTS / "corpus").glob("*/*.rc"))]
WORDS = sorted(
    {*KEYWORD_NAMES.values(), "poll", "skip", "user", "is", "to", "here", "there", "=", "no",
     "pop3", "IMAP", "kpop", "auth", "password", "pass", "*", "nokeep", "1234", "-1",
     '"quoted str"', "'single'", "\\x41", "\\", "#", "\n", ",", ";", ":", '"', "'",
     "service", "port", "interface", "smtphost", "lmtp", "idle", "folder", '"\\xff"',
     '"x/\\xfe"', "\\0101", '"e/1.2.3.4/\\x80"', "defaults", "via", "aka"}
)


def check(data: bytes) -> None:
    try:
        config = build(parse(data, "/home/bob/.fetchmailrc"), ENV, dumping=True)
    except ConfigError as err:
        assert err.exit_code == ExitCode.SYNTAX
        assert str(err)
        return
    configdump(config)  # and the dump can always be written


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check(data)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=40))
def test_random_keyword_soup(words: list[str]) -> None:
    check(" ".join(words).encode())


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(CORPUS),
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=8),
                  st.binary(max_size=8)),
        min_size=1, max_size=4,
    ),
)
def test_mutated_corpus_files(original: bytes, edits: list[tuple[int, int, bytes]]) -> None:
    data = bytearray(original)
    for position, length, replacement in edits:
        at = position % (len(data) + 1)
        data[at : at + length] = replacement
    check(bytes(data))


def test_corpus_is_there() -> None:
    assert len(CORPUS) > 100
    assert Path(TESTS / "corpus" / "good").is_dir()


# Keyword-value pairs in the places the grammar expects them, with hostile values: this
# reaches the checks after parsing (ports, interfaces, listeners) that a soup rarely does.
VALUES = ["x", '""', '"\\xff"', '"a/\\xfe"', "0", "-1", "99999999999", '"pop3s"', '"kpop"',
          '"e/1.2.3.4/255.0.0.0"', '"/sock"', '"h/25"', '"h/smtp"', "*", '"\\0101"']
SERVER_WORDS = ["via", "service", "port", "interval", "timeout", "envelope", "qvirtual",
                "interface", "monitor", "plugin", "aka", "localdomains", "principal"]
USER_WORDS = ["is", "to", "password", "folder", "smtphost", "mda", "bsmtp", "limit",
              "fetchlimit", "expunge", "sslproto", "antispam", "smtpname"]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(SERVER_WORDS), st.sampled_from(VALUES)), max_size=4),
    st.lists(st.tuples(st.sampled_from(USER_WORDS), st.sampled_from(VALUES)), max_size=4),
    st.lists(st.sampled_from(["lmtp", "idle", "keep", "ssl", "no dns", "proto kpop",
                              "proto etrn", "auth ssh", "auth kerberos_v4"]), max_size=3),
)
def test_structured_entries(
    server: list[tuple[str, str]], user: list[tuple[str, str]], flags: list[str]
) -> None:
    server_text = " ".join(f"{k} {v}" for k, v in server)
    flag_text = " ".join(f for f in flags if f.startswith(("proto", "auth", "no dns")))
    user_flags = " ".join(f for f in flags if not f.startswith(("proto", "auth", "no dns")))
    user_text = " ".join(f"{k} {v}" for k, v in user)
    check(f"poll h {flag_text} {server_text} user u {user_text} {user_flags}\n".encode())
