"""fetcher.recipients as tables: which local users a multidrop message is for.

Each row is a header as a server hands it over, the account's routing options, and what a
user would see: who gets the message (the RCPT TO local names, or whole addresses in a local
domain), where they were found, and which addresses were not the server's (they make the
X-Fetchmail-Warning of a message that goes to the postmaster). DNS is a fake function here.
"""

from __future__ import annotations

import dataclasses
import io
import socket
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher import message
from fetcher.message import read_header
from fetcher.recipients import (
    MAX_ADDRESSES,
    MAX_LOOKUPS,
    REWRITTEN,
    HostInfo,
    LookupFailed,
    ParsedAddress,
    Routing,
    Source,
    parse_addresses,
    received_for,
    route,
)
from fetcher.resolver import TimedResolver

BASE = Routing(
    server_names=("mail.example.org",),
    aka=("example.net",),
    localdomains=("local.test",),
    localnames=(("alice", None), ("bob", None), ("hurkle", "happy")),
)

SERVER_RECEIVED = (
    "Received: from mx.out.net (mx.out.net [192.0.2.1])\r\n"
    "\tby mail.example.org (Postfix) with ESMTP id 4AB\r\n"
    "\tfor <{}>; Mon, 1 Jan 2024 10:00:00 +0000\r\n"
)


def header(text: str) -> message.RawHeader:
    return read_header(io.BytesIO(text.encode("utf-8") + b"\r\n"))


def routing(**changes: Any) -> Routing:
    return dataclasses.replace(BASE, **changes)


# (header, routing changes, recipients, source, rejected)
ROWS: list[tuple[str, dict[str, Any], tuple[str, ...], Source | None, tuple[str, ...]]] = [
    # -- the server's own Received line, its `for` clause --------------------------------------
    (SERVER_RECEIVED.format("bob@mail.example.org") + "To: alice@mail.example.org\r\n",
     {}, ("bob",), Source.RECEIVED, ()),
    # another host's Received line names nobody; the next one, the server's, does
    ("Received: from a.net by relay.other.net with SMTP for <carol@mail.example.org>; x\r\n"
     + SERVER_RECEIVED.format("alice@mail.example.org"), {}, ("alice",), Source.RECEIVED, ()),
    # no `for` clause anywhere: the To field is guessed from
    ("Received: from a.net by mail.example.org with SMTP id 1; Mon\r\n"
     "To: alice@mail.example.org\r\n", {}, ("alice",), Source.HEADERS, ()),
    # the server received it for somebody elsewhere: nobody here, the postmaster's
    (SERVER_RECEIVED.format("carol@elsewhere.org") + "To: bob@mail.example.org\r\n",
     {}, (), Source.RECEIVED, ("carol@elsewhere.org",)),
    # envskip 1: the first Received line (the one for bob) is not looked at
    (SERVER_RECEIVED.format("bob@mail.example.org") + SERVER_RECEIVED.format("alice@example.net"),
     {"envskip": 1}, ("alice",), Source.RECEIVED, ()),
    # a source route in the `for` clause
    (SERVER_RECEIVED.format("@relay.net:hurkle@mail.example.org"), {}, ("happy",), Source.RECEIVED,
     ()),
    # a `by` followed by an address is not the receiving host: the next `by` is
    ("Received: from a by x@y.net by mail.example.org for <bob@mail.example.org>; Mon\r\n",
     {}, ("bob",), Source.RECEIVED, ()),
    # a blank inside the brackets is not an address: guessed from To
    ("Received: from a by mail.example.org for <bob @mail.example.org>; Mon\r\n"
     "To: alice@mail.example.org\r\n", {}, ("alice",), Source.HEADERS, ()),
    # `via`: the name the server is polled by is its own too
    ("Received: from a by pop.example.com for <bob@pop.example.com>; Mon\r\n",
     {"server_names": ("work", "pop.example.com")}, ("bob",), Source.RECEIVED, ()),
    # -- an envelope header -----------------------------------------------------------------------
    ("X-Original-To: hurkle@mail.example.org\r\nTo: alice@mail.example.org\r\n",
     {"envelope": "X-Original-To"}, ("happy",), Source.ENVELOPE, ()),
    ("x-original-to: Hurkle@Mail.Example.Org\r\n",
     {"envelope": "X-ORIGINAL-TO:"}, ("happy",), Source.ENVELOPE, ()),  # names fold, colon or not
    ("Delivered-To: bob@mail.example.org\r\nDelivered-To: alice@mail.example.org\r\n",
     {"envelope": "Delivered-To", "envskip": 1}, ("alice",), Source.ENVELOPE, ()),
    # an envelope header that names nobody here: no guessing from To after it
    ("Delivered-To: zed@elsewhere.org\r\nTo: bob@mail.example.org\r\n",
     {"envelope": "Delivered-To"}, (), Source.ENVELOPE, ("zed@elsewhere.org",)),
    # the envelope header is missing: guessed from To
    ("To: bob@mail.example.org\r\n", {"envelope": "Delivered-To"}, ("bob",), Source.HEADERS, ()),
    # an unqualified envelope address names nobody (it is not a field `rewrite` qualifies)
    ("X-Original-To: bob\r\n", {"envelope": "X-Original-To"}, (), Source.ENVELOPE, ()),
    # qmail's virtual domain prefix, in any case
    ("Delivered-To: example.org-bob@mail.example.org\r\n",
     {"envelope": "Delivered-To", "qvirtual": "example.org-"}, ("bob",), Source.ENVELOPE, ()),
    ("Delivered-To: EXAMPLE.ORG-Alice@mail.example.org\r\n",
     {"envelope": "Delivered-To", "qvirtual": "example.org-"}, ("alice",), Source.ENVELOPE, ()),
    # `no envelope`: the Received line is not read, the header is guessed from
    (SERVER_RECEIVED.format("bob@mail.example.org") + "To: alice@mail.example.org\r\n",
     {"envelope": None}, ("alice",), Source.HEADERS, ()),
    # -- guessing from the header -----------------------------------------------------------------
    ("To: alice@mail.example.org\r\nResent-To: bob@mail.example.org\r\n",
     {}, ("bob",), Source.RESENT, ()),
    ("Resent-Cc: alice@mail.example.org\r\nTo: zed@mail.example.org\r\n"
     "Resent-Bcc: hurkle@mail.example.org\r\n", {}, ("alice", "happy"), Source.RESENT, ()),
    ("To: alice@mail.example.org\r\nCc: bob@mail.example.org\r\nBcc: hurkle@mail.example.org\r\n"
     "Apparently-To: carol@local.test\r\n", {},
     ("alice", "bob", "happy", "carol@local.test"), Source.HEADERS, ()),
    # -- what the address parser must get right ----------------------------------------------------
    # group syntax: fetchmail reads `Team:alice@...` and `bob@mail.example.org;`
    ("To: Team: alice@mail.example.org, Bob <bob@mail.example.org>;\r\n",
     {}, ("alice", "bob"), Source.HEADERS, ()),
    ("To: undisclosed-recipients:;\r\n", {}, (), Source.HEADERS, ()),
    # quoted local parts: fetchmail keeps the quotes and matches nothing
    ('To: "hurkle"@mail.example.org\r\n', {}, ("happy",), Source.HEADERS, ()),
    ('To: "john doe"@mail.example.org\r\n', {"localnames": (("john doe", "john"),)}, ("john",),
     Source.HEADERS, ()),
    ('To: "john doe"@mail.example.org\r\n', {"wildcard": True}, ('"john doe"',), Source.HEADERS,
     ()),
    # comments, display names, an encoded word with a comma in it, a folded field
    ("To: bob@mail.example.org (Bob Smith), (boss) alice@mail.example.org\r\n",
     {}, ("bob", "alice"), Source.HEADERS, ()),
    ("To: =?utf-8?q?Doe,_John?= <hurkle@mail.example.org>,\r\n\tAlice <alice@mail.example.org>\r\n",
     {}, ("happy", "alice"), Source.HEADERS, ()),
    ("To: <@relay.net:bob@mail.example.org>\r\n", {}, ("bob",), Source.HEADERS, ()),
    # -- which domains are local ------------------------------------------------------------------
    ("To: Bob@MAIL.Example.ORG\r\n", {}, ("bob",), Source.HEADERS, ()),  # the configured name
    ("To: carol@sub.local.test, Dave@Local.Test\r\n", {},
     ("carol@sub.local.test", "Dave@Local.Test"), Source.HEADERS, ()),  # passed through whole
    ("To: carol@notlocal.test\r\n", {}, (), Source.HEADERS, ("carol@notlocal.test",)),
    ("To: bob@mx.example.net, alice@example.net, zed@badexample.net\r\n", {},
     ("bob", "alice"), Source.HEADERS, ("zed@badexample.net",)),  # aka: itself and subdomains
    ("To: bob@mail.example.org.evil.com\r\n", {}, (), Source.HEADERS,
     ("bob@mail.example.org.evil.com",)),
    # -- names ------------------------------------------------------------------------------------
    # duplicates collapse, case folded
    ("To: bob@mail.example.org, BOB@mail.example.org\r\nCc: Bob <bob@Mail.Example.Org>\r\n",
     {}, ("bob",), Source.HEADERS, ()),
    ("To: Zed@mail.example.org, zed@mail.example.org\r\n", {"wildcard": True}, ("Zed",),
     Source.HEADERS, ()),
    # a whole address mapped in the rcfile wins over everything
    ("To: Alice@Example.COM\r\n", {"localnames": (("alice@example.com", "alice"),)}, ("alice",),
     Source.HEADERS, ()),
    # a local part nobody is named for: dropped, or passed through with `*`
    ("To: zed@mail.example.org\r\n", {}, (), Source.HEADERS, ()),
    ("To: zed@mail.example.org\r\n", {"wildcard": True}, ("zed",), Source.HEADERS, ()),
    # unqualified To: the server's name with `rewrite`, nobody without
    ("To: bob\r\n", {}, ("bob",), Source.HEADERS, ()),
    ("To: bob\r\n", {"rewrite": False}, (), Source.HEADERS, ()),
    # -- nobody here at all ------------------------------------------------------------------------
    ("To: x@elsewhere.org, y@another.org\r\n", {}, (), Source.HEADERS,
     ("x@elsewhere.org", "y@another.org")),
    ("Subject: no addressee\r\n", {}, (), None, ()),
]


@pytest.mark.parametrize(("text", "changes", "recipients", "source", "rejected"), ROWS)
def test_route(
    text: str,
    changes: dict[str, Any],
    recipients: tuple[str, ...],
    source: Source | None,
    rejected: tuple[str, ...],
) -> None:
    found = route(header(text), routing(**changes))
    assert found.recipients == recipients
    assert found.source is source
    assert found.rejected == rejected
    assert found.dns_errors == ()
    assert found.unmatched is (not recipients)


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        ("To: bob@mail.example.org\r\n", None),
        ("To: carol@elsewhere.org\r\n",
         "recipient address carol@elsewhere.org didn't match any local name"),
        ("To: carol@elsewhere.org, dave@elsewhere.org\r\n",
         "no recipient addresses matched declared local names"),
        ("To: zed@mail.example.org\r\n", "no recipient addresses matched declared local names"),
        ("Subject: nothing\r\n", "no recipient addresses matched declared local names"),
    ],
)
def test_warning_is_fetchmails(text: str, warning: str | None) -> None:
    assert route(header(text), BASE).warning == warning


# -- DNS ------------------------------------------------------------------------------------------


class FakeDns:
    """A resolver function: names -> HostInfo, None for a name that does not exist, or an
    exception; it counts the questions."""

    def __init__(self, answers: dict[str, HostInfo | Exception | None]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def __call__(self, name: str) -> HostInfo | None:
        self.asked.append(name)
        answer = self.answers.get(name)
        if isinstance(answer, Exception):
            raise answer
        return answer


SERVER = HostInfo("mail.example.org", frozenset({"192.0.2.10", "2001:db8::10"}))


@pytest.mark.parametrize(
    ("answer", "checkalias", "recipients", "rejected"),
    [
        # the name's canonical name is the server's
        (HostInfo("mail.example.org", frozenset({"192.0.2.10"})), False, ("bob",), ()),
        # another canonical name, but the same address: only `checkalias` compares addresses
        (HostInfo("other.example.com", frozenset({"192.0.2.10"})), True, ("bob",), ()),
        (HostInfo("other.example.com", frozenset({"192.0.2.10"})), False, (),
         ("bob@mx.example.com",)),
        (HostInfo("other.example.com", frozenset({"192.0.2.99"})), True, (),
         ("bob@mx.example.com",)),
        (None, True, (), ("bob@mx.example.com",)),  # no such name
    ],
)
def test_dns_decides_what_the_names_do_not(
    answer: HostInfo | None, checkalias: bool, recipients: tuple[str, ...],
    rejected: tuple[str, ...],
) -> None:
    dns = FakeDns({"mx.example.com": answer, "mail.example.org": SERVER})
    found = route(
        header("To: bob@mx.example.com, alice@mail.example.org\r\n"),
        routing(dns=True, checkalias=checkalias),
        dns,
    )
    assert found.recipients == (*recipients, "alice")
    assert found.rejected == rejected
    assert dns.asked.count("mx.example.com") == 1  # asked once, whatever comes after


def test_a_failed_lookup_makes_the_message_wait() -> None:
    dns = FakeDns({"mx.example.com": LookupFailed("timed out after 10 seconds")})
    found = route(header("To: bob@mx.example.com\r\n"), routing(dns=True), dns)
    assert found.dns_errors == (("mx.example.com", "timed out after 10 seconds"),)


def test_no_dns_asks_nothing() -> None:
    dns = FakeDns({})
    found = route(header("To: bob@mx.example.com, bob@mail.example.org\r\n"), BASE, dns)
    assert found.recipients == ("bob",)
    assert dns.asked == []


def test_known_names_are_never_looked_up() -> None:
    dns = FakeDns({})
    text = "To: bob@mail.example.org, alice@example.net, carol@local.test\r\n"
    found = route(header(text), routing(dns=True), dns)
    assert found.recipients == ("bob", "alice", "carol@local.test")
    assert dns.asked == []


def test_a_message_naming_many_domains_is_looked_up_a_bounded_number_of_times() -> None:
    dns = FakeDns({})
    many = ", ".join(f"u{i}@d{i}.example.com" for i in range(200))
    found = route(header(f"To: bob@mail.example.org, {many}\r\n"), routing(dns=True), dns)
    assert found.recipients == ("bob",)
    assert len(dns.asked) <= MAX_LOOKUPS
    assert len(found.rejected) == 200


def test_dns_checks_the_received_line_host_too() -> None:
    dns = FakeDns({"mx1.example.org": HostInfo("mail.example.org", frozenset())})
    text = "Received: from a by mx1.example.org for <hurkle@mx1.example.org>; Mon\r\n"
    found = route(header(text), routing(dns=True), dns)
    assert (found.source, found.recipients) == (Source.RECEIVED, ("happy",))


# -- the pieces -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "address"),
    [
        ("Received: from a by mail.example.org with SMTP for <bob@x.org>; Mon", "bob@x.org"),
        ("Received: from a by mail.example.org\r\n\tfor bob@x.org; Mon", "bob@x.org"),
        ("Received: from a by mail.example.org for bob@x.org Mon", "bob@x.org"),
        ("Received: from a by mail.example.org for <@r1,@r2:bob@x.org>; Mon", "bob@x.org"),
        ("Received: from a by mail.example.org for <>; Mon", None),
        ("Received: from a by mail.example.org id 1 for multiple; Mon", None),
        ("Received: from a by other.org for <bob@x.org>; Mon", None),  # not the server's
        ("Received: from nearby.org for <bob@x.org>; Mon", None),  # no `by` at all
        ("Received: from a (helo=by) by mail.example.org for <b@x.org>", "b@x.org"),
    ],
)
def test_received_for(line: str, address: str | None) -> None:
    assert received_for(line, lambda host: host == "mail.example.org") == address


@pytest.mark.parametrize(
    ("value", "addresses"),
    [
        ("a@x.org, B <b@y.org>", [("a", "x.org"), ("b", "y.org")]),
        ("Friends: a@x.org, b@y.org;, c@z.org", [("a", "x.org"), ("b", "y.org"), ("c", "z.org")]),
        ('"a b"@x.org', [('"a b"', "x.org")]),
        ('"a@b"@x.org', [('"a@b"', "x.org")]),
        ("bob", [("bob", None)]),
        # an encoded word is one word, commas and all; a stray `=?` is not one
        ("=?utf-8?q?Doe,_John?= <j@x.org>, =?iso-8859-1?b?QSxC?= <k@x.org>",
         [("j", "x.org"), ("k", "x.org")]),
        ("a=?b, c@x.org", [("a=?b", None), ("c", "x.org")]),
        ("Bob <bob@x.org", [("bob", "x.org")]),  # an unclosed bracket
        ("<>", []),
        ("", []),
    ],
)
def test_parse_addresses(value: str, addresses: list[tuple[str, str | None]]) -> None:
    assert parse_addresses(value) == [ParsedAddress(*a) for a in addresses]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('ab@.,;:<>"()\\ \t\r\n=?xé'), max_size=60))
def test_parse_addresses_never_raises(value: str) -> None:
    for address in parse_addresses(value):
        assert address.local


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_route_never_raises_on_any_header(data: bytes) -> None:
    raw = read_header(io.BytesIO(b"To: " + data + b"\r\nReceived: by mail.example.org " + data))
    found = route(raw, routing(wildcard=True))
    assert all(found.recipients)


def test_rewritten_fields_are_messages() -> None:
    assert REWRITTEN == message.REWRITTEN_FIELDS


# -- the edge: fetcher.resolver -------------------------------------------------------------------


def test_resolver_reads_getaddrinfo() -> None:
    def getaddrinfo(name: str, *args: object) -> list[tuple[Any, ...]]:
        assert name == "mx.example.com"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "mail.example.org", ("192.0.2.10", 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::10", 0, 0, 0)),
        ]

    resolve = TimedResolver(5, getaddrinfo)
    assert resolve("MX.Example.com.") == SERVER


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), None),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
         "Temporary failure in name resolution"),
        (UnicodeError("label too long"), "label too long"),
    ],
)
def test_resolver_tells_no_such_name_from_a_failure(
    error: Exception, expected: str | None
) -> None:
    def getaddrinfo(name: str, *args: object) -> list[tuple[Any, ...]]:
        raise error

    resolve = TimedResolver(5, getaddrinfo)
    if expected is None:
        assert resolve("nowhere.example.com") is None
    else:
        with pytest.raises(LookupFailed, match=expected):
            resolve("nowhere.example.com")


def test_a_resolver_that_never_answers_costs_one_timeout_per_name() -> None:
    release = threading.Event()
    asked: list[str] = []

    def getaddrinfo(name: str, *args: object) -> list[tuple[Any, ...]]:
        asked.append(name)
        release.wait()  # a resolver that does not answer
        return []

    resolve = TimedResolver(0.05, getaddrinfo)
    try:
        for _ in range(3):
            with pytest.raises(LookupFailed, match=r"no answer within 0\.05 seconds"):
                resolve("slow.example.com")
        assert asked == ["slow.example.com"]  # the failure is kept for the poll
    finally:
        release.set()


@pytest.mark.parametrize("name", ["[192.0.2.1]", "a b.example", "x" * 300, "a\0b", "", "-a.org"])
def test_resolver_never_sends_what_is_no_host_name(name: str) -> None:
    def getaddrinfo(name: str, *args: object) -> list[tuple[Any, ...]]:
        raise AssertionError(f"asked about {name!r}")

    assert TimedResolver(5, getaddrinfo)(name) is None


# -- what a hostile server can put in a header ---------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "(" * 100_000 + "bob@mail.example.org",  # the stdlib parser recurses once per `(`
        "(((((((((((((((((((((((((x)))))))))))))))))))))))))) bob@mail.example.org",
        '"' + "a" * 500_000,
        "<" * 100_000,
        ":" * 100_000,
        "=?utf-8?q?" + "x," * 100_000 + "?= <bob@mail.example.org>",
    ],
)
def test_a_pathological_field_names_nobody_it_should_not(value: str) -> None:
    assert all(a.text == "bob@mail.example.org" for a in parse_addresses(value))
    found = route(header(f"To: {value}\r\n"), routing(wildcard=True))
    assert set(found.recipients) <= {"bob"}


def test_a_message_for_thousands_is_read_for_the_first_thousand() -> None:
    many = ", ".join(f"u{i}@mail.example.org" for i in range(3 * MAX_ADDRESSES))
    found = route(header(f"To: {many}\r\nCc: bob@mail.example.org\r\n"), routing(wildcard=True))
    assert found.recipients == tuple(f"u{i}" for i in range(MAX_ADDRESSES))
    assert f"only the first {MAX_ADDRESSES} addresses were read" in found.notes
    assert len(parse_addresses(many)) == MAX_ADDRESSES
