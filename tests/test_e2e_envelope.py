"""What the listener is told besides the message, as fetchmail tells it, and line ends a server
got wrong: the real fetchmail and pyfetch fetch the same Dovecot mailbox into the recording
SMTP server, and a scripted IMAP server sends bare-LF messages through to a real Postfix.

- MAIL FROM: fetchmail qualifies unqualified addresses (`rewrite`) before it picks the sender
  from the header, so `Sender: carol` becomes `carol@server` and wins over From; `%F` of an
  MDA is the same address.
- BODY= and SIZE=: BODY=8BITMIME or BODY=7BIT by the MIME header, SIZE= the size the server
  listed (not counting the Received line added).
- A server that sends bare LFs: every line end goes out as CRLF and the dots are stuffed by
  those lines, so nothing is added or lost, and a large message is not one over-long line.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from fakes.imap import FakeImapServer
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.postfix import Postfix, strip_added_headers
from servers.smtp import SMTPServer, Transaction
from test_mimedecode import deliveries, run

SENDERS = [
    b"Sender: carol\r\nFrom: alice@example.org\r\nSubject: unqualified Sender\r\n\r\nx\r\n",
    b"Return-Path: <carol>\r\nFrom: alice@example.org\r\nSubject: unqualified Return-Path\r\n"
    b"\r\nx\r\n",
    b"From: alice\r\nSubject: unqualified From\r\n\r\nx\r\n",
    b"Sender: carol\r\nSender: dave@example.org\r\nFrom: alice@example.org\r\nSubject: two\r\n"
    b"\r\nx\r\n",
    b"Resent-Sender: erin\r\nSender: s@example.org\r\nFrom: alice@example.org\r\n"
    b"Subject: resent\r\n\r\nx\r\n",
    b"From: alice@example.org\r\nFrom: <>\r\nReply-To: r@example.org\r\nSubject: last\r\n"
    b"\r\nx\r\n",
    b"Return-Path: <>\r\nSender: carol\r\nSubject: null sender\r\n\r\nx\r\n",
    b"Subject: no sender at all\r\n\r\nx\r\n",
]

MIME = b"From: alice@example.org\r\nMIME-Version: 1.0\r\n"
BODIES = [
    b"From: alice@example.org\r\nSubject: not MIME\r\n\r\nplain\r\n",
    MIME + b"Subject: 7bit\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n"
    b"\r\nseven\r\n",
    MIME + b"Subject: qp\r\nContent-Type: text/plain\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n",
    MIME + b"Subject: 8bit\r\nContent-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9\r\n",
    MIME + b"Subject: base64\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nSGVsbG8=\r\n",
    MIME + b'Subject: mixed\r\nContent-Type: multipart/mixed; boundary="b"\r\n'
    b"Content-Transfer-Encoding: 7bit\r\n\r\n--b\r\n\r\npart\r\n--b--\r\n",
    MIME + b'Subject: alternative\r\nContent-Type: multipart/alternative; boundary="b"\r\n'
    b"Content-Transfer-Encoding: 7bit\r\n\r\n--b\r\n\r\npart\r\n--b--\r\n",
    b"From: alice@example.org\r\nSubject: 7bit, no MIME-Version\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n\r\nseven\r\n",
    b"From: alice@example.org\r\nSubject: big\r\n\r\n" + b"0123456789abcdef\r\n" * 5000,
]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def write_rcfile(home: Path, entry: str) -> None:
    path = home / ".fetchmailrc"
    path.write_text(entry)
    path.chmod(0o600)


def dovecot_entry(
    dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, protocol: str, options: str = ""
) -> str:
    host, port = smtpd.address
    return (
        f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports[protocol]} proto {protocol}\n"
        f"  user bob is bob here password hidden\n"
        f"  sslcertfile {test_ca.ca_cert} sslcommonname localhost\n"
        f"  smtphost {host}/{port} {options}\n"
    )


def envelopes(transactions: Iterable[Transaction]) -> list[tuple[str, list[str]]]:
    return [(t.mail_from, t.mail_options) for t in transactions]


@pytest.mark.usefixtures("need_fetchmail")
@pytest.mark.parametrize("options", ["", "no rewrite", "pass8bits", "mimedecode"])
@pytest.mark.parametrize("protocol", ["pop3", "imap"])
def test_mail_from_and_its_parameters_are_fetchmails(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, protocol: str,
    options: str,
) -> None:
    """MAIL FROM, BODY= and SIZE=, word for word, message by message."""
    write_rcfile(home, dovecot_entry(dovecot, test_ca, smtpd, protocol, options))
    messages = SENDERS + BODIES
    theirs = envelopes(deliveries("fetchmail", messages, home, dovecot, smtpd))
    ours = envelopes(deliveries("pyfetch", messages, home, dovecot, smtpd))
    assert ours == theirs
    assert len(ours) == len(messages)


@pytest.mark.usefixtures("need_fetchmail")
def test_what_fetchmail_says_is_what_we_expect(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    """The comparison above, spelt out for a few cases, so that what it holds is plain."""
    write_rcfile(home, dovecot_entry(dovecot, test_ca, smtpd, "pop3"))
    got = envelopes(deliveries("pyfetch", [SENDERS[0], SENDERS[6], *BODIES[:4]], home,
                               dovecot, smtpd))
    assert got == [
        ("carol@127.0.0.1", [f"SIZE={len(SENDERS[0])}"]),  # Sender, once qualified, wins
        ("<>", [f"SIZE={len(SENDERS[6])}"]),  # aiosmtpd records the null sender so
        ("alice@example.org", [f"SIZE={len(BODIES[0])}"]),  # not MIME: no BODY=
        ("alice@example.org", ["BODY=7BIT", f"SIZE={len(BODIES[1])}"]),
        ("alice@example.org", ["BODY=8BITMIME", f"SIZE={len(BODIES[2])}"]),
        ("alice@example.org", ["BODY=8BITMIME", f"SIZE={len(BODIES[3])}"]),
    ]


@pytest.mark.usefixtures("need_fetchmail")
def test_mda_sender_is_fetchmails(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    """`%F` is the sender picked after `rewrite`, as for SMTP. Where the header gives no
    sender (none at all, or an empty From), fetchmail passes an empty word and pyfetch the
    address MAIL FROM carries (README: deliberate differences)."""
    out = home / "senders"
    entry = dovecot_entry(dovecot, test_ca, smtpd, "imap")
    write_rcfile(home, entry + f'  mda "echo %F >> {out}; cat > /dev/null"\n')
    said = {}
    for program in ("fetchmail", "pyfetch"):
        out.unlink(missing_ok=True)
        dovecot.reset("bob")
        dovecot.seed("bob", SENDERS)
        result = run(program, home)
        assert result.returncode == 0, result.stdout + result.stderr
        said[program] = out.read_text().splitlines()
    assert said["pyfetch"] == [
        line or "bob@[127.0.0.1]" for line in said["fetchmail"]
    ]
    assert said["pyfetch"][0] == "carol@127.0.0.1"
    assert said["fetchmail"][-1] == ""  # the last message names no sender


# -- a server that sends bare LFs -----------------------------------------------------------

BARE_LF = [
    b"From: alice@example.org\nSubject: bare LF\n\n.one dot\n..two dots\n.\nlast\n",
    b"From: alice@example.org\nSubject: no line end at the end\n\nend",
    # 2 MB with not a single CRLF in it
    b"From: alice@example.org\nSubject: large\n\n" + b"0123456789 bare LF line.\n" * 80_000,
]


def as_crlf(message: bytes) -> bytes:
    crlf = message.replace(b"\n", b"\r\n")
    return crlf if crlf.endswith(b"\r\n") else crlf + b"\r\n"


def fake_entry(server: FakeImapServer, listener: tuple[str, int]) -> str:
    host, port = listener
    return (
        f"poll imap.isp.net via 127.0.0.1 service {server.port} proto imap timeout 30\n"
        f"  user bob is bob here password secret sslproto '' smtphost {host}/{port}\n"
    )


def delivered_body(data: bytes) -> bytes:
    """The message without the Received line pyfetch put on top."""
    assert data.startswith(b"Received: from 127.0.0.1 [127.0.0.1]\r\n")
    end = data.index(b"\r\n", data.index(b"\tfor <bob@127.0.0.1>")) + 2
    return data[end:]


def test_bare_lf_lines_reach_the_listener_as_crlf_lines(home: Path, smtpd: SMTPServer) -> None:
    with FakeImapServer(messages=list(BARE_LF)) as server:
        write_rcfile(home, fake_entry(server, smtpd.address))
        result = run("pyfetch", home)
        assert result.returncode == 0, result.stdout + result.stderr
        assert server.mailbox == {}
    assert [delivered_body(t.data) for t in smtpd.transactions] == [as_crlf(m) for m in BARE_LF]
    # SIZE= is the server's (RFC822.SIZE), as fetchmail declares it
    assert [t.mail_options for t in smtpd.transactions] == [
        [f"SIZE={len(m)}"] for m in BARE_LF
    ]


def test_bare_lf_lines_through_postfix(home: Path, postfix: Postfix) -> None:
    with FakeImapServer(messages=list(BARE_LF)) as server:
        write_rcfile(home, fake_entry(server, postfix.address))
        result = run("pyfetch", home)
        assert result.returncode == 0, result.stdout + result.stderr
    stored = postfix.wait_for_delivery(len(BARE_LF))
    got = sorted(delivered_body(strip_added_headers(m)) for m in stored)
    assert got == sorted(as_crlf(m) for m in BARE_LF)
