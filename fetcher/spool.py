"""A large message's spool that the listener reads while the server is still sending it.

A message of some megabytes used to be read whole from the server before its first byte went
to the listener: the two legs took turns. `GrowingSpool` lets them overlap. The connection's
thread writes into it; `reader()` gives a file that reads what has arrived so far and waits
(on the reading thread) for the rest, until the writer is done.

The rules of docs/design.md hold because the end of the data is only ever seen once the whole
text has arrived: a reader reaches the end of the file only after `finish()` without an error.
If the server's side fails half-way, the reader raises `SpoolBroken` instead, the listener
connection is dropped before the final dot, and the listener discards what it had.

The writer may also say which of its text is SMTP DATA as it stands (`write_plain`: whole CRLF
lines, none starting with a dot, no other CR or LF), having found that out anyway in reading
it off the wire. The listener's side then sends those parts on without searching them again
(`_Reader.marked_chunks`, `DataStuffer.pass_plain`); a 100 MB message is searched once, not
twice. Anything written with plain `write` is searched as usual.
"""

from __future__ import annotations

import bisect
import os
import tempfile
import threading
from collections.abc import Iterator
from operator import itemgetter
from typing import BinaryIO, cast

# The writer makes its data visible in steps of this much (one flush each): small enough to
# keep the listener busy, large enough that flushes and wake-ups cost nothing.
PUBLISH_OCTETS = 256 << 10
_EVERYTHING = 1 << 62  # more octets than any message has: wait for the writer to be done


class SpoolBroken(OSError):
    """The server's side of a streamed message failed; its text will never be complete."""


class GrowingSpool:
    """The writer's face: the driver writes, `finish()` says it is done (or failed)."""

    def __init__(self) -> None:
        # On disk (in the page cache, in practice): a 100 MB message never sits in our memory.
        self._file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 (closed by close())
        self._pending = bytearray()
        self._cond = threading.Condition()
        self._published = 0  # octets a reader may read
        self._written = 0
        self._done = False
        self._error: BaseException | None = None
        # Where each run of plain (True) or other (False) text starts, in order: appended by
        # the writer before the run is published, so a reader never looks past its end.
        self._runs: list[tuple[int, bool]] = []

    # -- the writer (the connection's thread) ----------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self._add(data, plain=False)

    def write_plain(self, data: bytes | bytearray | memoryview) -> int:
        """Write text that is SMTP DATA as it stands: whole CRLF lines, no other CR or LF, no
        line that starts with a dot."""
        return self._add(data, plain=True)

    def _add(self, data: bytes | bytearray | memoryview, *, plain: bool) -> int:
        if data and (not self._runs or self._runs[-1][1] != plain):
            self._runs.append((self._written, plain))
        # Gathered here and written a quarter megabyte at a time: each write to the file lets
        # go of the interpreter lock, and getting it back while the listener's side is busy
        # can take milliseconds. Thousands of small writes made the server's side the slower.
        n = len(data)
        self._written += n
        if not self._pending and n >= PUBLISH_OCTETS:
            self._write_all(data)  # large enough as it is: no copy into _pending
            self._publish()
            return n
        self._pending += data
        if len(self._pending) >= PUBLISH_OCTETS:
            self._publish()
        return n

    def tell(self) -> int:
        """How much has arrived (the progress display reads it from the loop's thread)."""
        return self._written

    def flush(self) -> None:
        self._publish()

    def _publish(self) -> None:
        if self._pending:
            self._write_all(self._pending)
            self._pending.clear()
        with self._cond:
            self._published = self._written
            self._cond.notify_all()

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as whole:
            view = whole
            while view:
                view = view[self._file.write(view) or 0 :]

    def finish(self, error: BaseException | None = None) -> None:
        """The text is complete, or will never be (`error`). Readers wake up either way.
        Once given up (`close()`), later news changes nothing."""
        with self._cond:
            if self._done:
                return
        if error is None:
            try:
                self._publish()
            except OSError as exc:
                error = exc
        with self._cond:
            if self._done:
                return
            self._done = True
            self._error = error
            if error is None:
                self._published = self._written
            self._cond.notify_all()

    def close(self) -> None:
        """Not wanted any more: a reader still waiting gives up. Call it only once no writer
        is writing (fetcher/session.py closes spools from the connection's thread's side):
        a file closed under a writer's feet could see its descriptor number reused by
        another file while the writer still holds it."""
        self.finish(SpoolBroken("the message was given up"))
        self._file.close()

    # -- the reader ---------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        with self._cond:
            return self._done and self._error is None

    def wait_for(self, octets: int) -> int:
        """Block until `octets` have arrived or the writer is done; how many there are. Raises
        SpoolBroken if the writer failed before that many arrived."""
        with self._cond:
            while self._published < octets and not self._done:
                self._cond.wait()
            if self._published < octets and self._error is not None:
                raise SpoolBroken(f"the message's text broke off: {self._error}") from self._error
            return self._published

    def reader(self) -> BinaryIO:
        return cast(BinaryIO, _Reader(self))

    def _pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._file.fileno(), size, offset)

    def _run_at(self, offset: int) -> tuple[bool, int]:
        """Whether the text at `offset` (which has arrived, so some run holds it: the first
        starts at 0) was written plain, and where that run ends (a large number while it is
        the last)."""
        runs = self._runs
        at = bisect.bisect_right(runs, offset, key=itemgetter(0)) - 1
        end = runs[at + 1][0] if at + 1 < len(runs) else _EVERYTHING
        return runs[at][1], end


def still_growing(body: BinaryIO) -> bool:
    """Whether `body` is a streamed message's text that has not all arrived yet (reading it
    may wait)."""
    return isinstance(body, _Reader) and not body.spool.complete


class _Reader:
    """A read-only file over a GrowingSpool, with its own position. A read waits for the data
    it asks for, so read it off the event loop's thread while the spool is not complete."""

    def __init__(self, spool: GrowingSpool) -> None:
        self.spool = spool
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        spool = self.spool
        if size is None or size < 0:
            end = spool.wait_for(_EVERYTHING)  # everything: until the writer is done
            size = end - self._pos
        else:
            end = spool.wait_for(self._pos + size)
            size = min(size, end - self._pos)
        if size <= 0:
            return b""
        data = spool._pread(size, self._pos)
        self._pos += len(data)
        return data

    def marked_chunks(self, size: int) -> Iterator[tuple[bytes, bool]]:
        """The rest of the text in chunks of at most `size`, each with whether it was written
        plain. A plain chunk is whole lines (it ends at an LF, unless a line is longer than
        `size`: then it is not marked plain)."""
        spool = self.spool
        while True:
            end = min(spool.wait_for(self._pos + size), self._pos + size)
            if end <= self._pos:
                return
            plain, run_end = spool._run_at(self._pos)
            data = spool._pread(min(end, run_end) - self._pos, self._pos)
            if plain and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                if cut:
                    data = data[:cut]
                else:
                    plain = False
            self._pos += len(data)
            yield data, plain

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            self._pos = offset
        elif whence == os.SEEK_CUR:
            self._pos += offset
        else:  # the end is known only once everything has arrived
            self._pos = self.spool.wait_for(_EVERYTHING) + offset
        return self._pos

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False
