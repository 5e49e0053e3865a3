"""pytest fixtures that start real mail servers: ``pytest_plugins = ["servers.fixtures"]``.

==================  =========  ==============================================================
fixture             scope      what it gives
==================  =========  ==============================================================
``test_ca``         session    :class:`~servers.certs.TestCA` (ca.pem, server and untrusted
                               certificates, fingerprints, client_context())
``dovecot``         function   the session's :class:`~servers.dovecot.Dovecot`, with every
                               mailbox emptied and the user list back to bob:hidden
``smtpd``           function   a fresh recording :class:`~servers.smtp.SMTPServer`
``lmtpd``           function   the same, speaking LMTP (one reply per recipient after DATA)
``postfix``         function   the session's :class:`~servers.postfix.Postfix`, Maildir emptied
``closed_port``     function   an int: a 127.0.0.1 port that refuses connections
==================  =========  ==============================================================

Markers (registered here, since the project runs pytest with ``--strict-markers``)::

    @pytest.mark.smtp_fault(step="rcpt", code=550, text="5.1.1 no such user")
    @pytest.mark.smtp_fault(step="eom", drop=True, times=1)
    @pytest.mark.lmtp_fault(step="eom", recipient="carol@example.org", code=452, text="full")
    @pytest.mark.smtpd_options(data_size_limit=1000)

A server that cannot start (or anything else a test needs that is missing: see
``unavailable()``) skips the test, or fails it when ``CI=true``: integration tests must not pass
in CI by silently not running.  When a test using ``dovecot`` or ``postfix`` fails, the
server's log is attached to the report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from . import ClosedPort, ServerUnavailable, make_private_dir
from .certs import CertError, TestCA, make_test_ca

if TYPE_CHECKING:
    from .dovecot import Dovecot
    from .postfix import Postfix
    from .smtp import Fault, SMTPServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI=true, where everything a test needs must be there:
    the servers and programs scripts/test installs, /etc/services, an IPv6 loopback (::1)."""
    if IN_CI:
        pytest.fail(
            f"{reason}\n(CI=true: what a test needs is missing, which is a failure, not a skip)",
            pytrace=False,
        )
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "smtp_fault(step, code=None, text='', drop=False, recipient=None, times=None): make the "
        "smtpd fixture answer code+text (or drop the connection) at step "
        "connect|ehlo|mail|rcpt|data|eom; may be repeated",
    )
    config.addinivalue_line(
        "markers",
        "lmtp_fault(step, code=None, text='', drop=False, recipient=None, times=None): the same "
        "for the lmtpd fixture; at step eom with recipient= it sets that recipient's reply",
    )
    config.addinivalue_line(
        "markers",
        "smtpd_options(**kwargs): keyword arguments for aiosmtpd's SMTP class in the smtpd and "
        "lmtpd fixtures (data_size_limit=, tls_context=, enable_SMTPUTF8=, ...)",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    # A failing end-to-end test is hard to understand without the server's side of the story.
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    for name in ("dovecot", "postfix"):
        server = funcargs.get(name)
        if server is not None and hasattr(server, "log"):
            report.sections.append((f"{name} log", server.log()))
    for name in ("smtpd", "lmtpd"):
        server = funcargs.get(name)
        if server is not None and hasattr(server, "events"):
            events = "\n".join(f"{step} {arg}".rstrip() for step, arg in server.events)
            report.sections.append((f"{name} commands", events or "(none)"))


# -- certificates ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_ca() -> Iterator[TestCA]:
    try:
        ca = make_test_ca(make_private_dir("pyfetch-ca-"))
    except CertError as exc:
        unavailable(f"cannot make test certificates: {exc}")
    yield ca
    shutil.rmtree(ca.directory, ignore_errors=True)


# -- Dovecot ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dovecot_server(test_ca: TestCA) -> Iterator[Dovecot]:
    """The session's Dovecot; tests should use ``dovecot``, which also cleans up."""
    from .dovecot import Dovecot

    server = Dovecot(test_ca)
    try:
        server.start()
    except (ServerUnavailable, OSError, subprocess.SubprocessError) as exc:
        unavailable(str(exc))
    yield server
    server.stop()


@pytest.fixture
def dovecot(dovecot_server: Dovecot) -> Dovecot:
    """Dovecot with empty mailboxes and only the default users (bob:hidden)."""
    if not dovecot_server.running():
        pytest.fail(f"the session's Dovecot has died\n{dovecot_server.log()}", pytrace=False)
    dovecot_server.reset()
    return dovecot_server


# -- SMTP / LMTP -----------------------------------------------------------------------------


def _faults(request: pytest.FixtureRequest, marker: str) -> list[Fault]:
    from .smtp import Fault

    # closest marker first, so a function-level marker wins over a class/module-level one
    return [Fault(*m.args, **m.kwargs) for m in request.node.iter_markers(marker)]


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("smtpd_options"))):
        options.update(marker.kwargs)  # the closest marker's values applied last, so they win
    return options


def _start_smtp(request: pytest.FixtureRequest, *, lmtp: bool) -> SMTPServer:
    try:
        from .smtp import SMTPServer
    except ImportError as exc:
        unavailable(f"aiosmtpd is not installed ({exc}); pip install -e '.[test]'")
    marker = "lmtp_fault" if lmtp else "smtp_fault"
    server = SMTPServer(_faults(request, marker), lmtp=lmtp, **_options(request))
    try:
        server.start()
    except (OSError, RuntimeError, TimeoutError) as exc:
        unavailable(f"aiosmtpd did not start: {exc!r}")
    return server


@pytest.fixture
def smtpd(request: pytest.FixtureRequest) -> Iterator[SMTPServer]:
    """A recording SMTP server on 127.0.0.1; faults from ``smtp_fault`` markers."""
    server = _start_smtp(request, lmtp=False)
    yield server
    server.stop()


@pytest.fixture
def lmtpd(request: pytest.FixtureRequest) -> Iterator[SMTPServer]:
    """A recording LMTP server on 127.0.0.1; faults from ``lmtp_fault`` markers."""
    server = _start_smtp(request, lmtp=True)
    yield server
    server.stop()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A 127.0.0.1 port where connecting fails with 'connection refused'."""
    with ClosedPort() as port:
        yield port.port


# -- Postfix ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postfix_server() -> Iterator[Postfix]:
    """The session's Postfix; tests should use ``postfix``, which also cleans up."""
    from .postfix import Postfix

    server = Postfix()
    try:
        server.start()
    except (ServerUnavailable, OSError, subprocess.SubprocessError) as exc:
        unavailable(str(exc))
    yield server
    server.stop()


@pytest.fixture
def postfix(postfix_server: Postfix) -> Postfix:
    """Postfix with an empty Maildir and queue."""
    if not postfix_server.running():
        pytest.fail(f"the session's Postfix has died\n{postfix_server.log()}", pytrace=False)
    postfix_server.reset()
    return postfix_server
