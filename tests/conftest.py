"""Shared fixtures. With CI=true a missing reference program is a failure, never a skip."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # for `reference`

from reference import fetchmail_available  # noqa: E402

pytest_plugins = ["servers.fixtures"]  # real Dovecot, SMTP/LMTP and Postfix servers

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# What every pyfetch run as root prints first on stderr, as fetchmail does ("" for others).
ROOT_WARNING = "pyfetch: WARNING: Running as root is discouraged.\n" if os.getuid() == 0 else ""


@pytest.fixture
def need_fetchmail() -> None:
    """Tests that compare with the real fetchmail 6.4 binary."""
    if fetchmail_available():
        return
    if IN_CI:
        pytest.fail("fetchmail is missing and CI=true forbids skipping; scripts/test installs it")
    pytest.skip("fetchmail is not installed (scripts/test installs it)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The table of tests/test_hostile_suite.py (faults tried / survived), when it ran."""
    # Looked up, never imported: a session that did not run the suite prints nothing.
    suite = next(
        (m for name, m in list(sys.modules.items()) if name.endswith("test_hostile_suite")), None
    )
    if suite is not None and getattr(suite, "OUTCOMES", None):
        for line in suite.summary_lines():
            terminalreporter.write_line(line)
