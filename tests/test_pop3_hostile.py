"""The POP3 driver against servers that misbehave on purpose, from a hostile-server review.

- Message text is streamed whatever its line lengths: a line of many megabytes is delivered
  byte for byte and does not block the rest of the mailbox (fetchmail delivers it too).
- No secret we sent (the password, a base64 SASL response, an APOP digest, an OAuth2 token)
  comes back to the user in an error or a trace line, whatever the server echoes.
- Timeouts are socket errors (exit 2) with fetchmail 6.4.37's words for each phase.
- `no sslcertck` still checks the certificate, only to warn as fetchmail does before the
  password goes over a connection that could not be verified.

Everything runs the real Pop3Driver against the scripted fake of tests/fakes/pop3.py on a real
127.0.0.1 socket.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fakes.pop3 import (
    ECHO_CHALLENGE,
    ECHO_RESPONSE,
    SILENT_GREETING,
    SILENT_HANDSHAKE,
    FakePop3Server,
)
from servers.certs import TestCA, fingerprint

from fetcher import trace
from fetcher.console import Console
from fetcher.drivers.pop3 import MAX_AUTH_LINE, MAX_LINE, READ_BUFFER, Pop3Driver
from fetcher.errors import (
    AuthenticationError,
    ProtocolError,
    PyfetchError,
    ServerConnectionError,
    ServerTimeoutError,
)
from fetcher.exitcodes import ExitCode
from fetcher.model import ServerOptions, UserOptions

PASSWORD = "s3cr3t-pw"
MSG = b"From: a@example.org\r\nSubject: short\r\n\r\nbody\r\n"
INSECURE = "Warning: the connection is insecure, continuing anyways. (Better use --sslcertck!)"


def driver(
    port: int, *, auth: str = "any", protocol: str = "POP3", timeout: int = 5, **user: Any
) -> Pop3Driver:
    options = ServerOptions(
        pollname="127.0.0.1", protocol=protocol, service=str(port), timeout=timeout, auth=auth
    )
    user.setdefault("remote", "bob")
    user.setdefault("password", PASSWORD)
    user.setdefault("sslproto", "")  # plain POP3 unless a test asks for TLS
    return Pop3Driver(options, UserOptions(**user))


def fake(**kwargs: Any) -> FakePop3Server:
    kwargs.setdefault("password", PASSWORD)
    kwargs.setdefault("messages", [MSG])
    return FakePop3Server(**kwargs)


@pytest.fixture
def trace_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of the -v trace logger, warnings included."""
    log = logging.getLogger(trace.TRACE_LOGGER)
    propagate = log.propagate
    log.propagate = True  # an in-process CLI run elsewhere may have switched it off
    try:
        with caplog.at_level(logging.INFO, logger=trace.TRACE_LOGGER):
            yield caplog
    finally:
        log.propagate = propagate


def trace_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == trace.TRACE_LOGGER]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == trace.TRACE_LOGGER and r.levelno >= logging.WARNING
    ]


class RecordingFile(io.BytesIO):
    """Remembers the largest single write: the most of the message held at once."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def write(self, data: Any) -> int:
        self.largest = max(self.largest, len(data))
        return super().write(data)


# -- 1. message lines of any length are streamed ----------------------------------------------

# What the copy may hold of one line before it writes it on, plus a read's worth: a generous
# bound that a copy holding a whole 3 MiB or 20 MiB line cannot meet.
HELD_AT_MOST = MAX_LINE + READ_BUFFER


def retrieve_all(server: FakePop3Server, **user: Any) -> list[RecordingFile]:
    """Log in, then RETR every message into a file of its own, in one session."""
    d = driver(server.port, **user)
    d.connect()
    d.login()
    outs = []
    for info in d.list_messages():
        out = RecordingFile()
        assert d.retrieve(info.number, out, peek=False) == len(out.getvalue())
        outs.append(out)
    d.commit()
    return outs


def test_a_3_mib_line_is_delivered_and_the_mailbox_goes_on() -> None:
    # dots and bare CRs in the middle of the line, one at every 8 KiB (the reader's buffer
    # size), so that some fall at a read's edge: they are text, not line starts or ends
    line = (b"y" * 8190 + b"\r.") * (3 * 128)
    long_one = b"Subject: long\r\n\r\n" + line + b"\r\n.after the long line\r\nend\r\n"
    assert len(line) == 3 * 1024 * 1024
    with fake(messages=[MSG, long_one, MSG]) as server:
        outs = retrieve_all(server)
    assert [o.getvalue() for o in outs] == [MSG, long_one, MSG]
    assert outs[1].largest <= HELD_AT_MOST


def test_a_20_mib_line_is_delivered_byte_for_byte() -> None:
    line = bytes(range(33, 127)) * (20 * 1024 * 1024 // 94 + 1)
    huge = b"Subject: huge\r\n\r\n" + line + b"\r\n"
    with fake(messages=[huge, MSG]) as server:
        outs = retrieve_all(server)
    assert outs[0].getvalue() == huge
    assert outs[0].largest <= HELD_AT_MOST
    assert outs[1].getvalue() == MSG


def test_a_message_that_is_one_long_line_without_a_line_end() -> None:
    # The fake ends the last line with CRLF on the wire, as RFC 1939 wants; what arrives is
    # the text with that CRLF.
    text = b"z" * (2 * MAX_LINE + 5)
    with fake(messages=[text]) as server:
        outs = retrieve_all(server)
    assert outs[0].getvalue() == text + b"\r\n"


X = b"x" * MAX_LINE  # exactly what the copy holds of a line before it writes it on


@pytest.mark.parametrize(
    ("message", "splits"),
    [
        # a CR held at the edge of what is written on, its LF in the next read
        (b"x" * (MAX_LINE - 1) + b"\r\n.next\r\n", [MAX_LINE]),
        # a stuffed dot at the start of a line that is written on in pieces
        (b"." + X + b"tail\r\n", [MAX_LINE]),
        (b".." + X + b"\r\n", [MAX_LINE, MAX_LINE + 1]),
        # a dot that starts the next read in the middle of a long line is text
        (X + b".y\r\n", [MAX_LINE]),
        (X + b"\r.y\r\n", [MAX_LINE, MAX_LINE + 1]),
        # ... and one that starts the second piece held of the same line
        (X + b"." + X[1:] + b"tail\r\n", [MAX_LINE, 2 * MAX_LINE]),
        # a stuffed line right after a long line, and the terminator in pieces after it
        (X + b"\r\n.z\r\n", [MAX_LINE + 2, MAX_LINE + 3]),
        (X + b"\r\n", [MAX_LINE]),
        (X + b"\r\n", [MAX_LINE + 1]),
        (X + b"\r\n", [MAX_LINE + 2]),
        (X + b"\r\n", [MAX_LINE + 3]),
        (X + b"\r\n", [MAX_LINE + 4]),
    ],
    ids=[
        "cr-at-edge", "stuffed-long", "stuffed-dot-dot", "mid-line-dot", "mid-line-cr-dot",
        "mid-line-dot-held",
        "stuffed-after-long", "term-0", "term-1", "term-2", "term-3", "term-4",
    ],
)
def test_long_lines_split_at_the_edge_of_what_is_held(message: bytes, splits: list[int]) -> None:
    with fake(messages=[message, MSG], split_retr_at=splits) as server:
        outs = retrieve_all(server)
    assert outs[0].getvalue() == message
    assert outs[1].getvalue() == MSG  # nothing after the terminator was taken


@pytest.mark.parametrize(
    ("message", "splits"),
    [
        (b"abc\r\n.def\r\n", [5]),  # "abc CRLF" | "..def": a line start between two reads
        (b"abc\r\n.def\r\n", [6]),  # "abc CRLF ." | ".def": the stuffed dot split
        (b"abc\r\n.def\r\n", [4]),  # "abc CR" | "LF ..def"
        (b"abc\r\n", [5]),  # "abc CRLF" | ". CRLF": the terminator in the next read
        (b"abc\r\n", [6]),  # "abc CRLF ." | "CRLF"
        (b"abc\r\n", [7]),  # "abc CRLF . CR" | "LF"
        (b"abc\r\n", [4, 5, 6, 7]),  # every octet of it apart
        (b"abc\r\n.\r\n", [5, 6, 7, 8, 9]),  # a line of one dot ("..") read octet by octet
    ],
)
def test_line_starts_and_the_terminator_split_between_reads(
    message: bytes, splits: list[int]
) -> None:
    with fake(messages=[message, MSG], split_retr_at=splits) as server:
        outs = retrieve_all(server)
    assert [o.getvalue() for o in outs] == [message, MSG]


# -- 2. no secret in an error or a trace line -------------------------------------------------

STAMP = "<1896.697170952@dbc.mtview.ca.us>"
OAUTH_TOKEN = "ya29.a0-the-good-token"
LONG_TOKEN = "ya29." + "t" * 300  # too long for AUTH's initial response: sent after "+"


def login_error(d: Pop3Driver) -> PyfetchError:
    d.connect()
    try:
        with pytest.raises(PyfetchError) as info:
            d.login()
    finally:
        d.close()
    return info.value


def assert_nothing_leaks(
    error: PyfetchError, caplog: pytest.LogCaptureFixture, *secrets: str
) -> None:
    shown = [str(error), *trace_lines(caplog)]
    assert any("-ERR" in line for line in shown), "the refusal was traced"
    for secret in secrets:
        assert secret
        for line in shown:
            assert secret not in line


def sent_after(server: FakePop3Server, verb: str) -> str:
    """The line the client sent right after its `verb` command (a SASL continuation)."""
    commands = server.commands
    return commands[server.verbs.index(verb) + 1]


def test_pass_echoed_back(trace_log: pytest.LogCaptureFixture) -> None:
    with fake(echo_auth=["PASS"]) as server:
        error = login_error(driver(server.port))
    assert isinstance(error, AuthenticationError)
    assert_nothing_leaks(error, trace_log, PASSWORD)
    assert str(error) == "127.0.0.1: PASS *"


def test_auth_plain_echoed_back(trace_log: pytest.LogCaptureFixture) -> None:
    with fake(capabilities=["TOP", "UIDL", "SASL PLAIN"], echo_auth=["AUTH"]) as server:
        error = login_error(driver(server.port))
    blob = base64.b64encode(f"\0bob\0{PASSWORD}".encode()).decode()
    assert f"AUTH PLAIN {blob}" in server.commands
    assert_nothing_leaks(error, trace_log, PASSWORD, blob)
    assert str(error) == "127.0.0.1: AUTH PLAIN *"


def test_auth_plain_echoed_back_cut_short(trace_log: pytest.LogCaptureFixture) -> None:
    # the first 16 characters of the base64 hold "\0bob\0" and the password's first 6 octets
    blob = base64.b64encode(f"\0bob\0{PASSWORD}".encode()).decode()
    echo = f"-ERR AUTH PLAIN {blob[:16]}"
    with fake(capabilities=["TOP", "UIDL", "SASL PLAIN"], replies={"AUTH": echo}) as server:
        error = login_error(driver(server.port))
    assert_nothing_leaks(error, trace_log, blob[:16], PASSWORD[:6])


def test_a_password_that_looks_like_data_is_still_data() -> None:
    # Only what is shown is cut: a size or a UID that holds the password is read as sent.
    message = b"x" * 1234
    with fake(messages=[message], uids=["uid1234"], password="1234") as server:
        d = driver(server.port, password="1234")
        d.connect()
        d.login()
        [info] = d.list_messages()
        d.close()
    assert (info.size, info.uid) == (1234, "uid1234")


def test_apop_echoed_back(trace_log: pytest.LogCaptureFixture) -> None:
    with fake(apop_stamp=STAMP, echo_auth=["APOP"]) as server:
        error = login_error(driver(server.port, protocol="APOP"))
    digest = hashlib.md5((STAMP + PASSWORD).encode()).hexdigest()
    assert_nothing_leaks(error, trace_log, PASSWORD, digest)


def cram_md5_secrets(server: FakePop3Server) -> tuple[str, str]:
    """(the base64 answer sent after the challenge, the HMAC in it)"""
    answer = sent_after(server, "AUTH")
    mac = hmac.new(PASSWORD.encode(), b"<4711.1234@fake.example>", hashlib.md5).hexdigest()
    assert base64.b64decode(answer) == f"bob {mac}".encode()
    return answer, mac


def test_cram_md5_response_echoed_back(trace_log: pytest.LogCaptureFixture) -> None:
    with fake(cram_md5=True, echo_auth=[ECHO_RESPONSE]) as server:
        error = login_error(driver(server.port, auth="cram-md5"))
    assert_nothing_leaks(error, trace_log, PASSWORD, *cram_md5_secrets(server))


def test_cram_md5_response_echoed_back_then_user_pass(
    trace_log: pytest.LogCaptureFixture,
) -> None:
    # `auth any` takes the refusal as "try the next method": the echo is only in the trace
    with fake(cram_md5=True, echo_auth=[ECHO_RESPONSE]) as server:
        d = driver(server.port)
        d.connect()
        d.login()
        d.close()
    assert server.verbs[-2:] == ["USER", "PASS"]
    lines = trace_lines(trace_log)
    assert "POP3< -ERR *" in lines
    for secret in (PASSWORD, *cram_md5_secrets(server)):
        assert not any(secret in line for line in lines)


def test_a_secret_echoed_after_login(trace_log: pytest.LogCaptureFixture) -> None:
    # any reply may carry it, not only the one to the command that sent it
    with fake(replies={"STAT": f"-ERR you said PASS {PASSWORD}"}) as server:
        d = driver(server.port)
        d.connect()
        d.login()
        with pytest.raises(ProtocolError) as info:
            d.list_messages()
        d.close()
    assert_nothing_leaks(info.value, trace_log, PASSWORD)
    assert "you said PASS *" in str(info.value)


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
@pytest.mark.parametrize(
    ("token", "step"),
    [(OAUTH_TOKEN, "AUTH"), (LONG_TOKEN, ECHO_RESPONSE), (OAUTH_TOKEN, ECHO_CHALLENGE)],
    ids=["initial-response", "continuation", "error-challenge"],
)
def test_oauth_response_echoed_back(
    mechanism: str, token: str, step: str, test_ca: TestCA,
    trace_log: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    with fake(
        capabilities=["TOP", "UIDL", f"SASL {mechanism}"],
        oauth_token="the-token-the-server-wants",  # so that ours is refused
        tls_context=test_ca.server_context(),
        implicit_tls=True,
        echo_auth=[step],
    ) as server:
        d = driver(
            server.port, auth=mechanism.lower(), password=token, ssl=True,
            sslproto=None, sslcertfile=str(test_ca.ca_cert),
        )  # fmt: skip
        error = login_error(d)
    line = next(c for c in server.commands if c.startswith("AUTH"))
    blob = line.split()[2] if len(line.split()) == 3 else sent_after(server, "AUTH")
    assert (len(f"AUTH {mechanism} {blob}") + 2 > MAX_AUTH_LINE) == (token == LONG_TOKEN)
    assert_nothing_leaks(error, trace_log, token, blob)


# -- 3. timeouts: exit 2 and fetchmail's words -------------------------------------------------

# fetchmail 6.4.37 against the same fakes (`timeout 3`) prints on stdout
#   timeout after 3 seconds waiting for server 127.0.0.1.   (no greeting; no reply to a command)
#   timeout after 3 seconds.                                (in the middle of a message's text)
#   timeout after 3 seconds waiting to connect to server 127.0.0.1.   (connect, implicit TLS)
# and exits 2 (socket error) every time.


def assert_timeout(error: BaseException, text: str) -> None:
    assert isinstance(error, ServerTimeoutError)
    assert isinstance(error, TimeoutError)  # the builtin still catches it
    assert isinstance(error, ServerConnectionError)
    assert error.exit_code == ExitCode.SOCKET
    assert str(error) == text


def test_a_server_that_never_greets() -> None:
    with fake(silent=[SILENT_GREETING]) as server:
        d = driver(server.port, timeout=1)
        with pytest.raises(ServerTimeoutError) as info:
            d.connect()
        d.close()
    assert_timeout(info.value, "timeout after 1 seconds waiting for server 127.0.0.1.")


def test_a_server_that_stops_in_the_middle_of_a_message() -> None:
    with fake(messages=[MSG * 50], stall_in_retr_after=200) as server:
        d = driver(server.port, timeout=1)
        d.connect()
        d.login()
        d.list_messages()
        out = io.BytesIO()
        with pytest.raises(ServerTimeoutError) as info:
            d.retrieve(1, out, peek=False)
        d.close()
    assert_timeout(info.value, "timeout after 1 seconds.")
    assert 0 < len(out.getvalue()) < 200  # it had begun: the text was being read


def test_a_server_that_stops_right_after_the_retr_status() -> None:
    status = len(f"+OK {len(MSG)} octets\r\n")
    with fake(stall_in_retr_after=status) as server:
        d = driver(server.port, timeout=1)
        d.connect()
        d.login()
        d.list_messages()
        with pytest.raises(ServerTimeoutError) as info:
            d.retrieve(1, io.BytesIO(), peek=False)
        d.close()
    assert_timeout(info.value, "timeout after 1 seconds.")


@pytest.mark.parametrize("verb", ["CAPA", "PASS", "STAT", "UIDL", "RETR", "QUIT"])
def test_a_server_that_does_not_answer_a_command(verb: str) -> None:
    with fake(silent=[verb]) as server:
        d = driver(server.port, timeout=1)
        with pytest.raises(ServerTimeoutError) as info:
            d.connect()
            d.login()
            d.list_messages()
            d.retrieve(1, io.BytesIO(), peek=False)
            d.commit()
        d.close()
    assert_timeout(info.value, "timeout after 1 seconds waiting for server 127.0.0.1.")


def test_a_stalled_implicit_tls_handshake(test_ca: TestCA) -> None:
    # the fake greets nobody and speaks no TLS: the handshake waits for its first octet
    with fake(silent=[SILENT_GREETING]) as server:
        d = driver(server.port, timeout=1, ssl=True, sslproto=None,
                   sslcertfile=str(test_ca.ca_cert))  # fmt: skip
        with pytest.raises(ServerTimeoutError) as info:
            d.connect()
        d.close()
    assert_timeout(info.value, "timeout after 1 seconds waiting to connect to server 127.0.0.1.")


def test_a_stalled_stls_handshake(test_ca: TestCA) -> None:
    with fake(silent=[SILENT_HANDSHAKE], tls_context=test_ca.server_context()) as server:
        d = driver(server.port, timeout=1, sslproto=None, sslcertfile=str(test_ca.ca_cert))
        with pytest.raises(ServerTimeoutError) as info:
            d.connect()
        d.close()
    assert_timeout(info.value, "timeout after 1 seconds.")
    assert "USER" not in server.verbs


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listener never accepts and whose queue is full: a connect() hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    queued = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # it completes in the kernel, or never
            s.connect(("127.0.0.1", port))
        queued.append(s)
    time.sleep(0.2)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this kernel completes connections to a full listen queue")
    except TimeoutError:
        pass
    finally:
        probe.close()
    try:
        yield port
    finally:
        for s in queued:
            s.close()
        listener.close()


def test_a_connect_that_never_completes(unanswered_port: int) -> None:
    d = driver(unanswered_port, timeout=1)
    with pytest.raises(ServerTimeoutError) as info:
        d.connect()
    d.close()
    assert_timeout(info.value, "timeout after 1 seconds waiting to connect to server 127.0.0.1.")


# -- 4. `no sslcertck`: fetchmail's warning before the password --------------------------------


def tls_login(server: FakePop3Server, **user: Any) -> None:
    d = driver(server.port, sslproto=user.pop("sslproto", None), **user)
    d.connect()
    d.login()
    assert d.tls_active
    d.commit()


def assert_warned_once_before_the_password(
    server: FakePop3Server, caplog: pytest.LogCaptureFixture
) -> None:
    lines = trace_lines(caplog)
    assert warnings_of(caplog) == [
        "Server certificate verification error: self-signed certificate",
        INSECURE,
    ]
    assert lines.index(INSECURE) < lines.index("POP3> PASS *")
    assert "PASS" in server.verbs
    assert all(r.tls for r in server.received if r.verb in ("USER", "PASS"))


@pytest.mark.parametrize("sslproto", [None, "tls1.2+"], ids=["opportunistic", "stls-required"])
def test_no_sslcertck_warns_over_stls(
    sslproto: str | None, test_ca: TestCA, trace_log: pytest.LogCaptureFixture
) -> None:
    with fake(tls_context=test_ca.server_context(untrusted=True)) as server:
        tls_login(server, sslcertck=False, sslproto=sslproto, sslcertfile=str(test_ca.ca_cert))
    assert_warned_once_before_the_password(server, trace_log)


def test_no_sslcertck_warns_over_implicit_tls(
    test_ca: TestCA, trace_log: pytest.LogCaptureFixture
) -> None:
    context = test_ca.server_context(untrusted=True)
    with fake(tls_context=context, implicit_tls=True) as server:
        tls_login(server, ssl=True, sslcertck=False, sslcertfile=str(test_ca.ca_cert))
    assert_warned_once_before_the_password(server, trace_log)


@pytest.mark.parametrize("implicit", [False, True], ids=["stls", "implicit"])
def test_no_warning_when_the_certificate_verified(
    implicit: bool, test_ca: TestCA, trace_log: pytest.LogCaptureFixture
) -> None:
    with fake(tls_context=test_ca.server_context(), implicit_tls=implicit) as server:
        tls_login(server, ssl=implicit, sslcertck=False, sslcertfile=str(test_ca.ca_cert))
    assert warnings_of(trace_log) == []
    assert server.sessions == 1


def test_no_warning_with_a_pinned_certificate(
    test_ca: TestCA, trace_log: pytest.LogCaptureFixture
) -> None:
    # fetchmail warns only when neither sslcertck nor sslfingerprint checked the certificate
    with fake(tls_context=test_ca.server_context(untrusted=True)) as server:
        tls_login(server, sslcertck=False, sslfingerprint=fingerprint(test_ca.untrusted_cert))
    assert warnings_of(trace_log) == []


def test_the_warning_reaches_stderr_without_v(
    test_ca: TestCA, capsys: pytest.CaptureFixture[str]
) -> None:
    log = logging.getLogger(trace.TRACE_LOGGER)
    saved = (list(log.handlers), log.propagate, log.level)
    trace.setup(0, Console())  # as a run without -v sets it up
    try:
        with fake(tls_context=test_ca.server_context(untrusted=True)) as server:
            tls_login(server, sslcertck=False, sslcertfile=str(test_ca.ca_cert))
    finally:
        log.handlers[:], log.propagate = saved[0], saved[1]
        log.setLevel(saved[2])
    captured = capsys.readouterr()
    assert f"pyfetch: {INSECURE}" in captured.err.splitlines()  # as fetchmail, prefixed
    assert INSECURE not in captured.out
