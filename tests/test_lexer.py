"""The scanner, case by case: each row is rcfile text and the tokens fetchmail's flex gives."""

from __future__ import annotations

import pytest

from fetcher.errors import RcSyntaxError
from fetcher.rcfile.lexer import T, tokenize, unescape


def kinds_values(text: str) -> list[tuple[str, object]]:
    return [(t.kind.name, t.value) for t in tokenize(text.encode(), "rc")][:-1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the word after user/pass/is/to/= is a string, whatever it looks like
        ("password 1234", [("PASSWORD", "password"), ("STRING", "1234")]),
        ("user keep", [("USERNAME", "user"), ("STRING", "keep")]),
        ("is a b", [("IS", "is"), ("STRING", "a"), ("STRING", "b")]),
        ("is a keep", [("IS", "is"), ("STRING", "a"), ("KEEP", "keep")]),
        ("a = poll", [("STRING", "a"), ("MAP", "="), ("STRING", "poll")]),
        # longest match: a keyword followed by more characters is a string
        ("keepx pop3 POP3 Pop3", [("STRING", "keepx"), ("PROTO", "POP3"), ("PROTO", "POP3"),
                                  ("STRING", "Pop3")]),
        ("123 123abc -5", [("NUMBER", 123), ("STRING", "123abc"), ("NUMBER", -5)]),
        # noise words and punctuation vanish
        ("with and has wants options , ; : keep", [("KEEP", "keep")]),
        # fused negations, and one that does not exist
        ("nokeep nosoftbounce", [("NO", "no"), ("KEEP", "keep"), ("STRING", "nosoftbounce")]),
        ("nopass8 nomimedec", [("NO", "no"), ("PASS8BITS", "pass8bits"), ("NO", "no"),
                               ("MIMEDECODE", "mimedecode")]),
        # abbreviations
        ("username pass proto local auth folders smtp pre post",
         [("USERNAME", "user"), ("STRING", "pass"), ("PROTOCOL", "protocol"),
          ("LOCALDOMAINS", "localdomains"), ("AUTHENTICATE", "authenticate"),
          ("FOLDER", "folder"), ("SMTPHOST", "smtphost"), ("PRECONNECT", "preconnect"),
          ("POSTCONNECT", "postconnect")]),
        # `password` is an auth type only right after `auth`
        ("auth password", [("AUTHENTICATE", "authenticate"), ("AUTHTYPE", "password")]),
        ("auth kerberos4 auth cram auth opie",
         [("AUTHENTICATE", "authenticate"), ("AUTHTYPE", "kerberos_v4"),
          ("AUTHENTICATE", "authenticate"), ("AUTHTYPE", "cram-md5"),
          ("AUTHENTICATE", "authenticate"), ("AUTHTYPE", "otp")]),
        # quoting
        ('"a b" \'c d\'', [("STRING", "a b"), ("STRING", "c d")]),
        ('"a"b', [("STRING", '"a"b')]),  # a longer unquoted word beats the quoted string
        ('"two\nlines"', [("STRING", "two\nlines")]),
        ('"joined\\\nline"', [("STRING", "joinedline")]),
        ('""', [("STRING", "")]),
        # escapes, in quoted and unquoted strings alike
        ("s\\x41cret", [("STRING", "sAcret")]),
        ('"\\65\\077\\t"', [("STRING", "A?\t")]),
        # comments start only where a token starts
        ("pw#1 # comment\nkeep", [("STRING", "pw#1"), ("KEEP", "keep")]),
        ("keep \\\nfetchall", [("KEEP", "keep"), ("FETCHALL", "fetchall")]),
        ("keep\r\nfetchall\r\n", [("KEEP", "keep"), ("FETCHALL", "fetchall")]),
    ],
)
def test_tokens(text: str, expected: list[tuple[str, object]]) -> None:
    assert kinds_values(text) == expected


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (b"\\n\\t\\b\\r\\\\", b"\n\t\b\r\\"),
        (b"\\x41\\x4a\\X4A", b"AJJ"),
        (b"\\x414", b"A4"),  # at most two hex digits
        (b"\\077", b"?"),  # octal: the leading 0 counts among the three digits
        (b"\\0101", b"\x081"),
        (b"\\65", b"A"),  # no leading 0: decimal, unlike C
        (b"\\065", b"5"),
        (b"\\233", b"\xe9"),
        (b"\\q\\\"", b'q"'),  # any other escaped character is itself
        (b"ab\\x00cd", b"ab"),  # a decoded NUL ends the string, as in C
        (b"\\999", bytes([999 & 0xFF])),
        (b"tail\\", b"tail"),
    ],
)
def test_unescape(raw: bytes, decoded: bytes) -> None:
    assert unescape(raw) == decoded


def test_line_numbers_count_newlines_inside_strings() -> None:
    tokens = list(tokenize(b'poll a\n"x\ny"\n\nkeep', "rc"))
    assert [(t.text, t.line) for t in tokens] == [
        ("poll", 1), ("a", 1), ('"x\ny"', 2), ("keep", 5), ("end of input", 5)
    ]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (b'poll a\npassword "open', 2, "unterminated quoted string"),
        (b"poll a user b pass c\\", 1, "backslash at end of file"),
    ],
)
def test_lexical_errors_name_the_line_where_they_start(
    text: bytes, line: int, message: str
) -> None:
    with pytest.raises(RcSyntaxError) as info:
        list(tokenize(text, "/home/bob/.fetchmailrc"))
    assert info.value.line == line
    assert info.value.reason == message
    assert str(info.value).startswith(f"/home/bob/.fetchmailrc:{line}: {message} at ")


def test_escaped_backslash_at_end_of_file_is_fine() -> None:
    assert [t.value for t in tokenize(b"pw\\\\", "rc")] == ["pw\\", None]


def test_bytes_that_are_not_utf8_survive() -> None:
    tok, _eof = tokenize(b"x\\xff", "rc")
    assert tok.kind is T.STRING
    assert isinstance(tok.value, str)
    assert tok.value.encode("utf-8", "surrogateescape") == b"x\xff"
