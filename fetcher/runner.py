"""Poll every selected account once and combine the outcomes into fetchmail's exit code.

With several accounts: 0 if any of them retrieved mail, else the status of the last one, as in
fetchmail. An error in one account is reported and the next account is still polled.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from fetcher.drivers.auto import AutoDriver
from fetcher.drivers.base import MailboxDriver
from fetcher.drivers.imap import ImapDriver
from fetcher.drivers.pop3 import Pop3Driver
from fetcher.errors import (
    AuthenticationError,
    ListenerUnavailableError,
    PyfetchError,
    ServerConnectionError,
)
from fetcher.exitcodes import ExitCode
from fetcher.model import Config, ServerOptions, UserOptions
from fetcher.report import Reporter
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


def poll_all(
    config: Config,
    reporter: Reporter,
    *,
    check_only: bool = False,
    make_driver: DriverFactory | None = None,
    make_sink: SinkFactory | None = None,
) -> ExitCode:
    store = None if check_only else UidStore(config.globals.idfile or "")
    if store is not None:
        store.load()
    retrieved = False
    status = ExitCode.NOMAIL
    try:
        for server, user, folder in _mailboxes(config):
            poll = AccountPoll(
                server,
                user,
                config.globals,
                store,
                reporter,
                make_driver or default_driver,
                make_sink or sink_for,
                check_only=check_only,
                folder=folder,
            )
            try:
                result = asyncio.run(poll.run())
                status = result.status
            except PyfetchError as err:
                status = err.exit_code
                reporter.error(_describe_failure(err, server, user))
            if reporter.verbose and status not in (ExitCode.SUCCESS, ExitCode.NOMAIL):
                reporter.info(f"Query status={int(status)} ({status.label})")
            retrieved = retrieved or status is ExitCode.SUCCESS
    finally:
        if store is not None:
            store.save()
    final = ExitCode.SUCCESS if retrieved else status
    if reporter.verbose:
        reporter.info(f"normal termination, status {int(final)}")
    return final


def _mailboxes(config: Config) -> list[tuple[ServerOptions, UserOptions, str | None]]:
    """Every folder of every selected account, polled in turn; POP3 has just the one."""
    out: list[tuple[ServerOptions, UserOptions, str | None]] = []
    for server, user in config.selected_accounts():
        imap = server.protocol in ("IMAP", "auto")
        folders: list[str | None] = list(user.mailboxes) if imap else []
        out.extend((server, user, folder) for folder in folders or [None])
    return out


def _describe_failure(err: PyfetchError, server: ServerOptions, user: UserOptions) -> str:
    account = f"{user.remote}@{server.pollname}"
    if isinstance(err, AuthenticationError):
        return f"Authorization failure on {account} ({err.message})"
    if isinstance(err, ListenerUnavailableError):
        return (
            f"{err.message}\npyfetch: SMTP transaction error while fetching from {account} "
            f"and delivering to SMTP host {', '.join(user.smtphunt)}"
        )
    if isinstance(err, ServerConnectionError):
        return f"{err.message}\npyfetch: Socket or TLS error on {account}"
    return f"{err.message} ({account})"
