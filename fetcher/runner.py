"""Poll every selected account once and combine the outcomes into fetchmail's exit code.

With several accounts: 0 if any of them retrieved mail, else the status of the last one, as in
fetchmail. An error in one account is reported and the next account is still polled.

Folders of `idle` IMAP accounts are not polled in turn: each gets a watch (fetcher.idle) that
polls it at once and then whenever new mail arrives, until a signal ends the run.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Awaitable, Callable

from fetcher.drivers.auto import AutoDriver
from fetcher.drivers.base import MailboxDriver
from fetcher.drivers.imap import ImapDriver
from fetcher.drivers.pop3 import Pop3Driver
from fetcher.errors import PyfetchError
from fetcher.exitcodes import ExitCode
from fetcher.idle import (
    FolderWatch,
    Timing,
    WatchFactory,
    WatchOutcome,
    watch_all,
    watch_connection,
)
from fetcher.model import Config, ServerOptions, UserOptions
from fetcher.report import Reporter, describe_failure
from fetcher.session import AccountPoll, DriverFactory, SinkFactory
from fetcher.sinks.factory import sink_for
from fetcher.trace import TRACE_LOGGER
from fetcher.uidstore import UidStore


def setup_trace(verbose: int) -> None:
    """-v shows the protocol dialogue on stdout, prefixed as fetchmail prefixes it."""
    log = logging.getLogger(TRACE_LOGGER)
    log.handlers.clear()
    log.propagate = False
    if verbose:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("pyfetch: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    else:
        log.setLevel(logging.WARNING)


def default_driver(
    server: ServerOptions, user: UserOptions, folder: str | None, read_only: bool
) -> MailboxDriver:
    if server.protocol == "IMAP":
        return ImapDriver(server, user, folder=folder, read_only=read_only)
    if server.protocol == "auto":
        return AutoDriver(server, user, folder=folder, read_only=read_only)
    return Pop3Driver(server, user)


Mailbox = tuple[ServerOptions, UserOptions, str | None]


def poll_all(
    config: Config,
    reporter: Reporter,
    *,
    check_only: bool = False,
    make_driver: DriverFactory | None = None,
    make_sink: SinkFactory | None = None,
    make_watch: WatchFactory | None = None,
    timing: Timing | None = None,
) -> ExitCode:
    store = None if check_only else UidStore(config.globals.idfile or "")
    if store is not None:
        store.load()
    mailboxes = _mailboxes(config)
    watched = [] if check_only else [m for m in mailboxes if _is_watched(m)]
    polled = [m for m in mailboxes if check_only or not _is_watched(m)]
    retrieved = False
    status = ExitCode.NOMAIL

    async def poll(mailbox: Mailbox) -> ExitCode:
        return await _poll_mailbox(
            config, mailbox, store, reporter, check_only,
            make_driver or default_driver, make_sink or sink_for,
        )

    async def watched_poll(mailbox: Mailbox) -> ExitCode:
        status = await poll(mailbox)
        if store is not None:
            # A watch runs for days: write .fetchids after each poll, as a fetchmail daemon
            # does, rather than let the journal grow until the end.
            store.save()
        return status

    try:
        for mailbox in polled:
            status = asyncio.run(poll(mailbox))
            retrieved = retrieved or status is ExitCode.SUCCESS
        if watched:
            signum, outcomes = asyncio.run(
                _watch(watched, watched_poll, reporter, make_watch or watch_connection,
                       timing or Timing())
            )
            for outcome in outcomes:
                status = outcome.status
                retrieved = retrieved or outcome.retrieved
            if signum is not None:
                reporter.info(f"terminated with signal {signum}")
    finally:
        if store is not None:
            store.save()
    final = ExitCode.SUCCESS if retrieved else status
    if reporter.verbose:
        reporter.info(f"normal termination, status {int(final)}")
    return final


async def _watch(
    mailboxes: list[Mailbox],
    poll: Callable[[Mailbox], Awaitable[ExitCode]],
    reporter: Reporter,
    make_watch: WatchFactory,
    timing: Timing,
) -> tuple[int | None, list[WatchOutcome]]:
    """Watch every mailbox until a signal or until no watch is left; (the signal, outcomes)."""
    stop = asyncio.Event()
    watches = [
        FolderWatch(
            server, user, folder, functools.partial(poll, (server, user, folder)), reporter,
            stop, make_connection=make_watch, timing=timing,
        )
        for server, user, folder in mailboxes
    ]
    signum = await watch_all(watches, stop)
    return signum, [watch.outcome for watch in watches]


def _is_watched(mailbox: Mailbox) -> bool:
    """`idle` works with IMAP only (fetchmail: "effective only with IMAP"); a POP3 account
    with it is polled like any other."""
    server, user, _ = mailbox
    return user.idle and server.protocol in ("IMAP", "auto")


async def _poll_mailbox(
    config: Config,
    mailbox: Mailbox,
    store: UidStore | None,
    reporter: Reporter,
    check_only: bool,
    make_driver: DriverFactory,
    make_sink: SinkFactory,
) -> ExitCode:
    """One poll of one folder; its failure is reported here and becomes its status."""
    server, user, folder = mailbox
    poll = AccountPoll(
        server, user, config.globals, store, reporter, make_driver, make_sink,
        check_only=check_only, folder=folder,
    )
    try:
        status = (await poll.run()).status
    except PyfetchError as err:
        status = err.exit_code
        reporter.error(describe_failure(err, server, user))
    if reporter.verbose and status not in (ExitCode.SUCCESS, ExitCode.NOMAIL):
        reporter.info(f"Query status={int(status)} ({status.label})")
    return status


def _mailboxes(config: Config) -> list[Mailbox]:
    """Every folder of every selected account, polled in turn; POP3 has just the one."""
    out: list[Mailbox] = []
    for server, user in config.selected_accounts():
        imap = server.protocol in ("IMAP", "auto")
        folders: list[str | None] = list(user.mailboxes) if imap else []
        out.extend((server, user, folder) for folder in folders or [None])
    return out
