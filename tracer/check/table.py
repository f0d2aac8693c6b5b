"""The node audit as a table for the TUI's Node view: live (checks run once in the background, rows when done) or
from a recording's header (`node_checks`, as `podtrace record` wrote it)."""

from __future__ import annotations

import threading
from typing import Any

from tracer.check.model import Finding
from tracer.output.errors import PodtraceError

COLUMNS = ["severity", "check", "value", "fix"]
ORDER = {"fail": 0, "warn": 1, "ok": 2}


def finding_rows(findings: list[dict[str, Any]], error: str = "") -> list[dict[str, Any]]:
    """Rows of the Node view from findings as JSON (Finding.to_json()): failures first, then warnings."""
    if error:
        return [{"severity": "error", "check": "node checks", "value": error, "fix": ""}]
    ordered = sorted(findings, key=lambda f: ORDER.get(str(f.get("severity")), 3))
    return [{"severity": f.get("severity", "?"), "check": f.get("check", "?"), "value": f.get("value", ""),
             "fix": f.get("fix", "")} for f in ordered]


class NodeFindingsTable:
    """A TableSource (tui/model.py): `columns` and `rows()`, empty until the checks finish."""

    columns = COLUMNS

    def __init__(self, netns: str | None = None, window: float = 1.0) -> None:
        self._findings: list[Finding] = []
        self._error = ""
        self._thread = threading.Thread(target=self._run, args=(netns, window), daemon=True, name="node-checks")
        self._thread.start()

    def _run(self, netns: str | None, window: float) -> None:
        from tracer.check import run_checks  # reads the node: only in the worker

        try:
            self._findings = run_checks(netns, window=window)
        except PodtraceError as err:
            self._error = err.one_line()

    def rows(self) -> list[dict[str, Any]]:
        return finding_rows([f.to_json() for f in self._findings], self._error)

    def header_entry(self, wait: float = 5.0) -> list[dict[str, Any]] | dict[str, str]:
        """What a recording's header keeps (`node_checks`, as `podtrace record` writes it); waits for the checks."""
        self._thread.join(wait)
        if self._thread.is_alive():
            return {"error": f"the node checks did not finish within {wait:g} s"}
        if self._error:
            return {"error": self._error}
        return [f.to_json() for f in self._findings]


class RecordedNodeFindings:
    """The Node view of a replayed recording: the findings its header kept when recording started."""

    columns = COLUMNS

    def __init__(self, entry: Any) -> None:
        if isinstance(entry, list):
            self._findings, self._error = [f for f in entry if isinstance(f, dict)], ""
        elif isinstance(entry, dict) and entry.get("error"):
            self._findings, self._error = [], f"when recording started: {entry['error']}"
        else:  # recordings made before the node checks existed
            self._findings, self._error = [], "this recording has no node checks in its header"

    def rows(self) -> list[dict[str, Any]]:
        return finding_rows(self._findings, self._error)
