"""The Overlay/MTU view, from the events the model sees: VXLAN packets per device and VNI, IPv4 fragments, ICMP
frag-needed and ICMPv6 packet-too-big (with the MTU they quote, tracer.analysis.mtu_events), too-big drops and
reassembly timeouts (a fragment that never came: not a packet too big, so counted apart).

Pure and event-fed (`uses_events`: the model calls `add` for every event its view filter keeps and `reset` when
the filter changes). Path events, and so tunnels, fragments and frag-needed, come only with a kernel filter
(`podtrace tui 'udp port 8472'`); drops always. The verdict column says what the events show, not the configured
MTUs along the path: `podtrace check` (the Node view) reads those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracer.analysis.mtu_events import (
    REASM_TIMEOUT_REASON,
    TOO_BIG_REASONS,
    is_frag_needed,
    is_fragment,
    is_packet_too_big,
    next_hop_mtu,
)
from tracer.events.decode import PacketEvent

# frag_needed counts both ICMP frag-needed and ICMPv6 packet-too-big (the same message in each family); the verdict
# names which.
COLUMNS = ["device", "vni", "packets", "fragments", "frag_needed", "verdict"]


@dataclass
class _Row:
    packets: int = 0
    fragments: int = 0
    frag_needed: int = 0  # ICMP frag-needed + ICMPv6 packet-too-big
    packet_too_big: int = 0  # ... of which ICMPv6 packet-too-big
    mtus: dict[int, int] = field(default_factory=dict)  # next-hop MTU quoted -> count
    too_big: int = 0
    reasm_timeouts: int = 0  # fragments dropped as FRAG_REASM_TIMEOUT


def verdict(row: _Row) -> str:
    timeouts = f"; {row.reasm_timeouts} reassembly timeouts" if row.reasm_timeouts else ""
    if row.frag_needed:
        quoted = ", ".join(str(mtu) for mtu in sorted(row.mtus)) or "?"
        kinds = " and ".join(name for name, n in (("frag-needed", row.frag_needed - row.packet_too_big),
                                                  ("packet-too-big (ICMPv6)", row.packet_too_big)) if n)
        return f"{kinds}: path MTU {quoted} is smaller than what is sent{timeouts}"
    if row.too_big:
        return f"{row.too_big} dropped as too big{timeouts}"
    if row.reasm_timeouts:
        return f"{row.reasm_timeouts} reassembly timeouts (fragments that never all arrived)"
    if row.fragments:
        return "fragmenting (no frag-needed seen)"
    return "ok"


class OverlayTable:
    """A TableSource (tui/model.py) fed event by event."""

    columns = COLUMNS
    uses_events = True

    def __init__(self, netns_name: Callable[[int], str], reasons: dict[int, str], max_rows: int = 200) -> None:
        self.netns_name = netns_name
        self.reasons = reasons
        self.max_rows = max_rows
        self._rows: dict[tuple[int, str, int | None], _Row] = {}

    def reset(self) -> None:
        self._rows = {}

    def add(self, event: PacketEvent) -> None:
        tunnel = event.inner is not None
        fragment = is_fragment(event)
        ptb = not event.is_drop and is_packet_too_big(event)
        needed = ptb or (not event.is_drop and is_frag_needed(event))
        reason = self.reasons.get(event.reason, "") if event.is_drop else ""
        too_big = reason in TOO_BIG_REASONS
        timeout = reason == REASM_TIMEOUT_REASON
        if not (tunnel or fragment or needed or too_big or timeout):
            return
        key = (event.netns, event.ifname or "-", event.vni if tunnel else None)
        row = self._rows.get(key)
        if row is None:
            if len(self._rows) >= self.max_rows:
                return
            row = self._rows[key] = _Row()
        row.packets += 1
        row.fragments += fragment
        row.too_big += too_big
        row.reasm_timeouts += timeout
        if needed:
            row.frag_needed += 1
            row.packet_too_big += ptb
            mtu = next_hop_mtu(event)
            if mtu is not None:
                row.mtus[mtu] = row.mtus.get(mtu, 0) + 1

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for (netns, ifname, vni), row in sorted(self._rows.items(), key=lambda item: -item[1].packets):
            out.append({"device": f"{self.netns_name(netns)}/{ifname}", "vni": "-" if vni is None else vni,
                        "packets": row.packets, "fragments": row.fragments, "frag_needed": row.frag_needed,
                        "verdict": verdict(row)})
        return out
