"""Drill-down: the recent packets of one drop group, with the path events of the same flow, oldest first."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui.model import Model, TimelineRow

COLUMNS = ("TIME", "+DELTA", "NETNS/IF", "POINT / DROP", "PACKET", "LEN", "CPU")


def format_delta(ns: int) -> str:
    if ns == 0:
        return "-"
    if ns < 1_000_000:
        return f"+{ns / 1000:.1f}us"
    if ns < 1_000_000_000:
        return f"+{ns / 1e6:.1f}ms"
    return f"+{ns / 1e9:.2f}s"


def timeline_cells(row: TimelineRow) -> tuple[Any, ...]:
    what = Text(row.what, style="bold red") if row.is_drop else Text(row.what, style="green")
    return (row.time, Text(format_delta(row.delta_ns), justify="right"), row.where, what, row.flow,
            Text(str(row.length), justify="right"), str(row.cpu))


class TimelineScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("p", "app.toggle_pause", "Pause"),
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    TimelineScreen #timeline { height: 1fr; }
    TimelineScreen #timeline-title { height: auto; }
    """

    def __init__(self, model: Model, ident: str, title: str) -> None:
        super().__init__()
        self.model = model
        self.ident = ident
        self.title_text = title
        self._shown: list[TimelineRow] = []

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble(("timeline ", "bold reverse"), " ", (self.title_text, "bold")), id="timeline-title")
        yield Static("", id="timeline-summary")
        table: DataTable[Any] = DataTable(id="timeline", cursor_type="row")
        yield table
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#timeline", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.refresh_rows()
        self.set_interval(0.25, self.refresh_rows)

    def refresh_rows(self) -> None:
        if getattr(self.app, "paused", False):
            return
        rows = self.model.timeline(self.ident)
        if rows == self._shown:
            return
        self._shown = rows
        table = self.query_one("#timeline", DataTable)
        table.clear()
        for row in rows:
            table.add_row(*timeline_cells(row))
        drops = sum(1 for row in rows if row.is_drop)
        span = format_delta(rows[-1].ts_ns - rows[0].ts_ns) if len(rows) > 1 else "-"
        self.query_one("#timeline-summary", Static).update(
            Text(f" last {len(rows)} packets: {drops} drops, {len(rows) - drops} path events, over {span}",
                 style="dim"))

    @property
    def rows(self) -> list[TimelineRow]:
        return list(self._shown)
