"""The views' tables: drops (with a rate sparkline), the attach ladder, and rows-of-dicts views for the
concerns other sources fill later (service flows, overlay/MTU, softirq, node)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tracer.ladder import AttachPlan

DROP_COLUMNS = (("count", "COUNT"), ("spark", "RATE 10s"), ("reason", "REASON"), ("location", "LOCATION"),
                ("where", "NETNS/IF"), ("flow", "FLOW"))


def flow_text(row: dict[str, Any]) -> str:
    if row["proto"] in ("tcp", "udp", "sctp"):
        return f"{row['proto']} {row['src']}:{row['sport']} > {row['dst']}:{row['dport']}"
    return f"{row['proto']} {row['src']} > {row['dst']}"


def drop_cells(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        Text(str(row["count"]), justify="right"),
        Text(row.get("spark", ""), style="magenta", justify="left"),
        Text(row["reason"], style="bold red", justify="left"),
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
        keys = [row["key"] for row in rows]
        current = [str(key.value) for key in self.rows]
        if keys == current:
            for row in rows:
                for (column, _label), cell in zip(DROP_COLUMNS, drop_cells(row)):
                    self.update_cell(row["key"], column, cell, update_width=True)
            return
        selected = self.selected_key()
        self.clear()
        for row in rows:
            self.add_row(*drop_cells(row), key=row["key"])
        if selected in keys:
            self.move_cursor(row=keys.index(selected), animate=False)

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:  # noqa: BLE001 - an empty or shrinking table has no cursor row
            return None


class RowsView(Vertical):
    """A view over rows of dicts from a table source that may not exist yet."""

    def __init__(self, table: str, title: str, about: str, columns: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.table_name = table
        self.title = title
        self.about = about
        self.columns = columns
        self._shown: list[dict[str, Any]] | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble((self.title, "bold"), "  ", (self.about, "dim")), classes="view-title")
        yield Static("no data from this source yet", classes="empty")
        table: DataTable[Any] = DataTable(cursor_type="row")
        table.display = False
        yield table

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in self.columns:
            table.add_column(column.upper(), key=column)

    def show(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        rows = tables.get(self.table_name)
        if rows == self._shown:
            return
        self._shown = rows
        empty, table = self.query_one(".empty", Static), self.query_one(DataTable)
        empty.display = not rows
        table.display = bool(rows)
        table.clear()
        for row in rows or []:
            table.add_row(*(str(row.get(column, "")) for column in self.columns))


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


class ProbesView(Vertical):
    """Attached programs, the event counters, and the attach ladder of this kernel (or the recording's)."""

    def compose(self) -> ComposeResult:
        yield Static("", id="probe-status")
        yield Static(Text("attach ladder", style="bold"), classes="view-title")
        ladder: DataTable[Any] = DataTable(id="ladder", cursor_type="row")
        yield ladder

    def on_mount(self) -> None:
        ladder = self.query_one("#ladder", DataTable)
        for column in ("HOOK", "STATUS", "MECHANISM", "GIVES / WHY NOT"):
            ladder.add_column(column, key=column.lower())

    def show_status(self, programs: list[str], attached: list[str], counters: dict[str, int],
                    drops: int, paths: int) -> None:
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
        text.append(f"\nshown    drop events {drops}  path events {paths}")
        self.query_one("#probe-status", Static).update(text)

    def show_plan(self, plan: AttachPlan | None, note: str = "") -> None:
        ladder = self.query_one("#ladder", DataTable)
        ladder.clear()
        if plan is None:
            ladder.add_row("", Text(note or "probing...", style="dim"), "", "")
            return
        for row in ladder_rows(plan):
            ladder.add_row(*row)
