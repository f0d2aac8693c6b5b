"""The TUI's Journeys view (key 7) on a real merged recording: the lab's pt-node1 and pt-node2 recorded at once
during drop-backend (tests/unit/fixtures/recordings/capture_lab_merge.py), merged by `podtrace merge`'s own code.
Its rows are the report's journeys (one builder, tracer/merged_report.journey_views); Enter opens a journey's hops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, TabbedContent

from tests.support.lab_merged import lab_recording, merge_lab
from tracer.cli import main as cli
from tracer.events.decode import counted_events
from tracer.output.merged_report import journey_text, journey_views
from tracer.sources.replay import ReplaySource
from tui.app import PodtraceApp
from tui.screens.journey import JourneyScreen
from tui.sources import open_replay
from tui.widgets.tables import RowsView

pytestmark = pytest.mark.usefixtures("utc")
SIZE = (100, 30)


def recorded_events(path: str) -> int:
    """Events as the TUI counts them (a drop's conntrack event is part of that drop)."""
    source = ReplaySource(path)
    count = counted_events(source)
    source.close()
    return count


async def settled(app: PodtraceApp, pilot: Any, events: int) -> None:
    """The whole recording read (the journeys are there from its header on; the drops once it is read)."""
    for _ in range(200):
        if app.snapshot is not None and app.snapshot.received >= events:
            return
        await pilot.pause(0.05)
    raise AssertionError(f"the replay did not deliver {events} events: {app.snapshot}")


def test_journeys_are_the_report_s_and_enter_opens_a_journey_s_hops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    merged = merge_lab()
    source = ReplaySource(merged)
    source.close()
    expected = journey_views(source.header["merged"], source.names.pod_of_ip)
    assert any(view.died for view in expected)
    assert cli.main(["report", merged]) == 0
    report = capsys.readouterr().out
    replay, info = open_replay(merged)
    app = PodtraceApp(replay, info)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await settled(app, pilot, recorded_events(merged))
            await pilot.press("7")
            await pilot.pause(0.2)
            assert app.query_one(TabbedContent).active == "journeys"
            view = app.query_one("#journeys-view", RowsView)
            assert [row["_view"] for row in view.shown] == expected  # the report's journeys, in its order
            for row in view.shown:
                assert journey_text(row["_view"]) in report  # the lines `podtrace report` printed for it
            first = view.shown[0]
            assert first["died at"].startswith(first["_view"].died_node) and "NETFILTER_DROP" in first["died at"]
            assert first["one way"] == f"{first['_view'].one_way_us} us"  # estimated: packets went both ways
            assert first["nodes"] == " > ".join(first["_view"].nodes) and first["nodes"].endswith("/pt-node2")
            await pilot.press("enter")
            await pilot.pause(0.2)
            screen = app.screen
            assert isinstance(screen, JourneyScreen) and screen.view == expected[0]
            hops = screen.query_one("#journey-hops", DataTable)
            cells = [[str(cell) for cell in hops.get_row_at(index)] for index in range(hops.row_count)]
            assert cells == [[f"+{hop.t_us} us", hop.node, hop.at] for hop in expected[0].hops]
            assert cells[-1][2].startswith("dropped in pt-node2/")
            assert f"{expected[0].died}; {expected[0].latency}" in screen.segments_text
            for segment in expected[0].segments:
                assert f"{segment.source} -> {segment.target}: {segment.latency}" in screen.segments_text
            await pilot.press("escape")
            await pilot.pause(0.1)
            assert not isinstance(app.screen, JourneyScreen)
            await pilot.press("1")
            assert app.query_one(TabbedContent).active == "drops"

    asyncio.run(run())


def test_one_node_s_recording_has_no_journeys_view() -> None:
    replay, info = open_replay(str(lab_recording("node2")))
    app = PodtraceApp(replay, info)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await settled(app, pilot, recorded_events(str(lab_recording("node2"))))
            await pilot.press("7")
            await pilot.pause(0.1)
            assert app.query_one(TabbedContent).active == "drops"
            assert not app.query("#journeys-view")
            assert any("merged recordings" in note.message for note in app._notifications)

    asyncio.run(run())
