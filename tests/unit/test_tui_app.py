"""The TUI on a replay of real events (tests/unit/fixtures/tui: 13 NETFILTER_DROP, 7 + 5 NO_SOCKET, path events)."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, Static, TabbedContent

from tracer.api import open_recording
from tracer.events.decode import EVENT_SIZE
from tui.app import PodtraceApp
from tui.screens.filter import FilterScreen
from tui.screens.help import HelpScreen
from tui.screens.timeline import TimelineScreen
from tui.sources import RawListSource
from tui.widgets.tables import DropsTable, flow_text

FIXTURE = Path(__file__).parent / "fixtures" / "tui" / "replay_fixture.py"
_spec = importlib.util.spec_from_file_location("tui_replay_fixture", FIXTURE)
assert _spec and _spec.loader
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)

SIZE = (100, 30)


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async Pilot test without an async pytest plugin (fixtures pass through: pytest reads __wrapped__)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


pytestmark = pytest.mark.usefixtures("utc")


async def wait_for_drops(app: PodtraceApp, pilot: Any, groups: int = 3) -> None:
    for _ in range(100):
        if app.snapshot is not None and len(app.snapshot.drops) == groups and app.plan is not None:
            return
        await pilot.pause(0.05)
    raise AssertionError(f"no snapshot with {groups} drop groups: {app.snapshot}")


def drop_counts(app: PodtraceApp) -> list[tuple[str, int, int]]:
    assert app.snapshot is not None
    return [(row["reason"], row["dport"], row["count"]) for row in app.snapshot.drops]


@sync
async def test_drops_view_shows_the_captured_groups_with_counts() -> None:
    app = replay.make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        # by count (benign frees would go last), each classed and coloured by tracer.analysis.severity
        assert drop_counts(app) == [("NETFILTER_DROP", 5001, 13), ("NO_SOCKET", 5002, 7), ("NO_SOCKET", 5003, 5)]
        assert [row["severity"] for row in app.snapshot.drops] == ["policy", "loss", "loss"]  # type: ignore[union-attr]
        table = app.query_one(DropsTable)
        assert table.row_count == 3
        assert [str(table.get_row_at(i)[2]) for i in range(3)] == ["policy", "loss", "loss"]
        assert str(table.get_row_at(0)[3]) == "NETFILTER_DROP"
        assert table.get_row_at(0)[3].style == "bold yellow" and table.get_row_at(1)[3].style == "bold red"
        assert app.snapshot is not None and app.snapshot.counters["lost"] == 0
        header = str(app.query_one("#header", Static).render())
        assert "7 of 8 hook points (missing: ipvs)" in header and "lost 0" in header


@sync
async def test_number_keys_switch_views_and_probes_shows_the_ladder() -> None:
    app = replay.make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        tabs = app.query_one(TabbedContent)
        for key, view in (("2", "flows"), ("3", "overlay"), ("4", "softirq"), ("6", "node"), ("5", "probes"),
                          ("1", "drops")):
            await pilot.press(key)
            assert tabs.active == view
        await pilot.press("5")
        ladder = app.query_one("#ladder", DataTable)
        hooks = [str(ladder.get_row_at(i)[0]) for i in range(ladder.row_count)]
        assert [name for name in hooks if name] == ["drops", "path", "netfilter", "nat", "ipvs", "vxlan",
                                                    "fragmentation", "softirq"]
        ipvs = next(i for i, name in enumerate(hooks) if name == "ipvs")
        assert str(ladder.get_row_at(ipvs)[1]) == "missing"
        status = str(app.query_one("#probe-status", Static).render())
        assert "raw tracepoint kfree_skb" in status and "lost 0" in status


@sync
async def test_placeholder_views_say_there_is_no_data_yet() -> None:
    app = replay.make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        await pilot.press("2")
        empty = app.query_one("#flows .empty", Static)
        assert empty.display and "no data from this source yet" in str(empty.render())


@sync
async def test_rows_views_show_a_table_source_when_one_is_attached() -> None:
    class Flows:
        columns = ["client", "service"]

        def rows(self) -> list[dict[str, Any]]:
            return [{"client": "pod-a", "service": "default/web:80", "backend": "pod-b"}]

    app = replay.make_app()
    app.model.tables["flows"] = Flows()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        await pilot.pause(0.3)
        await pilot.press("2")
        table = app.query_one("#flows DataTable", DataTable)
        assert table.display and table.row_count == 1
        assert str(table.get_row_at(0)[0]) == "default/web:80"


@sync
async def test_good_view_filter_narrows_drops_without_a_new_source() -> None:
    app = replay.make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        source = app.source
        await pilot.press("slash")
        field = app.screen.query_one("#filter-input", Input)
        assert field.has_focus
        field.value = "udp port 5002"
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert drop_counts(app) == [("NO_SOCKET", 5002, 7)]
        assert not isinstance(app.screen, FilterScreen)
        assert app.source is source and app.model.filter_text == "udp port 5002"
        assert "udp port 5002" in str(app.query_one("#header", Static).render())
        await pilot.press("slash")
        field = app.screen.query_one("#filter-input", Input)
        assert field.value == "udp port 5002"  # opens on the filter in force
        field.value = ""
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert len(drop_counts(app)) == 3


@sync
async def test_bad_view_filter_shows_its_error_inline_and_keeps_the_old_one() -> None:
    app = replay.make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        await pilot.press("slash")
        for key in "udp port":
            await pilot.press("space" if key == " " else key)
        await pilot.press("enter")
        await pilot.pause(0.1)
        error = str(app.screen.query_one("#filter-error", Static).render())
        assert "bad filter 'udp port'" in error and "syntax error" in error
        assert isinstance(app.screen, FilterScreen)
        field = app.screen.query_one("#filter-input", Input)
        assert field.has_focus and field.value == "udp port"  # focus kept, the text kept to be mended
        assert len(drop_counts(app)) == 3 and app.model.filter_text == ""
        field.value = "tcp"  # the fixture's 5003 drops are TCP
        for key in " port 5003":
            await pilot.press("space" if key == " " else key)
        assert str(app.screen.query_one("#filter-error", Static).render()) == ""  # the error went with the edit
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, FilterScreen)
        assert drop_counts(app) == [("NO_SOCKET", 5003, 5)] and app.model.filter_text == "tcp port 5003"
        await pilot.press("slash")
        await pilot.press("escape")
        assert not isinstance(app.screen, FilterScreen) and app.model.filter_text == "tcp port 5003"


@sync
async def test_filter_box_takes_typed_text_every_time_and_no_key_reaches_the_views() -> None:
    """Opened, typed into and closed three times: every key lands in the box, none sorts, switches views, drills
    down, records or quits behind it."""
    app = replay.make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        views = app.query_one(TabbedContent)
        for attempt, expression in enumerate(["udp port 5002", "tcp or udp", "not udp port 5001"]):
            await pilot.press("slash")
            assert isinstance(app.screen, FilterScreen), attempt
            field = app.screen.query_one("#filter-input", Input)
            field.value = ""
            # keys the main view binds: views, sort, pause, record, screenshot, help, quit, drill-down
            for key in "2s5prx?q":
                await pilot.press(key)
            assert field.has_focus and field.value == "2s5prx?q", attempt
            assert views.active == "drops" and not app.paused and app.recording is None
            assert isinstance(app.screen, FilterScreen) and app.return_code is None
            field.value = ""
            for key in expression:
                await pilot.press("space" if key == " " else key)
            assert field.value == expression, attempt
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert not isinstance(app.screen, FilterScreen) and app.model.filter_text == expression
            assert app.focused is app.query_one(DropsTable), attempt  # back on the view, keys work again
        assert sorted(drop_counts(app)) == [("NO_SOCKET", 5002, 7), ("NO_SOCKET", 5003, 5)]
        await pilot.press("2")
        assert views.active == "flows"


@sync
async def test_enter_on_a_drop_opens_the_timeline_of_its_packets() -> None:
    app = replay.make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        await pilot.press("down")  # NO_SOCKET udp 5002
        await pilot.press("enter")
        await pilot.pause(0.1)
        screen = app.screen
        assert isinstance(screen, TimelineScreen)
        rows = screen.rows
        drops = [row for row in rows if row.is_drop]
        assert len(drops) == 7 and all(row.what == "DROP NO_SOCKET" for row in drops)
        assert all(row.location.startswith("__udp4_lib_rcv") for row in drops)
        assert all("> 198.18.2.2:5002" in row.flow for row in rows)
        assert [row.what for row in rows if not row.is_drop] == ["rx"] * 7  # each packet's receive hop
        assert [row.ts_ns for row in rows] == sorted(row.ts_ns for row in rows)
        assert rows[0].delta_ns == 0 and all(row.delta_ns > 0 for row in rows[1:])
        assert all(row.where == f"{replay.meta()['netns'][next(iter(replay.meta()['netns']))]}/veth-b"
                   for row in rows)
        assert screen.query_one("#timeline", DataTable).row_count == 14
        await pilot.press("escape")
        assert not isinstance(app.screen, TimelineScreen)


@sync
async def test_pause_freezes_the_display_and_resume_shows_what_arrived() -> None:
    events = replay.events()
    app = replay.make_app()
    app.source._events = events[:10]  # type: ignore[attr-defined]
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot, groups=1)
        await pilot.press("p")
        before = app.snapshot
        assert app.paused and "PAUSED" in str(app.query_one("#header", Static).render())
        app.source._events = events  # type: ignore[attr-defined]
        for _ in range(60):
            await pilot.pause(0.05)
            if app.latest is not None and len(app.latest.drops) == 3:
                break
        assert app.snapshot is before  # frozen while paused
        assert app.latest is not None and len(app.latest.drops) == 3  # counting went on
        await pilot.press("p")
        assert not app.paused and app.snapshot is app.latest


@sync
async def test_help_opens_and_closes_and_q_quits() -> None:
    app = replay.make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")  # once
        await pilot.pause(0.1)
        assert app.return_code == 0


def test_tracer_modules_do_not_import_textual() -> None:
    code = (
        "import importlib, pkgutil, sys, tracer\n"
        "for m in pkgutil.walk_packages(tracer.__path__, 'tracer.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(name for name in sys.modules if name == 'textual' or name.startswith('textual.'))\n"
        "assert not bad, bad[:5]\n"
        "assert 'tui' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr


# Per-probe counters as LiveSource reports them (the fixture's totals, split between its two probes).
PROBE_COUNTERS = {"drops": {"seen": 40, "filtered": 15, "events": 25, "lost": 0, "sampled": 0, "read_fail": 0},
                  "path": {"seen": 73, "filtered": 43, "events": 30, "lost": 0, "sampled": 0, "read_fail": 0}}


# What the kernel counts while the recording runs: the recording's own events and losses.
DURING = {"drops": {"seen": 9, "filtered": 2, "events": 7, "lost": 3, "sampled": 0, "read_fail": 0},
          "path": {"seen": 30, "filtered": 1, "events": 28, "lost": 1, "sampled": 0, "read_fail": 0}}


async def _record_part_of_the_replay(save_dir: Path) -> tuple[int, list[str]]:
    """Press r after 20 of the fixture's events, let the other 35 flow while the kernel's counters grow, press r."""
    raw = (FIXTURE.parent / "events.bin").read_bytes()
    raws = [raw[i:i + EVENT_SIZE] for i in range(0, len(raw), EVENT_SIZE)]
    app = replay.make_app()
    app.info.save_dir = str(save_dir)
    probe_counters = {probe: dict(values) for probe, values in PROBE_COUNTERS.items()}
    totals = dict(replay.meta()["counters"])
    app.source = source = RawListSource(raws[:20], totals, probe_counters=probe_counters)
    headers: list[str] = []
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(100):
            if app.model.received == 20:
                break
            await pilot.pause(0.05)
        await pilot.press("r")
        assert app.recording is not None
        path = app.recording.path
        headers.append(str(app.query_one("#header", Static).render()))
        source.raw_events = raws  # 35 more events flow while recording
        for probe, values in DURING.items():  # and the session's running totals grow
            for name, value in values.items():
                probe_counters[probe][name] += value
                source._counters[name] = source._counters.get(name, 0) + value  # type: ignore[attr-defined]
        for _ in range(100):
            if app.model.received == len(raws) and app.recording.ready:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.2)
        await pilot.press("r")
        assert app.recording is None
        headers.append(str(app.query_one("#header", Static).render()))
    return len(raws) - 20, [path, *headers]


def test_r_records_to_a_private_file_in_the_save_dir_with_its_own_counts(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, save_dir = tmp_path / "cwd", tmp_path / "saved"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    recorded, (path, recording_header, stopped_header) = asyncio.run(_record_part_of_the_replay(save_dir))
    name = os.path.basename(path)
    assert re.fullmatch(r"podtrace-\d{8}-\d{6}\.ptrec", name) and path == str(save_dir / name), path
    assert os.listdir(cwd) == []  # never the cwd
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(save_dir).st_mode & 0o777 == 0o700
    assert f"● rec {name}" in recording_header and "○ rec off" in stopped_header
    events = list(open_recording(path))
    assert len(events) == recorded == 35
    assert [e.ts_ns for e in events] == [e.ts_ns for e in replay.events()[20:]]
    header = open_recording(path).header
    assert header["hostname"] == replay.meta()["node"] and header["drop_reasons"]
    from tracer.sources.replay import ReplaySource

    recorded = ReplaySource(path)
    list(recorded)
    # The recording's counters are what the kernel counted while it ran, not the session's running totals.
    assert recorded.header["probe_counters_at_start"] == {} == recorded.header["counters_at_start"]
    assert recorded.trailer is not None and recorded.trailer["probe_counters"] == DURING
    assert recorded.probe_counters() == DURING
    assert recorded.counters()["lost"] == 4
    assert {name: sum(values[name] for values in DURING.values()) for name in recorded.counters()} == \
        recorded.counters()


@sync
async def test_r_refuses_a_save_dir_that_is_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "saved").symlink_to(elsewhere)
    app = replay.make_app()
    app.info.save_dir = str(tmp_path / "saved")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        await pilot.press("r")
        await pilot.press("x")
        await pilot.pause(0.1)
        assert app.recording is None and app.last_screenshot == ""
        assert os.listdir(elsewhere) == []


@sync
async def test_x_saves_a_screenshot_of_the_screen_as_svg_to_the_save_dir(tmp_path: Path) -> None:
    app = replay.make_app()
    app.info.save_dir = str(tmp_path / "saved")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        await pilot.pause(0.2)  # the rows painted
        await pilot.press("x")
        await pilot.pause(0.1)
        path = app.last_screenshot
        assert path and os.path.dirname(path) == str(tmp_path / "saved")
        assert re.fullmatch(r"podtrace-\d{8}-\d{6}(-\d+)?\.svg", os.path.basename(path))
        assert os.stat(path).st_mode & 0o777 == 0o600
        svg = Path(path).read_text(encoding="utf-8")
        assert svg.lstrip().startswith("<svg") and "NETFILTER_DROP" in svg  # what was on screen
        await pilot.press("x")  # a second one in the same second gets a name of its own
        await pilot.pause(0.1)
        assert app.last_screenshot != path and len(os.listdir(tmp_path / "saved")) == 2


def test_header_shows_the_recording_file_in_red_and_a_failure_on_red() -> None:
    from tui.widgets.header import header_text

    app = replay.make_app()
    on = header_text(app.info, None, None, "", False, "podtrace-20260101-000000.ptrec")
    assert "● rec podtrace-20260101-000000.ptrec" in on.plain
    span = next(s for s in on.spans if on.plain[s.start:s.end].startswith("● rec"))
    assert "red" in str(span.style)
    off = header_text(app.info, None, None, "", False)
    assert "○ rec off" in off.plain
    failed = header_text(app.info, None, None, "", False, "x.ptrec", "recording failed: disk full")
    assert "✗ recording failed: disk full" in failed.plain


# -- the Services fixture: a real recording with DNAT (tests/unit/fixtures/tui/capture_services.py) --------------

SERVICES = FIXTURE.parent / "services.ptrec"


def services_app() -> PodtraceApp:
    from tui.sources import open_replay

    source, info = open_replay(str(SERVICES))
    return PodtraceApp(source, info)


async def wait_for_flows(app: PodtraceApp, pilot: Any) -> None:
    for _ in range(100):
        snap = app.snapshot
        if snap is not None and len(snap.tables.get("flows", [])) == 2 and snap.drop_total == 7 and app.plan:
            return
        await pilot.pause(0.05)
    raise AssertionError(f"no snapshot with both Service flows: {app.snapshot}")


def shown_services(app: PodtraceApp) -> list[tuple[str, str]]:
    table = app.query_one("#flows DataTable", DataTable)
    return [(str(table.get_row_at(i)[0]), str(table.get_row_at(i)[6])) for i in range(table.row_count)]


@sync
async def test_services_view_of_a_recording_sorts_by_packets_drops_netfilter_time_and_name() -> None:
    app = services_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_flows(app, pilot)
        assert app.check_action("sort", ()) is False  # not offered outside the Services view
        await pilot.press("2")
        await pilot.pause(0.1)
        assert app.check_action("sort", ()) is True
        title = app.query_one("#flows .view-title", Static)
        rows = {row["service"]: row for row in app.snapshot.tables["flows"]}  # type: ignore[union-attr]
        assert (rows["default/web:http"]["pkts_out"], rows["default/db:pg"]["pkts_out"]) == (11, 7)
        assert rows["default/db:pg"]["drops"].startswith("7 NETFILTER_DROP at INPUT")
        assert rows["default/web:http"]["drops"] == ""
        web_first = rows["default/web:http"]["nf_us"] > rows["default/db:pg"]["nf_us"]
        assert rows["default/db:pg"]["loss"] == "100%" and rows["default/web:http"]["loss"] == ""
        assert rows["default/db:pg"]["vip"].endswith(":5432") and rows["default/web:http"]["vip"].endswith(":80")
        expected = {"loss share": "default/db:pg", "packets": "default/web:http", "drops": "default/db:pg",
                    "time in netfilter": "default/web:http" if web_first else "default/db:pg", "name": "default/db:pg"}
        for order in ("loss share", "packets", "drops", "time in netfilter", "name"):
            assert f"sorted by {order} (s)" in str(title.render())
            assert shown_services(app)[0][0] == expected[order], (order, shown_services(app))
            assert len(shown_services(app)) == 2
            await pilot.press("s")
        assert "sorted by loss share" in str(title.render())  # the cycle wraps


@sync
async def test_timeline_of_a_dnat_drop_shows_each_hop_with_its_nat_rewrite() -> None:
    app = services_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_flows(app, pilot)
        await pilot.press("enter")
        await pilot.pause(0.1)
        screen = app.screen
        assert isinstance(screen, TimelineScreen)
        rows = screen.rows
        # Seven datagrams to the db Service's VIP, each: received, tc ingress, DNAT to the backend, dropped in INPUT.
        assert [(row.hook, row.what) for row in rows] == [
            ("-", "rx"), ("-", "tc-in"), ("PREROUTING after DNAT", "DNAT"), ("INPUT first", "DROP NETFILTER_DROP"),
        ] * 7
        nat = [row for row in rows if row.is_nat]
        assert all(row.nat == "10.96.0.11:5432 -> 198.18.2.2:5001" and "> 10.96.0.11:5432" in row.flow for row in nat)
        drops = [row for row in rows if row.is_drop]
        assert all(row.nat == "was 10.96.0.11:5432" and "> 198.18.2.2:5001" in row.flow for row in drops)
        assert all(row.nat == "" and "> 10.96.0.11:5432" in row.flow for row in rows if row.what in ("rx", "tc-in"))
        assert rows[0].delta_ns == 0 and all(row.delta_ns > 0 for row in rows[1:])
        assert [row.ts_ns - prev.ts_ns for prev, row in zip(rows, rows[1:])] == [row.delta_ns for row in rows[1:]]
        table = screen.query_one("#timeline", DataTable)
        assert table.row_count == 28
        assert str(table.get_row_at(2)[4]) == "10.96.0.11:5432 -> 198.18.2.2:5001"
        assert str(table.get_row_at(3)[4]) == "was 10.96.0.11:5432" and str(table.get_row_at(3)[7]).startswith("nft_")
        summary = str(screen.query_one("#timeline-summary", Static).render())
        assert "last 28 hops: 7 drops, 14 path events, 7 NAT rewrites" in summary


@sync
async def test_enter_on_a_service_flow_opens_its_packets_across_the_dnat() -> None:
    app = services_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_flows(app, pilot)
        await pilot.press("2")
        assert [row[0] for row in shown_services(app)] == ["default/db:pg", "default/web:http"]  # the loss first
        await pilot.press("down")
        await pilot.press("enter")
        await pilot.pause(0.1)
        screen = app.screen
        assert isinstance(screen, TimelineScreen)
        assert "default/web:http  198.18.2.1 -> 10.96.0.10:80 -> 198.18.2.2:8080" in screen.title_text
        whats = [row.what for row in screen.rows]
        # 11 datagrams of one connection: one DNAT event (the first packet of a translation), no drop
        assert whats.count("rx") == 11 and whats.count("tc-in") == 11 and whats.count("DNAT") == 1
        assert not any(row.is_drop for row in screen.rows)
        assert whats[:3] == ["rx", "tc-in", "DNAT"]
        await pilot.press("escape")
        assert not isinstance(app.screen, TimelineScreen)


@sync
async def test_probes_view_shows_events_and_losses_per_probe_adding_up_to_the_totals() -> None:
    app = services_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_flows(app, pilot)
        await pilot.press("5")
        await pilot.pause(0.3)
        table = app.query_one("#probe-counters", DataTable)
        shown = {str(table.get_row_at(i)[0]): [str(cell) for cell in table.get_row_at(i)[1:]]
                 for i in range(table.row_count)}
        assert list(shown) == ["drops", "path", "netfilter", "tc"]
        # PROBE SEEN FILTERED EVENTS DECODED LOST SAMPLED READ_FAIL
        assert shown["drops"][2:4] == ["7", "7"] and shown["netfilter"][2:4] == ["8", "8"]
        assert shown["path"][2:4] == ["18", "18"] and shown["tc"][2:4] == ["18", "18"]
        snap = app.snapshot
        assert snap is not None
        for column, name in enumerate(("seen", "filtered", "events")):
            assert sum(int(cells[column]) for cells in shown.values()) == snap.counters[name], name
        assert all(cells[4] == "0" for cells in shown.values())  # lost
        status = str(app.query_one("#probe-status", Static).render())
        assert "NAT rewrites 8" in status and "netfilter links at 11 points" in status


@sync
async def test_header_separates_its_fields_and_counts_one_group_in_the_singular() -> None:
    app = services_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_flows(app, pilot)
        header = str(app.query_one("#header", Static).render())
        assert "lost 0 · drops 7 in 1 group · window since start · filter none · ○ rec off" in header, header


@sync
async def test_replay_softirq_view_shows_the_recordings_softirq_snapshots(tmp_path: Path) -> None:
    """A recording made with --softirq: the Softirq view shows its per-CPU rows, as `podtrace report` does."""
    from test_recording import header, make_event
    from test_recording_flows import SNAPSHOTS

    from tracer.recording.recorder import Recorder
    from tui.sources import open_replay

    path = tmp_path / "softirq.ptrec"
    recorder = Recorder(str(path), header(), lambda inode: f"ns-{inode}", lambda addr: "x")
    recorder.add([make_event(0)])
    for snapshot in SNAPSHOTS:
        recorder.write_softirq(snapshot)
    recorder.close({"lost": 0}, 3_000_000_000)
    source, info = open_replay(str(path))
    app = PodtraceApp(source, info)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(100):
            if app.snapshot is not None and app.snapshot.tables.get("softirq"):
                break
            await pilot.pause(0.05)
        await pilot.press("4")
        rows = app.snapshot.tables["softirq"] if app.snapshot else []
        # CPU 1 waited longest (the recorded softirq-load snapshots): its first row says so, in red
        assert {row["cpu"] for row in rows} == {0, 1, "1 worst", "all"}
        assert all(row.get("_style") == "bold red" for row in rows if str(row["cpu"]).startswith("1"))
        table = app.query_one("#softirq DataTable", DataTable)
        assert table.display and table.row_count == len(rows)
        assert str(table.get_row_at(0)[0]) == "0"


@sync
async def test_w_cycles_the_time_window_named_in_the_header() -> None:
    app = replay.make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        header = app.query_one("#header", Static)
        assert "window since start" in str(header.render())
        for label, seconds in (("last 10 s", 10.0), ("last 60 s", 60.0), ("since start", None)):
            await pilot.press("w")
            for _ in range(100):
                if app.snapshot is not None and app.snapshot.window == seconds:
                    break
                await pilot.pause(0.05)
            assert app.snapshot is not None and app.snapshot.window == seconds
            assert f"window {label}" in str(header.render())
            # the fixture's drops all fall in its last seconds: every window holds them all
            assert drop_counts(app) == [("NETFILTER_DROP", 5001, 13), ("NO_SOCKET", 5002, 7), ("NO_SOCKET", 5003, 5)]


@sync
async def test_enter_on_a_hop_narrows_the_timeline_to_that_connection_across_its_dnat() -> None:
    app = services_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_flows(app, pilot)
        await pilot.press("enter")  # the db drop group: seven datagrams, seven connections, each DNAT'd
        await pilot.pause(0.1)
        group = app.screen
        assert isinstance(group, TimelineScreen)
        clients = {row.conn[4] for row in group.rows if row.conn is not None and not row.is_nat}
        assert len(clients) == 7  # seven source ports
        await pilot.press("down", "down", "down", "down")  # the second datagram's rx
        await pilot.press("enter")
        await pilot.pause(0.1)
        one = app.screen
        assert isinstance(one, TimelineScreen) and one is not group and one.conn is not None
        sport = one.conn[4]
        assert "one connection: udp 198.18.2.1:" in one.title_text and f":{sport} > 10.96.0.11:5432" in one.title_text
        # its four hops: before the DNAT (VIP), the rewrite, and the drop after it (backend), nothing of the others
        assert [(row.hook, row.what) for row in one.rows] == [
            ("-", "rx"), ("-", "tc-in"), ("PREROUTING after DNAT", "DNAT"), ("INPUT first", "DROP NETFILTER_DROP")]
        assert all(row.conn is not None and row.conn[4] == sport for row in one.rows)
        assert "> 198.18.2.2:5001" in one.rows[-1].flow
        await pilot.press("escape")
        assert app.screen is group


@sync
async def test_the_attach_ladder_wraps_within_the_screen_and_keeps_every_word() -> None:
    app = replay.make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_drops(app, pilot)
        await pilot.press("5")
        await pilot.pause(0.1)
        ladder = app.query_one("#ladder", DataTable)
        widths = [column.get_render_width(ladder) for column in ladder.columns.values()]
        assert sum(widths) <= SIZE[0], widths  # no column starts past the right edge
        notes = " ".join(" ".join(str(ladder.get_row_at(i)[3]).split()) for i in range(ladder.row_count))
        assert "fentry refused by the kernel (EPERM: lockdown, an LSM or a kernel built to refuse it)" in notes
        assert any("\n" in str(ladder.get_row_at(i)[3]) for i in range(ladder.row_count))  # folded, not cut


def test_a_drop_rows_flow_names_the_pods_at_its_ends_when_they_are_known() -> None:
    row = {"proto": "tcp", "src": "10.244.0.2", "sport": 40312, "dst": "10.244.1.2", "dport": 8080,
           "src_pod": "default/client", "dst_pod": "default/web-2"}
    assert flow_text(row) == "tcp 10.244.0.2:40312 (default/client) > 10.244.1.2:8080 (default/web-2)"
    assert flow_text({**row, "src_pod": None, "dst_pod": None}) == "tcp 10.244.0.2:40312 > 10.244.1.2:8080"
    assert flow_text({**row, "proto": "icmp", "dst_pod": None}) == "icmp 10.244.0.2 (default/client) > 10.244.1.2"
