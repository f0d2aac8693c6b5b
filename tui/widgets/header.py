"""The header: node, kernel, attach plan, event rate, lost events (red above zero), filters, recording."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tracer.kernel.ladder import AttachPlan
from tui.model import Snapshot, window_label
from tui.sources import SessionInfo


def header_text(info: SessionInfo, snapshot: Snapshot | None, plan: AttachPlan | None, plan_note: str,
                paused: bool, recording: str = "", recording_error: str = "") -> Text:
    text = Text()
    text.append(" podtrace ", style="bold reverse")
    text.append(f" {info.mode}", style="bold")
    text.append(f"  node {info.node}  kernel {info.kernel}\n plan ")
    if plan is not None:
        attached = sum(1 for hook in plan.hooks if hook.chosen)
        style = "green" if attached == len(plan.hooks) else "yellow"
        text.append(plan.summary(), style=style)
    else:
        text.append(plan_note or "attach plan: probing...", style="dim")
    text.append("\n ")
    if snapshot is None:
        text.append("waiting for events", style="dim")
    else:
        lost = snapshot.counters.get("lost", 0)
        # Separators end each field's span: SVG renderers drop the leading spaces of a span (the snapshots).
        text.append(f"events {snapshot.events} ({snapshot.rate:.0f}/s) · ")
        text.append(f"lost {lost}", style="bold white on red" if lost > 0 else "green")
        groups = "group" if snapshot.drop_groups == 1 else "groups"
        text.append(f" · drops {snapshot.drop_total} in {snapshot.drop_groups} {groups}")
        if snapshot.evicted:
            text.append(f" ({snapshot.evicted} evicted)", style="yellow")
        text.append(" · window ")
        text.append(window_label(snapshot.window), style="bold cyan" if snapshot.window else "")
        text.append(" ·")
    text.append(" filter ")
    text.append(repr(info.kernel_filter) if info.kernel_filter else "none", style="cyan")
    if snapshot is not None and snapshot.view_filter:
        text.append(" view ")
        text.append(repr(snapshot.view_filter), style="bold cyan")
    text.append(" · ")
    if recording_error:
        text.append(f"✗ {recording_error}", style="bold white on red")
    elif recording:
        text.append(f"● rec {recording}", style="bold red")
    else:
        text.append("○ rec off", style="dim")
    if paused:
        text.append("  PAUSED", style="bold black on yellow")
    return text


class HeaderBar(Static):
    DEFAULT_CSS = """
    HeaderBar { height: auto; background: $panel; }
    """
