"""A large message goes to the listener while the server is still sending it.

From fetcher.session.STREAM_OCTETS on, delivery starts once the first octets are here
(fetcher/spool.py). What must not change: the listener gets the same bytes as for a spooled
message, and a text that breaks off never reaches the final dot (tests/test_hostile_suite.py
cuts streamed messages at every step; here the spool itself, and the real servers).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT_WARNING
from servers.certs import TestCA
from servers.dovecot import Dovecot
from servers.smtp import SMTPServer
from test_e2e_pop3 import delivered_body, pyfetch

from fetcher.session import STREAM_OCTETS
from fetcher.spool import GrowingSpool, SpoolBroken, still_growing


def big_message(n: int) -> bytes:
    """Above the streaming size, with dots at line starts everywhere (some will fall on the
    spool's and the listener's chunk boundaries), long and short lines."""
    head = (
        f"From: alice@example.org\r\nTo: bob@mail.isp.net\r\nSubject: big {n}\r\n"
        f"Message-ID: <big-{n}@example.org>\r\n\r\n"
    ).encode()
    rng = random.Random(n)
    lines = []
    size = len(head)
    while size < STREAM_OCTETS + (1 << 20):
        line = b"." * rng.randint(0, 2) + b"x" * rng.choice((0, 1, 70, 900, 990)) + b"\r\n"
        lines.append(line)
        size += len(line)
    return head + b"".join(lines)


SMALL = b"From: carol@example.org\r\nSubject: small\r\n\r\n.small one\r\n"


# -- the spool -----------------------------------------------------------------------------


def _write_slowly(spool: GrowingSpool, data: bytes, *, fail: bool = False) -> None:
    rng = random.Random(7)
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 100, 4096, 300_000))
        spool.write(data[pos : pos + step])
        pos += step
        if rng.random() < 0.05:
            time.sleep(0.001)
    spool.finish(OSError("connection reset by peer") if fail else None)


def test_a_reader_gets_every_octet_written_whatever_the_pace() -> None:
    data = random.Random(1).randbytes(3 << 20)
    spool = GrowingSpool()
    writer = threading.Thread(target=_write_slowly, args=(spool, data))
    writer.start()
    reader = spool.reader()
    got = []
    rng = random.Random(2)
    while chunk := reader.read(rng.choice((1, 17, 65536, 1 << 20))):
        got.append(chunk)
    writer.join()
    assert b"".join(got) == data
    assert not still_growing(reader)
    reader.seek(0)
    assert reader.read(10) == data[:10]
    assert reader.seek(0, 2) == len(data)
    spool.close()


def test_marked_chunks_say_which_text_was_written_plain_while_it_arrives() -> None:
    """What the driver wrote with write_plain comes back marked, in whole lines, never mixed
    with other text in one chunk, whatever the pace of the writer and the reader; a plain
    line longer than a chunk is not marked (a chunk of it would not be whole lines)."""
    rng = random.Random(3)
    pieces = []
    for _ in range(600):
        plain = rng.random() < 0.7
        lines = rng.randint(1, 40)
        text = b"".join(
            b"p" * (5000 if rng.random() < 0.01 else rng.choice((0, 5, 70, 300))) + b"\r\n"
            if plain
            else b"o.\r\r\n"
            for _ in range(lines)
        )
        pieces.append((text, plain))
    plain_runs = []  # (start, end) of what was written plain
    at = 0
    for text, plain in pieces:
        if plain and plain_runs and plain_runs[-1][1] == at:
            plain_runs[-1] = (plain_runs[-1][0], at + len(text))  # one run with the last
        elif plain:
            plain_runs.append((at, at + len(text)))
        at += len(text)

    def written_plain(start: int, end: int) -> bool:
        return any(a <= start and end <= b for a, b in plain_runs)

    spool = GrowingSpool()

    def write() -> None:
        for text, plain in pieces:
            (spool.write_plain if plain else spool.write)(text)
            if rng.random() < 0.01:
                time.sleep(0.001)
        spool.finish()

    writer = threading.Thread(target=write)
    writer.start()
    chunks = list(spool.reader().marked_chunks(4096))  # type: ignore[attr-defined]
    writer.join()
    spool.close()
    assert b"".join(chunk for chunk, _ in chunks) == b"".join(text for text, _ in pieces)
    at = 0
    long_line_seen = False
    for chunk, plain in chunks:
        inside = written_plain(at, at + len(chunk))
        if plain:
            assert inside and chunk.endswith(b"\r\n"), (at, chunk[:20])
        elif inside and b"\n" not in chunk[:-1]:
            long_line_seen = True  # a piece of a plain line longer than a chunk
        at += len(chunk)
    assert long_line_seen
    assert sum(len(c) for c, plain in chunks if plain) > 0.5 * sum(b - a for a, b in plain_runs)


def test_a_text_broken_off_never_reads_to_its_end() -> None:
    data = b"y" * (2 << 20)
    spool = GrowingSpool()
    writer = threading.Thread(target=_write_slowly, args=(spool, data), kwargs={"fail": True})
    writer.start()
    reader = spool.reader()
    with pytest.raises(SpoolBroken, match="connection reset by peer"):
        while reader.read(65536):
            pass
    writer.join()
    with pytest.raises(SpoolBroken):
        reader.seek(0, 2)  # its end is never known
    spool.close()


def test_a_spool_given_up_wakes_a_waiting_reader() -> None:
    spool = GrowingSpool()
    spool.write(b"z" * 10)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            spool.reader().read(100)
        except SpoolBroken as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.05)
    spool.close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert len(outcome) == 1


# -- end to end: real Dovecot, real listener -------------------------------------------------


def _rcfile(home: Path, dovecot: Dovecot, test_ca: TestCA, listener: SMTPServer, proto: str,
            *, lmtp: bool = False) -> None:
    host, port = listener.address
    path = home / ".fetchmailrc"
    path.write_text(
        f"poll mail.isp.net via 127.0.0.1 service {dovecot.ports[proto]} proto {proto}\n"
        f"  user bob is bob here password hidden\n"
        f"  sslcertfile {test_ca.ca_cert} sslcommonname localhost\n"
        f"  smtphost {host}/{port} {'lmtp' if lmtp else ''}\n"
    )
    path.chmod(0o600)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.mark.parametrize("proto", ["pop3", "imap"])
def test_large_messages_arrive_byte_for_byte_between_small_ones(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer, proto: str
) -> None:
    messages = [big_message(1), SMALL, big_message(2)]
    dovecot.seed("bob", messages)
    _rcfile(home, dovecot, test_ca, smtpd, proto)
    result = pyfetch(home, "-a")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ROOT_WARNING
    got = smtpd.transactions
    assert [delivered_body(t.data) for t in got] == messages
    assert dovecot.messages("bob") == []
    assert result.stdout.count(" flushed") == 3


def test_a_large_message_over_lmtp_arrives_whole(
    home: Path, dovecot: Dovecot, test_ca: TestCA, lmtpd: SMTPServer
) -> None:
    message = big_message(3)
    dovecot.seed("bob", [message])
    _rcfile(home, dovecot, test_ca, lmtpd, "pop3", lmtp=True)
    result = pyfetch(home, "-a")
    assert result.returncode == 0, result.stderr
    (transaction,) = lmtpd.transactions
    assert transaction.data.endswith(message)
    assert dovecot.messages("bob") == []


@pytest.mark.smtp_fault("eom", code=452, text="4.3.1 insufficient storage", times=1)
def test_a_large_message_refused_for_now_stays_and_comes_next_time(
    home: Path, dovecot: Dovecot, test_ca: TestCA, smtpd: SMTPServer
) -> None:
    message = big_message(4)
    dovecot.seed("bob", [message])
    _rcfile(home, dovecot, test_ca, smtpd, "pop3")
    first = pyfetch(home, "-a")
    assert "insufficient storage" in first.stdout + first.stderr
    assert len(dovecot.messages("bob")) == 1
    second = pyfetch(home, "-a")
    assert second.returncode == 0, second.stderr
    accepted = [t for t in smtpd.transactions if t.accepted]
    assert [delivered_body(t.data) for t in accepted] == [message]
    assert dovecot.messages("bob") == []
