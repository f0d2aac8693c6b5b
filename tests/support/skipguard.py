"""Under CI (CI=true), a test module whose every test skipped fails the run.

pytest exits 0 when whole modules skip (a tool missing, the lab busy, root absent), and a CI run that tested
nothing of a module must not look green. Loaded from tests/conftest.py; scripts/tests-ran.sh checks the rest.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

_outcomes: dict[str, set[str]] = defaultdict(set)
_reasons: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    module = report.nodeid.split("::", 1)[0]
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes[module].add(report.outcome)
        if report.skipped and isinstance(report.longrepr, tuple):
            _reasons.setdefault(module, str(report.longrepr[2]).removeprefix("Skipped: "))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") != "true":
        return
    whole = sorted(module for module, outcomes in _outcomes.items() if outcomes == {"skipped"})
    if not whole:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
    for module in whole:
        line = f"skipguard: every test of {module} skipped under CI: {_reasons.get(module, '?')}"
        if reporter is not None:
            reporter.write_line(line, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
