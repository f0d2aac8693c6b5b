"""The node audit as a table for the TUI's Node view: checks run once in the background, rows when done."""

from __future__ import annotations

import threading
from typing import Any

from tracer.check.model import Finding
from tracer.errors import PodtraceError


class NodeFindingsTable:
    """A TableSource (tui/model.py): `columns` and `rows()`, empty until the checks finish."""

    columns = ["severity", "check", "value", "fix"]

    def __init__(self, netns: str | None = None, window: float = 1.0) -> None:
        self._findings: list[Finding] = []
        self._error = ""
        self._thread = threading.Thread(target=self._run, args=(netns, window), daemon=True, name="node-checks")
        self._thread.start()

    def _run(self, netns: str | None, window: float) -> None:
        from tracer.check import run_checks  # noqa: PLC0415 - reads the node: only in the worker

        try:
            self._findings = run_checks(netns, window=window)
        except PodtraceError as err:
            self._error = err.one_line()

    def rows(self) -> list[dict[str, Any]]:
        if self._error:
            return [{"severity": "error", "check": "node checks", "value": self._error, "fix": ""}]
        order = {"fail": 0, "warn": 1, "ok": 2}
        findings = sorted(self._findings, key=lambda f: order.get(f.severity, 3))
        return [{"severity": f.severity, "check": f.check, "value": f.value, "fix": f.fix} for f in findings]
