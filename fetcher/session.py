"""One account, one poll: connect, list, ask `plan`, fetch, deliver, record, delete, QUIT.

The order of the steps is what keeps mail safe: a message is deleted on the server only after
its sink said ACCEPTED and its UID was durably recorded (docs/design.md, rules 1 and 2). What
to do is decided by fetcher.plan; this module carries it out. The driver blocks and runs on a
thread of its own (fetcher.drivers.threaded); sinks are asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar, cast

from fetcher import message as msg
from fetcher import progress, trace
from fetcher.bounce import bounce_recipient, build_bounce
from fetcher.config import local_hostname
from fetcher.credentials import for_login
from fetcher.drivers.base import MailboxDriver, MessageInfo
from fetcher.drivers.threaded import ThreadedMailbox
from fetcher.errors import HookError, ProtocolError, PyfetchError
from fetcher.exitcodes import ExitCode
from fetcher.model import GlobalOptions, ServerOptions, UserOptions
from fetcher.plan import (
    KEEP_FOR_RETRY,
    Action,
    Decision,
    Expunge,
    Fetch,
    FetchlimitReached,
    OnServer,
    Policy,
    Record,
    Relogin,
    Remove,
    SessionPlan,
    Skip,
    Step,
    Verify,
    after_delivery,
    combine_sessions,
    count_new,
    plan_mailbox,
)
from fetcher.report import Reporter
from fetcher.resolver import DEFAULT_TIMEOUT as DNS_TIMEOUT
from fetcher.resolver import TimedResolver
from fetcher.sinks.base import Delivery, Envelope, Message, Outcome, Sink
from fetcher.sinks.smtp import SmtpSink
from fetcher.sizewarning import SizeWarnings, build_size_warning, warning_recipients
from fetcher.spool import GrowingSpool, SpoolBroken
from fetcher.uidstore import DIGEST_OCTETS, Identity, StoreService, account_key
from fetcher.worker import Worker

# Messages up to this size stay in memory while they pass through; larger ones go to a
# temporary file, so memory does not grow with message size (docs/design.md, rule 6).
SPOOL_IN_MEMORY = 1 << 20
# Messages of this size and more are streamed: the listener gets the first octets while the
# server is still sending the rest (fetcher/spool.py), as fetchmail does for every message.
STREAM_OCTETS = 4 << 20

_T = TypeVar("_T")

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
        spambounce=globals_.spambounce,
        uidl=server.uidl,
        bouncemail=globals_.bouncemail,
        antispam=frozenset(user.antispam),
        multidrop=user.multidrop,
    )


def run_hook(command: str, what: str) -> None:
    """preconnect / postconnect: a shell command; a failure aborts the poll (exit 5)."""
    status = subprocess.run(["/bin/sh", "-c", command], check=False).returncode
    if status != 0:
        raise HookError(f"{what} command failed with status {status}")


class AccountPoll:
    """One poll of one folder, carrying out what fetcher.plan decides.

    The driver's calls are awaited on a thread of the connection's own (ThreadedMailbox); the
    UID store's on the store's thread (StoreService). `stopping`, when set, ends the poll
    after the message in hand: its delivery and record are finished, then the session ends
    cleanly so that the deletions made so far take effect.
    """

    def __init__(
        self,
        server: ServerOptions,
        user: UserOptions,
        globals_: GlobalOptions,
        store: StoreService | None,
        reporter: Reporter,
        make_driver: DriverFactory,
        make_sink: SinkFactory,
        *,
        check_only: bool = False,
        folder: str | None = None,
        stopping: asyncio.Event | None = None,
        size_warnings: SizeWarnings | None = None,
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
        self.stopping = stopping or asyncio.Event()
        self.policy = policy_for(user, server, globals_)
        self.key = account_key(user.remote, server.queryname)
        self.in_delivery = False  # between handing a message over and its durable record
        self._sink: Sink | None = None
        self._batch = 0  # messages handed to the current sink connection
        self._resolver: TimedResolver | None = None  # multidrop DNS answers, for this poll
        # A detached daemon's mail about messages over `limit` (fetcher.sizewarning): when it
        # was last sent, and the sizes of those this poll found.
        self.size_warnings = size_warnings
        self._oversized: list[int] = []
        self._worker = Worker(f"poll {user.remote}@{server.pollname}")

    async def run(self) -> PollResult:
        server, user = self.server, self.user
        self.reporter.poll_started(server.pollname, server.protocol)
        try:
            if user.preconnect is not None:
                await self._worker.call(run_hook, user.preconnect, "pre-connection")
            result = await self._poll()
            await self._warn_of_oversized()
            if user.postconnect is not None:
                await self._worker.call(run_hook, user.postconnect, "post-connection")
            return result
        finally:
            self._worker.close()
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
            total.status = combine_sessions(total.status, result.status)
            if not more or self.stopping.is_set():
                return total

    async def _session(self, fetched: int) -> tuple[PollResult, bool]:
        login = await self._worker.call(for_login, self.server, self.user)  # may run a command
        driver = self.make_driver(self.server, login, self.folder, self.check_only)
        mailbox = ThreadedMailbox(driver, f"{driver.protocol} {self.user.remote}")
        committed = False
        try:
            await mailbox.connect()
            await mailbox.login()
            listing = await mailbox.list_messages()
            decisions = await self._plan(listing, mailbox.uidvalidity)
            if self.check_only:
                result, more = self._check(decisions, mailbox.protocol), False
                await mailbox.commit()
            else:
                plan = SessionPlan(
                    decisions, self.policy, expunge=self.user.expunge,
                    can_expunge=mailbox.protocol == "IMAP", fetched=fetched,
                )
                await self._work(mailbox, plan)
                await mailbox.commit()
                if self.store is not None and mailbox.deletions_confirmed:
                    await self.store.expunged(self.key, plan.expunged())
                result, more = PollResult(plan.status, plan.fetched), plan.more
            committed = True
            return result, more
        except asyncio.CancelledError:
            # a stopping run gave up on this poll: the thread may be stuck on the server,
            # so do not wait for it (nothing unrecorded was deleted; see docs/design.md)
            mailbox.abandon()
            committed = True
            raise
        finally:
            if not committed:
                await mailbox.close()

    async def _plan(self, listing: list[MessageInfo], uidvalidity: int | None) -> list[Decision]:
        """Ask fetcher.plan what to do with each message, given what the store knows."""
        self.key = account_key(self.user.remote, self.server.queryname, self.folder, uidvalidity)
        store = None if self.check_only else self.store
        if store is None:
            return plan_mailbox(listing, frozenset(), self.policy)
        orphans: list[Identity] = []
        if uidvalidity is not None:
            orphans = await self._check_uidvalidity(store, uidvalidity)
        if all(m.uid for m in listing):
            await store.prune(self.key, {m.uid for m in listing if m.uid is not None})
        server_flags = await self._trusts_server_flags(store, listing, uidvalidity)
        seen = await store.seen(self.key)
        delivered = await store.delivered(self.key)
        return plan_mailbox(
            listing, seen, self.policy, delivered, server_flags=server_flags, orphans=orphans
        )

    async def _trusts_server_flags(
        self, store: StoreService, listing: list[MessageInfo], uidvalidity: int | None
    ) -> bool:
        """Whether the server's \\Seen flags say what is new (fetchmail's rule), or our record.

        With `keep`, fetchmail skips a message that another client has read before the poll:
        it is never delivered. Once pyfetch holds a record of an IMAP folder (keyed by its
        UIDVALIDITY), that record decides instead. The first poll of a folder has none, so
        \\Seen decides once, and what it calls read is recorded as such: mail read before
        pyfetch came is not fetched, and later reads by another client no longer hide mail."""
        if not self.policy.keep or uidvalidity is None:
            return True
        if await store.knows(self.key):
            return False
        await store.record_seen(
            self.key, {m.uid for m in listing if m.seen and m.uid is not None}
        )
        return True

    async def _check_uidvalidity(self, store: StoreService, uidvalidity: int) -> list[Identity]:
        """A new UIDVALIDITY means every recorded UID of the folder now names nothing (or
        another message): say so, and forget them, rather than skip or refetch in silence.
        Returns what identified the messages delivered and not yet deleted under the old
        UIDVALIDITY: they may still be there under new UIDs (plan_mailbox's `orphans`)."""
        folder_key = account_key(self.user.remote, self.server.queryname, self.folder, 0)
        prefix = folder_key.rsplit("=", 1)[0] + "="
        orphans: list[Identity] = []
        for stale in await store.keys_starting(prefix):
            if stale != self.key:
                pending = await store.delivered(stale)
                orphans += [identity for identity in pending.values() if identity is not None]
                old = stale.rsplit("=", 1)[1]
                self.reporter.error(
                    f"UIDVALIDITY of {self.folder or 'INBOX'} for {self.user.remote}@"
                    f"{self.server.pollname} changed from {old} to {uidvalidity}: its recorded "
                    "UIDs are forgotten and the server's \\Seen flags decide what is new"
                )
                await store.forget(stale)
        return orphans

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

    async def _work(self, mailbox: ThreadedMailbox, plan: SessionPlan) -> None:
        """Carry out the plan's commands until it has none left or the run is stopping.

        Two things keep the server and the listener busy at once (docs/design.md, rule 2 still
        holds): the next message is read while one is delivered (the driver's thread and the
        sink work side by side), and messages delivered and recorded wait in a batch for
        their turn on the server: one fsync makes all their records durable, then one UID
        STORE (or pipelined DELEs) deletes them. A message is never deleted before its record
        is on disk."""
        user, server, report = self.user, self.server, self.reporter
        total = self._report_count(plan.decisions, mailbox.protocol)
        self._waiting: list[_Done] = []
        self._ahead: _Ahead | None = None
        try:
            while not self.stopping.is_set() and (command := plan.next()) is not None:
                if not isinstance(command, Fetch | Verify):
                    await self._settle(mailbox, plan, total)  # the lines stay in order
                match command:
                    case Fetch(message=info):
                        await self._fetch(mailbox, plan, info, total)
                    case Verify(message=info, expect=expect):
                        await self._fetch(mailbox, plan, info, total, expect=expect)
                    case Remove(message=info, reason=reason):
                        await self._delete_many(mailbox, plan, [info])
                        if reason == "oversized":
                            self._oversized.append(info.size)
                        report.message_skipped(
                            user.remote, server.queryname, info.shown_as, info.size, reason,
                            flushed=True,  # as fetchmail says it, whatever the server answered
                        )
                    case Skip(message=info, reason=reason):
                        if reason == "oversized":
                            self._oversized.append(info.size)
                        report.message_skipped(
                            user.remote, server.queryname, info.shown_as, info.size, reason,
                            flushed=False,
                        )
                    case Expunge():
                        await mailbox.expunge()
                        if self.store is not None and mailbox.deletions_confirmed:
                            await self.store.expunged(self.key, plan.expunged())
                    case Relogin():
                        pass  # the session ends; _poll() logs in again for the rest
                    case FetchlimitReached(limit=limit, left=left):
                        report.fetchlimit_reached(limit, left, server.pollname, user.remote)
                if len(self._waiting) >= self._settle_every or (
                    self._waiting_octets() >= BATCH_OCTETS
                ):
                    await self._settle(mailbox, plan, total)
            await self._settle(mailbox, plan, total)
        finally:
            if self._ahead is not None:
                self._ahead.drop()
                self._ahead = None
            if self._waiting:  # the session failed: nothing more goes to the server
                await self._give_up_waiting(total)

    @property
    def _settle_every(self) -> int:
        """Messages delivered before their deletions go out together; `expunge N` asks for
        deletions to take effect every N, so never more than N."""
        return min(BATCH, self.user.expunge) if self.user.expunge else BATCH

    def _waiting_octets(self) -> int:
        return sum(done.info.size for done in self._waiting)

    async def _fetch(
        self, mailbox: ThreadedMailbox, plan: SessionPlan, info: MessageInfo, total: int,
        *, expect: Identity | None = None,
    ) -> None:
        """Fetch and deliver, record, and queue the message's deletion or marking. With
        `expect` (a message an earlier run delivered): if it is that very message, it is
        deleted without being delivered again; otherwise it is new.

        A large message is streamed: its delivery starts once its first octets are here, and
        the rest goes to the listener as it arrives (fetcher/spool.py). Nothing is decided
        about it before the server has sent all of it."""
        ahead = await self._retrieved(mailbox, plan, info, total)
        try:
            # a streamed message's progress shows while it is delivered
            async with self._reading_shown(ahead, info, total):
                done = await self._delivered(mailbox, plan, ahead, info, total, expect)
        finally:
            ahead.drop()
        self._waiting.append(done)

    async def _delivered(
        self, mailbox: ThreadedMailbox, plan: SessionPlan, ahead: _Ahead, info: MessageInfo,
        total: int, expect: Identity | None,
    ) -> _Done:
        """The message delivered (or found delivered before) and recorded: what is left to do
        on the server."""
        identity = await ahead.off_loop(Identity.of, info.size, ahead.body)
        if expect is not None:
            await ahead.task  # all of it: the progress shows from _fetch
            plan.verified(identity == expect)
            if identity == expect:
                return _Done(info, OnServer.DELETE, None, "delivered before")
        store = self.store if info.uid is not None else None
        has_it: frozenset[str] = frozenset()  # LMTP recipients that took it at an earlier try
        if store is not None and info.uid is not None:
            has_it = await store.has_it(self.key, info.uid, identity)
        self.in_delivery = True
        try:
            try:
                got = await self._deliver(ahead, mailbox, skip=has_it)
            except SpoolBroken:
                await ahead.task  # the server's error, which broke the text off
                raise
            # only a text that has all arrived is recorded or deleted
            await ahead.task
            self._say_refusal(got)
            step = self._step(got, info)
            refusals = got  # the delivery whose refused recipients `notify` names
            if step.to_postmaster:
                got, step = await self._to_postmaster(ahead, mailbox, got, step, info)
            if step.bounce and not await self._bounce(got.delivery, got.envelope, got.header):
                step = KEEP_FOR_RETRY  # nobody could be told: keep it
            elif step.notify:
                # the others have it: the notice is sent or reported, the message goes on
                await self._bounce(
                    refusals.delivery, refusals.envelope, refusals.header, step.notify
                )
            if store is not None and info.uid is not None:
                # written before the delete, and made durable (fsync) before it in _settle:
                # a crash from here on delivers nothing twice
                await self._record(store, info.uid, identity, step, got, has_it)
        finally:
            self.in_delivery = False
        return _Done(info, step.on_server, got.header_octets, None)

    def _step(self, got: _Fetched, info: MessageInfo) -> Step:
        recipients = tuple(got.envelope.recipients) if got.envelope is not None else ()
        return after_delivery(
            got.delivery, self.policy, has_uid=info.uid is not None, recipients=recipients
        )

    async def _to_postmaster(
        self, ahead: _Ahead, mailbox: ThreadedMailbox, got: _Fetched, step: Step,
        info: MessageInfo,
    ) -> tuple[_Fetched, Step]:
        """The listener refused every recipient of a multidrop message for good: the
        postmaster gets it instead, as fetchmail does, and that delivery decides. The refused
        recipients are reported to the sender once it succeeded."""
        postmaster = self.globals.postmaster or ""
        trace.note(f"no address matches; forwarding to {postmaster}.")
        fallback = await self._deliver(ahead, mailbox, refused=tuple(got.delivery.refused))
        self._say_refusal(fallback)
        if fallback.delivery.outcome is not Outcome.ACCEPTED and postmaster:
            self.reporter.error(f"can't even send to {postmaster}!")
        then = after_delivery(fallback.delivery, self.policy, has_uid=info.uid is not None)
        if fallback.delivery.outcome is Outcome.ACCEPTED:
            then = dataclasses.replace(then, notify=step.notify)
        return fallback, then

    async def _retrieved(
        self, mailbox: ThreadedMailbox, plan: SessionPlan, info: MessageInfo, total: int
    ) -> _Ahead:
        """The message, read ahead while the one before was delivered, or now. The message
        after it starts being read at once, on the connection's thread. A streamed message
        comes back once its first octets are here; the others once they are whole."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.info.number != info.number:
            ahead.drop()
            ahead = None
        if ahead is None:
            ahead = _Ahead.start(mailbox, info, peek=self.policy.peek, stream=self._streams(info))
        following = plan.peek()
        if following is not None and not self.stopping.is_set():
            self._ahead = _Ahead.start(
                mailbox, following.message, peek=self.policy.peek,
                stream=self._streams(following.message),
            )
        try:
            if ahead.streamed is not None:
                try:
                    await asyncio.to_thread(
                        ahead.streamed.wait_for, min(info.size, DIGEST_OCTETS)
                    )
                except SpoolBroken:
                    await ahead.task  # the server's own error
                    raise
            else:
                async with self._reading_shown(ahead, info, total):
                    await ahead.task
        except BaseException:
            ahead.drop()
            raise
        return ahead

    def _streams(self, info: MessageInfo) -> bool:
        """Stream a large message to an SMTP or LMTP listener. An MDA or a BSMTP file cannot
        be told to forget half a message, so those get it whole."""
        return (
            info.size >= STREAM_OCTETS and self.user.mda is None and self.user.bsmtp is None
        )

    def _reading_shown(
        self, ahead: _Ahead, info: MessageInfo, total: int
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """How far the message has come, on a terminal, while the block runs (nothing once it
        has all arrived). One display a message: a streamed one's spans its delivery
        (`_fetch`), the others' the wait for their text (`_retrieved`)."""
        if ahead.task.done():
            return contextlib.nullcontext()
        user, server = self.user, self.server
        reading = f"reading message {user.remote}@{server.queryname}:{info.shown_as} of {total}"
        return progress.shown(self.reporter, ahead.progress, info.size, reading)

    async def _settle(self, mailbox: ThreadedMailbox, plan: SessionPlan, total: int) -> None:
        """The waiting messages' turn on the server: their records made durable with one
        fsync, then one deletion command for all, then their progress lines."""
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        if self.store is not None:
            await self.store.sync()  # before any deletion: rule 2 of docs/design.md
        deleting = [done for done in waiting if done.on_server is OnServer.DELETE]
        flushed = await self._delete_many(mailbox, plan, [done.info for done in deleting])
        seeing = [done.info.number for done in waiting if done.on_server is OnServer.MARK_SEEN]
        if seeing:
            await mailbox.mark_seen_many(seeing)
        for done in waiting:
            self._say_done(done, total, flushed=done.info.number in flushed)

    async def _give_up_waiting(self, total: int) -> None:
        """A session that failed with messages delivered: their records are made durable (the
        next poll deletes them without delivering them again) and they are said not flushed."""
        waiting, self._waiting = self._waiting, []
        if self.store is not None:
            with contextlib.suppress(PyfetchError):  # the session's own error is the one told
                await self.store.sync()
        for done in waiting:
            self._say_done(done, total, flushed=False)

    def _say_done(self, done: _Done, total: int, *, flushed: bool) -> None:
        user, server, info = self.user, self.server, done.info
        # fetchmail names the message by the server's true name, the count by poll name
        if done.skipped is not None:
            self.reporter.message_skipped(
                user.remote, server.queryname, info.shown_as, info.size, done.skipped,
                flushed=flushed,
            )
        else:
            self.reporter.message_read(
                user.remote, server.queryname, info.shown_as, total, info.size,
                flushed=flushed, header_octets=done.header_octets,
            )

    async def _delete_many(
        self, mailbox: ThreadedMailbox, plan: SessionPlan, infos: list[MessageInfo]
    ) -> set[int]:
        """Delete on the server, all at once; the numbers the server took. A refusal (IMAP NO
        on STORE, POP3 -ERR) is reported and the poll goes on, so that an undeletable message
        cannot block the mailbox; its UID stays recorded, so it is never delivered twice. A
        reply that could not be read at all has dropped the connection: that ends the session.
        """
        if not infos:
            return set()
        try:
            taken = await mailbox.delete_many([info.number for info in infos])
        except ProtocolError as err:
            if not mailbox.connected:
                raise
            shown = ", ".join(str(info.shown_as) for info in infos)
            self.reporter.error(f"could not delete message {shown}: {err.message}")
            return set()
        flushed = set()
        for info, ok in zip(infos, taken, strict=True):
            if ok:
                plan.deleted(info)
                flushed.add(info.number)
            else:
                self.reporter.error(f"could not delete message {info.shown_as}")
        return flushed

    async def _record(
        self, store: StoreService, uid: str, identity: Identity, step: Step, got: _Fetched,
        had_it: frozenset[str],
    ) -> None:
        """What the store learns of a delivery attempt, before anything happens on the server."""
        if step.record is Record.PARTIAL:
            have_it = had_it | set(got.delivery.delivered_to)
            await store.record_partial(self.key, uid, identity, have_it)
        elif step.record is not Record.NOTHING:
            await store.record(
                self.key, uid, delete_pending=step.record is Record.DELIVERED, identity=identity,
                durable=False,  # _settle makes it durable, with the others, before any delete
            )

    def _say_refusal(self, got: _Fetched) -> None:
        """What the listener said when it did not take the message (or not for everyone):
        fetchmail's `SMTP error: 452 ...` (`LMTP error`), or what the MDA or the header check
        said. A refusal for spam (`antispam` codes) passes in silence, as in fetchmail."""
        delivery = got.delivery
        if got.envelope is None:  # refused before delivery (a bad header)
            self.reporter.error(delivery.reply)
            return
        kind = self._listener_kind()
        replies = list(dict.fromkeys(delivery.refused.values()))
        if delivery.outcome is not Outcome.ACCEPTED and not delivery.antispam:
            replies = list(dict.fromkeys([*replies, delivery.reply]))
        for reply in replies:
            self.reporter.error(f"{kind} error: {reply}" if kind else reply)

    def _listener_kind(self) -> str:
        """How fetchmail names the listener in its errors ("" for an MDA or a BSMTP file,
        whose own words say what happened)."""
        if self.user.bsmtp is not None or self.user.mda is not None:
            return ""
        return "LMTP" if self.user.lmtp else "SMTP"

    async def _warn_of_oversized(self) -> None:
        """Mail the list of the messages over `limit` this poll found, if a warning is due
        (fetcher.sizewarning). A failure to send it is said, and changes nothing else: the
        messages are where they were, and the next poll tries again."""
        warnings, sizes = self.size_warnings, self._oversized
        if warnings is None or not sizes:
            return
        user, server = self.user, self.server
        mailbox = f"{user.remote}@{server.pollname}" + (f"/{self.folder}" if self.folder else "")
        now = time.monotonic()
        if not warnings.due(mailbox, now, user.warnings):
            return
        envelope, message = build_size_warning(
            sizes=sizes, deleted=user.limitflush, server=server.pollname, account=user.remote,
            recipients=warning_recipients(user, self.globals),
            sender_domain=user.smtpaddress or local_hostname(),
        )
        if self._sink is None:
            self._sink = self.make_sink(server, user, self.globals)
        try:
            delivery = await self._sink.deliver(envelope, message)
        except PyfetchError as err:
            delivery = Delivery(Outcome.TEMPFAIL, reply=err.message)
        if delivery.outcome is Outcome.ACCEPTED:
            warnings.sent(mailbox, now)
        else:
            self.reporter.error(
                f"could not send the oversized-messages warning for {mailbox}: {delivery.reply}"
            )

    async def _bounce(
        self,
        delivery: Delivery,
        envelope: Envelope | None,
        header: bytes,
        refused: tuple[str, ...] = (),
    ) -> bool:
        """Tell the sender (or the postmaster) before a refused message is dropped, or of the
        `refused` recipients of one the others took; False if that failed, so that a dropped
        message stays on the server. `envelope` is None for a message refused before delivery
        (a bad header): there is nobody known to tell."""
        to = bounce_recipient(
            envelope.sender if envelope else "",
            bouncemail=self.globals.bouncemail,
            postmaster=self.globals.postmaster,
        )
        if to is None:
            return True  # the null sender is never bounced to
        recipients = list(refused) or (envelope.recipients if envelope else [self.user.remote])
        host = local_hostname()
        bounce = build_bounce(
            to=to, recipients=recipients, delivery=delivery, original_header=header,
            local_host=host,
        )
        sink = SmtpSink(
            self.user.smtphunt, lmtp=self.user.lmtp, helo_name=host, plugout=self.server.plugout
        )
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

    async def _deliver(
        self,
        ahead: _Ahead,
        mailbox: ThreadedMailbox,
        *,
        skip: frozenset[str] = frozenset(),
        refused: tuple[str, ...] = (),
    ) -> _Fetched:
        """The delivery of the message, with the envelope and edited header a bounce would
        need. `skip`: recipients that have it already (nobody left: it is delivered).
        `refused`: the recipients the listener refused for good; it goes to the postmaster."""
        protocol = mailbox.protocol
        resolve = None
        if self.user.multidrop and self.server.dns and not refused:
            if self._resolver is None:
                self._resolver = TimedResolver(min(DNS_TIMEOUT, self.server.timeout or DNS_TIMEOUT))
            resolve = self._resolver

        def prepared_message() -> tuple[tuple[Envelope, Message] | Delivery, int | None]:
            spool = ahead.body
            header_octets = None
            if protocol == "IMAP":
                # fetchmail fetches an IMAP message's header and body apart, shows both sizes
                spool.seek(0)
                msg.read_header(spool)
                header_octets = spool.tell()
            spool.seek(0)
            prepared = msg.prepare(
                spool,
                server=self.server,
                user=self.user,
                globals_=self.globals,
                protocol=protocol,
                peer_address=mailbox.peer_address,
                for_mda=self.user.mda is not None and self.user.bsmtp is None,
                size=ahead.info.size,  # as listed: fetchmail declares it in SIZE=
                resolve=resolve,
                note=_route_note,
                refused=refused,
            )
            return prepared, header_octets

        if resolve is not None:
            # Routing may ask DNS, which blocks: on a thread, each name bounded by a timeout,
            # so that neither this poll nor the others wait on a resolver that does not answer.
            prepared, header_octets = await asyncio.to_thread(prepared_message)
        else:
            prepared, header_octets = await ahead.off_loop(prepared_message)
        if isinstance(prepared, Delivery):  # refused before delivery (bad header, DNS, ...)
            return _Fetched(prepared, None, b"", header_octets)
        envelope, message = prepared
        if skip:
            left = [rcpt for rcpt in envelope.recipients if rcpt not in skip]
            if not left:
                done = Delivery(Outcome.ACCEPTED, reply="every recipient has it already")
                return _Fetched(done, envelope, message.header, header_octets)
            envelope = dataclasses.replace(envelope, recipients=left)
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


# Messages delivered, or octets, after which their deletions go to the server together.
BATCH = 64
BATCH_OCTETS = 16 << 20


@dataclass
class _Done:
    """A message delivered and recorded, waiting for its turn on the server."""

    info: MessageInfo
    on_server: OnServer
    header_octets: int | None  # IMAP's header size, for its progress line
    skipped: str | None  # a `skipping message` line's reason (found delivered before), or None


@dataclass
class _Ahead:
    """A message being read on the connection's thread while another is delivered (or, when
    streamed, while it is itself delivered)."""

    info: MessageInfo
    body: BinaryIO  # where the message is read from
    progress: BinaryIO  # whose tell() says how much has arrived
    task: asyncio.Task[int]
    streamed: GrowingSpool | None
    closer: _Closer

    @classmethod
    def start(
        cls, mailbox: ThreadedMailbox, info: MessageInfo, *, peek: bool, stream: bool
    ) -> _Ahead:
        if not stream:
            spool = _spool()
            closer = _Closer(spool.close)
            task = asyncio.ensure_future(
                mailbox.retrieve(info.number, spool, peek=peek, then=closer.writer_done)
            )
            return cls(info, spool, spool, task, None, closer)
        growing = GrowingSpool()
        writer = cast(BinaryIO, growing)
        closer = _Closer(growing.close)
        task = asyncio.ensure_future(
            mailbox.retrieve(info.number, writer, peek=peek, then=closer.writer_done)
        )
        task.add_done_callback(lambda done: growing.finish(_failure(done)))
        return cls(info, growing.reader(), writer, task, growing, closer)

    async def off_loop(self, call: Callable[..., _T], *args: Any) -> _T:
        """`call(*args)` reads the message: on a thread while it may still be arriving (a
        read then waits for the server), at once otherwise."""
        if self.streamed is not None and not self.streamed.complete:
            return await asyncio.to_thread(call, *args)
        return call(*args)

    def drop(self) -> None:
        """Done with, or not wanted after all (the session ends): a read still going on
        finishes on its own (its connection is closing); what it read is thrown away, and
        the spool is closed once the connection's thread is done with it."""
        self.task.cancel()
        self.task.add_done_callback(_quietly)
        if self.streamed is not None:
            self.streamed.finish(SpoolBroken("the message was given up"))  # readers give up
        self.closer.dropped()


class _Closer:
    """Closes a spool once both its reader has dropped it and the connection's thread is done
    writing to it, whichever comes last."""

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self._lock = threading.Lock()
        self._waiting_for = {"writer", "reader"}

    def writer_done(self) -> None:
        self._done("writer")

    def dropped(self) -> None:
        self._done("reader")

    def _done(self, side: str) -> None:
        with self._lock:
            if not self._waiting_for:
                return
            self._waiting_for.discard(side)
            last = not self._waiting_for
        if last:
            self._close()


def _failure(task: asyncio.Task[int]) -> BaseException | None:
    if task.cancelled():
        return SpoolBroken("the read was cancelled")
    return task.exception()


def _quietly(task: asyncio.Task[int]) -> None:
    if not task.cancelled():
        task.exception()  # a read given up on may fail: nobody waits for its outcome


@dataclass
class _Fetched:
    delivery: Delivery
    envelope: Envelope | None  # None: refused before delivery, nobody known to bounce to
    header: bytes  # as edited for delivery
    header_octets: int | None  # the header's size as fetched, for IMAP's progress line


def _route_note(line: str) -> None:
    # fetchmail says how it routed a multidrop message at -vv (O_DEBUG), which pyfetch's trace
    # has no level for: the logger's DEBUG, as the MDA command line.
    _routing_log.debug("%s", line)


_routing_log = logging.getLogger(trace.TRACE_LOGGER)


def _spool() -> BinaryIO:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # type: ignore[return-value]
