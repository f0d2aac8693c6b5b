"""Drill-down: the recent packets of one drop group or one Service flow, hop by hop, oldest first: each hop's
device, hook, NAT rewrite (before -> after; later hops say what the packet was before), drop, time and delta."""

from __future__ import annotations

from typing import Any, Protocol

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from tui.timelines import ConnKey, FlowKey, TimelineRow, connection_text
from tui.widgets.footer import QuietFooter


class Timelines(Protocol):
    """Where the rows come from: a Model, or the ingestion that holds it (tui/ingest.py)."""

    def timeline(self, ident: str) -> list[TimelineRow]: ...

    def cause(self, ident: str) -> dict[str, Any] | None: ...

    def flow_timeline(self, flow: FlowKey) -> list[TimelineRow]: ...

    def connection_timeline(self, conn: ConnKey) -> list[TimelineRow]: ...

# What tells the story first (the NAT and drop columns fit 100 columns); the packet as seen at that hop after.
COLUMNS = ("TIME", "+DELTA", "HOOK", "EVENT", "NAT", "NETNS/IF", "PACKET", "LOCATION", "LEN", "CPU")


def format_delta(ns: int) -> str:
    if ns == 0:
        return "-"
    if ns < 1_000_000:
        return f"+{ns / 1000:.1f}us"
    if ns < 1_000_000_000:
        return f"+{ns / 1e6:.1f}ms"
    return f"+{ns / 1e9:.2f}s"


def timeline_cells(row: TimelineRow) -> tuple[Any, ...]:
    style = "bold red" if row.is_drop else "bold magenta" if row.is_nat else "green"
    return (row.time, Text(format_delta(row.delta_ns), justify="right"), row.hook, Text(row.what, style=style),
            Text(row.nat, style="magenta"), row.where, row.flow, row.location,
            Text(str(row.length) if row.length else "", justify="right"), str(row.cpu))


class TimelineScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("p", "app.toggle_pause", "Pause"),
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    TimelineScreen #timeline { height: 1fr; }
    TimelineScreen #timeline-title { height: auto; }
    TimelineScreen #timeline-cause { height: auto; }
    """

    def __init__(self, model: Timelines, ident: str, title: str, flow: FlowKey | None = None,
                 conn: ConnKey | None = None, explains: bool = False) -> None:
        """A drop group's timeline (`ident`, a Snapshot drop row's key), a flow's (`flow`) or one connection's
        (`conn`: Enter on a hop of the others); `explains`: the source can say why a group's drops died."""
        super().__init__()
        self.model = model
        self.ident = ident
        self.flow = flow
        self.conn = conn
        self.explains = explains and bool(ident) and flow is None and conn is None
        self.title_text = title
        self._shown: list[TimelineRow] = []
        self.cause_text = ""  # as shown, for tests

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble(("timeline ", "bold reverse"), " ", (self.title_text, "bold")), id="timeline-title")
        yield Static("", id="timeline-summary")
        cause = Static("", id="timeline-cause")
        cause.display = self.explains  # no line at all where nothing can say why
        yield cause
        table: DataTable[Any] = DataTable(id="timeline", cursor_type="row")
        yield table
        yield QuietFooter()

    def on_mount(self) -> None:
        table = self.query_one("#timeline", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.refresh_rows()
        self.set_interval(0.25, self.refresh_rows)
        if self.explains:  # a drop group: why it died, read once
            self.query_one("#timeline-cause", Static).update(Text(" reading the namespace for the cause ...",
                                                                  style="dim"))
            self.run_worker(self._read_cause, thread=True, exclusive=True, group="cause")

    def _read_cause(self) -> None:
        try:
            cause = self.model.cause(self.ident)
        except RuntimeError as err:  # the reader process is gone or did not answer
            cause = {"kind": "unknown", "text": f"not read: {err}", "fix": "", "known": "unknown"}
        self.app.call_from_thread(self.show_cause, cause)

    def show_cause(self, cause: dict[str, Any] | None) -> None:
        """The cause as `podtrace drops` prints it: what and how it is known, then the fix."""
        if cause is None:
            text = Text(" cause: not known (the group is gone)", style="dim")
        else:
            known = cause.get("known", "unknown")
            text = Text.assemble((" cause: ", "bold"), (cause.get("text", "unknown"),
                                                        "bold" if known != "unknown" else ""), f" ({known})")
            if cause.get("fix"):
                text.append_text(Text.assemble("\n", (" fix: ", "bold"), (cause["fix"], "green")))
        self.cause_text = "\n".join(line.strip() for line in text.plain.splitlines())
        self.query_one("#timeline-cause", Static).update(text)

    def refresh_rows(self) -> None:
        if getattr(self.app, "paused", False):
            return
        if self.conn is not None:
            rows = self.model.connection_timeline(self.conn)
        elif self.flow is not None:
            rows = self.model.flow_timeline(self.flow)
        else:
            rows = self.model.timeline(self.ident)
        if rows == self._shown:
            return
        self._shown = rows
        table = self.query_one("#timeline", DataTable)
        table.clear()
        for row in rows:
            table.add_row(*timeline_cells(row))
        drops = sum(1 for row in rows if row.is_drop)
        nat = sum(1 for row in rows if row.is_nat)
        span = format_delta(rows[-1].ts_ns - rows[0].ts_ns) if len(rows) > 1 else "-"
        rewrites = f", {nat} NAT rewrites" if nat else ""
        self.query_one("#timeline-summary", Static).update(
            Text(f" last {len(rows)} hops: {drops} drops, {len(rows) - drops - nat} path events{rewrites}, over {span}",
                 style="dim"))

    def on_data_table_row_selected(self, message: DataTable.RowSelected) -> None:
        """Enter on a hop: only that hop's connection, its packets before and after NAT, and its replies."""
        message.stop()  # the app's own handler opens timelines from the views, not from here
        index = message.cursor_row
        if self.conn is not None or not 0 <= index < len(self._shown):
            return
        conn = self._shown[index].conn
        if conn is not None:
            self.app.push_screen(TimelineScreen(self.model, "", f"one connection: {connection_text(conn)}",
                                                conn=conn))

    @property
    def rows(self) -> list[TimelineRow]:
        return list(self._shown)
