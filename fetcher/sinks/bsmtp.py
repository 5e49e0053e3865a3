"""Append messages to a batch-SMTP file (`bsmtp FILE`), for a later `exim -bS` or the like.

The records are fetchmail's (sink.c, open_bsmtp_sink): `MAIL FROM:<sender>` (with
` BODY=8BITMIME` or ` BODY=7BIT` as for SMTP; never SIZE, which exim's BSMTP reader rejects),
one `RCPT TO:<addr>` per recipient, `DATA`, the dot-stuffed message and `.`, all with CRLF
(every line end of the message too, as for SMTP). `-`
means standard output. Resolving a relative path against the rcfile's directory is the caller's
job.

Like fetchmail, the file is opened for each message and closed after it, so a consumer may move
the file away between messages. Unlike fetchmail, each message is written under an exclusive
flock (pyfetch may poll several accounts at once into one file), fsync'd before it counts as
delivered, and cut off again if writing it fails, so that the file never ends in half a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import re
import sys
from collections.abc import Iterator
from typing import BinaryIO

from fetcher import trace
from fetcher.errors import BsmtpError
from fetcher.message import smtp_data_chunks
from fetcher.sinks.base import Delivery, Envelope, Message, Outcome

CHUNK_SIZE = 65536
# Mail is private. fetchmail's fopen("a") would give 0666 minus the umask; a batch file is
# normally read by a job of the same user, which 0600 allows.
FILE_MODE = 0o600
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BsmtpSink:
    def __init__(self, path: str, *, chunk_size: int = CHUNK_SIZE) -> None:
        self._path = path
        self._chunk_size = chunk_size

    async def deliver(self, envelope: Envelope, message: Message) -> Delivery:
        for address in (envelope.sender, *envelope.recipients):
            if _CONTROL.search(address):
                # A CR or LF would start a record of its own in the batch.
                return Delivery(Outcome.PERMFAIL, reply=f"invalid address {address!r}")
        # File writes block, and a big message would stall every other poll on the loop.
        await asyncio.to_thread(self._write_message, envelope, message)
        return Delivery(Outcome.ACCEPTED, reply=f"written to {self._path}")

    async def close(self) -> None:
        """Nothing stays open between messages."""

    def records(self, envelope: Envelope, message: Message) -> Iterator[bytes]:
        """The bytes one message adds to the file, in bounded pieces."""
        mail = f"MAIL FROM:<{envelope.sender}>"
        if envelope.body:
            mail += f" BODY={envelope.body}"  # fetchmail: 8BITMIME or 7BIT, as for SMTP
        lines = [mail] + [f"RCPT TO:<{rcpt}>" for rcpt in envelope.recipients] + ["DATA"]
        yield "".join(line + "\r\n" for line in lines).encode("utf-8")
        chunks = itertools.chain([message.header], message.body_chunks(self._chunk_size))
        yield from smtp_data_chunks(chunks)
        yield b".\r\n"

    def _write_message(self, envelope: Envelope, message: Message) -> None:
        if self._path == "-":
            self._write_stdout(envelope, message)
            return
        try:
            fd = os.open(self._path, _OPEN_FLAGS, FILE_MODE)
        except OSError as exc:
            raise BsmtpError(f"BSMTP file open failed: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            start = os.fstat(fd).st_size
            try:
                for piece in self.records(envelope, message):
                    _write_all(fd, piece)
                os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # do not leave half a message for the consumer
                raise BsmtpError(f"BSMTP file write failed: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)  # also releases the lock

    def _write_stdout(self, envelope: Envelope, message: Message) -> None:
        out: BinaryIO = sys.stdout.buffer
        try:
            trace.flush_console()  # text already printed must come before the records
            sys.stdout.flush()
            for piece in self.records(envelope, message):
                out.write(piece)
            out.flush()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise BsmtpError(f"BSMTP write to standard output failed: {reason}") from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
