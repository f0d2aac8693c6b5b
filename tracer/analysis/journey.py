"""One packet seen by recordings of several nodes: matching its events, aligning the recordings' clocks from the
matches, and the journey each matched packet took (pure code; tracer/cli/merge.py reads the recordings).

A packet is the same packet on two nodes when its pod-level IPv4 header agrees: the inner packet of a VXLAN
datagram (the packet itself without an overlay) with its addresses, protocol, ports, IP identification and, for
TCP, sequence number. NAT between the nodes would change the addresses: the pod-level header after kube-proxy's DNAT
is what crosses the overlay, so that is what is compared. Packets that carry nothing to tell them apart (IP id 0 and
no TCP sequence) are never matched.

No clock is assumed synchronised. Each recording's events are put on its own wall clock (the header's offset),
then each other recording's clock is shifted onto the first's (the anchor's) by θ estimated pair by pair from the
matched packets whose sending node is known (the recording whose node holds the source pod, `names.pods`, else the
only one that saw it queued or transmitted), d_ab being the time from its last sighting on the sender to its first
on the receiver: with packets both ways, θ = (min d_ab - min d_ba) / 2 (NTP's estimate, the fastest packet each way
taking as long); one way only, θ = min d_ab, and the one-way latencies are then relative to the fastest packet,
which is said. With more than two recordings the pairs form a tree grown from the anchor (the pair with the most
packets first): a node's offset is the sum along its path.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tracer.analysis.dnat_join import (
    NO_JOINS,
    WINDOW_NS,
    Joins,
    Translation,
    decide,
    from_conntrack,
    from_nat,
    from_skbs,
)
from tracer.events.decode import (
    EVENT_DROP,
    EVENT_PATH,
    POINT_NAMES,
    POINT_QUEUE,
    POINT_XMIT,
    CtEvent,
    PacketEvent,
    Tuple,
)

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
    # the kernel's boot id (header `boot_id`): recordings of one boot share its CLOCK_MONOTONIC
    boot_id: str = ""
    conntrack: list[CtEvent] = field(default_factory=list)  # the conntrack events (each before its drop)
    nat: list[tuple[Tuple, Tuple]] = field(default_factory=list)  # NAT records: (before, after) a rewrite


def dnat_joins(nodes: Sequence[NodeRecording]) -> Joins:
    """Which pre-DNAT flows are which post-DNAT flows, from what each node's kernel reported
    (tracer.analysis.dnat_join)."""
    found: list[Translation] = []
    for index, node in enumerate(nodes):
        found += from_conntrack(node.conntrack, index)
        found += from_nat(node.nat, index)
        ids = {id(event): (key.ip_id, key.seq) for event in node.events if (key := packet_key(event)) is not None}
        found += from_skbs(node.events, index, ids)
    return decide(found)


def _joined(key: PacketKey, joins: Joins) -> PacketKey:
    """The packet's key with its post-DNAT addresses (the same packet before and after the rewrite)."""
    proto, src, sport, dst, dport = joins.canonical((key.proto, key.src, key.sport, key.dst, key.dport))
    return PacketKey(proto, src, dst, sport, dport, key.ip_id, key.seq)


def match(nodes: Sequence[NodeRecording], joins: Joins = NO_JOINS) -> dict[PacketKey, list[Sighting]]:
    """Packets seen by more than one recording -> every sighting of it, on each recording's wall clock; a packet
    before a DNAT in `joins` is the same packet as after it (keyed by its post-DNAT addresses)."""
    seen: dict[PacketKey, list[Sighting]] = {}
    for index, node in enumerate(nodes):
        for event in node.events:
            key = packet_key(event)
            if key is not None:
                sighting = Sighting(index, event, event.ts_ns + node.wall_offset_ns)
                seen.setdefault(_joined(key, joins), []).append(sighting)
    return {key: found for key, found in seen.items() if len({s.node for s in found}) > 1}


@dataclass(frozen=True)
class PairAlignment:
    """How node `b`'s clock was put on node `a`'s: from the matched packets the two exchanged."""

    a: int
    b: int
    offset_ns: int  # add to b's wall clock to put it on a's
    pairs: int
    both_ways: bool
    # one boot of one machine (the same boot id): one CLOCK_MONOTONIC, offset exact, nothing estimated
    same_clock: bool = False


@dataclass
class ClockAlignment:
    """Every node's clock on the first one's (the anchor's): a tree of pairwise alignments from the anchor, each
    pair estimated from the packets those two nodes both saw. A node the tree does not reach keeps its own clock."""

    offsets: list[int]  # per node: add to its wall clock to put it on the anchor's (0 for the anchor)
    links: list[PairAlignment] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def offset_ns(self) -> int:
        """The second node's offset (a merge of two nodes has one)."""
        return self.offsets[1] if len(self.offsets) > 1 else 0

    @property
    def pairs(self) -> int:
        return sum(link.pairs for link in self.links)

    @property
    def both_ways(self) -> bool:
        """Every estimated alignment had packets both ways."""
        estimated = [link for link in self.links if not link.same_clock]
        return bool(estimated) and all(link.both_ways for link in estimated)

    @property
    def same_clock(self) -> bool:
        """Every node on one machine's clock: nothing was estimated."""
        return bool(self.links) and all(link.same_clock for link in self.links)

    def aligned(self, node: int) -> bool:
        return node == 0 or any(link.b == node for link in self.links)

    def shift(self, sighting: Sighting) -> int:
        """A sighting's time on the anchor's clock."""
        return sighting.wall_ns + self.offsets[sighting.node]

    def _parents(self) -> dict[int, PairAlignment]:
        return {link.b: link for link in self.links}

    def between(self, one: int, other: int) -> str:
        """How a latency between two nodes is known: "same clock" (one machine's clock all the way: measured),
        "estimated" (every alignment on the way had packets both ways or one clock), "relative" (one way only
        somewhere: relative to the fastest packet), "unaligned" (clocks as recorded)."""
        if not (self.aligned(one) and self.aligned(other)):
            return "unaligned"
        parents = self._parents()

        def to_anchor(node: int) -> set[PairAlignment]:
            path = set()
            while node in parents:
                path.add(parents[node])
                node = parents[node].a
            return path

        way = to_anchor(one) ^ to_anchor(other)
        if all(link.same_clock for link in way):
            return "same clock"
        return "estimated" if all(link.both_ways or link.same_clock for link in way) else "relative"

    def describe(self) -> str:
        if self.same_clock:
            return "same machine clock (one boot id: one CLOCK_MONOTONIC, offset 0, nothing estimated)"
        if len(self.offsets) <= 2:
            if not self.links:
                return "clocks as recorded (no matched packet's sender is a pod that either recording names)"
            how = "packets both ways (NTP estimate)" if self.both_ways else \
                "packets one way only: latencies are relative to the fastest packet"
            return f"clocks aligned from {self.pairs} matched packets, {how}"
        parts = [f"{self._name(link.b)} on {self._name(link.a)}: same machine clock" if link.same_clock else
                 f"{self._name(link.b)} on {self._name(link.a)} from {link.pairs} matched packets, "
                 + ("both ways" if link.both_ways else "one way only") for link in self.links]
        unaligned = [self._name(node) for node in range(1, len(self.offsets)) if not self.aligned(node)]
        if unaligned:
            parts.append(f"{', '.join(unaligned)} as recorded (no matched packet's sender known)")
        how = "" if self.both_ways or not any(not link.same_clock for link in self.links) else \
            " (one way only: latencies are relative to the fastest packet)"
        return f"clocks aligned on {self._name(0)}: " + "; ".join(parts) + how

    def _name(self, node: int) -> str:
        return self.names[node] if node < len(self.names) else f"node {node + 1}"


def _sender(nodes: Sequence[NodeRecording], key: PacketKey, sightings: list[Sighting]) -> int | None:
    """Which recording's node sent the packet: of those that saw it, the only one whose pods hold its source
    address, else the only one that saw it queued or transmitted (the others only received it); None when that
    does not tell."""
    saw = sorted({s.node for s in sightings})
    holders = [index for index in saw if key.src in nodes[index].pod_ips]
    if len(holders) == 1:
        return holders[0]
    sent = {s.node for s in sightings if s.event.type == EVENT_PATH and s.event.reason in (POINT_QUEUE, POINT_XMIT)}
    return sent.pop() if len(sent) == 1 else None


def _pair_samples(nodes: Sequence[NodeRecording], matched: dict[PacketKey, list[Sighting]]
                  ) -> dict[tuple[int, int], list[int]]:
    """(sender, receiver) -> d: the receiver's first sighting minus the sender's last (each on its own clock), one
    per matched packet whose sender is known. From the last sighting on the sender (not its first): then no packet's
    receiver sighting is put before it left the sender."""
    samples: dict[tuple[int, int], list[int]] = {}
    for key, sightings in matched.items():
        sender = _sender(nodes, key, sightings)
        if sender is None:
            continue
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for s in sightings:
            first[s.node] = min(first.get(s.node, s.wall_ns), s.wall_ns)
            last[s.node] = max(last.get(s.node, s.wall_ns), s.wall_ns)
        for receiver in first:
            if receiver != sender:
                samples.setdefault((sender, receiver), []).append(first[receiver] - last[sender])
    return samples


def _pair(a: int, b: int, samples: dict[tuple[int, int], list[int]]) -> PairAlignment | None:
    """θ for b's clock onto a's: both ways, (min d_ab - min d_ba) / 2 (NTP's estimate); one way, the fastest
    packet taken as instant."""
    forward, backward = samples.get((a, b), []), samples.get((b, a), [])
    if forward and backward:
        return PairAlignment(a, b, -(min(forward) - min(backward)) // 2, len(forward) + len(backward), True)
    if forward:
        return PairAlignment(a, b, -min(forward), len(forward), False)
    if backward:
        return PairAlignment(a, b, min(backward), len(backward), False)
    return None


def _same_boot(nodes: Sequence[NodeRecording], a: int, b: int) -> PairAlignment | None:
    """b on a's clock when both recorded one boot (the same boot id): the offset is the difference of their
    headers' wall minus monotonic, so b's events keep their monotonic timestamps exactly."""
    if not nodes[a].boot_id or nodes[a].boot_id != nodes[b].boot_id:
        return None
    return PairAlignment(a, b, nodes[a].wall_offset_ns - nodes[b].wall_offset_ns, 0, False, same_clock=True)


def align(nodes: Sequence[NodeRecording], matched: dict[PacketKey, list[Sighting]]) -> ClockAlignment | None:
    """Each node's clock on the first's: a node of the same boot as one already placed shares its clock (not
    estimated); others from the matched packets whose sender is known: pairwise alignments grown from the first
    node, the pair with the most packets first (None when no pair has any)."""
    samples = _pair_samples(nodes, matched)
    offsets = [0] * len(nodes)
    reached = {0}
    links: list[PairAlignment] = []
    while True:
        same = [found for a in sorted(reached) for b in range(len(nodes)) if b not in reached
                if (found := _same_boot(nodes, a, b)) is not None]
        candidates = same[:1] or [found for a in sorted(reached) for b in range(len(nodes)) if b not in reached
                                  if (found := _pair(a, b, samples)) is not None]
        if not candidates:
            break
        best = max(candidates, key=lambda link: (link.both_ways, link.pairs, -link.b))
        offsets[best.b] = offsets[best.a] + best.offset_ns
        reached.add(best.b)
        links.append(best)
    if not links:
        return None
    return ClockAlignment(offsets, links, [node.name for node in nodes])


def unmatched(nodes: Sequence[NodeRecording], matched: dict[PacketKey, list[Sighting]]) -> list[int]:
    """The recordings no chain of shared packets joins to the first one's (a recording that shares none at all
    among them): merging them would be stitching unrelated runs together."""
    linked: dict[int, set[int]] = {index: set() for index in range(len(nodes))}
    for sightings in matched.values():
        saw = {s.node for s in sightings}
        for node in saw:
            linked[node] |= saw - {node}
    reached, todo = {0}, [0]
    while todo:
        for other in linked[todo.pop()] - reached:
            reached.add(other)
            todo.append(other)
    return [index for index in range(len(nodes)) if index not in reached]


def _visits(packet: list[Sighting], clock: ClockAlignment, sender: int | None) -> list[tuple[int, int, int]]:
    """(node, first, last sighting there on the anchor's clock) in the order the packet reached the nodes (on a
    tie, the fastest packet one way only, the sender first)."""
    spans: dict[int, list[int]] = {}
    for s in packet:
        t = clock.shift(s)
        span = spans.setdefault(s.node, [t, t])
        span[0], span[1] = min(span[0], t), max(span[1], t)
    return sorted(((node, a, b) for node, (a, b) in spans.items()), key=lambda v: (v[1], v[0] != sender))


HOW = {"conntrack": "observed: conntrack entry", "nat record": "observed: NAT record",
       "same skb": f"inferred: same skb within {WINDOW_NS // 1_000_000} ms"}


def _endpoint(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def _rewrite(before: Tuple, after: Tuple, joined: Translation) -> str | None:
    """The DNAT (or, on a reply, its undoing) between two sightings of one packet, if their addresses differ."""
    if (before.src, before.sport, before.dst, before.dport) == (after.src, after.sport, after.dst, after.dport):
        return None
    vip, backend, how = _endpoint(joined.dialled), _endpoint(joined.backend), HOW[joined.how]
    if (before.dst, before.dport) == joined.dialled:
        return f"DNAT {vip} > {backend} ({how})"
    if (after.src, after.sport) == joined.dialled:
        return f"reply un-DNAT {backend} > {vip} ({how})"
    return None


def _path(nodes: Sequence[NodeRecording], path: list[Sighting], shifted: list[int],
          joined: Translation | None) -> list[dict[str, Any]]:
    """The first packet's sightings, with the DNAT step between the last one before it and the first after."""
    out: list[dict[str, Any]] = []
    previous: Sighting | None = None
    for s, t in zip(path, shifted):
        node = nodes[s.node]
        if joined is not None and previous is not None:
            step = _rewrite(previous.event.inner or previous.event.outer, s.event.inner or s.event.outer, joined)
            if step is not None:  # on the node whose kernel showed the rewrite
                out.append({"node": nodes[joined.node].name, "at": step, "t_us": round((t - shifted[0]) / 1000, 1)})
        out.append({"node": node.name, "at": s.what(node.netns.get(s.event.netns, f"netns:{s.event.netns}")),
                    "t_us": round((t - shifted[0]) / 1000, 1)})
        previous = s
    return out


def _dnat(nodes: Sequence[NodeRecording], joined: Translation | None) -> dict[str, Any] | None:
    if joined is None:
        return None
    return {"node": nodes[joined.node].name, "dialled": _endpoint(joined.dialled),
            "backend": _endpoint(joined.backend), "how": joined.how, "observed": joined.observed,
            "text": f"dialled {_endpoint(joined.dialled)}, DNAT to {_endpoint(joined.backend)} on "
                    f"{nodes[joined.node].name} ({HOW[joined.how]})"}


def _unjoined(flow: tuple[int, str, str, int, int], flows: Iterable[tuple[int, str, str, int, int]],
              joined: Translation | None) -> str | None:
    """Said of a flow no translation joined when another flow leaves the same client port for elsewhere: it may be
    the same connection before and after a DNAT, but nothing recorded ties them, so they stay apart."""
    if joined is not None:
        return None
    proto, src, _dst, sport, _dport = flow
    others = sorted(f"{dst}:{dport}" for p, s, dst, sp, dport in flows if (p, s, sp) == (proto, src, sport)
                    and (p, s, dst, sp, dport) != flow)
    if not others:
        return None
    return (f"not joined to {', '.join(others)} (the same client port): no conntrack entry, NAT record or skb "
            "seen both ways ties them")


def journeys(nodes: Sequence[NodeRecording], matched: dict[PacketKey, list[Sighting]],
             clock: ClockAlignment, joins: Joins = NO_JOINS) -> list[dict[str, Any]]:
    """One object per flow: its matched packets, where they were seen in order (with the DNAT step `joins` joined
    it through), the one-way latency of each segment between two nodes (median over the matched packets of the
    last sighting on one node to the first on the next) and of the whole way, and where it died, if it did."""
    flows: dict[tuple[Any, ...], list[tuple[list[Sighting], int | None]]] = {}
    for key, sightings in matched.items():
        sender = _sender(nodes, key, sightings)
        packet = sorted(sightings, key=lambda s: (clock.shift(s), s.node != sender))
        flows.setdefault((key.proto, key.src, key.dst, key.sport, key.dport), []).append((packet, sender))
    out = []
    for (proto, src, dst, sport, dport), packets in sorted(flows.items()):
        path = packets[0][0]
        shifted = [clock.shift(s) for s in path]
        segments: dict[tuple[int, int], list[int]] = {}
        totals = []
        for packet, sender in packets:
            visits = _visits(packet, clock, sender)
            gaps = [((a[0], b[0]), max(0, b[1] - a[2])) for a, b in zip(visits, visits[1:])]
            for hop, gap in gaps:
                segments.setdefault(hop, []).append(gap)
            if gaps:
                totals.append(sum(gap for _hop, gap in gaps))
        order = _visits(path, clock, packets[0][1])
        drops = [s for packet, _sender in packets for s in packet if s.event.type == EVENT_DROP]
        last = drops[-1] if drops else None
        ends = (order[0][0], order[-1][0]) if order else (0, 0)
        joined = joins.of_flow((proto, src, sport, dst, dport))
        out.append({
            "journey": True,
            "flow": f"{'tcp' if proto == 6 else 'udp' if proto == 17 else proto} {src}:{sport} > {dst}:{dport}",
            "src": src, "dst": dst,
            "packets": len(packets),
            "path": _path(nodes, path, shifted, joined),
            "dnat": _dnat(nodes, joined),
            "unjoined": _unjoined((proto, src, dst, sport, dport), flows, joined),
            "segments": [{"from": nodes[a].name, "to": nodes[b].name, "packets": len(gaps),
                          "one_way_us": round(statistics.median(gaps) / 1000, 1), "one_way": clock.between(a, b)}
                         for (a, b), gaps in sorted(segments.items(), key=lambda item: _first_seen(order, item[0]))],
            "one_way_us": round(statistics.median(totals) / 1000, 1) if totals else None,
            "one_way": clock.between(*ends),
            "died": None if last is None else {
                "node": nodes[last.node].name,
                "reason": nodes[last.node].reasons.get(last.event.reason, f"reason {last.event.reason}"),
                "netns": nodes[last.node].netns.get(last.event.netns, f"netns:{last.event.netns}"),
                "packets": len(drops)},
        })
    return out


def _first_seen(order: list[tuple[int, int, int]], hop: tuple[int, int]) -> tuple[int, int]:
    """Segments in the order the flow's first packet took them (others after)."""
    nodes = [node for node, _first, _last in order]
    return (nodes.index(hop[0]) if hop[0] in nodes else len(nodes), nodes.index(hop[1]) if hop[1] in nodes else 0)


def identifiable(events: Iterable[PacketEvent]) -> int:
    """How many of these events could be matched at all (they have a key): said when nothing matched."""
    return sum(1 for event in events if packet_key(event) is not None)
