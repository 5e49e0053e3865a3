"""The async face of a blocking mailbox driver: the same calls, awaited, on a thread of its own.

A poll is then plain `await mailbox.retrieve(...)`, and a server that hangs holds only its own
worker thread (fetcher.worker), never the event loop or another account's poll.
"""

from __future__ import annotations

from typing import BinaryIO

from fetcher.drivers.base import MailboxDriver, MessageInfo
from fetcher.worker import Worker


class ThreadedMailbox:
    def __init__(self, driver: MailboxDriver, name: str = "mailbox") -> None:
        self.driver = driver
        self._worker = Worker(name)

    @property
    def protocol(self) -> str:
        return self.driver.protocol

    @property
    def peer_address(self) -> str | None:
        return self.driver.peer_address

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

    async def retrieve(self, number: int, out: BinaryIO, *, peek: bool) -> int:
        return await self._worker.call(lambda: self.driver.retrieve(number, out, peek=peek))

    async def delete(self, number: int) -> None:
        await self._worker.call(self.driver.delete, number)

    async def mark_seen(self, number: int) -> None:
        await self._worker.call(self.driver.mark_seen, number)

    async def expunge(self) -> bool:
        return await self._worker.call(self.driver.expunge)

    async def commit(self) -> None:
        """End the session so that deletions take effect, then let the thread go."""
        try:
            await self._worker.call(self.driver.commit)
        finally:
            self._worker.close()

    async def close(self) -> None:
        """Drop the connection without committing, then let the thread go."""
        try:
            await self._worker.call(self.driver.close)
        finally:
            self._worker.close()

    def abandon(self) -> None:
        """For a poll given up on (the run is stopping and the server does not answer):
        queue the close behind whatever the thread is stuck in, without waiting for it."""
        self._worker.close()
