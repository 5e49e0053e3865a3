"""The async face of a blocking mailbox driver: the same calls, awaited, on a thread of its own.

A poll is then plain `await mailbox.retrieve(...)`, and a server that hangs holds only its own
worker thread (fetcher.worker), never the event loop or another account's poll.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from fetcher.drivers.base import MailboxDriver, MessageInfo
from fetcher.worker import Worker


class ThreadedMailbox:
    def __init__(self, driver: MailboxDriver, name: str = "mailbox") -> None:
        self.driver = driver
        self._worker = Worker(name)
        self._ended = False  # committed, closed or abandoned: the connection is gone

    @property
    def protocol(self) -> str:
        return self.driver.protocol

    @property
    def peer_address(self) -> str | None:
        return self.driver.peer_address

    @property
    def connected(self) -> bool:
        return not self._ended and self.driver.connected

    @property
    def deletions_confirmed(self) -> bool:
        """Whether a commit that succeeded proves every deletion took effect. POP3's QUIT +OK
        does (all of them or none, RFC 1939). An IMAP EXPUNGE's OK does not say which
        messages went: a server may take a STORE and flag nothing. There the records wait for
        the next poll's listing, which shows what is really gone."""
        return self.protocol == "POP3"

    @property
    def uidvalidity(self) -> int | None:
        """The folder's UIDVALIDITY after list_messages() (IMAP); None for POP3."""
        value = getattr(self.driver, "uidvalidity", None)
        return value if isinstance(value, int) else None

    async def connect(self) -> None:
        await self._worker.call(self.driver.connect)

    async def login(self) -> None:
        await self._worker.call(self.driver.login)

    async def list_messages(self) -> list[MessageInfo]:
        return await self._worker.call(self.driver.list_messages)

    async def retrieve(
        self, number: int, out: BinaryIO, *, peek: bool, then: Callable[[], None] | None = None
    ) -> int:
        """`then` runs on the connection's thread once the driver is done with `out`, even if
        the awaiting task was cancelled long before (the thread cannot be)."""

        def retrieve() -> int:
            try:
                return self.driver.retrieve(number, out, peek=peek)
            finally:
                if then is not None:
                    then()

        return await self._worker.call(retrieve)

    async def delete(self, number: int) -> None:
        await self._worker.call(self.driver.delete, number)

    async def mark_seen(self, number: int) -> None:
        await self._worker.call(self.driver.mark_seen, number)

    async def delete_many(self, numbers: list[int]) -> list[bool]:
        return await self._worker.call(self.driver.delete_many, numbers)

    async def mark_seen_many(self, numbers: list[int]) -> None:
        await self._worker.call(self.driver.mark_seen_many, numbers)

    async def expunge(self) -> bool:
        return await self._worker.call(self.driver.expunge)

    async def commit(self) -> None:
        """End the session so that deletions take effect, then let the thread go. The driver
        drops the connection whether or not the server confirmed (its error is raised)."""
        await self._end(self.driver.commit)

    async def close(self) -> None:
        """Drop the connection without committing, then let the thread go; nothing to do once
        the session has ended (a failed commit has closed it already)."""
        if not self._ended:
            await self._end(self.driver.close)

    def abandon(self) -> None:
        """For a poll given up on (the run is stopping and the server does not answer): let the
        thread end after whatever it is stuck in, without waiting for it."""
        self._ended = True
        self._worker.close()
        abandon = getattr(self.driver, "abandon", None)  # a driver with a plugin command
        if abandon is not None:
            abandon()

    async def _end(self, how: Callable[[], None]) -> None:
        self._ended = True
        try:
            await self._worker.call(how)
        finally:
            self._worker.close()
