"""One packet seen by recordings of several nodes: matching its events, aligning the recordings' clocks from the
matches, and the journey each matched packet took (pure code; tracer/cmd_merge.py reads the recordings).

A packet is the same packet on two nodes when its pod-level IPv4 header agrees: the inner packet of a VXLAN
datagram (the packet itself without an overlay) with its addresses, protocol, ports, IP identification and, for
TCP, sequence number. NAT between the nodes would change the addresses: the pod-level header after kube-proxy's DNAT
is what crosses the overlay, so that is what is compared. Packets that carry nothing to tell them apart (IP id 0 and
no TCP sequence) are never matched.

No clock is assumed synchronised. Each recording's events are put on its own wall clock (the header's offset),
then the second recording's clock is shifted by θ estimated from the matched packets whose sending node is known
(the recording whose node holds the source pod, `names.pods`, else the only one that saw it queued or
transmitted), d_ab being the time from its last sighting on the sender to its first on the receiver: with packets
both ways, θ = (min d_ab - min d_ba) / 2 (NTP's estimate, the fastest packet each way taking as long); one way only,
θ = min d_ab, and the one-way latencies are then relative to the fastest packet, which is said.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer.events import EVENT_DROP, EVENT_PATH, POINT_NAMES, POINT_QUEUE, POINT_XMIT, PacketEvent

VXLAN_HEADERS = 8 + 8 + 14  # outer UDP, VXLAN, inner Ethernet


@dataclass(frozen=True)
class PacketKey:
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    ip_id: int
    seq: int | None

    def flow(self) -> str:
        return f"{self.src}:{self.sport} > {self.dst}:{self.dport} proto {self.proto}"


def packet_key(event: PacketEvent) -> PacketKey | None:
    """The pod-level packet's identity from the event's snapshot, or None (IPv6, cut off, nothing to tell it by)."""
    pod = event.inner or event.outer
    snap = event.snap
    if pod.family != 4 or not snap or snap[0] >> 4 != 4:
        return None
    offset = (snap[0] & 0x0F) * 4 + VXLAN_HEADERS if event.inner is not None else 0
    if len(snap) < offset + 20 or snap[offset] >> 4 != 4:
        return None
    ip_id = int.from_bytes(snap[offset + 4:offset + 6], "big")
    seq = None
    if pod.proto == 6:
        tcp = offset + (snap[offset] & 0x0F) * 4
        if len(snap) >= tcp + 8:
            seq = int.from_bytes(snap[tcp + 4:tcp + 8], "big")
    if ip_id == 0 and seq is None:
        return None
    return PacketKey(pod.proto, pod.src, pod.dst, pod.sport, pod.dport, ip_id, seq)


@dataclass
class Sighting:
    node: int  # index of the recording
    event: PacketEvent
    wall_ns: int  # on that recording's own wall clock

    def what(self, netns_name: str) -> str:
        where = f"{netns_name}/{self.event.ifname or '-'}"
        if self.event.type == EVENT_DROP:
            return f"dropped in {where}"
        return f"{POINT_NAMES.get(self.event.reason, 'path')} {where}"


@dataclass
class NodeRecording:
    """What merging needs of one recording: its node's name, clock, pod IPs and netns names, and its events."""

    name: str
    wall_offset_ns: int
    pod_ips: frozenset[str]
    netns: dict[int, str]
    events: list[PacketEvent] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    # the recorder's run (header part.run_id; older recordings: host and start clock): the same file twice is one
    # node, not two
    run_id: str = ""


def match(nodes: Sequence[NodeRecording]) -> dict[PacketKey, list[Sighting]]:
    """Packets seen by more than one recording -> every sighting of it, on each recording's wall clock."""
    seen: dict[PacketKey, list[Sighting]] = {}
    for index, node in enumerate(nodes):
        for event in node.events:
            key = packet_key(event)
            if key is not None:
                seen.setdefault(key, []).append(Sighting(index, event, event.ts_ns + node.wall_offset_ns))
    return {key: found for key, found in seen.items() if len({s.node for s in found}) > 1}


@dataclass
class ClockAlignment:
    offset_ns: int  # add to the second recording's wall clock to put it on the first's
    pairs: int  # matched packets whose direction was known
    both_ways: bool

    def describe(self) -> str:
        how = "packets both ways (NTP estimate)" if self.both_ways else \
            "packets one way only: latencies are relative to the fastest packet"
        return f"clocks aligned from {self.pairs} matched packets, {how}"


def _sender(nodes: Sequence[NodeRecording], key: PacketKey, sightings: list[Sighting]) -> int | None:
    """Which recording's node sent the packet: the one whose pods hold its source address, else the only one
    that saw it queued or transmitted (the other only received it); None when that does not tell."""
    holders = [index for index in (0, 1) if key.src in nodes[index].pod_ips]
    if len(holders) == 1:
        return holders[0]
    sent = {s.node for s in sightings if s.event.type == EVENT_PATH and s.event.reason in (POINT_QUEUE, POINT_XMIT)}
    return sent.pop() if len(sent) == 1 else None


def align(nodes: Sequence[NodeRecording], matched: dict[PacketKey, list[Sighting]]) -> ClockAlignment | None:
    """θ for two recordings from the matched packets whose sender is known, None when there is none."""
    # d_ab = first sighting on b - last on a, of packets sent from node 0; d_ba the same from node 1. From the last
    # sighting on the sender (not its first): then no packet's receiver sighting is put before it left the sender.
    forward, backward = [], []
    for key, sightings in matched.items():
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for s in sightings:
            first[s.node] = min(first.get(s.node, s.wall_ns), s.wall_ns)
            last[s.node] = max(last.get(s.node, s.wall_ns), s.wall_ns)
        if 0 not in first or 1 not in first:
            continue
        sender = _sender(nodes, key, sightings)
        if sender == 0:
            forward.append(first[1] - last[0])
        elif sender == 1:
            backward.append(first[0] - last[1])
    if not forward and not backward:
        return None
    if forward and backward:
        return ClockAlignment(-(min(forward) - min(backward)) // 2, len(forward) + len(backward), True)
    theta = min(forward) if forward else -min(backward)
    return ClockAlignment(-theta, len(forward) + len(backward), False)


def journeys(nodes: Sequence[NodeRecording], matched: dict[PacketKey, list[Sighting]],
             clock: ClockAlignment) -> list[dict[str, Any]]:
    """One object per flow: its matched packets, where they were seen in order, the one-way latency between
    the nodes (median over the matched packets of last sighting on one node to first on the other) and where it
    died, if it did."""
    flows: dict[tuple[Any, ...], list[list[Sighting]]] = {}
    for key, sightings in matched.items():
        sender = _sender(nodes, key, sightings)
        # on a tie (the fastest packet, one way only) the sender's sighting comes first
        flows.setdefault((key.proto, key.src, key.dst, key.sport, key.dport), []).append(
            sorted(sightings, key=lambda s: (s.wall_ns + (clock.offset_ns if s.node == 1 else 0), s.node != sender)))
    out = []
    for (proto, src, dst, sport, dport), packets in sorted(flows.items()):
        path = packets[0]
        shifted = [s.wall_ns + (clock.offset_ns if s.node == 1 else 0) for s in path]
        crossings = []  # last sighting on the node it left -> first on the node it reached
        for sightings in packets:
            times: dict[int, list[int]] = {}
            for s in sightings:
                times.setdefault(s.node, []).append(s.wall_ns + (clock.offset_ns if s.node == 1 else 0))
            if len(times) == 2:
                earlier, later = sorted(times.values(), key=min)
                crossings.append(max(0, min(later) - max(earlier)))
        drops = [s for sightings in packets for s in sightings if s.event.type == EVENT_DROP]
        last = drops[-1] if drops else None
        out.append({
            "journey": True,
            "flow": f"{'tcp' if proto == 6 else 'udp' if proto == 17 else proto} {src}:{sport} > {dst}:{dport}",
            "src": src, "dst": dst,
            "packets": len(packets),
            "path": [{"node": nodes[s.node].name, "at": s.what(nodes[s.node].netns.get(s.event.netns,
                                                                                      f"netns:{s.event.netns}")),
                      "t_us": round((t - shifted[0]) / 1000, 1)} for s, t in zip(path, shifted)],
            "one_way_us": round(statistics.median(crossings) / 1000, 1) if crossings else None,
            "one_way": "relative" if not clock.both_ways else "estimated",
            "died": None if last is None else {
                "node": nodes[last.node].name,
                "reason": nodes[last.node].reasons.get(last.event.reason, f"reason {last.event.reason}"),
                "netns": nodes[last.node].netns.get(last.event.netns, f"netns:{last.event.netns}"),
                "packets": len(drops)},
        })
    return out


def identifiable(events: Iterable[PacketEvent]) -> int:
    """How many of these events could be matched at all (they have a key): said when nothing matched."""
    return sum(1 for event in events if packet_key(event) is not None)
