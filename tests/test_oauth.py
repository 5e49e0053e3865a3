"""OAuth2 login (`auth xoauth2`, `auth oauthbearer`) for IMAP and POP3 against the scripted fakes.

The bearer token is the account's password. It is sent only over TLS, only when the server
offers the mechanism, and never appears in the trace or in an error message.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fakes import imap as fake_imap
from fakes import pop3 as fake_pop3
from fakes.imap import FakeImapServer
from fakes.pop3 import FakePop3Server
from servers.certs import TestCA

from fetcher import trace
from fetcher.credentials import needs_password
from fetcher.drivers.imap import ImapDriver
from fetcher.drivers.pop3 import MAX_AUTH_LINE, Pop3Driver
from fetcher.drivers.sasl import oauth_error_status, oauth_response
from fetcher.errors import AuthenticationError, ConfigError, TLSError
from fetcher.exitcodes import ExitCode
from fetcher.features import unsupported
from fetcher.model import ServerOptions, UserOptions
from fetcher.rcfile import parse
from fetcher.rcfile.lexer import T, tokenize

TOKEN = "ya29.a0-GOOD_token~value"
WRONG = "ya29.a0-WRONG_token~value"
# Long enough that AUTH with an initial response would pass RFC 5034's 255 octets.
LONG_TOKEN = "ya29." + "x" * 300
MECHANISMS = ["XOAUTH2", "OAUTHBEARER"]
IMAP_CAPS = "IMAP4rev1 AUTH=XOAUTH2 AUTH=OAUTHBEARER"
POP3_CAPS = ("TOP", "UIDL", "RESP-CODES", "SASL XOAUTH2 OAUTHBEARER")


@pytest.fixture
def trace_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger=trace.TRACE_LOGGER):
        yield caplog


def trace_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == trace.TRACE_LOGGER]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def imap_driver(
    port: int, ca: TestCA | None, mechanism: str, *, token: str = TOKEN, **user: Any
) -> ImapDriver:
    options = ServerOptions(
        pollname="127.0.0.1", protocol="IMAP", service=str(port), timeout=5,
        auth=mechanism.lower(),
    )  # fmt: skip
    user.setdefault("remote", "bob")
    if ca is not None:
        user.setdefault("sslcertfile", str(ca.ca_cert))
        user.setdefault("ssl", True)
    return ImapDriver(options, UserOptions(password=token, **user))


def pop3_driver(
    port: int, ca: TestCA | None, mechanism: str, *, token: str = TOKEN, **user: Any
) -> Pop3Driver:
    options = ServerOptions(
        pollname="127.0.0.1", protocol="POP3", service=str(port), timeout=5,
        auth=mechanism.lower(),
    )  # fmt: skip
    user.setdefault("remote", "bob")
    if ca is not None:
        user.setdefault("sslcertfile", str(ca.ca_cert))
        user.setdefault("ssl", True)
    return Pop3Driver(options, UserOptions(password=token, **user))


def imap_fake(ca: TestCA | None, **kwargs: Any) -> FakeImapServer:
    kwargs.setdefault("capabilities", IMAP_CAPS)
    kwargs.setdefault("oauth_token", TOKEN)
    if ca is not None:
        kwargs.setdefault("tls_context", ca.server_context())
    return FakeImapServer(**kwargs)


def pop3_fake(ca: TestCA | None, **kwargs: Any) -> FakePop3Server:
    kwargs.setdefault("capabilities", POP3_CAPS)
    kwargs.setdefault("oauth_token", TOKEN)
    kwargs.setdefault("messages", [])
    if ca is not None:
        kwargs.setdefault("tls_context", ca.server_context())
        kwargs.setdefault("implicit_tls", True)
    return FakePop3Server(**kwargs)


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["xoauth2", "oauthbearer"])
def test_rcfile_accepts_the_auth_words(word: str) -> None:
    tokens = [(t.kind, t.value) for t in tokenize(f"auth {word}".encode(), "rc")]
    assert (T.AUTHTYPE, word) in tokens
    (entry,) = parse(f"poll h proto imap auth {word} user bob\n".encode(), "rc").entries
    assert entry.server["auth"] == word


@pytest.mark.parametrize("word", ["xoauth2", "oauthbearer"])
def test_the_token_is_asked_for_and_the_feature_is_supported(word: str) -> None:
    server = ServerOptions(pollname="mail.example.org", protocol="IMAP", auth=word)
    user = UserOptions(remote="bob")
    assert needs_password(server)
    assert unsupported(server, user) == []


def test_sasl_strings() -> None:
    assert oauth_response("XOAUTH2", "bob@example.org", "tok", "h", 993) == (
        b"user=bob@example.org\x01auth=Bearer tok\x01\x01"
    )
    assert oauth_response("OAUTHBEARER", "a,b=c", "tok", "mail.example.org", 993) == (
        b"n,a=a=2Cb=3Dc,\x01host=mail.example.org\x01port=993\x01auth=Bearer tok\x01\x01"
    )
    with pytest.raises(ConfigError):
        oauth_response("XOAUTH2", "bob", "tok\x01user=eve", "h", 993)
    assert oauth_error_status(b'{"status":"401","schemes":"bearer"}') == "401"
    assert oauth_error_status(b"not json") is None
    assert oauth_error_status(b'["status"]') is None


# -- IMAP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_imap_success(test_ca: TestCA, mechanism: str, trace_log: pytest.LogCaptureFixture) -> None:
    with imap_fake(test_ca) as server:
        d = imap_driver(server.port, test_ca, mechanism)
        d.connect()
        d.login()
        d.close()
    expected = fake_imap.oauth_string(mechanism, "bob", TOKEN, server.port)
    assert server.sasl_received == [expected]
    at = next(i for i, line in enumerate(server.received) if "AUTHENTICATE" in line)
    assert server.received[at].endswith(f" AUTHENTICATE {mechanism}")
    assert server.received[at + 1] == b64(expected)
    lines = trace_lines(trace_log)
    assert any(line.endswith(f"AUTHENTICATE {mechanism}") for line in lines)
    assert "IMAP> *" in lines
    assert TOKEN not in trace_log.text and b64(expected) not in trace_log.text


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_imap_wrong_token(
    test_ca: TestCA, mechanism: str, trace_log: pytest.LogCaptureFixture
) -> None:
    with imap_fake(test_ca) as server:
        d = imap_driver(server.port, test_ca, mechanism, token=WRONG)
        d.connect()
        with pytest.raises(AuthenticationError) as info:
            d.login()
        d.close()
    assert info.value.exit_code == ExitCode.AUTHFAIL
    message = str(info.value)
    assert "bob@127.0.0.1" in message and mechanism in message
    assert "invalid_token" in message  # the JSON error's status
    assert WRONG not in message and TOKEN not in message
    # RFC 7628: the error challenge is answered with an empty line.
    at = next(i for i, line in enumerate(server.received) if "AUTHENTICATE" in line)
    assert server.received[at + 2] == ""
    assert WRONG not in trace_log.text
    assert b64(fake_imap.oauth_string(mechanism, "bob", WRONG, server.port)) not in trace_log.text


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_imap_mechanism_not_offered(test_ca: TestCA, mechanism: str) -> None:
    with imap_fake(test_ca, capabilities="IMAP4rev1 AUTH=PLAIN") as server:
        d = imap_driver(server.port, test_ca, mechanism)
        d.connect()
        with pytest.raises(AuthenticationError, match=f"AUTH={mechanism}") as info:
            d.login()
        d.close()
    assert "bob@127.0.0.1" in str(info.value)
    assert not any("AUTHENTICATE" in line for line in server.received)
    assert TOKEN not in " ".join(server.received)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_imap_refuses_to_send_the_token_in_clear(mechanism: str) -> None:
    with imap_fake(None) as server:
        d = imap_driver(server.port, None, mechanism, sslproto="")
        d.connect()
        with pytest.raises(TLSError, match="unencrypted") as info:
            d.login()
        d.close()
    assert "bob@127.0.0.1" in str(info.value)
    assert not any("AUTHENTICATE" in line for line in server.received)
    assert TOKEN not in " ".join(server.received)


# -- POP3 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [TOKEN, LONG_TOKEN], ids=["initial-response", "continuation"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_pop3_success(
    test_ca: TestCA, mechanism: str, token: str, trace_log: pytest.LogCaptureFixture
) -> None:
    with pop3_fake(test_ca, oauth_token=token) as server:
        d = pop3_driver(server.port, test_ca, mechanism, token=token)
        d.connect()
        d.login()
        assert d.list_messages() == []
        d.commit()
    expected = fake_pop3.oauth_string(mechanism, "bob", token, server.port)
    assert server.sasl_received == [expected]
    blob = b64(expected)
    lines = trace_lines(trace_log)
    if len(f"AUTH {mechanism} {blob}") + 2 <= MAX_AUTH_LINE:
        assert f"AUTH {mechanism} {blob}" in server.commands
        assert f"POP3> AUTH {mechanism} *" in lines
    else:
        at = server.commands.index(f"AUTH {mechanism}")
        assert server.commands[at + 1] == blob
        assert f"POP3> AUTH {mechanism}" in lines and "POP3> *" in lines
    assert token not in trace_log.text and blob not in trace_log.text
    assert "STAT" in server.verbs


@pytest.mark.parametrize("token", [WRONG, "ya29." + "w" * 300], ids=["short", "long"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_pop3_wrong_token(
    test_ca: TestCA, mechanism: str, token: str, trace_log: pytest.LogCaptureFixture
) -> None:
    with pop3_fake(test_ca) as server:
        d = pop3_driver(server.port, test_ca, mechanism, token=token)
        d.connect()
        with pytest.raises(AuthenticationError) as info:
            d.login()
        d.close()
    assert info.value.exit_code == ExitCode.AUTHFAIL
    message = str(info.value)
    assert "bob@127.0.0.1" in message and mechanism in message
    assert "400" in message  # the JSON error's status
    assert token not in message and TOKEN not in message
    assert server.commands[-1] == ""  # the empty answer to the error challenge (RFC 7628)
    blob = b64(fake_pop3.oauth_string(mechanism, "bob", token, server.port))
    assert token not in trace_log.text and blob not in trace_log.text


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_pop3_mechanism_not_offered(test_ca: TestCA, mechanism: str) -> None:
    with pop3_fake(test_ca, capabilities=("TOP", "UIDL", "USER", "SASL PLAIN")) as server:
        d = pop3_driver(server.port, test_ca, mechanism)
        d.connect()
        with pytest.raises(AuthenticationError, match=f"SASL {mechanism}") as info:
            d.login()
        d.close()
    assert info.value.exit_code == ExitCode.AUTHFAIL
    assert "bob@127.0.0.1" in str(info.value)
    assert "AUTH" not in server.verbs
    assert TOKEN not in " ".join(server.commands)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_pop3_refuses_to_send_the_token_in_clear(mechanism: str) -> None:
    with pop3_fake(None) as server:
        d = pop3_driver(server.port, None, mechanism, sslproto="")
        d.connect()
        with pytest.raises(TLSError, match="unencrypted") as info:
            d.login()
        d.close()
    assert "bob@127.0.0.1" in str(info.value)
    assert "AUTH" not in server.verbs
    assert TOKEN not in " ".join(server.commands)
