"""The node audit as a table for the TUI's Node view: live (checks run once in the background, rows when done) or
from a recording's header (`node_checks`, as `podtrace record` wrote it)."""

from __future__ import annotations

import threading
from typing import Any

from tracer.output.errors import PodtraceError

COLUMNS = ["severity", "check", "value", "fix"]
ORDER = {"error": -1, "fail": 0, "warn": 1, "ok": 2}  # error: a node whose checks could not run


def finding_rows(findings: list[dict[str, Any]], error: str = "") -> list[dict[str, Any]]:
    """Rows of the Node view from findings as JSON (Finding.to_json()): failures first, then warnings."""
    if error:
        return [{"severity": "error", "check": "node checks", "value": error, "fix": ""}]
    ordered = sorted(findings, key=lambda f: ORDER.get(str(f.get("severity")), 3))
    return [{"severity": f.get("severity", "?"), "check": f.get("check", "?"), "value": f.get("value", ""),
             "fix": f.get("fix", "")} for f in ordered]


class NodeFindingsTable:
    """A TableSource (tui/model.py): `columns` and `rows()`, empty until the checks finish.

    `netns`: one namespace (None: this one), or the traced nodes (`tui --node A --node B`), each audited; with more
    than one, each finding's check is named after its node ("pt-node2: rp_filter eth0") and a node whose checks
    failed says so in a row of its own."""

    columns = COLUMNS

    def __init__(self, netns: str | None | list[str | None] = None, window: float = 1.0) -> None:
        self._namespaces = netns if isinstance(netns, list) else [netns]
        self._findings: list[dict[str, Any]] = []
        self._error = ""
        self._thread = threading.Thread(target=self._run, args=(window,), daemon=True, name="node-checks")
        self._lock = threading.Lock()

    def _start(self) -> None:
        """The checks run in the process that reads the rows, on first use: `podtrace tui` forks its reader after
        making the table, and a thread started before the fork fills only the UI's copy (the Node view stayed
        empty)."""
        with self._lock:
            if self._thread.ident is None:
                self._thread.start()

    def _run(self, window: float) -> None:
        from tracer.check import run_checks  # reads the node: only in the worker

        several = len(self._namespaces) > 1
        findings: list[dict[str, Any]] = []
        errors = []
        for netns in self._namespaces:
            try:
                found = [finding.to_json() for finding in run_checks(netns, window=window)]
            except PodtraceError as err:
                errors.append(err.one_line())
                if several:
                    findings.append({"area": "node", "check": f"{netns}: node checks", "severity": "error",
                                     "value": err.one_line(), "why": "", "fix": ""})
                continue
            if several:
                found = [{**finding, "check": f"{netns}: {finding['check']}"} for finding in found]
            findings += found
        self._findings = findings
        if len(errors) == len(self._namespaces):
            self._error = "; ".join(errors)

    def rows(self) -> list[dict[str, Any]]:
        self._start()
        return finding_rows(self._findings, self._error)

    def header_entry(self, wait: float = 5.0) -> list[dict[str, Any]] | dict[str, str]:
        """What a recording's header keeps (`node_checks`, as `podtrace record` writes it); waits for the checks."""
        self._start()
        self._thread.join(wait)
        if self._thread.is_alive():
            return {"error": f"the node checks did not finish within {wait:g} s"}
        if self._error:
            return {"error": self._error}
        return list(self._findings)


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
