"""The message transforms, as tables of input and expected bytes, plus properties for what tables
cannot cover: chunk boundaries, and sender strings that try to escape the MDA command line."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetcher import __version__
from fetcher.errors import ConfigError
from fetcher.message import (
    BodyType,
    DataStuffer,
    RawHeader,
    TracePoll,
    body_type,
    check_mda_template,
    convert_line_ends,
    edit_header,
    envelope_sender,
    first_address,
    headerless_header,
    mda_command,
    prepare,
    read_chunks,
    read_header,
    received_header,
    recipient_addresses,
    rewrite_addresses,
    rfc822_timestamp,
    smtp_data_chunks,
)
from fetcher.mimedecode import analyse
from fetcher.model import GlobalOptions, ServerOptions, UserOptions
from fetcher.sinks.base import Delivery, Envelope, Message, Outcome

NOW = datetime(2026, 11, 25, 5, 38, 19, tzinfo=UTC)
STAMP = "Wed, 25 Nov 2026 05:38:19 +0000 (UTC)"
R = b"Received: NEW\r\n"


def header_of(data: bytes) -> RawHeader:
    return read_header(io.BytesIO(data))


# --- read_header ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fields", "body", "separator"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", [b"A: 1", b"B: 2"], b"body\r\n", True),
        (b"A: 1\nB: 2\n\nbody\n", [b"A: 1", b"B: 2"], b"body\n", True),  # bare LF
        (b"A: 1\r\nB: 2\n\r\nx", [b"A: 1", b"B: 2"], b"x", True),  # mixed
        (
            b"A: 1\r\n folded\r\n\tagain\r\nB: 2\r\n\r\n",
            [b"A: 1\r\n folded\r\n\tagain", b"B: 2"],
            b"",
            True,
        ),
        (b"A: 1\n folded\n\n", [b"A: 1\r\n folded"], b"", True),  # stored with CRLF
        (b"A: 1\r\nB: 2\r\n", [b"A: 1", b"B: 2"], b"", False),  # no blank line, no body
        (b"A: 1\r\nB: 2", [b"A: 1", b"B: 2"], b"", False),  # last line without LF
        (b"A: 1\r\n\r\r\r\nbody", [b"A: 1"], b"body", True),  # CRs only: end of header
        (b"A: 1\r\n\r\n\r\nbody", [b"A: 1"], b"\r\nbody", True),  # body keeps its blank line
        (b"\r\nbody", [], b"body", True),  # headerless
        (b"", [], b"", False),
        (b" lead: x\r\nA: 1\r\n\r\n", [b" lead: x", b"A: 1"], b"", True),  # nothing to continue
        (b"A: 1\r\n \r\nB: 2\r\n\r\n", [b"A: 1\r\n ", b"B: 2"], b"", True),  # blank is folding
        (b"A: x\ry\r\n\r\n", [b"A: x\ry"], b"", True),  # a lone CR stays
        (b"A: 1\r\n\0\0\r\nbody", [b"A: 1"], b"body", True),  # NULs go first: a blank line
        (b"A: \x001\r\n\r\n\0", [b"A: 1"], b"\0", True),  # the body keeps its NULs
        (b"A: \xff\xfe\r\n\r\n", [b"A: \xff\xfe"], b"", True),  # not UTF-8
    ],
)
def test_read_header(data: bytes, fields: list[bytes], body: bytes, separator: bool) -> None:
    spool = io.BytesIO(data)
    header = read_header(spool)
    assert [f.raw for f in header.fields] == fields
    assert header.separator is separator
    assert spool.read() == body
    assert header.octets == len(data) - len(body)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"Subject: x", b"subject"),
        (b"SUBJECT : x", b"subject"),  # blanks before the colon: obsolete syntax
        (b"no colon here", None),
        (b" continued: x", None),
        (b"A\r\n b: c", None),  # the colon must be on the first line
        (b"From alice Wed Nov 25 05:38:19 2026", b"from alice wed nov 25 05"),
    ],
)
def test_field_names(raw: bytes, name: bytes | None) -> None:
    assert header_of(raw + b"\r\n\r\n").fields[0].name == name


def test_read_header_starts_where_the_file_is() -> None:
    spool = io.BytesIO(b"+OK junk\r\nA: 1\r\n\r\nbody")
    spool.readline()
    assert [f.raw for f in read_header(spool).fields] == [b"A: 1"]
    assert spool.read() == b"body"


def test_nuls_are_noted() -> None:
    assert header_of(b"A: 1\0\r\n\r\n").had_nuls
    assert not header_of(b"A: 1\r\n\r\nbody\0").had_nuls  # only the header is looked at


@pytest.mark.parametrize(
    ("data", "limit", "fields", "rest", "truncated"),
    [
        # the line that does not fit, and everything after it, are left for the body
        (b"A: 1\r\nB: 2\r\nC: 3\r\n\r\nbody", 12, [b"A: 1", b"B: 2"], b"C: 3\r\n\r\nbody", True),
        (b"A: 1\r\nB: 2\r\nC: 3\r\n\r\nbody", 13, [b"A: 1", b"B: 2"], b"C: 3\r\n\r\nbody", True),
        (b"A: 1\r\nB: 2\r\n\r\nbody", 14, [b"A: 1", b"B: 2"], b"body", False),  # just fits
        (b"A: " + b"x" * 50 + b"\r\n\r\nbody", 20, [], b"A: " + b"x" * 50 + b"\r\n\r\nbody", True),
        (b"A: 1\r\n folded\r\n\r\n", 8, [b"A: 1"], b" folded\r\n\r\n", True),
    ],
)
def test_an_oversized_header_is_cut_at_a_line(
    data: bytes, limit: int, fields: list[bytes], rest: bytes, truncated: bool
) -> None:
    spool = io.BytesIO(data)
    header = read_header(spool, limit=limit)
    assert [f.raw for f in header.fields] == fields
    assert header.truncated is truncated
    assert header.separator is not truncated
    assert spool.read() == rest


def test_the_header_cap_bounds_memory() -> None:
    # a server sending a header without end must not make us read all of it
    class Endless(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            buffer[: len(buffer)] = b"X" * len(buffer)
            return len(buffer)

    spool = io.BufferedReader(Endless())
    with pytest.raises(io.UnsupportedOperation):  # it reads 1 MiB + 1, then wants to seek back
        read_header(spool)


# --- addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address"),
    [
        (b" alice@example.org", b"alice@example.org"),
        (b" <alice@example.org>", b"alice@example.org"),
        (b" Alice Smith <alice@example.org>", b"alice@example.org"),
        (b' "Smith, Alice" <alice@example.org>', b"alice@example.org"),
        (b' "Alice <x@y>" <alice@example.org>', b"alice@example.org"),
        (b" alice@example.org (Alice Smith)", b"alice@example.org"),
        (b" (Alice (nested)) alice@example.org", b"alice@example.org"),
        (b" alice@example.org, bob@example.org", b"alice@example.org"),
        (b" , , alice@example.org", b"alice@example.org"),
        (b" <>", b""),
        (b" < >", b""),
        (b" <@relay.net,@other.net:alice@example.org>", b"alice@example.org"),
        (b" friends: alice@example.org, bob@example.org;", b"alice@example.org"),
        (b" undisclosed-recipients:;", None),
        (b' "john doe"@example.org', b'"john doe"@example.org'),
        (b" alice @ example.org", b"alice@example.org"),  # nxtaddr() drops blanks too
        (b" alice\r\n\t@example.org", b"alice@example.org"),
        (b" (just a comment)", None),
        (b"", None),
        (b" <unclosed@example.org", b"unclosed@example.org"),
        (b' "unclosed', b'"unclosed'),
        (b" host!alice", b"host!alice"),
        (b" j\xf6rg@example.org", b"j\xf6rg@example.org"),
    ],
)
def test_first_address(value: bytes, address: bytes | None) -> None:
    assert first_address(value) == address


@pytest.mark.parametrize(
    ("value", "rewritten"),
    [
        (b" bob", b" bob@srv"),
        (b" bob\r\n", b" bob@srv\r\n"),
        (b" Bob <bob>", b" Bob <bob@srv>"),
        (b" <bob >", b" <bob@srv >"),
        (b" bob (Bob Smith)", b" bob@srv (Bob Smith)"),
        (b' "Smith, Bob" <bob>, alice@x.org', b' "Smith, Bob" <bob@srv>, alice@x.org'),
        (b" bob,\r\n\tcarol", b" bob@srv,\r\n\tcarol@srv"),
        (b" bob, carol@x.org, dan", b" bob@srv, carol@x.org, dan@srv"),
        (b" joe.user", b" joe.user@srv"),
        (b' "quoted".dot', b' "quoted".dot@srv'),
        (b" =?utf-8?q?B=C3=B6b?= <bob>", b" =?utf-8?q?B=C3=B6b?= <bob@srv>"),
        (b" Team: bob, carol@x.org;", b" Team: bob@srv, carol@x.org;"),
        # left alone
        (b" <>", b" <>"),  # the null sender, above all in Return-Path
        (b" bob@x.org", b" bob@x.org"),
        (b" Bob <bob@x.org>", b" Bob <bob@x.org>"),
        (b" host!bob", b" host!bob"),  # a UUCP path is qualified
        (b" <host!bob>", b" <host!bob>"),
        (b" undisclosed-recipients:;", b" undisclosed-recipients:;"),
        (b" Bob Smith", b" Bob Smith"),  # a phrase, not an address
        (b' "bob"', b' "bob"'),  # a lone quoted string could be a name
        (b' "a b"@x.org', b' "a b"@x.org'),
        (b" (only a comment)", b" (only a comment)"),
        (b" <unclosed", b" <unclosed"),
        (b' "unclosed, bob', b' "unclosed, bob'),
        (b"", b""),
    ],
)
def test_rewrite_addresses(value: bytes, rewritten: bytes) -> None:
    assert rewrite_addresses(value, b"srv") == rewritten


# --- envelope sender -----------------------------------------------------------------------

ISP = "mail.isp.net"


@pytest.mark.parametrize(
    ("header", "sender"),
    [
        (b"Return-Path: <alice@example.org>\r\nFrom: x@y.org\r\n", "alice@example.org"),
        (b"Return-Path: <>\r\nFrom: x@y.org\r\n", ""),  # the null sender is kept
        (b"Return-Path: <alice>\r\n", f"alice@{ISP}"),
        (b"Return-Path: <@>\r\nFrom: x@y.org\r\n", f"rb@{ISP}"),  # seen from Amazon, says fetchmail
        (b"Return-Path: <@host.org>\r\n", f"rb@{ISP}"),
        (b"Return-Path: a@1.org\r\nReturn-Path: b@2.org\r\n", "a@1.org"),  # the first one
        (b"Return-Path:\r\nFrom: x@y.org\r\n", "x@y.org"),  # no address: not a Return-Path
        (b"Subject: nothing\r\n", f"rb@{ISP}"),
        (b"", f"rb@{ISP}"),
        # the fallbacks, in order
        (b"From: f@x.org\r\nResent-Sender: rs@x.org\r\nSender: s@x.org\r\n", "rs@x.org"),
        (b"From: f@x.org\r\nSender: s@x.org\r\nResent-From: rf@x.org\r\n", "s@x.org"),
        (b"From: f@x.org\r\nSender: zap\r\n", "f@x.org"),  # Sender without @ or ! is ignored
        (b"From: f@x.org\r\nSender: host!zap\r\n", "host!zap"),
        (b"From: f@x.org\r\nResent-Sender: zap\r\n", "f@x.org"),
        (b"From: f@x.org\r\nResent-From: rf@x.org\r\n", "rf@x.org"),
        (b"Reply-To: r@x.org\r\nFrom: f@x.org\r\n", "f@x.org"),
        (b"Apparently-From: a@x.org\r\nReply-To: r@x.org\r\n", "r@x.org"),
        (b"Apparently-From: a@x.org\r\n", "a@x.org"),
        (b"From: first@x.org\r\nFrom: last@x.org\r\n", "last@x.org"),  # as fetchmail
        (b"From: (no address)\r\nReply-To: r@x.org\r\n", "r@x.org"),
        # only the last From counts: without an address there, Reply-To is next (fetchmail)
        (b"From: f@x.org\r\nFrom: (none)\r\nReply-To: r@x.org\r\n", "r@x.org"),
        (b"From: <>\r\n", f"rb@{ISP}"),  # only Return-Path carries the null sender
        (b"From: Alice Smith <alice@example.org>\r\n", "alice@example.org"),
        (b"From: carol\r\n", f"carol@{ISP}"),
        (b"From: <a\rb@x.org>\r\n", f"rb@{ISP}"),  # a CR could end the SMTP command
        (b'From: "a\x01"@x.org\r\n', f"rb@{ISP}"),
        (b"From: j\xf6rg@x.org\r\n", "j\ufffdrg@x.org"),  # not UTF-8: replaced, never raises
    ],
)
def test_envelope_sender(header: bytes, sender: str) -> None:
    raw = header_of(header + b"\r\n")
    assert envelope_sender(raw, remote_user="rb", server_name=ISP) == sender


@pytest.mark.parametrize(
    ("header", "remote", "server", "sender"),
    [
        (b"", "rb", "10.0.0.1", "rb@[10.0.0.1]"),  # RFC 5321 domain literal
        (b"From: carol\r\n", "rb", "10.0.0.1", "carol@[10.0.0.1]"),
        (b"", "rb", "256.0.0.1", "rb@256.0.0.1"),  # not a dotted quad
        (b"", "rb", "::1", "rb@[IPv6:::1]"),
        (b"", "rb@isp.net", ISP, "rb@isp.net"),  # a remote name with @ is used as it is
        (b"", "host!rb", ISP, "host!rb"),
    ],
)
def test_envelope_sender_fallback(header: bytes, remote: str, server: str, sender: str) -> None:
    raw = header_of(header + b"\r\n")
    assert envelope_sender(raw, remote_user=remote, server_name=server) == sender


@pytest.mark.parametrize(
    ("header", "server", "sender"),
    [
        # fetchmail qualifies the header's addresses first, so an unqualified Sender counts
        (b"From: f@x.org\r\nSender: carol\r\n", ISP, f"carol@{ISP}"),
        (b"From: f@x.org\r\nResent-Sender: erin\r\nSender: s@x.org\r\n", ISP, f"erin@{ISP}"),
        (b"Sender: carol\r\nSender: dave@x.org\r\nFrom: f@x.org\r\n", ISP, "dave@x.org"),
        (b"From: f@x.org\r\nSender: Carol Smith <carol>\r\n", ISP, f"carol@{ISP}"),
        (b"From: f@x.org\r\nSender: <>\r\n", ISP, "f@x.org"),  # nothing to qualify
        (b"From: carol\r\n", ISP, f"carol@{ISP}"),
        (b"Return-Path: <>\r\nSender: carol\r\n", ISP, ""),
        # qualified by the rewrite, not by the sink: as fetchmail, no brackets
        (b"Return-Path: <carol>\r\n", "10.0.0.1", "carol@10.0.0.1"),
        (b"Sender: carol\r\nFrom: f@x.org\r\n", "10.0.0.1", "carol@10.0.0.1"),
        (b"Subject: none\r\n", "10.0.0.1", "rb@[10.0.0.1]"),
    ],
)
def test_envelope_sender_after_rewrite(header: bytes, server: str, sender: str) -> None:
    raw = header_of(header + b"\r\n")
    assert envelope_sender(raw, remote_user="rb", server_name=server, rewrite=True) == sender


# --- recipients ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "options", "addresses"),
    [
        (["bob"], {}, ["bob@localhost"]),
        (["bob"], {"smtphost": "localhost"}, ["bob@localhost"]),
        (["bob"], {"smtphost": "127.0.0.1/2525"}, ["bob@127.0.0.1"]),  # observed
        (["bob"], {"smtphost": "mx.example.org"}, ["bob@mx.example.org"]),
        (["bob"], {"smtphost": "mx.example.org/"}, ["bob@mx.example.org"]),
        (["bob"], {"smtphost": "/var/run/lmtp"}, ["bob@localhost"]),  # a socket
        (["bob"], {"smtphost": "::1/2525"}, ["bob@[IPv6:::1]"]),
        (["bob"], {"smtphost": "mx", "smtpaddress": "example.org"}, ["bob@example.org"]),
        (["bob"], {"smtpname": "robert@example.org"}, ["robert@example.org"]),
        (["bob@here.org"], {"smtpname": "robert@example.org"}, ["bob@here.org"]),
        (["bob@here.org"], {"smtpaddress": "example.org"}, ["bob@here.org"]),
        (["bob", "carol"], {"smtphost": "mx"}, ["bob@mx", "carol@mx"]),
        ([], {}, []),
    ],
)
def test_recipient_addresses(
    names: list[str], options: dict[str, str], addresses: list[str]
) -> None:
    assert recipient_addresses(names, **options) == addresses


# --- BODY= ---------------------------------------------------------------------------------

MIME = b"MIME-Version: 1.0\r\n"
CTE = b"Content-Transfer-Encoding: "
E8, E7, NONE = BodyType.EIGHT_BIT, BodyType.SEVEN_BIT, BodyType.UNDECLARED


def header_lines(header: bytes) -> list[bytes]:
    """The fields of `header`, each with its CRLF, as the header handed on holds them."""
    return [field.raw + b"\r\n" for field in header_of(header + b"\r\n").fields]


@pytest.mark.parametrize(
    ("header", "pass8bits", "expected"),
    [
        (b"Subject: plain\r\n", False, NONE),
        (b"Subject: plain\r\n", True, E8),
        (MIME + CTE + b"8bit\r\n", False, E8),
        (MIME + CTE + b"7bit\r\n", False, E7),
        (MIME + CTE + b"7BIT (comment)\r\n", False, E7),
        (b"MIME-Version: 1.0 (made by hand)\r\n" + CTE + b"7bit\r\n", False, E7),
        (MIME + CTE + b"7bit\r\n", True, E8),
        (MIME + CTE + b"quoted-printable\r\n", False, E8),  # 8-bit once decoded, says fetchmail
        (MIME + CTE + b"base64\r\n", False, NONE),
        (MIME + b"Content-Transfer-Encoding:\r\n base64\r\n", False, NONE),
        (MIME + CTE + b"x-uuencode\r\n", False, NONE),
        (CTE + b"8bit\r\n", False, NONE),  # no MIME-Version: nothing is promised
        (CTE + b"7bit\r\n", False, NONE),
        (b"MIME-Version: 1.1\r\n" + CTE + b"7bit\r\n", False, NONE),
        (MIME + b"Content-Transfer-Encoding : 7bit\r\n", False, NONE),  # not the field's name
        (MIME + CTE + b"7bit\r\n" + CTE + b"8bit\r\n", False, E8),  # the last one counts
        (MIME + b"Content-Type: multipart/mixed; boundary=x\r\n" + CTE + b"7bit\r\n", False, E8),
        (MIME + b"Content-Type: Multipart/Mixed; boundary=\"x y\"\r\n", False, E8),
        (MIME + b"Content-Type: multipart/mixed\r\n" + CTE + b"7bit\r\n", False, E7),
        (MIME + b"Content-Type: multipart/alternative; boundary=x\r\n" + CTE + b"7bit\r\n",
         False, E7),  # fetchmail knows multipart/mixed only
        (MIME + b"Content-Type: message/rfc822\r\n" + CTE + b"7bit\r\n", False, E7),
        # fetchmail stops looking once it has found three of the three names
        (b"Content-Type: text/plain\r\nContent-Type: text/plain\r\n" + CTE + b"7bit\r\n"
         + MIME, False, NONE),
        # further than fetchmail: 8BITMIME for data it would call 7-bit, or say nothing about
        (MIME + CTE + b"binary\r\n", False, E8),
        (b"Subject: caf\xc3\xa9\r\n", False, E8),
        (MIME + CTE + b"7bit\r\nSubject: \xe9\r\n", False, E8),
    ],
)
def test_body_type(header: bytes, pass8bits: bool, expected: BodyType) -> None:
    lines = header_lines(header)
    info, _ = analyse(lines, want_decode=False)
    assert body_type(info, header=b"".join(lines), pass8bits=pass8bits) is expected


# --- Received ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            {"server_address": "192.0.2.7", "recipients": ["bob@localhost"]},
            "Received: from mail.isp.net [192.0.2.7]\r\n"
            f"\tby vm with POP3 (pyfetch-{__version__})\r\n"
            f"\tfor <bob@localhost> (single-drop); {STAMP}\r\n",
        ),
        (
            {"server_address": None, "recipients": ["bob@localhost"]},
            "Received: from mail.isp.net\r\n"
            f"\tby vm with POP3 (pyfetch-{__version__})\r\n"
            f"\tfor <bob@localhost> (single-drop); {STAMP}\r\n",
        ),
        (
            {"server_address": "2001:db8::1", "recipients": ["bob@localhost"], "multidrop": True},
            "Received: from mail.isp.net [2001:db8::1]\r\n"
            f"\tby vm with POP3 (pyfetch-{__version__})\r\n"
            f"\tfor <bob@localhost> (multi-drop); {STAMP}\r\n",
        ),
        (
            {"server_address": None, "recipients": ["bob@localhost", "carol@localhost"]},
            "Received: from mail.isp.net\r\n"
            f"\tby vm with POP3 (pyfetch-{__version__})\r\n"
            f"\t{STAMP}\r\n",  # no `for` with more than one recipient
        ),
        (
            {"server_address": None, "recipients": []},
            f"Received: from mail.isp.net\r\n\tby vm with POP3 (pyfetch-{__version__})\r\n"
            f"\t{STAMP}\r\n",
        ),
        (
            {"server_address": None, "recipients": ["b@l"], "trace": TracePoll("isp", "rb")},
            "Received: from mail.isp.net\r\n"
            f"\tby vm with POP3 (pyfetch-{__version__} polling isp account rb)\r\n"
            f"\tfor <b@l> (single-drop); {STAMP}\r\n",
        ),
        (
            {
                "server_address": None,
                "recipients": ["b@l"],
                "protocol": "IMAP",
                "trace": TracePoll("isp", "rb", "INBOX.Sent"),
            },
            "Received: from mail.isp.net\r\n"
            f"\tby vm with IMAP (pyfetch-{__version__} polling isp account rb folder INBOX.Sent)"
            "\r\n"
            f"\tfor <b@l> (single-drop); {STAMP}\r\n",
        ),
        (
            {
                "server_address": None,
                "recipients": ["b@l"],
                "trace": TracePoll("isp", "rb", "evil\r\nX-Injected: 1"),
            },
            "Received: from mail.isp.net\r\n"
            f"\tby vm with POP3 (pyfetch-{__version__} polling isp account rb folder evil  "
            "X-Injected: 1)\r\n"
            f"\tfor <b@l> (single-drop); {STAMP}\r\n",
        ),
    ],
)
def test_received_header(options: dict[str, Any], expected: str) -> None:
    args: dict[str, Any] = {
        "server_name": "mail.isp.net",
        "local_host": "vm",
        "protocol": "POP3",
        "now": NOW,
        **options,
    }
    assert received_header(**args) == expected.encode()


@pytest.mark.parametrize(
    ("now", "stamp"),
    [
        (NOW, STAMP),
        (
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1), "CET")),
            "Fri, 02 Jan 2026 03:04:05 +0100 (CET)",
        ),
        (
            datetime(2026, 7, 9, 23, 0, 0, tzinfo=timezone(timedelta(hours=-4, minutes=-30))),
            "Thu, 09 Jul 2026 23:00:00 -0430 (UTC-04:30)",
        ),
    ],
)
def test_rfc822_timestamp(now: datetime, stamp: str) -> None:
    assert rfc822_timestamp(now) == stamp


def test_timestamp_defaults_to_local_time_with_a_zone() -> None:
    assert re.fullmatch(
        r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4} \(.+\)", rfc822_timestamp()
    )


# --- edit_header ---------------------------------------------------------------------------


def edit(data: bytes, **options: Any) -> bytes:
    args: dict[str, Any] = {"received": R, "for_mda": False, "server_name": "srv", **options}
    return edit_header(header_of(data), **args)


@pytest.mark.parametrize(
    ("data", "options", "expected"),
    [
        # where Received goes
        (b"Subject: a\r\n\r\n", {}, R + b"Subject: a\r\n\r\n"),
        (
            b"Subject: a\r\nReceived: x\r\n y\r\nReceived: z\r\n\r\n",
            {},
            b"Subject: a\r\n" + R + b"Received: x\r\n y\r\nReceived: z\r\n\r\n",
        ),
        (b"X: 1\r\nreceived: z\r\n\r\n", {}, b"X: 1\r\n" + R + b"received: z\r\n\r\n"),
        (b"X: 1\r\n>Received: z\r\n\r\n", {}, b"X: 1\r\n" + R + b">Received: z\r\n\r\n"),
        (
            b"X-Received: 1\r\nReceived: z\r\n\r\n",
            {},
            b"X-Received: 1\r\n" + R + b"Received: z\r\n\r\n",
        ),
        (b"Subject: a\r\n\r\n", {"received": None}, b"Subject: a\r\n\r\n"),  # invisible
        # line ends
        (b"Subject: a\n folded\nX: y\n\n", {}, R + b"Subject: a\r\n folded\r\nX: y\r\n\r\n"),
        (b"Subject: a\r\nX: y", {}, R + b"Subject: a\r\nX: y\r\n\r\n"),  # blank line added
        # mbox envelope lines
        (b"From alice@x.org Wed Nov 25 05:38:19 2026\r\nX: 1\r\n\r\n", {}, R + b"X: 1\r\n\r\n"),
        (b">From alice@x.org Wed\r\nX: 1\r\n\r\n", {}, R + b"X: 1\r\n\r\n"),
        (b"FROM nobody\r\n continued\r\nX: 1\r\n\r\n", {}, R + b"X: 1\r\n\r\n"),
        (b"From : alice@x.org\r\n\r\n", {}, R + b"From : alice@x.org\r\n\r\n"),  # a field
        # Return-Path: stripped for a listener, kept for an MDA
        (b"Return-Path: <a@x.org>\r\nX: 1\r\n\r\n", {}, R + b"X: 1\r\n\r\n"),
        (
            b"Return-Path: <a@x.org>\r\nX: 1\r\n\r\n",
            {"for_mda": True},
            R + b"Return-Path: <a@x.org>\r\nX: 1\r\n\r\n",
        ),
        (
            b"Return-Path: <a@x.org>\r\nReturn-Path: <spam@x.org>\r\n\r\n",
            {},
            R + b"Return-Path: <spam@x.org>\r\n\r\n",  # only the one used for MAIL FROM goes
        ),
        (b"Return-Path: \r\nX: 1\r\n\r\n", {}, R + b"Return-Path: \r\nX: 1\r\n\r\n"),
        (b"Return-Path: <>\r\n\r\n", {"for_mda": True}, R + b"Return-Path: <>\r\n\r\n"),
        (b"Return-Path: <a>\r\n\r\n", {"for_mda": True}, R + b"Return-Path: <a@srv>\r\n\r\n"),
        # Status
        (b"Status: \r\nX: 1\r\n\r\n", {}, R + b"X: 1\r\n\r\n"),
        (b"Status:\r\n \r\nX: 1\r\n\r\n", {}, R + b"X: 1\r\n\r\n"),
        (b"Status: RO\r\nX: 1\r\n\r\n", {}, R + b"Status: RO\r\nX: 1\r\n\r\n"),
        (b"Status: RO\r\nX: 1\r\n\r\n", {"dropstatus": True}, R + b"X: 1\r\n\r\n"),
        (b"X-Mozilla-Status: \r\n\r\n", {}, R + b"\r\n"),
        (b"X-Mozilla-Status: 0001\r\n\r\n", {}, R + b"X-Mozilla-Status: 0001\r\n\r\n"),
        (b"X-Mozilla-Status: 0001\r\n\r\n", {"dropstatus": True}, R + b"\r\n"),
        (b"X-Status: \r\n\r\n", {}, R + b"X-Status: \r\n\r\n"),
        # Delivered-To
        (b"Delivered-To: a@x\r\nX: 1\r\n\r\n", {}, R + b"Delivered-To: a@x\r\nX: 1\r\n\r\n"),
        (
            b"Delivered-To: a@x\r\nX: 1\r\nDelivered-To: b@x\r\n\r\n",
            {"dropdelivered": True},
            R + b"X: 1\r\n\r\n",
        ),
        # rewrite
        (
            b"From: bob\r\nTo: Carol <carol>, dan@x.org\r\nCc: eve\r\nSubject: bob\r\n\r\n",
            {},
            R + b"From: bob@srv\r\nTo: Carol <carol@srv>, dan@x.org\r\nCc: eve@srv\r\n"
            b"Subject: bob\r\n\r\n",
        ),
        (
            b"Resent-To: a\r\nResent-Cc: b\r\nResent-Bcc: c\r\nResent-From: d\r\n"
            b"Resent-Sender: e\r\nSender: f\r\nReply-To: g\r\nBcc: h\r\nApparently-To: i\r\n"
            b"Apparently-From: j\r\nMessage-ID: <k>\r\nIn-Reply-To: <l>\r\n\r\n",
            {},
            R + b"Resent-To: a@srv\r\nResent-Cc: b@srv\r\nResent-Bcc: c@srv\r\n"
            b"Resent-From: d@srv\r\nResent-Sender: e@srv\r\nSender: f@srv\r\nReply-To: g@srv\r\n"
            b"Bcc: h@srv\r\nApparently-To: i@srv\r\nApparently-From: j@srv\r\n"
            b"Message-ID: <k>\r\nIn-Reply-To: <l>\r\n\r\n",
        ),
        (b"To: bob,\r\n carol\r\n\r\n", {}, R + b"To: bob@srv,\r\n carol@srv\r\n\r\n"),
        (b"From: bob\r\n\r\n", {"rewrite": False}, R + b"From: bob\r\n\r\n"),
        # NULs
        (
            b"Subject: a\0b\r\n\r\n",
            {},
            R + b"Subject: ab\r\nX-Fetchmail-Warning: message has embedded NULs\r\n\r\n",
        ),
        # bad lines that are not refused
        (b" leading: fold\r\nX: 1\r\n\r\n", {}, R + b" leading: fold\r\nX: 1\r\n\r\n"),
        (b"X: 1\r\nno colon\r\n\r\n", {"accept_bad_header": True}, R + b"X: 1\r\nno colon\r\n\r\n"),
        (b".dotted\r\n\r\n", {"accept_bad_header": True}, R + b".dotted\r\n\r\n"),
        # no header at all
        (b"\r\nbody", {}, R + b"\r\n"),
        (b"\r\nbody", {"if_headerless": b"From: X\r\n"}, R + b"From: X\r\n\r\n"),
        (b"From a@b c\r\n\r\n", {"if_headerless": b"From: X\r\n"}, R + b"From: X\r\n\r\n"),
        (b"Subject: a\r\n\r\n", {"if_headerless": b"From: X\r\n"}, R + b"Subject: a\r\n\r\n"),
        (b"\r\n", {"received": None}, b"\r\n"),
    ],
)
def test_edit_header(data: bytes, options: dict[str, Any], expected: bytes) -> None:
    assert edit(data, **options) == expected


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"X: 1\r\nno colon\r\nY: 2\r\n\r\n", b"no colon"),
        (b"no colon\r\n but: continued\r\n\r\n", b"no colon"),
        (b"Netmind spam without blank line\r\nbody text\r\n", b"Netmind spam without blank line"),
        (b"X: 1\r\n.\r\n\r\n", b"."),
    ],
)
def test_a_bad_header_line_refuses_the_message(data: bytes, line: bytes) -> None:
    from fetcher.message import BadHeaderError

    with pytest.raises(BadHeaderError) as caught:
        edit(data)
    assert caught.value.line == line
    assert str(caught.value) == "incorrect header line found - see manpage for bad-header option"


def test_headerless_stand_in() -> None:
    assert headerless_header(
        local_user="bob", local_host="vm", remote_user="rb", server_name=ISP
    ) == (
        b"From: FETCHMAIL-DAEMON\r\nTo: bob@vm\r\n"
        b"Subject: Headerless mail from rb's mailbox on mail.isp.net\r\n"
    )


# --- line ends and dot-stuffing ------------------------------------------------------------


def ref_line_ends(data: bytes, stripcr: bool, forcecr: bool) -> bytes:
    """The whole-buffer rules the streaming code must match."""
    if stripcr:
        return data.replace(b"\r\n", b"\n")
    if forcecr:
        return re.sub(rb"(?<!\r)\n", b"\r\n", data)
    return data


def ref_smtp_data(data: bytes) -> bytes:
    """CRLF for every line end (an LF, or CRs with or without an LF), dots doubled at line
    starts, a final CRLF."""
    out = re.sub(rb"\r+\n?|\n", b"\r\n", data)
    out = re.sub(rb"(?:^|(?<=\n))\.", b"..", out)
    return out + b"\r\n" if out and not out.endswith(b"\r\n") else out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@pytest.mark.parametrize(
    ("chunks", "stripcr", "forcecr", "expected"),
    [
        ([b"a\r\nb\r\n"], True, False, b"a\nb\n"),
        ([b"a\r", b"\nb"], True, False, b"a\nb"),  # CR and LF in different chunks
        ([b"a\r", b"", b"\nb"], True, False, b"a\nb"),
        ([b"a\r", b"\r", b"\n"], True, False, b"a\r\n"),
        ([b"a\rb\r"], True, False, b"a\rb\r"),  # lone CRs stay
        ([b"a\nb\r\nc\n"], False, True, b"a\r\nb\r\nc\r\n"),
        ([b"a\r", b"\nb\n"], False, True, b"a\r\nb\r\n"),  # no CR added twice
        ([b"a\n", b"\n"], False, True, b"a\r\n\r\n"),
        ([b"\n"], False, True, b"\r\n"),
        ([b"a\nb\r\n"], True, True, b"a\nb\n"),  # stripcr wins
        ([b"a\nb\r\n"], False, False, b"a\nb\r\n"),
        ([], True, False, b""),
    ],
)
def test_convert_line_ends(
    chunks: list[bytes], stripcr: bool, forcecr: bool, expected: bytes
) -> None:
    assert b"".join(convert_line_ends(chunks, stripcr=stripcr, forcecr=forcecr)) == expected


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b".hidden\r\nok\r\n"], b"..hidden\r\nok\r\n"),
        ([b"a\r\n.\r\nb\r\n"], b"a\r\n..\r\nb\r\n"),  # a lone dot cannot end the data
        ([b"a\r\n", b".b\r\n"], b"a\r\n..b\r\n"),  # dot at the start of the next chunk
        ([b"a\r", b"\n", b".", b"\r\n"], b"a\r\n..\r\n"),
        ([b"a.b\r\n"], b"a.b\r\n"),  # only at line start
        ([b"a\n.b\n"], b"a\r\n..b\r\n"),  # a bare LF is a line end, sent as CRLF
        ([b"a\r.b\r\n"], b"a\r\n..b\r\n"),  # a bare CR too (SMTP smuggling)
        ([b"a\r\r\nb\r\n"], b"a\r\nb\r\n"),  # CRs before an LF: one line end
        ([b"a\r", b"\r", b"", b"\r\nb"], b"a\r\nb\r\n"),
        ([b"a\r\rb"], b"a\r\nb\r\n"),
        ([b"a\n\r\nb"], b"a\r\n\r\nb\r\n"),
        ([b"no newline"], b"no newline\r\n"),
        ([b"ends in CR\r"], b"ends in CR\r\n"),
        ([b"ends in LF\n"], b"ends in LF\r\n"),
        ([b"ends in LF", b"\n"], b"ends in LF\r\n"),
        ([b"ends in CR", b"\r", b"\n"], b"ends in CR\r\n"),
        ([b"a\n", b"\n"], b"a\r\n\r\n"),
        ([b"."], b"..\r\n"),
        ([b"\n"], b"\r\n"),
        ([b"\r"], b"\r\n"),
        ([b"", b""], b""),
        ([], b""),
    ],
)
def test_smtp_data_chunks(chunks: list[bytes], expected: bytes) -> None:
    assert b"".join(smtp_data_chunks(chunks)) == expected


PIECES = [b"\r", b"\n", b"\r\n", b".", b"..", b"a", b"\0", b"\xff"]
DATA = st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join)
CUTS = st.lists(st.integers(min_value=0, max_value=200), max_size=12)


@given(DATA, CUTS, st.booleans(), st.booleans())
def test_line_ends_do_not_depend_on_chunking(
    data: bytes, cuts: list[int], stripcr: bool, forcecr: bool
) -> None:
    chunks = split(data, cuts)
    out = b"".join(convert_line_ends(chunks, stripcr=stripcr, forcecr=forcecr))
    assert out == ref_line_ends(data, stripcr, forcecr)


@given(DATA, CUTS)
def test_smtp_data_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    out = b"".join(smtp_data_chunks(split(data, cuts)))
    assert out == ref_smtp_data(data)
    # every line end is CRLF, so every listener sees the same lines, and nothing before the
    # caller's final ".\r\n" reads as an end of data
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", out) is None
    assert re.search(rb"(?:^|\n)\.\r", out) is None
    assert not out or out.endswith(b"\r\n")


@given(DATA, CUTS, st.lists(st.booleans(), max_size=13))
def test_chunks_said_to_be_plain_are_trusted_only_where_that_is_safe(
    data: bytes, cuts: list[int], claims: list[bool]
) -> None:
    """`pass_plain` is for chunks the POP3 driver found to be DATA already: whole CRLF lines,
    none starting with a dot. Wherever such a chunk falls in the stream (after half a line,
    after a CR whose LF it starts with), the listener gets the same DATA as if every chunk
    had been fed."""
    stuffer = DataStuffer()
    chunks = split(data, cuts)
    out = b""
    for chunk, claim in zip(chunks, claims + [False] * len(chunks), strict=False):
        plain = claim and chunk.endswith(b"\n") and _really_plain(chunk)
        out += stuffer.pass_plain(chunk) if plain else stuffer.feed(chunk)
    out += stuffer.end()
    assert out == ref_smtp_data(data)


def _really_plain(chunk: bytes) -> bool:
    lines = chunk.split(b"\r\n")
    return lines[-1] == b"" and not any(
        b"\r" in line or b"\n" in line or line.startswith(b".") for line in lines
    )


@pytest.mark.parametrize(
    ("before", "chunk", "expected"),
    [
        (b"", b"ok\r\nfine\r\n", b"ok\r\nfine\r\n"),  # as it is
        (b"", b".dot\r\n", b"..dot\r\n"),  # a first line with a dot is never passed as it is
        (b"half", b"line\r\n", b"halfline\r\n"),  # not at a line start: fed
        (b"cr\r", b"\nnext\r\n", b"cr\r\nnext\r\n"),  # the CR's LF: fed
        (b"", b"no end", b"no end\r\n"),  # not whole lines: fed
    ],
)
def test_pass_plain_falls_back_to_feeding(before: bytes, chunk: bytes, expected: bytes) -> None:
    stuffer = DataStuffer()
    out = stuffer.feed(before) + stuffer.pass_plain(chunk) + stuffer.end()
    assert out == ref_smtp_data(before + chunk)
    assert out.endswith(expected)


@given(DATA, st.integers(min_value=1, max_value=7), st.booleans(), st.booleans())
def test_a_body_streams_through_in_bounded_pieces(
    data: bytes, size: int, stripcr: bool, forcecr: bool
) -> None:
    chunks = read_chunks(io.BytesIO(data), size)
    pieces = list(convert_line_ends(chunks, stripcr=stripcr, forcecr=forcecr))
    assert b"".join(pieces) == ref_line_ends(data, stripcr, forcecr)
    assert all(0 < len(p) <= 2 * size + 1 for p in pieces)


def test_read_chunks() -> None:
    assert list(read_chunks(io.BytesIO(b"abcdefg"), 3)) == [b"abc", b"def", b"g"]
    assert list(read_chunks(io.BytesIO(b""), 3)) == []


def test_header_and_body_stream_together() -> None:
    spool = io.BytesIO(b"Subject: x\n\n.line\nlast")
    header = edit_header(read_header(spool), received=None, for_mda=False, server_name="s")
    chunks = itertools.chain([header], read_chunks(spool, 2))
    data = b"".join(smtp_data_chunks(chunks))
    assert data == b"Subject: x\r\n\r\n..line\r\nlast\r\n"


# --- MDA command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "recipients", "sender", "command"),
    [
        ("/usr/bin/procmail -d %T", ["bob"], "a@x.org", "/usr/bin/procmail -d 'bob'"),
        (
            "/usr/sbin/sendmail -i -f %F -- %T",
            ["bob"],
            "alice@example.org",
            "/usr/sbin/sendmail -i -f 'alice@example.org' -- 'bob'",
        ),
        (
            "mda.sh -f %F -- %T",
            ["bob"],
            "alice@example.org",
            "mda.sh -f 'alice@example.org' -- 'bob'",
        ),
        ("deliver %T", ["bob", "carol"], "", "deliver 'bob' 'carol'"),  # one word each
        ("deliver -f %F", ["bob"], "", "deliver -f '<>'"),  # the null sender
        ("maildrop -d %s", ["bob"], "", "maildrop -d 'bob'"),  # the old spelling of %T
        ("deliver %F%T", ["bob"], "a@x", "deliver 'a@x''bob'"),
        ("deliver -f%F", ["bob"], "a@x", "deliver -f'a@x'"),
        ("deliver %%T 100% %x %", ["bob"], "", "deliver %'bob' 100% %x %"),  # as fetchmail
        ("deliver %F", ["bob"], "o'brien@x.org", "deliver 'o_brien@x.org'"),
        ("deliver %T", ["it's"], "", "deliver 'it_s'"),
        ("deliver %F", ["bob"], "a\0b", "deliver 'a_b'"),
        ("deliver %F", ["bob"], "$(touch /tmp/x)`id`;|&\n", "deliver '$(touch /tmp/x)`id`;|&\n'"),
        ("deliver 'x' %T \"y\" $(echo %F)", ["b"], "a", "deliver 'x' 'b' \"y\" $(echo 'a')"),
        ("deliver \\x %T", ["b"], "", "deliver \\x 'b'"),
        ("deliver", ["bob"], "a@x", "deliver"),
    ],
)
def test_mda_command(template: str, recipients: list[str], sender: str, command: str) -> None:
    assert mda_command(template, recipients, sender) == command


@pytest.mark.parametrize(
    ("template", "how"),
    [
        ("/usr/sbin/sendmail -f '%F' -- %T", "single-quoted %F"),  # fetchmail 6.4's refusal
        ("procmail -d '%T'", "single-quoted %T"),
        ("procmail -d '-x %s'", "single-quoted %s"),
        ("deliver '%%F'", "single-quoted %F"),
        ('deliver "%T"', "double-quoted %T"),
        ('deliver "-f %F"', "double-quoted %F"),
        ('deliver "a\\"%F"', "double-quoted %F"),
        ("deliver `echo %F`", "backquoted %F"),
        ("deliver \\%F", "backslash-escaped %F"),
        ('deliver "\\%F"', "backslash-escaped %F"),
        ("deliver $%F", "$-prefixed %F"),
        ("deliver 'unclosed %T", "single-quoted %T"),
    ],
)
def test_mda_templates_that_would_unquote_a_value_are_refused(template: str, how: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_mda_template(template)
    assert str(caught.value) == (
        f"MDA option contains {how} expansion. "
        "Refusing to deliver. Check the manual and fix your mda option."
    )
    with pytest.raises(ConfigError):
        mda_command(template, ["bob"], "a@x")


# Quotes, a command substitution, a separator, and no white space (which $(echo %F) would split).
HOSTILE_SENDER = "a'$(touch${IFS}pwned)`touch${IFS}pwned2`;b@x"


@pytest.mark.parametrize(
    ("template", "argv"),
    [
        ("procmail -d %T", ["-d", "bob"]),
        ("deliver 'literal' %T \"also literal\"", ["literal", "bob", "also literal"]),
        ("deliver 'it''s' %F", ["its", "SENDER"]),
        ("deliver '%' %F", ["%", "SENDER"]),  # a % inside quotes that expands nothing
        ('deliver "100%" %F', ["100%", "SENDER"]),
        ("deliver \\' %F", ["'", "SENDER"]),  # an escaped quote opens nothing
        ("deliver $(echo %F)", ["SENDER"]),
        ("deliver ${X:-%F}", ["SENDER"]),
    ],
)
def test_mda_templates_that_are_accepted(template: str, argv: list[str], tmp_path: Path) -> None:
    """Accepted, and what the MDA is given is what the template says, each expansion one word
    however hostile the sender; the sender runs nothing."""
    check_mda_template(template)
    arguments = template.partition(" ")[2]  # run the argument dumper instead of the MDA
    command = mda_command(f"{ARGV_DUMPER} {arguments}", ["bob"], HOSTILE_SENDER)
    result = subprocess.run(
        ["/bin/sh", "-c", command], cwd=tmp_path, env={"PATH": os.environ.get("PATH", "/bin")},
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    sender = expected_word(HOSTILE_SENDER)
    assert json.loads(result.stdout) == [sender if a == "SENDER" else a for a in argv]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def expected_word(sender: str) -> str:
    return (sender or "<>").replace("'", "_").replace("\0", "_")


@given(st.text())
def test_any_sender_is_exactly_one_shell_word(sender: str) -> None:
    command = mda_command("/usr/sbin/sendmail -i -f %F -- %T", ["bob", "carol"], sender)
    assert shlex.split(command) == [
        "/usr/sbin/sendmail", "-i", "-f", expected_word(sender), "--", "bob", "carol",
    ]  # fmt: skip


ARGV_DUMPER = (
    f"{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[1:]))'"
)


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=40) | st.sampled_from(["$(id)", "`id`", "';id;'", "a\\", "\\'", "\n;id"]))
def test_the_real_shell_sees_one_word(sender: str) -> None:
    command = mda_command(f"{ARGV_DUMPER} -f %F -- %T", ["bob"], sender)
    result = subprocess.run(
        ["/bin/sh", "-c", command], capture_output=True, text=True, check=True, timeout=30
    )
    assert json.loads(result.stdout) == ["-f", expected_word(sender), "--", "bob"]


# --- prepare -------------------------------------------------------------------------------

MAIL = (
    b"Return-Path: <alice@example.org>\r\n"
    b"Received: from mx.isp.net by mail.isp.net\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob\r\n"
    b"Status: \r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b".line\r\n"
    b"bye\r\n"
)


def accounts(
    **user_options: Any,
) -> tuple[ServerOptions, UserOptions, GlobalOptions]:
    user = UserOptions(remote="bob", localnames=[("bob", None)], smtphunt=["localhost"])
    for key, value in user_options.items():
        setattr(user, key, value)
    server = ServerOptions(pollname=ISP, protocol="POP3", users=[user])
    return server, user, GlobalOptions()


def run_prepare(
    data: bytes,
    server: ServerOptions,
    user: UserOptions,
    globals_: GlobalOptions,
    *,
    for_mda: bool = False,
    folder: str | None = None,
) -> tuple[Envelope, Message] | Delivery:
    return prepare(
        io.BytesIO(data),
        server=server,
        user=user,
        globals_=globals_,
        protocol="POP3",
        peer_address="192.0.2.7",
        for_mda=for_mda,
        folder=folder,
        local_host="vm",
        now=NOW,
    )


def test_prepare_for_smtp() -> None:
    prepared = run_prepare(MAIL, *accounts())
    assert not isinstance(prepared, Delivery)
    envelope, message = prepared
    assert message.header == (
        b"Received: from mail.isp.net [192.0.2.7]\r\n"
        + f"\tby vm with POP3 (pyfetch-{__version__})\r\n".encode()
        + f"\tfor <bob@localhost> (single-drop); {STAMP}\r\n".encode()
        + b"Received: from mx.isp.net by mail.isp.net\r\n"
        b"From: Alice <alice@example.org>\r\n"
        b"To: bob@mail.isp.net\r\n"
        b"Subject: hello\r\n"
        b"\r\n"
    )
    assert message.body.read() == b".line\r\nbye\r\n"  # the sink stuffs; the spool is not
    assert envelope == Envelope(sender="alice@example.org", recipients=["bob@localhost"], size=0)


@pytest.mark.parametrize(
    ("user_options", "globals_options", "for_mda", "recipients", "for_clause"),
    [
        ({"smtphunt": ["127.0.0.1/2525"]}, {}, False, ["bob@127.0.0.1"], b"<bob@127.0.0.1>"),
        ({"smtpaddress": "example.org"}, {}, False, ["bob@example.org"], b"<bob@example.org>"),
        ({"smtphunt": []}, {}, False, ["bob@localhost"], b"<bob@localhost>"),
        ({"mda": "procmail -d %T"}, {}, True, ["bob"], b"<bob@localhost>"),
        (
            {"mda": "procmail -d %T", "smtpaddress": "example.org"},
            {},
            True,
            ["bob"],
            b"<bob@localhost>",  # fetchmail's MDA sink forces localhost
        ),
        ({"bsmtp": "-", "smtphunt": ["mx"]}, {}, False, ["bob@localhost"], b"<bob@localhost>"),
        (  # multidrop: the header names bob (`To: bob`, qualified by rewrite), not the others
            {"localnames": [("bob", None), ("carol", "caroline"), ("dave", None)]},
            {},
            False,
            ["bob@localhost"],
            b"<bob@localhost> (multi-drop)",
        ),
        (
            {"localnames": [("bob", None)], "wildcard": True},
            {},
            False,
            ["bob@localhost"],
            b"<bob@localhost> (multi-drop)",
        ),
    ],
)
def test_prepare_recipients(
    user_options: dict[str, Any],
    globals_options: dict[str, Any],
    for_mda: bool,
    recipients: list[str],
    for_clause: bytes | None,
) -> None:
    server, user, globals_ = accounts(**user_options)
    for key, value in globals_options.items():
        setattr(globals_, key, value)
    prepared = run_prepare(MAIL, server, user, globals_, for_mda=for_mda)
    assert not isinstance(prepared, Delivery)
    envelope, message = prepared
    assert envelope.recipients == recipients
    if for_clause is None:
        assert b"\tfor <" not in message.header
    else:
        assert b"\tfor " + for_clause in message.header
    assert (b"Return-Path: <alice@example.org>\r\n" in message.header) is for_mda


def test_prepare_options() -> None:
    server, user, globals_ = accounts(rewrite=False, dropstatus=True, pass8bits=True)
    server.tracepolls = True
    globals_.invisible = False
    prepared = run_prepare(MAIL, server, user, globals_, folder="INBOX")
    assert not isinstance(prepared, Delivery)
    envelope, message = prepared
    assert b"(pyfetch-%s polling mail.isp.net account bob folder INBOX)" % __version__.encode() in (
        message.header
    )
    assert b"To: bob\r\n" in message.header
    assert envelope.body == "8BITMIME"


def test_prepare_invisible() -> None:
    server, user, globals_ = accounts()
    globals_.invisible = True
    prepared = run_prepare(MAIL, server, user, globals_)
    assert not isinstance(prepared, Delivery)
    assert prepared[1].header.startswith(b"Received: from mx.isp.net by mail.isp.net\r\n")


def test_prepare_via_names_the_server() -> None:
    server, user, globals_ = accounts()
    server.via = "pop.isp.net"
    prepared = run_prepare(b"From: carol\r\n\r\n", server, user, globals_)
    assert not isinstance(prepared, Delivery)
    envelope, message = prepared
    assert envelope.sender == "carol@pop.isp.net"
    assert b"From: carol@pop.isp.net\r\n" in message.header
    assert message.header.startswith(b"Received: from pop.isp.net [192.0.2.7]\r\n")


def test_prepare_refuses_a_bad_header() -> None:
    prepared = run_prepare(b"no colon\r\n\r\nbody", *accounts())
    assert prepared == Delivery(
        Outcome.PERMFAIL, reply="incorrect header line found - see manpage for bad-header option"
    )


def test_prepare_accepts_a_bad_header_when_told() -> None:
    server, user, globals_ = accounts()
    server.badheader = True
    prepared = run_prepare(b"no colon\r\n\r\nbody", server, user, globals_)
    assert not isinstance(prepared, Delivery)
    assert prepared[1].header.endswith(b"no colon\r\n\r\n")


def test_prepare_headerless() -> None:
    prepared = run_prepare(b"\r\njust a body\r\n", *accounts())
    assert not isinstance(prepared, Delivery)
    envelope, message = prepared
    assert envelope.sender == f"bob@{ISP}"
    assert message.header.endswith(
        b"From: FETCHMAIL-DAEMON\r\nTo: bob@vm\r\n"
        b"Subject: Headerless mail from bob's mailbox on mail.isp.net\r\n\r\n"
    )
    assert message.body.read() == b"just a body\r\n"


def test_header_lines_keep_every_character_but_the_line_end() -> None:
    header = read_header(io.BytesIO(b"Subject: BOX\r\nX-Tag: XX\r\r\n\r\nbody"))
    assert [f.raw for f in header.fields] == [b"Subject: BOX", b"X-Tag: XX"]


# --- prepare: mimedecode, the sender after rewrite, SIZE= ----------------------------------

MIME_MAIL = (
    b"From: =?utf-8?q?Andr=C3=A9?= <andre@example.org>\r\n"
    b"Subject: =?utf-8?b?Y2Fmw6k=?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"caf=C3=A9 =3D soft=\r\nbreak\r\n"
)


def test_prepare_with_mimedecode_decodes_header_and_body() -> None:
    prepared = run_prepare(MIME_MAIL, *accounts(mimedecode=True))
    assert not isinstance(prepared, Delivery)
    envelope, message = prepared
    assert message.header.endswith(
        b"From: Andr\xc3\xa9 <andre@example.org>\r\n"
        b"Subject: caf\xc3\xa9\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit            \r\n"
        b"\r\n"
    )
    assert b"".join(message.body_chunks(4)) == b"caf\xc3\xa9 = softbreak\r\n"
    assert envelope.body == "8BITMIME"


def test_prepare_without_mimedecode_leaves_the_message_alone() -> None:
    prepared = run_prepare(MIME_MAIL, *accounts())
    assert not isinstance(prepared, Delivery)
    envelope, message = prepared
    assert message.header.endswith(MIME_MAIL.split(b"\r\n\r\n")[0] + b"\r\n\r\n")
    assert message.body_filter is None
    assert b"".join(message.body_chunks()) == b"caf=C3=A9 =3D soft=\r\nbreak\r\n"
    assert envelope.body == "8BITMIME"  # quoted-printable, as fetchmail declares it


def test_prepare_with_mimedecode_checks_the_header_before_decoding_it() -> None:
    """fetchmail finds a line without a colon as it reads it; decoding might make one."""
    data = b"Subject: x\r\n=?us-ascii?q?a=3Ab?=\r\n\r\nbody\r\n"
    assert run_prepare(data, *accounts(mimedecode=True)) == Delivery(
        Outcome.PERMFAIL, reply="incorrect header line found - see manpage for bad-header option"
    )
    server, user, globals_ = accounts(mimedecode=True)
    server.badheader = True
    prepared = run_prepare(data, server, user, globals_)
    assert not isinstance(prepared, Delivery)
    assert b"\r\na:b\r\n\r\n" in prepared[1].header


@pytest.mark.parametrize(
    ("data", "rewrite", "sender"),
    [
        (b"Sender: carol\r\nFrom: alice@example.org\r\n\r\n", True, f"carol@{ISP}"),
        (b"Sender: carol\r\nFrom: alice@example.org\r\n\r\n", False, "alice@example.org"),
        (b"From: =?utf-8?q?x?= <alice>\r\n\r\n", True, f"alice@{ISP}"),
    ],
)
def test_prepare_picks_the_sender_after_rewrite(data: bytes, rewrite: bool, sender: str) -> None:
    for mda in (False, True):  # the same for MAIL FROM and for %F
        prepared = run_prepare(data, *accounts(rewrite=rewrite), for_mda=mda)
        assert not isinstance(prepared, Delivery)
        assert prepared[0].sender == sender


def test_prepare_declares_the_size_the_server_listed() -> None:
    server, user, globals_ = accounts()
    prepared = prepare(
        io.BytesIO(MAIL), server=server, user=user, globals_=globals_, protocol="POP3",
        peer_address=None, for_mda=False, local_host="vm", now=NOW, size=4242,
    )
    assert not isinstance(prepared, Delivery)
    assert prepared[0].size == 4242  # not the size with our Received line
