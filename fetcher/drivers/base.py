"""What the session asks of a mailbox driver. Drivers never decide policy: `plan` does.

Drivers are blocking (poplib, imapclient); the session runs them in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class MessageInfo:
    """One message in the listing: the number that names it to the driver, its size in octets
    and its UID."""

    number: int
    size: int
    uid: str | None  # None when the server has no UIDL
    seen: bool = False  # the server marks it read (IMAP \Seen); POP3 has no such flag
    position: int = 0  # its place in the mailbox, from 1, where `number` is not (IMAP UIDs)

    @property
    def shown_as(self) -> int:
        """The number messages show, as fetchmail's do: the message sequence number."""
        return self.position or self.number


class MailboxDriver(Protocol):
    """One connection to one mailbox. Every call may raise a fetcher.errors.RemoteError."""

    @property
    def protocol(self) -> str:
        """ "POP3", "IMAP": for messages and the Received header."""

    @property
    def peer_address(self) -> str | None:
        """The server's IP address once connected, for the Received header."""

    @property
    def connected(self) -> bool:
        """Whether the session can go on (False once the driver dropped the connection)."""

    def connect(self) -> None:
        """Open the connection, read the greeting, negotiate TLS as configured."""

    def login(self) -> None:
        """Authenticate; AuthenticationError (exit 3) on a refusal, LockBusyError (exit 9)."""

    def list_messages(self) -> list[MessageInfo]:
        """All messages in the mailbox, in server order, with sizes and UIDs if available."""

    def retrieve(self, number: int, out: BinaryIO, *, peek: bool) -> int:
        """Write message `number` to `out` as the server holds it: CRLF line ends, dot-stuffing
        removed. `peek` asks not to mark it read on the server (POP3 TOP instead of RETR).
        Returns the octets written."""

    def delete(self, number: int) -> None:
        """Mark message `number` for deletion; it is gone only after `commit()`."""

    def delete_many(self, numbers: list[int]) -> list[bool]:
        """Mark several messages for deletion at once (one IMAP UID STORE; POP3 DELEs in one
        write where the server pipelines): for each, whether the server took it. A refusal
        of the whole command raises ProtocolError with the connection still usable."""

    def mark_seen_many(self, numbers: list[int]) -> None:
        """mark_seen() for several messages at once."""

    def mark_seen(self, number: int) -> None:
        r"""Mark message `number` read on the server, where the protocol can (IMAP \Seen);
        POP3 has no flags and records the UID instead."""

    def expunge(self) -> bool:
        """Make the deletions so far take effect and stay connected (IMAP EXPUNGE). False
        where the protocol cannot (POP3 deletes only at QUIT)."""

    def commit(self) -> None:
        """End the session cleanly so that deletions take effect (POP3 QUIT)."""

    def close(self) -> None:
        """Drop the connection without committing (after an error). Never raises."""
