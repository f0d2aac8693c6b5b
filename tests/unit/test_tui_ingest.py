"""The TUI with its ingestion in a child process (`podtrace tui`'s mode): the same screens from the same fixture,
the events read and aggregated in another process, requests (filter, timeline, recording) answered over the pipe,
and a reader that dies is said in one line."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from textual.widgets import Input, Static

from tracer.api import open_recording
from tracer.events.decode import EVENT_SIZE
from tui.app import PodtraceApp
from tui.ingest import ProcessIngest
from tui.screens.timeline import TimelineScreen
from tui.sources import RawListSource

FIXTURE = Path(__file__).parent / "fixtures" / "tui" / "replay_fixture.py"
V1 = Path(__file__).parent / "fixtures" / "recordings" / "v1.ptrec"
_spec = importlib.util.spec_from_file_location("tui_replay_fixture_ingest", FIXTURE)
assert _spec and _spec.loader
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)

SIZE = (100, 30)


async def _until(pilot: Any, condition: Any, what: str, tries: int = 200) -> None:
    for _ in range(tries):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError(what)


def _counts(app: PodtraceApp) -> list[tuple[str, int, int]]:
    assert app.snapshot is not None
    return [(row["reason"], row["dport"], row["count"]) for row in app.snapshot.drops]


async def _screens_from_a_child() -> None:
    app = replay.make_app(ingest="process")
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: app.snapshot is not None and len(app.snapshot.drops) == 3, "no drops")
        ingest = app.reader
        assert isinstance(ingest, ProcessIngest) and ingest.pid not in (None, os.getpid())
        assert app.model.received == 0, "the UI process's model is never fed: the child's is"
        assert _counts(app) == [("NETFILTER_DROP", 5001, 13), ("NO_SOCKET", 5002, 7), ("NO_SOCKET", 5003, 5)]
        # a view filter compiled and applied in the child
        await pilot.press("slash")
        app.screen.query_one("#filter-input", Input).value = "udp port 5002"
        await pilot.press("enter")
        await _until(pilot, lambda: _counts(app) == [("NO_SOCKET", 5002, 7)], f"filter not applied: {_counts(app)}")
        assert ingest.filter_text == "udp port 5002"
        # a drop's timeline, asked of the child
        await pilot.press("enter")
        await _until(pilot, lambda: isinstance(app.screen, TimelineScreen) and app.screen.rows, "no timeline")
        rows = app.screen.rows  # type: ignore[attr-defined]
        assert [row.what for row in rows if row.is_drop] == ["DROP NO_SOCKET"] * 7
        # one connection of it, asked of the child
        group = app.screen
        await pilot.press("enter")
        await _until(pilot, lambda: app.screen is not group and app.screen.rows, "no connection timeline")
        conn = app.screen.conn  # type: ignore[attr-defined]
        one = app.screen.rows  # type: ignore[attr-defined]
        # the fixture's seven datagrams to port 5002 are one connection (source port 40002, no NAT): all of them
        assert conn is not None and conn[4:] == (40002, 5002) and all(row.conn == conn for row in one)
        assert len(one) == len(rows)
        await pilot.press("escape")
        await pilot.press("escape")
        # the time window, set in the child: its snapshots say it
        await pilot.press("w")
        await _until(pilot, lambda: app.snapshot is not None and app.snapshot.window == 10.0, "no window")
        assert "window last 10 s" in str(app.query_one("#header", Static).render())
        await pilot.press("q")
    assert ingest.process is not None
    ingest.process.join(10)
    assert ingest.process.exitcode == 0, "q stops the child, which returns normally"


def test_the_screens_are_drawn_from_a_child_process() -> None:
    asyncio.run(_screens_from_a_child())


async def _killed_child() -> str:
    app = replay.make_app(ingest="process")
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: app.snapshot is not None, "no snapshot")
        assert isinstance(app.reader, ProcessIngest) and app.reader.pid is not None
        os.kill(app.reader.pid, signal.SIGKILL)
        await _until(pilot, lambda: bool(app.error), "the death was not reported")
        return str(app.query_one("#status", Static).render())


def test_a_reader_process_that_dies_is_reported_in_one_line() -> None:
    status = asyncio.run(_killed_child())
    assert "the event reader process ended unexpectedly (exit status -9)" in status


class SlowRawSource(RawListSource):
    """One event per poll, 20 a second: the recording starts while events still arrive."""

    def poll_raw(self, timeout_ms: int = 100) -> list[bytes]:
        time.sleep(0.05)
        return super().poll_raw(timeout_ms)


async def _record_from_a_child(save_dir: Path) -> tuple[str, int]:
    raw = (FIXTURE.parent / "events.bin").read_bytes()
    raws = [raw[i:i + EVENT_SIZE] for i in range(0, len(raw), EVENT_SIZE)]
    app = replay.make_app(ingest="process")
    app.info.save_dir = str(save_dir)
    app.source = SlowRawSource(raws, dict(replay.meta()["counters"]), batch=1)
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: app.snapshot is not None and app.snapshot.received >= 10, "no events")
        await pilot.press("r")
        assert app.recording is not None
        path = app.recording.path
        await _until(pilot, lambda: app.snapshot is not None and app.snapshot.received == len(raws), "not all read")
        await pilot.press("r")
        assert app.recording is None
        await pilot.press("q")
    return path, len(raws)


def test_r_records_in_the_child_what_arrives_while_recording(tmp_path: Path) -> None:
    path, total = asyncio.run(_record_from_a_child(tmp_path / "saved"))
    assert os.stat(path).st_mode & 0o777 == 0o600
    recorded = [event.ts_ns for event in open_recording(path)]
    assert 0 < len(recorded) < total
    assert recorded == [event.ts_ns for event in replay.events()][total - len(recorded):], "the events after r"


async def _causes_from_a_child() -> list[str]:
    from tui.sources import open_replay

    source, info = open_replay(str(V1))
    app = PodtraceApp(source, info, ingest="process")
    shown = []
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: app.snapshot is not None and len(app.snapshot.drops) == 3, "no drops")
        for moves in (0, 1):  # NETFILTER_DROP udp 5001, then NO_SOCKET udp 5002
            for _ in range(moves):
                await pilot.press("down")
            await pilot.press("enter")
            await _until(pilot, lambda: isinstance(app.screen, TimelineScreen) and app.screen.cause_text, "no cause")
            shown.append(app.screen.cause_text)  # type: ignore[attr-defined]
            await pilot.press("escape")
        await pilot.press("q")
    return shown


def test_a_drops_drill_down_says_its_cause_as_report_does_asked_of_the_child() -> None:
    netfilter, no_socket = asyncio.run(_causes_from_a_child())
    report = subprocess.run([sys.executable, "-m", "tracer.cli.main", "report", "--json", str(V1)], capture_output=True,
                            text=True, check=True, cwd=Path(__file__).parents[2]).stdout
    causes = {(row["reason"], row["dport"]): row["cause"] for row in map(json.loads, report.splitlines())
              if "reason" in row}
    assert no_socket.startswith(f"cause: {causes['NO_SOCKET', 5002]['text']} (observed)"), no_socket
    assert "nothing listens on 198.18.2.2:5002 (udp)" in no_socket and "fix: start the server" in no_socket
    # the recording holds no rules: which rule dropped it is not known, and the drill-down says so
    assert netfilter.startswith(f"cause: {causes['NETFILTER_DROP', 5001]['text']} (unknown)"), netfilter
