"""One account, one poll: connect, list, ask `plan`, fetch, deliver, record, delete, QUIT.

The order of the steps is what keeps mail safe: a message is deleted on the server only after
its sink said ACCEPTED and its UID was durably recorded (DESIGN.md rules 1 and 2). The driver
is blocking and runs in a worker thread; sinks are asyncio.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from fetcher import message as msg
from fetcher.bounce import bounce_recipient, build_bounce
from fetcher.config import local_hostname
from fetcher.credentials import for_login
from fetcher.drivers.base import MailboxDriver, MessageInfo
from fetcher.errors import HookError, ProtocolError, PyfetchError
from fetcher.exitcodes import ExitCode
from fetcher.model import GlobalOptions, ServerOptions, UserOptions
from fetcher.plan import (
    Action,
    Decision,
    Disposition,
    Policy,
    after_delivery,
    count_new,
    fetchlimit_reached,
    plan_mailbox,
)
from fetcher.report import Reporter
from fetcher.sinks.base import Delivery, Envelope, Outcome, Sink
from fetcher.sinks.smtp import SmtpSink
from fetcher.uidstore import UidStore, account_key

# Messages up to this size stay in memory while they pass through; larger ones go to a
# temporary file, so memory does not grow with message size (DESIGN.md rule 6).
SPOOL_IN_MEMORY = 1 << 20

# (server, account, folder or None for the default one, read-only for -c) -> a driver
DriverFactory = Callable[[ServerOptions, UserOptions, str | None, bool], MailboxDriver]
SinkFactory = Callable[[ServerOptions, UserOptions, GlobalOptions], Sink]


@dataclass
class PollResult:
    status: ExitCode
    fetched: int = 0  # messages read from the server, delivered or not (fetchmail's count)


def policy_for(user: UserOptions, server: ServerOptions, globals_: GlobalOptions) -> Policy:
    return Policy(
        keep=user.keep,
        fetchall=user.fetchall,
        flush=user.flush,
        limitflush=user.limitflush,
        limit=user.limit,
        fetchlimit=user.fetchlimit,
        softbounce=globals_.softbounce,
        uidl=server.uidl,
    )


def run_hook(command: str, what: str) -> None:
    """preconnect / postconnect: a shell command; a failure aborts the poll (exit 5)."""
    status = subprocess.run(["/bin/sh", "-c", command], check=False).returncode
    if status != 0:
        raise HookError(f"{what} command failed with status {status}")


class AccountPoll:
    def __init__(
        self,
        server: ServerOptions,
        user: UserOptions,
        globals_: GlobalOptions,
        store: UidStore | None,
        reporter: Reporter,
        make_driver: DriverFactory,
        make_sink: SinkFactory,
        *,
        check_only: bool = False,
        folder: str | None = None,
    ) -> None:
        self.server = server
        self.folder = folder
        self.user = user
        self.globals = globals_
        self.store = store
        self.reporter = reporter
        self.make_driver = make_driver
        self.make_sink = make_sink
        self.check_only = check_only
        self.policy = policy_for(user, server, globals_)
        self.key = account_key(user.remote, server.queryname)
        self._sink: Sink | None = None
        self._batch = 0  # messages handed to the current sink connection

    async def run(self) -> PollResult:
        server, user = self.server, self.user
        self.reporter.poll_started(server.pollname, server.protocol)
        try:
            if user.preconnect is not None:
                await asyncio.to_thread(run_hook, user.preconnect, "pre-connection")
            result = await self._poll()
            if user.postconnect is not None:
                await asyncio.to_thread(run_hook, user.postconnect, "post-connection")
            return result
        finally:
            if self._sink is not None:
                await self._sink.close()
            self.reporter.poll_completed(server.pollname, server.protocol)

    async def _poll(self) -> PollResult:
        """Sessions until the mailbox is done: with `expunge N`, POP3 QUITs after every N
        deletions (so that they take effect) and logs in again for the rest; IMAP sends
        EXPUNGE and goes on in the same session."""
        total = PollResult(ExitCode.NOMAIL)
        while True:
            result, more = await self._session(total.fetched)
            total.fetched = result.fetched
            if result.status is not ExitCode.NOMAIL or total.status is ExitCode.NOMAIL:
                total.status = result.status
            if not more:
                return total

    async def _session(self, fetched: int) -> tuple[PollResult, bool]:
        login = await asyncio.to_thread(for_login, self.server, self.user)  # may run a command
        driver = self.make_driver(self.server, login, self.folder, self.check_only)
        committed = False
        try:
            await asyncio.to_thread(driver.connect)
            await asyncio.to_thread(driver.login)
            listing = await asyncio.to_thread(driver.list_messages)
            uidvalidity: int | None = getattr(driver, "uidvalidity", None)
            self.key = account_key(
                self.user.remote, self.server.queryname, self.folder, uidvalidity
            )
            if uidvalidity is not None:
                self._check_uidvalidity(uidvalidity)
            if self.store is not None and not self.check_only and all(m.uid for m in listing):
                self.store.prune(self.key, {m.uid for m in listing if m.uid is not None})
            server_flags = self._trusts_server_flags(listing, uidvalidity)
            seen = self.store.seen(self.key) if self.store else frozenset()
            delivered = self.store.delivered(self.key) if self.store else frozenset()
            decisions = plan_mailbox(
                listing, seen, self.policy, delivered, server_flags=server_flags
            )
            more = False
            deleted: list[str | None] = []
            if self.check_only:
                result = self._check(decisions, driver.protocol)
            else:
                result, deleted, more = await self._work(driver, decisions, fetched)
            await asyncio.to_thread(driver.commit)
            committed = True
            if self.store is not None and not self.check_only:
                self.store.expunged(self.key, {uid for uid in deleted if uid is not None})
            return result, more
        finally:
            if not committed:
                await asyncio.to_thread(driver.close)

    def _trusts_server_flags(self, listing: list[MessageInfo], uidvalidity: int | None) -> bool:
        """Whether the server's \\Seen flags say what is new (fetchmail's rule), or our record.

        With `keep`, fetchmail skips a message that another client has read before the poll:
        it is never delivered. Once pyfetch holds a record of an IMAP folder (keyed by its
        UIDVALIDITY), that record decides instead. The first poll of a folder has none, so
        \\Seen decides once, and what it calls read is recorded as such: mail read before
        pyfetch came is not fetched, and later reads by another client no longer hide mail."""
        store = self.store
        if store is None or self.check_only or not self.policy.keep or uidvalidity is None:
            return True
        if store.knows(self.key):
            return False
        store.record_seen(self.key, {m.uid for m in listing if m.seen and m.uid is not None})
        return True

    def _check_uidvalidity(self, uidvalidity: int) -> None:
        """A new UIDVALIDITY means every recorded UID of the folder now names nothing (or
        another message): say so, and forget them, rather than skip or refetch in silence."""
        if self.store is None:
            return
        folder_key = account_key(self.user.remote, self.server.queryname, self.folder, 0)
        prefix = folder_key.rsplit("=", 1)[0] + "="
        for stale in self.store.keys_starting(prefix):
            if stale != self.key and not self.check_only:
                old = stale.rsplit("=", 1)[1]
                self.reporter.error(
                    f"UIDVALIDITY of {self.folder or 'INBOX'} for {self.user.remote}@"
                    f"{self.server.pollname} changed from {old} to {uidvalidity}: its recorded "
                    "UIDs are forgotten and the server's \\Seen flags decide what is new"
                )
                self.store.forget(stale)

    def _report_count(self, decisions: list[Decision], protocol: str) -> int:
        """fetchmail's `N messages (M seen) for bob at host (T octets).` or `No mail for ...`;
        returns N. For IMAP fetchmail gives no total size, and neither do we; it names the
        folder when the account has a `folder` list."""
        total, seen, octets = count_new(decisions)
        where = self.server.pollname
        if self.folder is not None:
            where += f" (folder {self.folder})"
        if total:
            self.reporter.message_count(
                self.user.remote, where, total, seen, None if protocol == "IMAP" else octets
            )
        else:
            self.reporter.no_mail(self.user.remote, where)
        return total

    def _check(self, decisions: list[Decision], protocol: str) -> PollResult:
        self._report_count(decisions, protocol)
        new = any(d.action is Action.FETCH for d in decisions)
        return PollResult(ExitCode.SUCCESS if new else ExitCode.NOMAIL)

    async def _work(
        self, driver: MailboxDriver, decisions: list[Decision], fetched: int
    ) -> tuple[PollResult, list[str | None], bool]:
        """Work through one session's decisions. Returns the result, the UIDs deleted and not
        yet expunged, and whether the session stopped early for `expunge` with work left."""
        user, server, report = self.user, self.server, self.reporter
        total = self._report_count(decisions, driver.protocol)
        deleted: list[str | None] = []
        status = ExitCode.NOMAIL
        for index, decision in enumerate(decisions):
            if self.user.expunge and len(deleted) >= self.user.expunge:
                pending = any(
                    d.action is Action.FETCH or d.action in _DELETING for d in decisions[index:]
                )
                if pending:
                    if not await asyncio.to_thread(driver.expunge):
                        return PollResult(status, fetched), deleted, True  # POP3: QUIT, again
                    if self.store is not None:
                        self.store.expunged(self.key, {uid for uid in deleted if uid is not None})
                    deleted.clear()
            info = decision.message
            if decision.action is Action.FETCH:
                if fetchlimit_reached(fetched, self.policy):
                    left = sum(1 for d in decisions[index:] if d.action is Action.FETCH)
                    report.fetchlimit_reached(
                        self.policy.fetchlimit, left, server.pollname, user.remote
                    )
                    status = ExitCode.MAXFETCH
                    break
                got = await self._fetch_and_deliver(driver, info)
                delivery = got.delivery
                fetched += 1
                if status is ExitCode.NOMAIL:
                    status = ExitCode.SUCCESS
                disposition = after_delivery(delivery, self.policy)
                refused = disposition is Disposition.DELETE and delivery.outcome is Outcome.PERMFAIL
                if refused and not await self._bounce(delivery, got.envelope, got.header):
                    disposition = Disposition.RETRY  # nobody could be told: keep it
                if disposition is not Disposition.RETRY and info.uid is not None and self.store:
                    # durable before the DELE: a crash from here on delivers nothing twice
                    self.store.record(
                        self.key, info.uid, delete_pending=disposition is Disposition.DELETE
                    )
                flushed = False
                if disposition is Disposition.DELETE:
                    flushed = await self._delete(driver, info)
                    if flushed:
                        deleted.append(info.uid)
                elif disposition is Disposition.KEEP_SEEN:
                    await asyncio.to_thread(driver.mark_seen, info.number)
                # fetchmail names the message by the server's true name, the count by poll name
                report.message_read(
                    user.remote, server.queryname, info.shown_as, total, info.size,
                    flushed=flushed, header_octets=got.header_octets,
                )
            elif decision.action in _DELETING:
                if await self._delete(driver, info):
                    deleted.append(info.uid)
                report.message_skipped(
                    user.remote, server.queryname, info.shown_as, info.size,
                    _SKIP_REASONS[decision.action], flushed=True,
                )
            elif decision.action is Action.SKIP_OVERSIZED:
                report.message_skipped(
                    user.remote, server.queryname, info.shown_as, info.size,
                    "oversized", flushed=False,
                )
        return PollResult(status, fetched), deleted, False

    async def _delete(self, driver: MailboxDriver, info: MessageInfo) -> bool:
        """Delete on the server; a refusal (IMAP NO on STORE) is reported and the poll goes on
        with the next message, so that one undeletable message cannot block the mailbox. Its
        UID stays recorded, so it is never delivered twice."""
        try:
            await asyncio.to_thread(driver.delete, info.number)
        except ProtocolError as err:
            self.reporter.error(f"could not delete message {info.shown_as}: {err.message}")
            return False
        return True

    async def _bounce(self, delivery: Delivery, envelope: Envelope | None, header: bytes) -> bool:
        """Tell the sender (or the postmaster) before a refused message is dropped; False if
        that failed, so that the message stays on the server. `envelope` is None for a
        message refused before delivery (a bad header): there is nobody known to tell."""
        if delivery.antispam and not self.globals.spambounce:
            return True  # spam is dropped silently, as fetchmail does
        to = bounce_recipient(
            envelope.sender if envelope else "",
            bouncemail=self.globals.bouncemail,
            postmaster=self.globals.postmaster,
        )
        if to is None:
            return True  # the null sender is never bounced to
        recipients = envelope.recipients if envelope else [self.user.remote]
        host = local_hostname()
        bounce = build_bounce(
            to=to, recipients=recipients, delivery=delivery, original_header=header,
            local_host=host,
        )
        sink = SmtpSink(self.user.smtphunt, helo_name=host)
        try:
            result = await sink.deliver(*bounce)
        except PyfetchError as err:
            self.reporter.error(f"could not send a bounce to {to}: {err.message}")
            return False
        finally:
            await sink.close()
        if result.outcome is not Outcome.ACCEPTED:
            self.reporter.error(f"could not send a bounce to {to}: {result.reply}")
        return result.outcome is Outcome.ACCEPTED

    async def _fetch_and_deliver(self, driver: MailboxDriver, info: MessageInfo) -> _Fetched:
        """The delivery, with the envelope and edited header a bounce would need."""
        with _spool() as spool:
            await asyncio.to_thread(driver.retrieve, info.number, spool, peek=self.policy.peek)
            header_octets = None
            if driver.protocol == "IMAP":
                # fetchmail fetches an IMAP message's header and body apart and shows both sizes
                spool.seek(0)
                msg.read_header(spool)
                header_octets = spool.tell()
            spool.seek(0)
            prepared = msg.prepare(
                spool,
                server=self.server,
                user=self.user,
                globals_=self.globals,
                protocol=driver.protocol,
                peer_address=driver.peer_address,
                for_mda=self.user.mda is not None and self.user.bsmtp is None,
            )
            if isinstance(prepared, Delivery):  # refused before delivery (bad header)
                return _Fetched(prepared, None, b"", header_octets)
            envelope, message = prepared
            if self._sink is None:
                self._sink = self.make_sink(self.server, self.user, self.globals)
                self._batch = 0
            delivery = await self._sink.deliver(envelope, message)
            self._batch += 1
            if self.user.batchlimit and self._batch >= self.user.batchlimit:
                # `batchlimit N`: a fresh listener connection after every N messages
                await self._sink.close()
                self._sink = None
            return _Fetched(delivery, envelope, message.header, header_octets)


@dataclass
class _Fetched:
    delivery: Delivery
    envelope: Envelope | None  # None: refused before delivery, nobody known to bounce to
    header: bytes  # as edited for delivery
    header_octets: int | None  # the header's size as fetched, for IMAP's progress line


_DELETING = frozenset({Action.FLUSH, Action.FLUSH_OVERSIZED, Action.DELETE_DELIVERED})
_SKIP_REASONS = {
    Action.FLUSH: "",
    Action.FLUSH_OVERSIZED: "oversized",
    Action.DELETE_DELIVERED: "delivered before",
}


def _spool() -> BinaryIO:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # type: ignore[return-value]
