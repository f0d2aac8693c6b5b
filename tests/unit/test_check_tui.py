"""The TUI's Node view: findings of recorded lab states through a real app (Pilot), a replayed recording's header,
and the live table on this machine."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

from textual.widgets import DataTable, Static

from tracer.check import NodeState, evaluate
from tracer.check.table import NodeFindingsTable, RecordedNodeFindings, finding_rows
from tui.app import PodtraceApp
from tui.sources import open_replay

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures" / "check"
RECORDING = HERE / "fixtures" / "recordings" / "v1.ptrec"  # format 1.0: made before node checks existed
_spec = importlib.util.spec_from_file_location("tui_replay_fixture_node",
                                              HERE / "fixtures" / "tui" / "replay_fixture.py")
assert _spec and _spec.loader
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)


def _findings(name: str) -> list[dict[str, str]]:
    state = NodeState.from_dict(json.loads((FIXTURES / name).read_text()))
    return [finding.to_json() for finding in evaluate(state)]


async def _node_view(app: PodtraceApp) -> tuple[list[tuple[str, ...]], bool]:
    """The Node view's rows as shown, and whether its "no data" line is displayed."""
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("6")
        table = app.query_one("#node DataTable", DataTable)
        for _ in range(60):
            if table.row_count:
                break
            await pilot.pause(0.05)
        rows = [tuple(str(cell) for cell in table.get_row_at(i)) for i in range(table.row_count)]
        return rows, bool(app.query_one("#node .empty", Static).display)


def test_node_view_shows_the_failures_first() -> None:
    """The recorded mtu-mismatch state (`lab fault mtu-mismatch` on pt-node1): the MTU failure heads the view."""
    findings = _findings("state-lab-node1-mtu-mismatch.json")
    app = replay.make_app()
    app.model.tables["node"] = RecordedNodeFindings(findings)
    rows, _ = asyncio.run(_node_view(app))
    assert len(rows) == len(findings)
    severity, check, value, fix = rows[0]
    assert (severity, check) == ("fail", "pods")
    assert "cni0 1500" in value and "pt-client:eth0 1500" in value and value.endswith("carried by flannel.1 (vxlan)")
    assert fix.startswith("for d in cni0 veth")
    # Then the lab's one deliberately empty Service (default/empty), then everything ok.
    assert (rows[1][0], rows[1][1], rows[1][2]) == ("warn", "no endpoints", "default/empty:http")
    assert {row[0] for row in rows[2:]} == {"ok"}


def test_replayed_recording_without_node_checks_says_so() -> None:
    source, info = open_replay(str(RECORDING))
    assert "node_checks" not in source.header
    app = PodtraceApp(source, info)
    rows, empty = asyncio.run(_node_view(app))
    assert rows == [("error", "node checks", "this recording has no node checks in its header", "")]
    assert info.tables["node"].rows() == [{"severity": "error", "check": "node checks",
                                           "value": "this recording has no node checks in its header", "fix": ""}]
    assert not empty  # the error row is shown instead of "no data"


def test_recorded_header_entries() -> None:
    findings = _findings("state-lab-node2-rp-filter.json")
    rows = RecordedNodeFindings(findings).rows()
    assert [row["severity"] for row in rows[:5]] == ["warn"] * 5 and rows[0]["check"] == "no endpoints"
    assert rows[1]["check"] == "rp_filter eth0"
    failed = RecordedNodeFindings({"error": "no network namespace named 'pt-node9' (known: none)"}).rows()
    assert failed[0]["value"] == "when recording started: no network namespace named 'pt-node9' (known: none)"
    assert finding_rows([], "") == []


def test_live_table_reads_this_node() -> None:
    """The live table runs the real checks on this machine (no netns): the same checks `podtrace check` runs."""
    table = NodeFindingsTable(None, window=0)
    entry = table.header_entry(wait=60)
    assert isinstance(entry, list) and entry, entry
    checks = {(row["area"], row["check"]) for row in entry}
    assert {("conntrack", "table"), ("softirq", "dropped"), ("sockets", "somaxconn")} <= checks, checks
    # Without root the rules are unreadable: "rules readable" says so instead of a mode.
    assert ("kube-proxy", "mode") in checks or ("kube-proxy", "rules readable") in checks, checks
    rows = table.rows()
    assert len(rows) == len(entry) and set(rows[0]) == {"severity", "check", "value", "fix"}
    order = {"fail": 0, "warn": 1, "ok": 2}
    assert [order[row["severity"]] for row in rows] == sorted(order[row["severity"]] for row in rows)
    somaxconn = Path("/proc/sys/net/core/somaxconn").read_text().strip()
    assert next(row for row in entry if row["check"] == "somaxconn")["value"] == somaxconn


def test_a_tui_recording_keeps_the_node_views_findings_in_its_header() -> None:
    """`r` in a live TUI writes cmd_tui._record_header: `node_checks` is the Node view's findings, like `record`."""
    import argparse
    from types import SimpleNamespace

    from tracer.cli import tui as cmd_tui
    from tui.sources import SessionInfo

    node = NodeFindingsTable(None, window=0)
    info = SessionInfo(replay.resolver(), tables={"node": node})
    args = argparse.Namespace(filter=["udp"], netns=None, ifname=None)
    source = SimpleNamespace(config=SimpleNamespace(netns_inode=0))  # only the filter's inode is read from it
    header = cmd_tui._record_header(args, source, info)
    assert header["node_checks"] == node.header_entry()
    assert any(row["check"] == "somaxconn" for row in header["node_checks"])
