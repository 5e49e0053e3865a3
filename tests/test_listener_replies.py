"""What the local MTA said, and what it leads to: every refusal is said in fetchmail's words,
and an LMTP delivery that reached some recipients is never repeated for them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer
from test_e2e_pop3 import MESSAGES, pyfetch, rcfile


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.mark.lmtp_fault(step="eom", recipient="carol@127.0.0.1", code=452,
                        text="4.2.2 carol is over quota", times=1)
def test_lmtp_delivers_again_only_to_the_recipient_that_deferred(
    home: Path, dovecot: Dovecot, test_ca: TestCA, lmtpd: SMTPServer
) -> None:
    # a multidrop mailbox; the message is for both of its users
    dovecot.seed("bob", [MESSAGES[0].replace(b"To: bob@mail.isp.net",
                                             b"To: bob@mail.isp.net, carol@mail.isp.net")])
    path = rcfile(home, dovecot, test_ca, lmtpd, "lmtp")
    path.write_text(path.read_text().replace("is bob here", "is bob carol here"))
    first = pyfetch(home)
    assert first.returncode == 0, first.stdout + first.stderr  # read, if not delivered
    assert "pyfetch: LMTP error: 452 4.2.2 carol is over quota" in first.stderr
    assert "not flushed" in first.stdout
    assert len(dovecot.messages("bob")) == 1  # kept for carol

    second = pyfetch(home)
    assert second.returncode == 0, second.stdout + second.stderr
    assert [t.rcpt_tos for t in lmtpd.transactions] == [
        ["bob@127.0.0.1", "carol@127.0.0.1"],
        ["carol@127.0.0.1"],  # not bob again: he has it
    ]
    assert [t.reply_for("carol@127.0.0.1")[:3] for t in lmtpd.transactions] == ["452", "250"]
    assert dovecot.messages("bob") == []
    assert "LMTP error" not in second.stderr


@pytest.mark.smtp_fault(step="rcpt", code=452, text="4.2.2 mailbox full")
def test_a_deferral_at_rcpt_is_said_and_the_message_kept(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home)
    assert "pyfetch: SMTP error: 452 4.2.2 mailbox full" in result.stderr
    assert len(dovecot.messages("bob")) == 1


@pytest.mark.smtp_fault(step="eom", code=552, text="5.3.4 message too big")
def test_a_refusal_after_data_is_said_and_kept_with_softbounce(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd)
    result = pyfetch(home)
    assert result.returncode == 0, result.stdout + result.stderr  # read counts, as fetchmail
    assert result.stderr.count("pyfetch: SMTP error: 552 5.3.4 message too big") == 1
    assert len(dovecot.messages("bob")) == 1


@pytest.mark.smtp_fault(step="mail", code=554, text="5.7.1 spam refused")
def test_a_refusal_for_spam_passes_in_silence(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    dovecot.seed("bob", MESSAGES[:1])
    rcfile(home, dovecot, test_ca, smtpd, "antispam 554")
    result = pyfetch(home)
    assert "SMTP error" not in result.stderr and "spam refused" not in result.stderr
    assert len(dovecot.messages("bob")) == 1  # kept: softbounce
