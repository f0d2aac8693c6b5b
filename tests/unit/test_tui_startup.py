"""The TUI before and around its events: the first frame while the source is still starting, the evicted count in
the header, the footer and the tabs naming views one way, and the footer rebuilt only when its keys change."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from pathlib import Path
from typing import Any

from textual.widgets import Static, TabbedContent
from textual.widgets._footer import FooterKey

from tracer.benchmarks.pipeline import drop_event
from tracer.events.decode import encode
from tracer.output.report import Resolver
from tui.app import PodtraceApp
from tui.model import Model
from tui.sources import RawListSource, SessionInfo
from tui.widgets.footer import QuietFooter
from tui.widgets.header import header_text

FIXTURE = Path(__file__).parent / "fixtures" / "tui" / "replay_fixture.py"
_spec = importlib.util.spec_from_file_location("tui_replay_fixture_startup", FIXTURE)
assert _spec and _spec.loader
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)

SIZE = (100, 30)
NAMES = Resolver({6: "NO_SOCKET"}, str, hex)


class SlowStart(RawListSource):
    """Starts only when released, as a live source compiles BPF and attaches its probes for seconds."""

    def __init__(self, raw: list[bytes]) -> None:
        super().__init__(raw)
        self.release = threading.Event()
        self.attached = ["raw tracepoint kfree_skb"]

    def start(self, progress: bool = False) -> None:
        assert self.release.wait(30), "the test never released the source"


def test_the_first_frame_shows_progress_while_the_probes_are_still_compiling() -> None:
    source = SlowStart([encode(drop_event(index, 3)) for index in range(9)])
    info = SessionInfo(NAMES, node="n", kernel="k", mode="live", programs=["drops"], live_clock=True)
    app = PodtraceApp(source, info)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.7)
            status = str(app.query_one("#status", Static).render())
            assert status.startswith("compiling and attaching probes (drops) ... "), status
            assert float(status.rsplit("... ", 1)[1].split(" s")[0]) >= 0.4  # the elapsed time ticks
            assert "waiting for events" in str(app.query_one("#header", Static).render())
            assert app.snapshot is None
            source.release.set()
            for _ in range(100):
                if app.snapshot is not None and app.snapshot.drop_total == 9:
                    break
                await pilot.pause(0.05)
            assert str(app.query_one("#status", Static).render()).startswith("probes attached in ")
            assert app.snapshot is not None and app.snapshot.drop_groups == 3

    asyncio.run(run())


def test_groups_evicted_past_the_bound_are_counted_in_the_header() -> None:
    model = Model(NAMES, max_groups=4)
    model.add_raw([encode(drop_event(index, 10)) for index in range(10)])
    snap = model.snapshot({"lost": 0})
    assert (snap.drop_groups, snap.drop_total, snap.evicted) == (4, 10, 6)
    text = header_text(SessionInfo(NAMES, node="n", kernel="k"), snap, None, "", False)
    assert "drops 10 in 4 groups (6 evicted)" in str(text)


def footer_keys(app: PodtraceApp) -> list[str]:
    return [str(key.description) for key in app.screen.query(FooterKey)]


def test_tabs_name_the_views_and_the_footer_names_only_keys_and_is_rebuilt_only_when_they_change() -> None:
    app = replay.make_app()
    rebuilt: list[Any] = []

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause(0.5)
            footer = app.query_one(QuietFooter)
            original = footer.recompose

            async def counted() -> None:
                rebuilt.append(app.query_one(TabbedContent).active)
                await original()

            footer.recompose = counted  # type: ignore[method-assign]
            tabs = [str(tab.label) for tab in app.query_one(TabbedContent).query("ContentTab")]
            assert tabs == ["1 Drops", "2 Services", "3 Overlay", "4 Softirq", "5 Probes", "6 Node"]
            keys = footer_keys(app)
            assert keys == ["Window", "Filter", "Pause", "Rec", "Shot", "Help", "Quit"], keys
            for key in "1313":  # Drops <-> Overlay: the same keys in the footer
                await pilot.press(key)
                await pilot.pause(0.1)
            assert rebuilt == []
            await pilot.press("2")  # the Services view sorts: `s` joins the footer
            await pilot.pause(0.2)
            assert rebuilt and "Sort" in footer_keys(app)
            await pilot.press("1")
            await pilot.pause(0.2)
            assert "Sort" not in footer_keys(app)

    asyncio.run(run())


def test_a_new_snapshot_of_the_same_groups_touches_only_the_cells_that_changed() -> None:
    app = replay.make_app()
    touched: list[tuple[str, str]] = []

    async def run() -> None:
        from tui.widgets.tables import DropsTable

        async with app.run_test(size=SIZE) as pilot:
            for _ in range(100):
                if app.snapshot is not None and len(app.snapshot.drops) == 3:
                    break
                await pilot.pause(0.05)
            assert app.snapshot is not None
            await pilot.press("p")  # paused: only this test draws
            table = app.query_one(DropsTable)
            original = table.update_cell

            def counted(row_key: Any, column_key: Any, value: Any, **kwargs: Any) -> None:
                touched.append((str(row_key), str(column_key)))
                original(row_key, column_key, value, **kwargs)

            table.update_cell = counted  # type: ignore[method-assign]
            rows = [dict(row) for row in app.snapshot.drops]
            table.show(rows)
            assert touched == []  # nothing changed: nothing redrawn
            rows[1]["count"] += 1
            table.show(rows)
            assert touched == [(rows[1]["key"], "count")]
            assert str(table.get_row(rows[1]["key"])[0]) == str(rows[1]["count"])

    asyncio.run(run())
