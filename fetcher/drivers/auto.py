"""`proto auto` (fetchmail's default): IMAP first, then POP3, as fetchmail probes.

fetchmail moves on to the next protocol only when the first one fails in a way that says
"not this protocol"; an authentication or TLS failure is final. pyfetch also moves on when the
IMAP port refuses the connection, so that a POP3-only server works with the default setting.
"""

from __future__ import annotations

from dataclasses import replace
from typing import BinaryIO

from fetcher.drivers.base import MailboxDriver, MessageInfo
from fetcher.drivers.imap import ImapDriver
from fetcher.drivers.pop3 import Pop3Driver
from fetcher.errors import DNSError, ProtocolError, ServerConnectionError, TLSError
from fetcher.model import ServerOptions, UserOptions


class AutoDriver:
    """Chooses IMAP or POP3 at connect(), then passes every call to the chosen driver."""

    def __init__(
        self, server: ServerOptions, user: UserOptions, *, folder: str | None, read_only: bool
    ) -> None:
        self._imap = ImapDriver(
            replace(server, protocol="IMAP"), user, folder=folder, read_only=read_only
        )
        self._pop3 = Pop3Driver(replace(server, protocol="POP3"), user)
        self._chosen: MailboxDriver = self._imap

    @property
    def protocol(self) -> str:
        return self._chosen.protocol

    @property
    def peer_address(self) -> str | None:
        return self._chosen.peer_address

    @property
    def connected(self) -> bool:
        return self._chosen.connected

    @property
    def uidvalidity(self) -> int | None:
        return self._imap.uidvalidity if self._chosen is self._imap else None

    def connect(self) -> None:
        try:
            self._imap.connect()
            return
        except (TLSError, DNSError):
            # A TLS failure says nothing about the protocol: stop, as fetchmail does. Nor does a
            # name that does not resolve, which fetchmail finds before choosing a protocol.
            raise
        except (ProtocolError, ServerConnectionError):
            self._imap.close()
        self._chosen = self._pop3
        self._pop3.connect()

    def login(self) -> None:
        self._chosen.login()

    def list_messages(self) -> list[MessageInfo]:
        return self._chosen.list_messages()

    def retrieve(self, number: int, out: BinaryIO, *, peek: bool) -> int:
        return self._chosen.retrieve(number, out, peek=peek)

    def delete(self, number: int) -> None:
        self._chosen.delete(number)

    def mark_seen(self, number: int) -> None:
        self._chosen.mark_seen(number)

    def delete_many(self, numbers: list[int]) -> list[bool]:
        return self._chosen.delete_many(numbers)

    def mark_seen_many(self, numbers: list[int]) -> None:
        self._chosen.mark_seen_many(numbers)

    def expunge(self) -> bool:
        return self._chosen.expunge()

    def commit(self) -> None:
        self._chosen.commit()

    def close(self) -> None:
        self._chosen.close()

    def abandon(self) -> None:
        self._imap.abandon()
        self._pop3.abandon()
