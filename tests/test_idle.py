"""One folder watch in this process, with shortened timings: IDLE renewal on a real Dovecot, NOOP
polling on a scripted server without IDLE, the end of a watch that cannot log in.

The poll a watch runs is recorded here instead of fetching (the fetching is
tests/test_e2e_idle.py's): what is asserted is when the watch asks for one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

import pytest
from fakes.imap import FakeImapServer
from servers.certs import TestCA
from servers.dovecot import Dovecot

from fetcher.exitcodes import ExitCode
from fetcher.idle import FolderWatch, Timing
from fetcher.model import ServerOptions, UserOptions
from fetcher.report import Reporter
from fetcher.trace import TRACE_LOGGER

DEADLINE = 20.0


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def trace() -> Iterator[list[str]]:
    log = logging.getLogger(TRACE_LOGGER)
    handler = Lines()
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    yield handler.lines
    log.removeHandler(handler)
    log.setLevel(level)


def account(port: int, *, password: str = "hidden", ca: TestCA | None = None) -> tuple[
    ServerOptions, UserOptions
]:
    user = UserOptions(remote="bob", password=password)
    if ca is not None:
        user.sslcertfile = str(ca.ca_cert)
        user.sslcommonname = "localhost"
    else:
        user.sslproto = ""  # the scripted server speaks plain IMAP
    server = ServerOptions(pollname="mail.isp.net", via="127.0.0.1", protocol="IMAP",
                           service=str(port), users=[user])
    return server, user


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"no {what} after {DEADLINE} s")
        await asyncio.sleep(0.02)


def run_watch(
    server: ServerOptions, user: UserOptions, timing: Timing,
    scenario: Callable[[FolderWatch, list[str]], object],
    *, polls: list[str] | None = None,
) -> FolderWatch:
    """Run one watch while `scenario(watch, polls)` (a coroutine function) runs, then stop."""
    polls = polls if polls is not None else []

    async def main() -> FolderWatch:
        stop = asyncio.Event()

        async def poll() -> ExitCode:
            polls.append("poll")
            return ExitCode.NOMAIL

        watch = FolderWatch(server, user, None, poll, Reporter(verbose=1), stop, timing=timing)
        runner = asyncio.create_task(watch.run())
        try:
            await scenario(watch, polls)  # type: ignore[misc]
        finally:
            stop.set()
            await asyncio.wait_for(runner, DEADLINE)
        return watch

    return asyncio.run(main())


def test_idle_is_renewed_and_still_hears_new_mail(
    dovecot: Dovecot, test_ca: TestCA, trace: list[str]
) -> None:
    server, user = account(dovecot.ports["imap"], ca=test_ca)

    async def scenario(watch: FolderWatch, polls: list[str]) -> None:
        await until(lambda: polls == ["poll"], "catch-up poll")  # right after IDLE began
        await until(lambda: sum(line.endswith(" DONE") for line in trace) >= 2, "renewals")
        dovecot.seed("bob", [b"Subject: after renewal\r\n\r\nhi\r\n"])
        await until(lambda: len(polls) == 2, "poll for the new message")

    run_watch(server, user, Timing(renewal=0.3), scenario)
    sent = [line.split(" ", 2)[-1] for line in trace if line.startswith("IMAP> ")]
    # IDLE, then DONE and IDLE again each time the renewal interval ran out
    assert sent.count("IDLE") >= 3
    assert "hidden" not in "\n".join(trace)


def test_noop_polling_where_idle_is_not_offered(trace: list[str]) -> None:
    with FakeImapServer(capabilities="IMAP4rev1 AUTH=PLAIN", messages=[], concurrent=True) as fake:
        server, user = account(fake.port)

        async def scenario(watch: FolderWatch, polls: list[str]) -> None:
            await until(lambda: polls == ["poll"], "catch-up poll")
            await until(lambda: sum("NOOP" in line for line in fake.received) >= 2, "NOOPs")
            assert polls == ["poll"]  # NOOP without news is not a reason to poll
            fake.deliver(b"Subject: news\r\n\r\nhi\r\n")
            await until(lambda: len(polls) == 2, "poll after NOOP announced the message")

        run_watch(server, user, Timing(noop_interval=0.05), scenario)
    commands = [line.split(" ")[1].upper() for line in fake.received if " " in line]
    assert "IDLE" not in commands
    assert "EXAMINE" in commands and "SELECT" not in commands  # a watch changes nothing


def test_wrong_password_ends_the_watch_instead_of_retrying(
    dovecot: Dovecot, test_ca: TestCA, capsys: pytest.CaptureFixture[str]
) -> None:
    server, user = account(dovecot.ports["imap"], password="wrong", ca=test_ca)

    async def main() -> FolderWatch:
        stop = asyncio.Event()

        async def poll() -> ExitCode:
            raise AssertionError("a watch that never logged in has nothing to poll")

        watch = FolderWatch(server, user, None, poll, Reporter(), stop)
        await asyncio.wait_for(watch.run(), DEADLINE)  # ends by itself
        return watch

    watch = asyncio.run(main())
    assert watch.outcome.status is ExitCode.AUTHFAIL
    err = capsys.readouterr().err
    assert "Authorization failure on bob@mail.isp.net" in err
    assert "(while watching INBOX of bob@mail.isp.net)" in err
    assert "pyfetch: no longer watching INBOX of bob@mail.isp.net" in err
    assert "wrong" not in err
