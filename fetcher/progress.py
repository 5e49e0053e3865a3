"""How far a large message has come, on a terminal: one line on stderr that is rewritten in
place while the message is read, and wiped before the message's `reading message ...` line.

fetchmail prints a dot for every kilobyte read; a hundred-megabyte message makes a hundred
thousand of them. pyfetch shows one line instead, and only where somebody watches: stderr is
a terminal, `-s` was not given, the run's lines go to the terminal (no logfile, no syslog),
and the poll's own lines are the ones going out (polls side by side hold theirs back).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import BinaryIO, TextIO

from fetcher.report import Reporter

THRESHOLD = 1 << 20  # octets: smaller messages come too fast to be worth a line
EVERY = 0.5  # seconds between two updates


def wanted(reporter: Reporter, size: int) -> TextIO | None:
    """The stream to show a message's progress on, or None when nobody would see it."""
    if size < THRESHOLD or reporter.silent:
        return None
    terminal = reporter.console.terminal()
    if terminal is None or not reporter.console.is_live():
        return None
    stream = terminal.err
    try:
        return stream if stream.isatty() else None
    except (AttributeError, ValueError):  # not a real file, or closed
        return None


@contextlib.asynccontextmanager
async def shown(
    reporter: Reporter, spool: BinaryIO, size: int, what: str
) -> AsyncIterator[None]:
    """Show `what` and how much of the `size` octets `spool` holds, while the block runs."""
    stream = wanted(reporter, size)
    if stream is None:
        yield
        return
    ticker = asyncio.create_task(_tick(stream, spool, size, what))
    try:
        yield
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        with contextlib.suppress(OSError, ValueError):
            stream.write("\r\033[K")  # wipe the line: the message's own line follows
            stream.flush()


async def _tick(stream: TextIO, spool: BinaryIO, size: int, what: str) -> None:
    while True:
        got = spool.tell()  # the driver's thread writes; reading where it is is safe
        percent = min(100, got * 100 // size) if size else 100
        with contextlib.suppress(OSError, ValueError):
            stream.write(f"\r\033[K{what}: {_amount(got)} of {_amount(size)} ({percent}%)")
            stream.flush()
        await asyncio.sleep(EVERY)


def _amount(octets: int) -> str:
    if octets >= 10 << 20:
        return f"{octets >> 20} MB"
    if octets >= 1 << 20:
        return f"{octets / (1 << 20):.1f} MB"
    return f"{octets >> 10} KB"
