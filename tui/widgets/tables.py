"""The views' tables: drops (with a rate sparkline), the attach ladder, and rows-of-dicts views for the
concerns other sources fill later (service flows, overlay/MTU, softirq, node)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tracer.kernel.ladder import AttachPlan
from tracer.probes.registry import COUNTER_SLOTS

DROP_COLUMNS = (("count", "COUNT"), ("spark", "RATE 10s"), ("severity", "CLASS"), ("reason", "REASON"),
                ("location", "LOCATION"), ("where", "NETNS/IF"), ("flow", "FLOW"))
# tracer.analysis.severity's classes: loss is what hurts, policy what someone configured, benign the kernel's normal
# frees.
SEVERITY_STYLES = {"loss": "bold red", "policy": "bold yellow", "benign": "dim"}


def flow_text(row: dict[str, Any]) -> str:
    """The group's flow, each end with its pod when the node (or the recording) names it."""
    def pod(side: str) -> str:
        return f" ({row[side + '_pod']})" if row.get(side + "_pod") else ""

    if row["proto"] in ("tcp", "udp", "sctp"):
        return f"{row['proto']} {row['src']}:{row['sport']}{pod('src')} > {row['dst']}:{row['dport']}{pod('dst')}"
    return f"{row['proto']} {row['src']}{pod('src')} > {row['dst']}{pod('dst')}"


def drop_cells(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        Text(str(row["count"]), justify="right"),
        Text(row.get("spark", ""), style="magenta", justify="left"),
        Text(row.get("severity", "?"), style=SEVERITY_STYLES.get(row.get("severity", ""), ""), justify="left"),
        Text(row["reason"], style=SEVERITY_STYLES.get(row.get("severity", ""), "bold red"), justify="left"),
        row["location"],
        f"{row['netns']}/{row['ifname']}",
        flow_text(row),
    )


class DropsTable(DataTable[Any]):
    """One row per drop group; the cursor stays on its group across refreshes."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for key, label in DROP_COLUMNS:
            self.add_column(label, key=key)

    def show(self, rows: list[dict[str, Any]]) -> None:
        """Same groups in the same order: only the cells that changed are touched (a drop storm changes counts
        and sparklines, not the rest); otherwise the table is rebuilt, the cursor kept on its group."""
        keys = [row["key"] for row in rows]
        cells = {row["key"]: tuple(str(cell) for cell in drop_cells(row)) for row in rows}
        shown: dict[str, tuple[str, ...]] = getattr(self, "_shown", {})
        if keys == [str(key.value) for key in self.rows]:
            for row in rows:
                before = shown.get(row["key"], ())
                for index, ((column, _label), cell) in enumerate(zip(DROP_COLUMNS, drop_cells(row))):
                    if index >= len(before) or before[index] != cells[row["key"]][index]:
                        self.update_cell(row["key"], column, cell, update_width=True)
            self._shown = cells
            return
        selected = self.selected_key()
        self.clear()
        for row in rows:
            self.add_row(*drop_cells(row), key=row["key"])
        self._shown = cells
        if selected in keys:
            self.move_cursor(row=keys.index(selected), animate=False)

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:  # an empty or shrinking table has no cursor row
            return None


class RowsView(Vertical):
    """A view over rows of dicts from a table source that may not exist yet; optionally sortable (`sorts`: label,
    key on a row, descending), the current order named in its title. Keys starting with "_" are never shown."""

    def __init__(self, table: str, title: str, about: str, columns: list[str],
                 sorts: list[tuple[str, Callable[[dict[str, Any]], Any], bool]] | None = None,
                 empty: str = "no data from this source yet", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table_name = table
        self.title = title
        self.about = about
        self.columns = columns
        self.sorts = sorts or []
        self.sort_index = 0
        self.empty_text = empty
        self._received: list[dict[str, Any]] | None = None
        self.shown: list[dict[str, Any]] = []  # in display order

    def compose(self) -> ComposeResult:
        yield Static(self._title(), classes="view-title")
        yield Static(self.empty_text, classes="empty")
        table: DataTable[Any] = DataTable(cursor_type="row")
        table.display = False
        yield table

    def _title(self) -> Text:
        text = Text.assemble((self.title, "bold"), "  ", (self.about, "dim"))
        if self.sorts:
            text.append("  sorted by ", style="dim")
            text.append(self.sorts[self.sort_index][0], style="bold cyan")
            text.append(" (s)", style="dim")
        return text

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in self.columns:
            table.add_column(column.upper(), key=column)

    @property
    def sort_label(self) -> str:
        return self.sorts[self.sort_index][0] if self.sorts else ""

    def cycle_sort(self) -> str:
        """The next order; redraws the rows already received."""
        if not self.sorts:
            return ""
        self.sort_index = (self.sort_index + 1) % len(self.sorts)
        self.query_one(".view-title", Static).update(self._title())
        self._draw(self._received or [])
        return self.sort_label

    def show(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        rows = tables.get(self.table_name)
        if rows == self._received:
            return
        self._received = rows
        self._draw(rows or [])

    def _draw(self, rows: list[dict[str, Any]]) -> None:
        if self.sorts:
            _label, key, descending = self.sorts[self.sort_index]
            rows = sorted(rows, key=key, reverse=descending)
        empty, table = self.query_one(".empty", Static), self.query_one(DataTable)
        empty.display = not rows
        table.display = bool(rows)
        selected = table.cursor_row if table.row_count else 0
        table.clear()
        self.shown = list(rows)
        for row in rows:
            style = row.get("_style", "")  # a row the source marks (the Softirq view's worst CPU)
            table.add_row(*(Text(str(row.get(column, "")), style=style) if style else str(row.get(column, ""))
                            for column in self.columns))
        if rows:
            table.move_cursor(row=min(selected, len(rows) - 1), animate=False)

    def selected(self) -> dict[str, Any] | None:
        table = self.query_one(DataTable)
        if not table.row_count or not 0 <= table.cursor_row < len(self.shown):
            return None
        return self.shown[table.cursor_row]


def ladder_rows(plan: AttachPlan) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for hook in plan.hooks:
        if hook.chosen:
            status = Text("fallback" if hook.fallback else "attached", style="yellow" if hook.fallback else "green",
                          justify="left")
            mechanism = f"{hook.chosen} {', '.join(hook.targets)}"
            notes = hook.gives
        else:
            status = Text("missing", style="bold red", justify="left")
            mechanism = "-"
            notes = f"not seen: {hook.unseen}"
        rows.append((Text(hook.name, style="bold", justify="left"), status, mechanism, notes))
        for rejected in hook.rejected:
            rows.append(("", Text("  tried", style="dim", justify="left"),
                         Text(rejected["candidate"], style="dim", justify="left"),
                         Text(rejected["reason"], style="dim", justify="left")))
    return rows


PROBE_COLUMNS = ("PROBE", "SEEN", "FILTERED", "EVENTS", "DECODED", "LOST", "SAMPLED", "READ FAIL")


def probe_rows(probe_events: dict[str, int], probe_counters: dict[str, dict[str, int]]) -> list[tuple[Any, ...]]:
    """One row per probe that counted or delivered anything: the kernel's counters (when the source has them per
    probe) and the events decoded from the ring buffer; losses in red."""
    rows: list[tuple[Any, ...]] = []
    for probe in [name for name in COUNTER_SLOTS if name in probe_counters or name in probe_events]:
        kernel = probe_counters.get(probe)

        def cell(name: str, kernel: dict[str, int] | None = kernel) -> Text:
            if kernel is None:
                return Text("-", style="dim", justify="right")
            value = kernel.get(name, 0)
            style = "bold white on red" if value and name in ("lost", "read_fail") else ""
            return Text(str(value), style=style, justify="right")

        rows.append((Text(probe, style="bold"), cell("seen"), cell("filtered"), cell("events"),
                     Text(str(probe_events.get(probe, 0)), justify="right"), cell("lost"), cell("sampled"),
                     cell("read_fail")))
    return rows


class ProbesView(Vertical):
    """Attached programs, the event counters (in total and per probe), and the attach ladder of this kernel (or
    the recording's)."""

    DEFAULT_CSS = """
    ProbesView #probe-counters { height: auto; max-height: 10; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", id="probe-status")
        counters: DataTable[Any] = DataTable(id="probe-counters", cursor_type="none", zebra_stripes=False)
        yield counters
        yield Static(Text("attach ladder", style="bold"), classes="view-title")
        ladder: DataTable[Any] = DataTable(id="ladder", cursor_type="row")
        yield ladder

    def on_mount(self) -> None:
        ladder = self.query_one("#ladder", DataTable)
        for column in ("HOOK", "STATUS", "MECHANISM", "GIVES / WHY NOT"):
            ladder.add_column(column, key=column.lower())
        counters = self.query_one("#probe-counters", DataTable)
        for column in PROBE_COLUMNS:
            counters.add_column(column, key=column.lower())
        self._probe_rows: list[tuple[Any, ...]] = []

    def show_status(self, programs: list[str], attached: list[str], counters: dict[str, int],
                    drops: int, paths: int, probe_events: dict[str, int] | None = None,
                    probe_counters: dict[str, dict[str, int]] | None = None, nat: int = 0) -> None:
        text = Text()
        text.append("programs ", style="bold")
        text.append(", ".join(programs) or "none")
        text.append("\nattached ", style="bold")
        text.append("; ".join(attached) or "not yet")
        text.append("\ncounters ", style="bold")
        for name in ("seen", "filtered", "events", "lost", "sampled"):
            value = counters.get(name, 0)
            style = "bold white on red" if name == "lost" and value else ""
            text.append(f"{name} {value}", style=style)
            text.append("  ")
        text.append(f"\nshown    drop events {drops}  path events {paths}  NAT rewrites {nat}")
        if probe_events and not probe_counters:
            text.append("\n         per-probe kernel counters: not in this source", style="dim")
        self.query_one("#probe-status", Static).update(text)
        rows = probe_rows(probe_events or {}, probe_counters or {})
        if [tuple(str(cell) for cell in row) for row in rows] == self._probe_rows:
            return
        self._probe_rows = [tuple(str(cell) for cell in row) for row in rows]
        table = self.query_one("#probe-counters", DataTable)
        table.clear()
        for row in rows:
            table.add_row(*row)

    def show_plan(self, plan: AttachPlan | None, note: str = "") -> None:
        self._plan, self._note = plan, note
        ladder = self.query_one("#ladder", DataTable)
        ladder.clear()
        if plan is None:
            ladder.add_row("", Text(note or "probing...", style="dim"), "", "")
            return
        rows = ladder_rows(plan)
        # MECHANISM and GIVES / WHY NOT wrap within the screen's width instead of running past its right edge
        # (a DataTable cell does not wrap): HOOK and STATUS keep their content's width, the mechanism takes at most
        # 45% of what is left.
        screen = self.size.width or self.app.size.width  # 0 until the tab has been laid out
        hook, status = (max(_cells(row[i]) for row in rows) for i in (0, 1))
        rest = max(48, screen - hook - status - 4 * 2 - 2)  # cell padding of 4 columns, the scrollbar
        mechanism = min(max(_cells(row[2]) for row in rows), rest * 45 // 100)
        for first, second, third, notes in rows:
            ladder.add_row(first, second, _wrapped(third, mechanism), _wrapped(notes, rest - mechanism), height=None)

    def on_resize(self) -> None:
        if getattr(self, "_plan", None) is not None:
            self.show_plan(self._plan, self._note)


def _cells(cell: Any) -> int:
    return (cell if isinstance(cell, Text) else Text(str(cell))).cell_len


def _wrapped(cell: Any, width: int) -> Text:
    """`cell` folded into lines of at most `width` cells, at spaces where it can."""
    text = cell if isinstance(cell, Text) else Text(str(cell))
    return Text("\n").join(text.wrap(Console(width=width, legacy_windows=False), width))
