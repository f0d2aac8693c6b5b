"""Pictures of the TUI at 100x30 on the replay fixture. Update with `pytest --snapshot-update` only after looking
at each picture (tests/unit/__snapshots__/test_tui_snapshots/*.svg; `rsvg-convert x.svg -o x.png` to view)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "tui" / "replay_fixture.py"
_spec = importlib.util.spec_from_file_location("tui_replay_fixture_snap", FIXTURE)
assert _spec and _spec.loader
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)

SIZE = (100, 30)


pytestmark = pytest.mark.usefixtures("utc")


def settled(*keys: str, text: str = "") -> Any:
    async def run_before(pilot: Any) -> None:
        app = pilot.app
        for _ in range(100):
            if app.snapshot is not None and len(app.snapshot.drops) == 3 and app.plan is not None:
                break
            await pilot.pause(0.05)
        for key in keys:
            await pilot.press(key)
        for key in text:
            await pilot.press("space" if key == " " else key)
        if text:
            await pilot.press("enter")
        await pilot.pause(0.3)

    return run_before


def test_drops_view(snap_compare: Any) -> None:
    assert snap_compare(replay.make_app(), terminal_size=SIZE, run_before=settled())


def test_probes_view(snap_compare: Any) -> None:
    assert snap_compare(replay.make_app(), terminal_size=SIZE, run_before=settled("5"))


def test_timeline_of_the_netfilter_drop(snap_compare: Any) -> None:
    assert snap_compare(replay.make_app(), terminal_size=SIZE, run_before=settled("enter"))


def test_bad_filter_error_inline(snap_compare: Any) -> None:
    assert snap_compare(replay.make_app(), terminal_size=SIZE, run_before=settled("slash", text="udp port"))


def test_services_placeholder(snap_compare: Any) -> None:
    assert snap_compare(replay.make_app(), terminal_size=SIZE, run_before=settled("2"))


def services_app() -> Any:
    from tui.app import PodtraceApp
    from tui.sources import open_replay

    source, info = open_replay(str(FIXTURE.parent / "services.ptrec"))
    info.mode = "replay services.ptrec"  # the same picture from any checkout
    return PodtraceApp(source, info)


def settled_services(*keys: str) -> Any:
    async def run_before(pilot: Any) -> None:
        app = pilot.app
        for _ in range(100):
            snap = app.snapshot
            if snap is not None and len(snap.tables.get("flows", [])) == 2 and snap.drop_total == 7 and app.plan:
                break
            await pilot.pause(0.05)
        for key in keys:
            await pilot.press(key)
        await pilot.pause(0.3)
        for _ in range(100):  # a drop's drill-down reads its cause in a worker: the picture has it
            if not getattr(app.screen, "explains", False) or app.screen.cause_text:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.1)

    return run_before


def test_services_problems_first(snap_compare: Any) -> None:
    """No key but `2`: the Service losing packets on top, its VIP and loss share shown."""
    assert snap_compare(services_app(), terminal_size=SIZE, run_before=settled_services("2"))


def test_services_sorted_by_drops(snap_compare: Any) -> None:
    assert snap_compare(services_app(), terminal_size=SIZE, run_before=settled_services("2", "s", "s"))


def test_timeline_of_a_dnat_drop(snap_compare: Any) -> None:
    assert snap_compare(services_app(), terminal_size=SIZE, run_before=settled_services("enter"))


def test_probes_per_probe(snap_compare: Any) -> None:
    assert snap_compare(services_app(), terminal_size=SIZE, run_before=settled_services("5"))


def journeys_app() -> Any:
    """The TUI on the lab fixtures' merged recording (tests/support/lab_merged.py), in the working directory."""
    from tests.support.lab_merged import merge_lab
    from tui.app import PodtraceApp
    from tui.sources import open_replay

    source, info = open_replay(merge_lab())
    return PodtraceApp(source, info)


def settled_journeys(*keys: str) -> Any:
    async def run_before(pilot: Any) -> None:
        from tracer.events.decode import counted_events
        from tracer.sources.replay import ReplaySource

        source = ReplaySource("lab.ptrec.gz")
        events = counted_events(source)
        source.close()
        app = pilot.app
        for _ in range(200):
            if app.snapshot is not None and app.snapshot.received >= events:
                break
            await pilot.pause(0.05)
        for key in keys:
            await pilot.press(key)
        await pilot.pause(0.3)

    return run_before


def test_journeys_view(snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert snap_compare(journeys_app(), terminal_size=SIZE, run_before=settled_journeys("7"))


def test_journey_hops(snap_compare: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert snap_compare(journeys_app(), terminal_size=SIZE, run_before=settled_journeys("7", "enter"))
