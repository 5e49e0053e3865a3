"""Hand each message to a local delivery agent command (`mda "procmail -d %T"`).

As in fetchmail (reference section 4.9): one `/bin/sh -c` per message, `%T`/`%F` replaced by
single-quoted, sanitised values (`fetcher.message.mda_command`), the message on standard input
without SMTP dot-stuffing, and stripcr normally on (the caller passes the flag). The MDA's
standard output and error are ours, as with fetchmail's popen().

Exit status mapping. fetchmail keeps the message on the server for any failure of the MDA:
`MDA returned nonzero status N`, `MDA died of signal N` and `Error writing to MDA` all make
close_sink() return FALSE, whatever softbounce says. So exit 0 is ACCEPTED and everything else,
EX_TEMPFAIL (75) included, is TEMPFAIL: PERMFAIL would let `--nosoftbounce` delete a message that
fetchmail would have kept, on the word of a script that may just have crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Iterator

from fetcher import trace
from fetcher.errors import LocalError
from fetcher.exitcodes import ExitCode
from fetcher.message import check_mda_template, convert_line_ends, mda_command
from fetcher.sinks.base import Delivery, Envelope, Message, Outcome

CHUNK_SIZE = 65536

_console = logging.getLogger(trace.TRACE_LOGGER)


class MdaSink:
    """Run `command_template`, expanded per message, and pipe the message into it."""

    def __init__(
        self,
        command_template: str,
        *,
        stripcr: bool = True,
        forcecr: bool = False,
        chunk_size: int = CHUNK_SIZE,
        shell: str = "/bin/sh",
    ) -> None:
        check_mda_template(command_template)  # a template the shell would misread fails now
        self._template = command_template
        self._stripcr = stripcr
        self._forcecr = forcecr
        self._chunk_size = chunk_size
        self._shell = shell

    async def deliver(self, envelope: Envelope, message: Message) -> Delivery:
        command = mda_command(self._template, list(envelope.recipients), envelope.sender)
        # fetchmail shows this at -vv; the trace logger's DEBUG level is the closest we have.
        _console.debug("about to deliver with: %s", command)
        # The MDA writes its complaints to our stdout (the logfile, when there is one): the
        # lines we gathered so far go out first.
        trace.flush_console()
        try:
            # A process group of its own, so that giving up on a message can stop the whole
            # pipeline the shell started, not just the shell (see below).
            process = await asyncio.create_subprocess_exec(
                self._shell, "-c", command, stdin=asyncio.subprocess.PIPE, process_group=0
            )
        except OSError as exc:
            # fetchmail: `MDA open failed`, and the run ends with PS_IOERR.
            raise LocalError(f"MDA open failed: {exc}", ExitCode.IOERR) from exc
        try:
            write_error = await self._feed(process, message)
            status = await process.wait()
        except BaseException:
            # Cancelled, or the message file failed to read: a half-fed MDA that saw a clean
            # end of input would deliver a truncated message, so kill it and its children
            # before our end of the pipe closes.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise
        if status < 0:
            return Delivery(Outcome.TEMPFAIL, reply=f"MDA died of signal {-status}")
        if status != 0:
            return Delivery(Outcome.TEMPFAIL, reply=f"MDA returned nonzero status {status}")
        if write_error is not None:
            # It exited 0 without reading the whole message: what it delivered, if anything,
            # is not the message, so keep it on the server.
            return Delivery(Outcome.TEMPFAIL, reply=f"Error writing to MDA: {write_error}")
        return Delivery(Outcome.ACCEPTED, reply="MDA returned status 0")

    async def close(self) -> None:
        """Nothing stays open between messages: each one has its own process."""

    async def _feed(self, process: asyncio.subprocess.Process, message: Message) -> str | None:
        """Write the message to the MDA's stdin; the error text if it stopped reading."""
        stdin = process.stdin
        assert stdin is not None  # we asked for a pipe
        try:
            for chunk in self._chunks(message):
                stdin.write(chunk)
                await stdin.drain()  # the pipe's backpressure bounds what we hold
            stdin.close()
            await stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError) as exc:
            stdin.close()
            return exc.strerror or str(exc)
        return None

    def _chunks(self, message: Message) -> Iterator[bytes]:
        # One conversion over header and body, so that stripcr sees a single stream.
        chunks = itertools.chain([message.header], message.body_chunks(self._chunk_size))
        return convert_line_ends(chunks, stripcr=self._stripcr, forcecr=self._forcecr)
