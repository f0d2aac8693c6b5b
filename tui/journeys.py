"""The Journeys view of a merged recording (`podtrace merge A B ... -o ALL`): each flow's way across the nodes, from
the journeys the merge found (tracer/merged_report.journey_views, the rows `podtrace report` prints), and each
journey's hops for the drill-down."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tracer.output.merged_report import JourneyView, clock_line, journey_views

# Where it died and how long it took first: the columns a 100-column terminal shows; the drill-down says the rest.
COLUMNS = ["flow", "died at", "one way", "nodes", "client"]
SHORT = {"same clock": "", "estimated": "", "relative": " rel", "unaligned": " as recorded"}


def journey_row(view: JourneyView, clock: str) -> dict[str, Any]:
    """A view's row; `_view` and `_clock` (how the clocks were aligned) are for its drill-down (keys with "_" are
    never shown)."""
    return {"flow": view.flow, "died at": f"{view.died_node}: {view.died_what}" if view.died else "not seen dropped",
            "one way": "unknown" if view.one_way_us is None else f"{view.one_way_us} us{SHORT.get(view.one_way, '')}",
            "nodes": " > ".join(view.nodes), "client": view.client.removeprefix("client "),
            "_view": view, "_clock": clock}


class RecordedJourneysTable:
    """The journeys a merged recording's header holds, those that died first; none for another recording."""

    columns = COLUMNS

    def __init__(self, merged: Mapping[str, Any] | None, pod_of: Callable[[str], str | None]) -> None:
        clock = clock_line(merged) if merged else ""
        self._rows = [journey_row(view, clock) for view in journey_views(merged, pod_of)] if merged else []

    def rows(self) -> list[dict[str, Any]]:
        return self._rows
