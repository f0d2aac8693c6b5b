"""The TUI's pure parts: aggregation into snapshots, timelines, the view filter, coalescing messages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tracer.errors import UsageError
from tui.messages import SnapshotReady
from tui.model import Model, sparkline
from tui.pyfilter import ViewFilter

FIXTURE = Path(__file__).parent / "fixtures" / "tui" / "replay_fixture.py"
_spec = importlib.util.spec_from_file_location("tui_replay_fixture_model", FIXTURE)
assert _spec and _spec.loader
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)


def test_view_filter_runs_tcpdump_syntax_on_decoded_snapshots() -> None:
    events = replay.events()
    assert sum(ViewFilter("")(e) for e in events) == len(events) == 55
    assert sum(ViewFilter("udp port 5001")(e) for e in events) == 26  # 13 receives + 13 drops
    assert sum(ViewFilter("tcp dst port 5003")(e) for e in events) == 10
    assert not any(ViewFilter("icmp")(e) for e in events)
    with pytest.raises(UsageError, match="bad filter 'udp port'"):
        ViewFilter("udp port")


def test_model_groups_drops_and_refilters_its_history() -> None:
    model = Model(replay.resolver())
    model.add(replay.events())
    snap = model.snapshot({"lost": 0})
    assert [(r["reason"], r["count"]) for r in snap.drops] == [("NETFILTER_DROP", 13), ("NO_SOCKET", 7),
                                                              ("NO_SOCKET", 5)]
    assert (snap.events, snap.drop_total, snap.path_events, snap.rate) == (55, 25, 30, 55.0)
    model.set_filter("tcp", ViewFilter("tcp"))
    snap = model.snapshot({})
    assert [(r["proto"], r["count"]) for r in snap.drops] == [("tcp", 5)]
    assert snap.received == 55 and snap.events == 15


def test_timeline_merges_drops_with_path_events_of_the_same_flow_and_is_bounded() -> None:
    model = Model(replay.resolver(), timeline_len=4)
    model.add(replay.events())
    ident = model.snapshot({}).drops[0]["key"]
    rows = model.timeline(ident)
    assert len(rows) == 8 and [r.is_drop for r in rows] == [False, True] * 4
    assert model.timeline("no-such-group") == []


def test_sparkline_scales_to_the_busiest_second() -> None:
    assert sparkline([0, 1, 2, 4, 8]) == " ▁▂▄█"
    assert sparkline([0, 0]) == "  "


def test_snapshot_messages_coalesce() -> None:
    model = Model(replay.resolver())
    first, second = SnapshotReady(model.snapshot({})), SnapshotReady(model.snapshot({}))
    assert second.can_replace(first)
