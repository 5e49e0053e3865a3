"""The server fixtures themselves: real Dovecot, aiosmtpd and Postfix behave as the end-to-end
tests will assume.  Clients here are the standard library's, so a failure points at the
fixtures, not at pyfetch."""

from __future__ import annotations

import imaplib
import ipaddress
import poplib
import smtplib
import socket
import ssl
import subprocess
from typing import Any

import pytest
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.fixtures import unavailable
from servers.postfix import Postfix, strip_added_headers
from servers.smtp import SMTPServer

HOST = "127.0.0.1"

MSG_CRLF = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: first\r\n"
    b"Message-ID: <first@example.com>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".A line that starts with a dot, so it is dot-stuffed on the wire.\r\n"
    b"..two dots\r\n"
    b"8-bit: \xc3\xa9\r\n"
)
MSG_LF = (
    b"From: carol@example.com\n"
    b"To: bob@example.org\n"
    b"Subject: second, stored with LF line ends\n"
    b"\n"
    b"Body.\n"
)


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def retr_all(pop: poplib.POP3) -> list[bytes]:
    count, _ = pop.stat()
    # poplib strips CRLF and undoes dot-stuffing; rebuild the message as sent.
    return [b"".join(line + b"\r\n" for line in pop.retr(i)[1]) for i in range(1, count + 1)]


# -- certificates ----------------------------------------------------------------------------


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, name: str) -> ssl.SSLObject:
    """A TLS handshake in memory, to test the certificates without any server; returns the
    client's side."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        done = 0
        for conn in (c, s):
            try:
                conn.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done == 2:
            return c
    raise AssertionError("handshake did not finish")


def _san_names(cert: dict[str, Any]) -> set[str]:
    """The certificate's subjectAltName entries, IP addresses in their usual short form."""
    names = set()
    for kind, value in cert.get("subjectAltName", ()):
        names.add(str(ipaddress.ip_address(value.strip())) if kind == "IP Address" else value)
    return names


def test_ca_server_certificate_verifies_for_all_names(test_ca: TestCA) -> None:
    client = test_ca.client_context()
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
    for name in ("localhost", "127.0.0.1", "::1"):
        conn = _handshake(client, test_ca.server_context(), name)
        # A verified handshake hands over the certificate, issued by the test CA for this name.
        cert = conn.getpeercert()
        assert dict(rdn[0] for rdn in cert["issuer"])["commonName"] == "pyfetch test CA"
        assert name in _san_names(cert), cert
    # The name is checked: one the certificate does not carry is refused.
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(client, test_ca.server_context(), "mail.example.org")


def test_ca_untrusted_certificate_fails_verification(test_ca: TestCA) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(test_ca.client_context(), test_ca.server_context(untrusted=True), "localhost")


def test_ca_fingerprints_match_openssl(test_ca: TestCA) -> None:
    for algo, value in (("md5", test_ca.server_md5), ("sha256", test_ca.server_sha256)):
        out = subprocess.run(
            ["openssl", "x509", "-noout", "-fingerprint", f"-{algo}", "-in", test_ca.server_cert],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip().split("=", 1)[1] == value
    assert len(test_ca.server_md5) == 16 * 3 - 1
    assert test_ca.server_md5 == test_ca.server_md5.upper()


# -- Dovecot: POP3 ---------------------------------------------------------------------------


def test_pop3_plain_retr_is_byte_exact(dovecot: Dovecot) -> None:
    dovecot.seed("bob", [MSG_CRLF, MSG_LF])
    pop = poplib.POP3(HOST, dovecot.pop3, timeout=10)
    pop.user("bob")
    pop.pass_("hidden")
    assert pop.stat()[0] == 2
    # LIST must report the size on the wire (CRLF), which is what the W= in the name says.
    sizes = [int(line.split()[1]) for line in pop.list()[1]]
    assert sizes == [len(MSG_CRLF), len(crlf(MSG_LF))]
    assert retr_all(pop) == [MSG_CRLF, crlf(MSG_LF)]
    uidls = [line.split()[1] for line in pop.uidl()[1]]
    assert len(set(uidls)) == 2 and all(len(u) == 16 for u in uidls)  # %08Xu%08Xv
    pop.quit()
    assert dovecot.messages("bob") == [MSG_CRLF, MSG_LF]  # RETR alone deletes nothing


def test_pop3_stls_with_verification(dovecot: Dovecot, test_ca: TestCA) -> None:
    dovecot.seed("bob", [MSG_CRLF])
    pop = poplib.POP3(HOST, dovecot.pop3, timeout=10)
    assert "STLS" in pop.capa()
    pop.stls(test_ca.client_context())
    pop.user("bob")
    pop.pass_("hidden")
    assert retr_all(pop) == [MSG_CRLF]
    pop.quit()


def test_pop3_stls_over_ipv6(dovecot: Dovecot, test_ca: TestCA) -> None:
    if not dovecot.ipv6:
        unavailable("Dovecot does not listen on ::1 here (no IPv6 loopback?)")
    pop = poplib.POP3("::1", dovecot.pop3, timeout=10)
    pop.stls(test_ca.client_context())  # checks the IP:::1 subjectAltName
    pop.apop("bob", "hidden")  # APOP works because passwords are stored in the clear
    assert pop.stat() == (0, 0)
    pop.quit()


def test_pop3s_dele_quit_removes_messages(dovecot: Dovecot, test_ca: TestCA) -> None:
    dovecot.seed("bob", [MSG_CRLF, MSG_LF, b"Subject: third\r\n\r\nthree\r\n"])
    pop = poplib.POP3_SSL(HOST, dovecot.pop3s, context=test_ca.client_context(), timeout=10)
    pop.user("bob")
    pop.pass_("hidden")
    pop.dele(1)
    pop.dele(3)
    pop.quit()
    assert dovecot.messages("bob") == [MSG_LF]


def test_pop3s_rejects_a_client_that_does_not_trust_the_ca(
    dovecot: Dovecot, test_ca: TestCA
) -> None:
    wrong = ssl.create_default_context(cafile=str(test_ca.untrusted_cert))
    with pytest.raises(ssl.SSLCertVerificationError):
        poplib.POP3_SSL(HOST, dovecot.pop3s, context=wrong, timeout=10)


def test_pop3_wrong_password_and_added_user(dovecot: Dovecot) -> None:
    pop = poplib.POP3(HOST, dovecot.pop3, timeout=10)
    pop.user("bob")
    with pytest.raises(poplib.error_proto, match="-ERR"):
        pop.pass_("wrong")
    pop.quit()
    dovecot.add_user("carol", "s3cret")
    dovecot.seed("carol", [MSG_LF])
    pop = poplib.POP3(HOST, dovecot.pop3, timeout=10)
    pop.user("carol")
    pop.pass_("s3cret")
    assert pop.stat()[0] == 1
    pop.quit()


def test_dovecot_reset_empties_mailboxes_and_forgets_users(dovecot: Dovecot) -> None:
    dovecot.add_user("dave", "pw")
    dovecot.seed("bob", [MSG_CRLF])
    dovecot.reset()
    assert dovecot.messages("bob") == []
    assert "dave" not in dovecot.users
    pop = poplib.POP3(HOST, dovecot.pop3, timeout=10)
    pop.user("bob")
    pop.pass_("hidden")
    assert pop.stat() == (0, 0)
    pop.quit()


# -- Dovecot: IMAP and LMTP ------------------------------------------------------------------


def test_imaps_login_fetch_and_uidvalidity_change(dovecot: Dovecot, test_ca: TestCA) -> None:
    dovecot.seed("bob", [MSG_CRLF, MSG_LF])
    with imaplib.IMAP4_SSL(HOST, dovecot.imaps, ssl_context=test_ca.client_context()) as imap:
        imap.login("bob", "hidden")
        typ, data = imap.select("INBOX")
        assert typ == "OK" and data == [b"2"]
        before = imap.response("UIDVALIDITY")[1]
        typ, fetched = imap.fetch("1", "(BODY.PEEK[])")
        item = fetched[0]
        assert isinstance(item, tuple) and item[1] == MSG_CRLF
        imap.logout()
    dovecot.change_uidvalidity("bob")
    dovecot.seed("bob", [MSG_LF], folder="Archive")
    with imaplib.IMAP4(HOST, dovecot.imap) as imap:
        imap.starttls(test_ca.client_context())
        imap.login_cram_md5("bob", "hidden")
        imap.select("INBOX")
        assert imap.response("UIDVALIDITY")[1] != before
        typ, data = imap.select("Archive")
        assert typ == "OK" and data == [b"1"]
        imap.logout()


def test_lmtp_delivery_into_dovecot(dovecot: Dovecot) -> None:
    with smtplib.LMTP(HOST, dovecot.lmtp) as lmtp:
        refused = lmtp.sendmail("alice@example.com", ["bob@localhost"], MSG_CRLF)
    assert refused == {}
    (stored,) = dovecot.messages("bob")
    # Dovecot's LMTP adds Return-Path/Delivered-To/Received and stores LF line ends.
    assert stored.endswith(MSG_CRLF.replace(b"\r\n", b"\n"))


# -- aiosmtpd --------------------------------------------------------------------------------


def test_smtpd_records_a_transaction(smtpd: SMTPServer) -> None:
    with smtplib.SMTP(HOST, smtpd.port, local_hostname="client.example") as client:
        client.sendmail(
            "alice@example.com",
            ["bob@example.org", "carol@example.org"],
            MSG_CRLF,
            mail_options=["BODY=8BITMIME"],
        )
    (txn,) = smtpd.transactions
    assert txn.helo == "client.example"
    assert txn.mail_from == "alice@example.com"
    assert txn.rcpt_tos == ["bob@example.org", "carol@example.org"]
    assert f"SIZE={len(MSG_CRLF)}" in txn.mail_options and "BODY=8BITMIME" in txn.mail_options
    assert txn.data == MSG_CRLF
    assert smtpd.messages == [MSG_CRLF]
    assert [step for step, _ in smtpd.events] == [
        "connect", "ehlo", "mail", "rcpt", "rcpt", "data", "eom", "quit",
    ]  # fmt: skip


@pytest.mark.smtp_fault(step="rcpt", code=550, text="5.1.1 no such user", recipient="bad@x.org")
def test_smtpd_fault_at_rcpt(smtpd: SMTPServer) -> None:
    with smtplib.SMTP(HOST, smtpd.port) as client:
        refused = client.sendmail("a@example.com", ["good@x.org", "bad@x.org"], MSG_CRLF)
    assert refused == {"bad@x.org": (550, b"5.1.1 no such user")}
    assert smtpd.rejected_rcpts == ["bad@x.org"]
    (txn,) = smtpd.accepted
    assert txn.rcpt_tos == ["good@x.org"]


@pytest.mark.smtp_fault(step="rcpt", code=550)
def test_smtpd_fault_at_rcpt_for_everyone(smtpd: SMTPServer) -> None:
    with smtplib.SMTP(HOST, smtpd.port) as client, pytest.raises(smtplib.SMTPRecipientsRefused):
        client.sendmail("a@example.com", ["one@x.org"], MSG_CRLF)
    assert smtpd.transactions == []


@pytest.mark.smtp_fault(step="eom", drop=True, times=1)
def test_smtpd_drop_after_dot_then_recover(smtpd: SMTPServer) -> None:
    with smtplib.SMTP(HOST, smtpd.port) as client, pytest.raises(smtplib.SMTPServerDisconnected):
        client.sendmail("a@example.com", ["b@x.org"], MSG_CRLF)
    with smtplib.SMTP(HOST, smtpd.port) as client:
        client.sendmail("a@example.com", ["b@x.org"], MSG_CRLF)
    first, second = smtpd.transactions
    assert first.replies == [] and not first.accepted  # received, but never answered
    assert second.accepted and second.data == MSG_CRLF


@pytest.mark.smtp_fault(step="mail", code=452, text="4.3.1 insufficient storage")
@pytest.mark.smtpd_options(data_size_limit=100_000)
def test_smtpd_fault_at_mail_and_options(smtpd: SMTPServer) -> None:
    with smtplib.SMTP(HOST, smtpd.port) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "100000"
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail("a@example.com", ["b@x.org"], MSG_CRLF)
    assert info.value.smtp_code == 452


@pytest.mark.lmtp_fault(step="eom", recipient="carol@x.org", code=452, text="4.2.2 over quota")
def test_lmtpd_replies_per_recipient(lmtpd: SMTPServer) -> None:
    # smtplib's LMTP reads only the first reply after the dot; talk to the server directly.
    with socket.create_connection((HOST, lmtpd.port), timeout=10) as sock:
        wire = sock.makefile("rwb")

        def reply() -> list[bytes]:
            lines = [wire.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(wire.readline())
            return lines

        def command(line: bytes) -> list[bytes]:
            wire.write(line + b"\r\n")
            wire.flush()
            return reply()

        assert reply()[0].startswith(b"220 ")
        assert command(b"LHLO client.example")[-1].startswith(b"250 ")
        assert command(b"MAIL FROM:<a@example.com>")[0].startswith(b"250")
        assert command(b"RCPT TO:<bob@x.org>")[0].startswith(b"250")
        assert command(b"RCPT TO:<carol@x.org>")[0].startswith(b"250")
        assert command(b"DATA")[0].startswith(b"354")
        wire.write(MSG_CRLF.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        wire.flush()
        per_recipient = [reply()[0], reply()[0]]
        command(b"QUIT")
    assert per_recipient[0].startswith(b"250 ")
    assert per_recipient[1] == b"452 4.2.2 over quota\r\n"
    (txn,) = lmtpd.transactions
    assert txn.data == MSG_CRLF
    assert txn.reply_for("carol@x.org") == "452 4.2.2 over quota"
    assert [step for step, _ in lmtpd.events][:2] == ["connect", "lhlo"]


def test_closed_port_refuses(closed_port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, closed_port), timeout=5)


# -- Postfix ---------------------------------------------------------------------------------


def test_postfix_delivers_into_the_maildir(postfix: Postfix) -> None:
    with smtplib.SMTP(HOST, postfix.port) as client:
        refused = client.sendmail("alice@example.com", ["bob@127.0.0.1"], MSG_CRLF)
    assert refused == {}
    (stored,) = postfix.wait_for_delivery(1)
    assert stored.startswith(b"Return-Path: <alice@example.com>\n")
    assert b"\nDelivered-To: bob@[127.0.0.1]\n" in stored
    assert strip_added_headers(stored) == MSG_CRLF


def test_postfix_starts_each_test_empty(postfix: Postfix) -> None:
    assert postfix.messages() == [] and postfix.queued() == []
