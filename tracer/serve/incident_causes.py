"""The node state behind an incident's drop causes, for the flight recorder's sealed files (the trailer's
`cause_state`, as `podtrace record` writes it: docs/recording-format.md, "Cause state").

A sealed incident is a normal recording, so `podtrace report` names its causes from this exactly as it does for a
`record`: routes, rp_filter, RPS/IRQ steering, MTUs and sysctls read at the seal, kube-proxy's rules where netfilter
dropped (read at the seal too), and the ICMP counters at the start of the incident's first segment (read when that
segment opened) and at the seal. One drop of each kind in the window is what the reading is done for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tracer.events.decode import EVENT_DROP

MAX_DROP_KINDS = 100_000  # as `record`: a scan of many addresses keeps the first ones


def drop_kind(raw: bytes) -> bytes:
    """What cause_state reads the node for: location, reason and netns [24:40], device and addresses [64:112]
    (offsets per tracer/events field_offsets(), as cmd_record keys them)."""
    return raw[24:40] + raw[64:112]


class IncidentCauses:
    """Reads, for the flight recorder: ICMP counters when a segment opens; the cause state when an incident seals."""

    def __init__(self, netns: str | None, names: Any) -> None:
        self.namespaces = [netns or "host"]
        self.names = names  # tracer/output/report.Resolver of the agent

    def icmp(self) -> dict[str, dict[str, int]]:
        from tracer.node import cause_state  # reads /proc/net/snmp in the namespace

        return cause_state.icmp_snapshot(self.namespaces)

    def read(self, drops: Iterable[bytes], icmp_before: dict[str, dict[str, int]]) -> dict[str, Any]:
        """The trailer's cause_state for the window's drop events (never raises: see record_end)."""
        from tracer.analysis.aggregate import DropTable
        from tracer.output.report import drop_rows
        from tracer.recording.recorded_causes import record_end

        kinds: dict[bytes, bytes] = {}
        for raw in drops:
            if raw[0] == EVENT_DROP and len(kinds) < MAX_DROP_KINDS:
                kinds.setdefault(drop_kind(raw), raw)
        try:
            table = DropTable()
            for raw in kinds.values():
                table.add_raw(raw)
            rows = drop_rows(table, self.names)
        except Exception as err:  # a trailer is still written; the report then says why the state is unknown
            return {"nodes": [], "error": f"node state not read: {err or type(err).__name__}"}
        return record_end(rows, icmp_before)
