"""Drill-down from the Journeys view: one journey's hops across the nodes (time on the first node's clock, node,
what happened there), the one-way latency of each segment between two nodes, and where it died."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tracer.output.merged_report import JourneyView

COLUMNS = ("+TIME", "NODE", "AT")


def hop_cells(t_us: float, node: str, at: str) -> tuple[Any, ...]:
    style = "bold red" if at.startswith("dropped") else "green"
    return Text(f"+{t_us} us", justify="right"), node, Text(at, style=style)


class JourneyScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    JourneyScreen #journey-hops { height: 1fr; }
    JourneyScreen #journey-title, JourneyScreen #journey-segments { height: auto; }
    """

    def __init__(self, view: JourneyView, clock: str) -> None:
        """`clock`: how the recordings' clocks were aligned (the latencies rest on it)."""
        super().__init__()
        self.view = view
        self.clock = clock

    def compose(self) -> ComposeResult:
        view = self.view
        yield Static(Text.assemble(("journey ", "bold reverse"), " ", (view.flow, "bold"),
                                   f"  {view.packets} matched, {view.client} on {view.first_node}"),
                     id="journey-title")
        yield Static(Text(f" {self.clock}", style="dim"), id="journey-clock")
        # the DNAT it was joined through (the VIP dialled, the backend chosen, how that is known), or why not
        yield Static(Text(" " + (view.dnat or view.unjoined or "no DNAT recorded on its way")), id="journey-dnat")
        table: DataTable[Any] = DataTable(id="journey-hops", cursor_type="row")
        yield table
        yield Static(self._segments(), id="journey-segments")
        yield Footer()

    def _segments(self) -> Text:
        text = Text()
        for seg in self.view.segments:
            text.append_text(Text.assemble(f" {seg.source} -> {seg.target}: ", (seg.latency, "bold"),
                                           f" ({seg.packets} packet{'' if seg.packets == 1 else 's'})\n"))
        if self.view.died:
            text.append_text(Text.assemble(" ", (self.view.died, "bold red"), f"; {self.view.latency}"))
        else:
            text.append(f" not seen dropped; {self.view.latency}")
        return text

    def on_mount(self) -> None:
        table = self.query_one("#journey-hops", DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        for hop in self.view.hops:
            table.add_row(*hop_cells(hop.t_us, hop.node, hop.at))
        table.focus()

    @property
    def segments_text(self) -> str:
        """As shown, for tests."""
        return self._segments().plain
