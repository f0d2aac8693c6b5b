"""The podtrace TUI: a header, one tab per concern, drill-down into a drop's packets, a view filter.

Events never reach the UI thread one by one: a Reader (tui/sources.py) aggregates them in a Model and posts a
coalescing SnapshotReady a few times per second; the app only draws snapshots. The Reader runs in a thread or, for
`podtrace tui`, in a child process of its own (tui/ingest.py), so a storm never holds the UI's GIL.
"""

from __future__ import annotations

import os
import time
from contextlib import suppress
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane

from tracer.check.table import COLUMNS as NODE_COLUMNS
from tracer.kernel.ladder import AttachPlan
from tracer.output.errors import UsageError
from tui.ingest import Ingest, Recording, ingest_for
from tui.journeys import COLUMNS as JOURNEY_COLUMNS
from tui.messages import PlanReady, SnapshotReady, SourceFailed, SourceStarted
from tui.model import WINDOWS, Model, Snapshot, window_label
from tui.overlay import COLUMNS as OVERLAY_COLUMNS
from tui.overlay import OverlayTable
from tui.pyfilter import ViewFilter
from tui.recording import new_file
from tui.screens.filter import FilterScreen
from tui.screens.help import HelpScreen
from tui.screens.journey import JourneyScreen
from tui.screens.timeline import TimelineScreen
from tui.services import COLUMNS as SERVICE_COLUMNS
from tui.services import SORTS
from tui.softirq import COLUMNS as SOFTIRQ_COLUMNS
from tui.sources import SessionInfo, Source
from tui.widgets.header import HeaderBar, header_text
from tui.widgets.tables import DropsTable, ProbesView, RowsView, flow_text

VIEWS = ("drops", "flows", "overlay", "softirq", "probes", "node", "journeys")  # journeys: merged recordings only


class PodtraceApp(App[int]):
    TITLE = "podtrace"
    ENABLE_COMMAND_PALETTE = False  # its footer entry pushed Help and Quit out of a 100-column footer
    CSS = """
    #status { height: auto; padding: 0 1; }
    #status.failed { color: $error; text-style: bold; }
    .view-title { padding: 0 1; }
    .empty { padding: 1 2; color: $text-muted; }
    #probe-status { padding: 0 1; height: auto; }
    TabbedContent { height: 1fr; }
    """
    # The tabs name the views with their keys ("1 Drops"): the footer keeps its width for the other keys.
    BINDINGS = [
        Binding("1", "view('drops')", "Drops", show=False),
        Binding("2", "view('flows')", "Services", show=False),
        Binding("3", "view('overlay')", "Overlay", show=False),
        Binding("4", "view('softirq')", "Softirq", show=False),
        Binding("5", "view('probes')", "Probes", show=False),
        Binding("6", "view('node')", "Node", show=False),
        Binding("7", "view('journeys')", "Journeys", show=False),
        Binding("s", "sort", "Sort"),
        Binding("w", "window", "Window"),
        Binding("slash", "edit_filter", "Filter"),
        Binding("p", "toggle_pause", "Pause"),
        Binding("r", "record", "Rec"),
        Binding("x", "save_svg", "Shot"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, source: Source, info: SessionInfo, model: Model | None = None,
                 refresh_interval: float = 0.25, ready_file: str | None = None, ingest: str = "thread") -> None:
        """`ingest`: "thread" reads beside the UI (tests), "process" in a child of its own (`podtrace tui`)."""
        super().__init__()
        self.ingest_kind = ingest
        self.ready_file = ready_file
        self.source = source
        self.info = info
        self.model = model or Model(info.names, clock=time.monotonic_ns if info.live_clock else None)
        self.model.tables.update(info.tables)
        self.model.explain = self.model.explain or info.explain
        # Event-fed: works live and on replays alike.
        self.model.tables.setdefault("overlay", OverlayTable(self.model.names.netns, self.model.names.reasons))
        self.refresh_interval = refresh_interval
        self.reader: Ingest | None = None
        self.snapshot: Snapshot | None = None  # the one on screen
        self.latest: Snapshot | None = None  # the newest received (differs while paused)
        self.plan: AttachPlan | None = info.plan
        self.plan_note = ""
        self.paused = False
        self.recording: Recording | None = None
        self.last_screenshot = ""
        self.started = False
        self.error = ""
        self._began = time.monotonic()

    # -- layout --

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield Static("", id="status")
        with TabbedContent(initial="drops", id="views"):
            with TabPane("1 Drops", id="drops"):
                yield DropsTable(id="drops-table")
            with TabPane("2 Services", id="flows"):
                yield RowsView("flows", "Service flows", "client -> Service -> backend, Enter: its packets",
                               SERVICE_COLUMNS, sorts=SORTS,
                               empty=self._flows_empty(), id="flows-view")
            with TabPane("3 Overlay", id="overlay"):
                yield RowsView("overlay", "Overlay and MTU", "tunnels, fragments, frag-needed, MTU verdicts",
                               OVERLAY_COLUMNS)
            with TabPane("4 Softirq", id="softirq"):
                yield RowsView("softirq", "Softirq", "per-CPU NET_RX/NET_TX wait and run times, backlog drops",
                               SOFTIRQ_COLUMNS)
            with TabPane("5 Probes", id="probes"):
                yield ProbesView(id="probes-view")
            with TabPane("6 Node", id="node"):
                yield RowsView("node", "Node", "podtrace check: kube-proxy, conntrack, MTU, bridging, softirq, sockets",
                               NODE_COLUMNS)
            if self.has_journeys:  # a merged recording's: a live session or one node's recording has none
                with TabPane("7 Journeys", id="journeys"):
                    yield RowsView("journeys", "Journeys",
                                   "across nodes, dropped first; rel: relative to the fastest packet; Enter: hops",
                                   JOURNEY_COLUMNS,
                                   empty="no journeys in this merged recording", id="journeys-view")
        yield Footer()

    @property
    def has_journeys(self) -> bool:
        return "journeys" in self.model.tables

    def _flows_empty(self) -> str:
        if self.info.mode == "live":
            return "no Service flows yet (netfilter links see NAT rewrites from the first packets of new connections)"
        if "flows" in self.model.tables:
            return "no Service flows in this recording (record with --node to keep NAT rewrites and Service names)"
        return "no data from this source yet"

    def on_mount(self) -> None:
        self.refresh_header()
        self.query_one(ProbesView).show_plan(self.plan, "probing the attach ladder...")
        reader = ingest_for(self.ingest_kind, self.source, self.model, self.post_message, self.info,
                            self.refresh_interval)
        self.reader = reader
        reader.start()
        self.set_interval(0.2, self._tick_progress)
        self.action_focus_view()

    def on_unmount(self) -> None:
        if self.reader is not None:
            self.reader.request_stop()  # run_app waits for it (and its tables) after the screen is restored
        self._stop_recording()

    # -- messages from the reader --

    def on_source_started(self, message: SourceStarted) -> None:
        with suppress(NoMatches):  # messages still queued while the app shuts down
            self.started = True
            status = self.query_one("#status", Static)
            if self.info.mode == "live":
                status.update(Text(f"probes attached in {message.seconds:.1f} s: {', '.join(message.attached)}",
                                   style="dim"))
            else:  # the header already names the recording
                status.update(Text("reading the recording as fast as it goes: rates are per second of recorded time",
                                   style="dim"))
            self._show_probes()
        if self.ready_file:
            with open(self.ready_file, "w", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()}\n")

    def on_source_failed(self, message: SourceFailed) -> None:
        self.error = message.message
        self.started = True
        with suppress(NoMatches):  # messages still queued while the app shuts down
            status = self.query_one("#status", Static)
            status.add_class("failed")
            status.update(f"{message.message}  (q quits)")

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        self.latest = message.snapshot
        with suppress(NoMatches):  # messages still queued while the app shuts down
            if not self.paused:
                self.show(message.snapshot)

    def on_plan_ready(self, message: PlanReady) -> None:
        with suppress(NoMatches):  # messages still queued while the app shuts down
            self.plan = message.plan
            self.plan_note = message.error
            self.query_one(ProbesView).show_plan(message.plan, message.error)
            self.refresh_header()

    # -- drawing --

    def _tick_progress(self) -> None:
        if self.started:
            return
        elapsed = time.monotonic() - self._began
        what = ", ".join(self.info.programs) or "events"
        verb = "compiling and attaching probes" if self.info.mode == "live" else "opening"
        self.query_one("#status", Static).update(Text(f"{verb} ({what}) ... {elapsed:.1f} s", style="yellow"))

    def show(self, snapshot: Snapshot) -> None:
        """Draw the header and the view on screen only; the others are drawn when their tab is opened."""
        self.snapshot = snapshot
        self._show_active()
        self.refresh_header()

    def _show_active(self) -> None:
        snapshot = self.snapshot
        if snapshot is None:
            return
        active = self.query_one(TabbedContent).active
        if active == "drops":
            # rows past the screen are not drawn: under a storm every row changes on every snapshot
            self.query_one(DropsTable).show(snapshot.drops[:max(20, self.size.height)])
        elif active == "probes":
            self._show_probes()
        else:
            for view in self.query_one(f"#{active}", TabPane).query(RowsView):
                view.show(snapshot.tables)

    def _show_probes(self) -> None:
        snap = self.snapshot
        self.query_one(ProbesView).show_status(
            self.info.programs, self.info.attached, snap.counters if snap else {},
            snap.drop_total if snap else 0, snap.path_events if snap else 0,
            snap.probe_events if snap else {}, snap.probe_counters if snap else {}, snap.nat_events if snap else 0)

    def refresh_header(self) -> None:
        self.query_one(HeaderBar).update(
            header_text(self.info, self.snapshot, self.plan, self.plan_note, self.paused,
                        os.path.basename(self.recording.path) if self.recording else "",
                        self.recording.error if self.recording else ""))

    # -- actions --

    def action_view(self, name: str) -> None:
        if name == "journeys" and not self.has_journeys:
            self.notify("journeys come from merged recordings: podtrace merge A B -o ALL, then tui --replay ALL",
                        timeout=4)
            return
        if isinstance(self.screen, (TimelineScreen, JourneyScreen)):
            self.pop_screen()
        self.query_one(TabbedContent).active = name
        self._show_active()  # before focusing: an empty view's table is hidden and takes no focus
        self.action_focus_view()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """`s` shows in the footer only where it sorts something (the Services view)."""
        if action == "sort":
            try:
                return self.query_one(TabbedContent).active == "flows" and not isinstance(self.screen, TimelineScreen)
            except NoMatches:
                return False
        return True

    def on_tabbed_content_tab_activated(self, _message: TabbedContent.TabActivated) -> None:
        self.refresh_bindings()
        self._show_active()  # the snapshot on screen (the frozen one while paused)

    def action_window(self) -> None:
        """The next time window for the drops' counts and the softirq figures: since start, 10 s, 60 s."""
        if self.reader is None:
            return
        current = self.latest.window if self.latest is not None else None
        following = WINDOWS[(WINDOWS.index(current) + 1) % len(WINDOWS)] if current in WINDOWS else WINDOWS[0]
        try:
            self.reader.set_window(following)
        except RuntimeError as err:  # the reader process is gone: its own message says so
            self.notify(str(err), severity="error")
            return
        self.notify(f"window: {window_label(following)}", timeout=2)
        self.push_snapshot()

    def action_sort(self) -> None:
        self.query_one("#flows-view", RowsView).cycle_sort()  # its title names the order

    def action_focus_view(self) -> None:
        active = self.query_one(TabbedContent).active
        tables = [table for table in self.query_one(f"#{active}", TabPane).query(DataTable) if table.display]
        if tables:
            tables[0].focus()

    def action_edit_filter(self) -> None:
        if isinstance(self.screen, FilterScreen):
            return
        self.push_screen(FilterScreen(self.reader.filter_text if self.reader else "", ViewFilter), self._filter_chosen)

    def _filter_chosen(self, expression: str | None) -> None:
        """The filter screen's answer: an expression it already compiled, "" to clear, None when cancelled."""
        self.call_later(self.action_focus_view)
        if expression is None:
            return
        try:
            predicate = ViewFilter(expression) if expression else None
        except UsageError as err:  # checked by the screen; kept so a changed libpcap cannot crash the app
            self.notify(err.one_line(), severity="error")
            return
        if self.reader is None:
            return
        try:
            self.reader.set_filter(expression, predicate)
        except RuntimeError as err:  # the reader process is gone: its own message says so
            self.notify(str(err), severity="error")
            return
        self.notify(f"view filter: {expression}" if expression else "view filter cleared", timeout=2)
        self.push_snapshot()

    def push_snapshot(self) -> None:
        """Draw now rather than at the next tick (after a filter change)."""
        counters = self.latest.counters if self.latest else {}
        if self.reader is None:
            return
        try:
            snapshot = self.reader.snapshot(counters, self.latest.probe_counters if self.latest else {})
        except RuntimeError:
            return  # the next tick's snapshot draws it
        self.latest = snapshot
        if not self.paused:
            self.show(snapshot)

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused and self.latest is not None:
            self.show(self.latest)
        self.refresh_header()

    def action_record(self) -> None:
        """Start or stop recording the raw events into SAVE_DIR/podtrace-YYYYmmdd-HHMMSS.ptrec (0600)."""
        if self.reader is None:
            return
        if self.recording is None:
            try:
                path = new_file(self.info.save_dir, ".ptrec", create=False)  # the Recorder creates it 0600
            except OSError as err:
                self.notify(f"cannot record in {self.info.save_dir}: {err.strerror or err}", severity="error")
                return
            try:
                recording = self.reader.record(path)
            except RuntimeError as err:
                self.notify(f"cannot record: {err}", severity="error")
                return
            self.recording = recording
            self.notify(f"recording to {recording.path} (r stops)", timeout=5)
        else:
            recording = self.recording
            events = self._stop_recording()
            if recording.error:
                self.notify(recording.error, severity="error")
            else:
                self.notify(f"recorded {events} events to {recording.path}", timeout=5)
        self.refresh_header()

    def action_save_svg(self) -> None:
        """The screen as it is now, as SVG, to SAVE_DIR/podtrace-YYYYmmdd-HHMMSS.svg (0600), for a ticket."""
        try:
            path = new_file(self.info.save_dir, ".svg")
            svg = self.export_screenshot(title=f"podtrace {self.info.node}")
            with open(path, "w", encoding="utf-8") as handle:  # created 0600 by new_file, never a symlink
                handle.write(svg)
        except OSError as err:
            self.notify(f"cannot save a screenshot in {self.info.save_dir}: {err.strerror or err}", severity="error")
            return
        self.last_screenshot = path
        self.notify(f"screenshot saved to {path}", timeout=5)

    def _stop_recording(self) -> int:
        recording, self.recording = self.recording, None
        if recording is None:
            return 0
        return recording.stop()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def on_data_table_row_selected(self, message: DataTable.RowSelected) -> None:
        if self.has_journeys:
            journeys = self.query_one("#journeys-view", RowsView)
            if message.data_table.parent is journeys:
                row = journeys.selected()
                if row is not None:
                    self.push_screen(JourneyScreen(row["_view"], row["_clock"]))
                return
        flows = self.query_one("#flows-view", RowsView)
        if message.data_table.parent is flows:
            row = flows.selected()
            if row is not None and row.get("_flow") is not None:
                self.push_screen(TimelineScreen(self._timelines(), "", row.get("_title", row["service"]),
                                                flow=row["_flow"]))
            return
        if message.data_table.id != "drops-table" or self.snapshot is None:
            return
        ident = str(message.row_key.value)
        row = next((row for row in self.snapshot.drops if row["key"] == ident), None)
        if row is None:
            return
        title = f"{row['reason']} at {row['location']}  {row['netns']}/{row['ifname']}  {flow_text(row)}"
        self.push_screen(TimelineScreen(self._timelines(), ident, title, explains=self.model.explain is not None))

    def _timelines(self) -> Any:
        """Where a timeline screen asks for its rows: the reader's model, in this process or its own."""
        return self.reader if self.reader is not None else self.model

    async def action_quit(self) -> None:
        """At once: the reader is told to stop and joined after the screen is restored (run_app)."""
        if self.reader is not None:
            self.reader.request_stop()
        self._stop_recording()
        self.exit(1 if self.error else 0)


def run_app(app: PodtraceApp, **kwargs: Any) -> int:
    try:
        result = app.run(**kwargs)
    finally:
        if app.reader is not None:
            app.reader.stop()  # detaches the probes (the source closes where it was read) and closes the tables
    return int(result or 0)
