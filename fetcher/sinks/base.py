"""What a sink promises: a Delivery that says ACCEPTED, TEMPFAIL or PERMFAIL, nothing else.

Only ACCEPTED lets the session delete a message on the server (docs/design.md, rule 1). Sinks never
know about servers or UIDs.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, TypeVar, cast

_Chunk = TypeVar("_Chunk")

# What a message's body goes through on its way out (`mimedecode`): chunks in, chunks out.
BodyFilter = Callable[[Iterable[bytes]], Iterator[bytes]]


def through(
    chunks: Iterable[_Chunk], feed: Callable[[_Chunk], bytes], end: Callable[[], bytes]
) -> Iterator[bytes]:
    """`chunks` through a filter that keeps state from one to the next: what `feed` makes of
    each, then what `end` adds once they are all in; no empty chunk."""
    for chunk in chunks:
        out = feed(chunk)
        if out:
            yield out
    tail = end()
    if tail:
        yield tail


class Outcome(enum.Enum):
    ACCEPTED = "accepted"  # the MTA took responsibility (250 after DATA, MDA exit 0)
    TEMPFAIL = "tempfail"  # try again later: 4xx, lost connection, any MDA failure
    PERMFAIL = "permfail"  # refused for good: 5xx (kept anyway unless `no softbounce`)


@dataclass(frozen=True)
class Envelope:
    sender: str  # the MAIL FROM address without <>; "" for the null sender
    recipients: list[str]  # RCPT TO addresses without <>
    size: int  # octets, for SIZE= (fetchmail's: the size the server gave; 0 sends none)
    body: str = ""  # BODY=: "8BITMIME", "7BIT", or "" for none


@dataclass(frozen=True)
class Message:
    """A message ready to hand over: the edited header block, and the body as a file.

    `header` holds the header lines with CRLF line ends and the blank line that ends them;
    `body` is positioned at the first body byte, as the server sent it (normally CRLF lines,
    not dot-stuffed). `body_filter`, if any, is applied to the body as it streams out.
    """

    header: bytes
    body: BinaryIO
    body_filter: BodyFilter | None = None

    def body_chunks(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """The body from where it stands, in pieces of about `chunk_size`, filtered."""
        read = self.body.read
        chunks = iter(lambda: read(chunk_size), b"")
        return self.body_filter(chunks) if self.body_filter is not None else chunks

    def marked_chunks(self, chunk_size: int = 65536) -> Iterator[tuple[bytes, bool]]:
        """`body_chunks`, each with whether it is SMTP DATA as it stands: a large message's
        text that the driver marked so in its spool (fetcher/spool.py), when nothing filters
        it; False for everything else."""
        marked = getattr(self.body, "marked_chunks", None)
        if self.body_filter is None and marked is not None:
            return cast(Iterator[tuple[bytes, bool]], marked(chunk_size))
        return ((chunk, False) for chunk in self.body_chunks(chunk_size))


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    reply: str = ""  # the listener's last reply, "250 2.0.0 Ok: queued as X", or MDA status
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> reply, if any refused
    antispam: bool = False  # refused with one of the `antispam` codes
    # LMTP, when some recipients deferred (TEMPFAIL): those that have the message already; the
    # next attempt goes to the others only
    delivered_to: tuple[str, ...] = ()


class Sink(Protocol):
    """Opened lazily at the first message of a poll and reused until `close()`."""

    async def deliver(self, envelope: Envelope, message: Message) -> Delivery:
        """Hand over one message. Raises ListenerUnavailableError (exit 10) when no listener
        of the hunt list answers, BsmtpError (exit 12) when the BSMTP file cannot be opened."""

    async def close(self) -> None:
        """QUIT and close; never raises."""
