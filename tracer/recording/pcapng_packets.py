"""One pcapng frame per packet: the events of one packet at its hops (rx, queue, xmit, drop; NAT between them)
folded into one frame, its comment giving the hops with their times, the NAT and the drop with its Service.

Frame per hop, Wireshark's TCP analysis sees the same segment several times in one conversation and marks every
copy after the first `[TCP Retransmission]`, which is a lie on a path that never retransmitted.

A packet is known by its sk_buff address (the same object across veth, bridges and VXLAN in one kernel) and the
bytes no hop rewrites: the IPv4 ID or IPv6 payload length, the protocol, TCP's sequence and acknowledgment
numbers and flags or UDP's length (of the inner packet when VXLAN-encapsulated). An sk_buff freed and reused
carries another packet, with other bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracer.analysis.causes import NetnsState, explain
from tracer.analysis.identity import NOT_TRACED, Identity
from tracer.analysis.nfverdict import hook_label
from tracer.events.decode import NatEvent, PacketEvent
from tracer.output.report import Resolver, describe_point
from tracer.probes.nf_points import point_label
from tracer.sources.replay import RecordedNames

VXLAN_PORTS = (4789, 8472)  # IANA's and flannel's
GAP_NS = 1_000_000_000  # a packet's hops are microseconds apart; a second without one ends it
MAX_PENDING = 65_536  # packets held at once, waiting for more hops: bounded whatever the recording


def fingerprint(snap: bytes, depth: int = 0) -> bytes:
    """The bytes of a packet that its hops do not rewrite (NAT rewrites addresses, ports and checksums)."""
    if not snap:
        return b""
    version = snap[0] >> 4
    if version == 4 and len(snap) >= 20:
        ihl, proto, key = (snap[0] & 0xF) * 4, snap[9], snap[4:6]
    elif version == 6 and len(snap) >= 40:
        ihl, proto, key = 40, snap[6], snap[4:6]
    else:
        return b""
    l4 = snap[ihl:]
    if proto == 6 and len(l4) >= 14:  # sequence, acknowledgment, offset and flags: an RST's ID and seq are 0
        return bytes([version, proto]) + key + l4[4:14]
    if proto == 17 and len(l4) >= 8 and depth == 0 and int.from_bytes(l4[2:4], "big") in VXLAN_PORTS:
        inner = fingerprint(l4[8 + 8 + 14:], depth + 1)  # UDP, VXLAN, inner Ethernet
        if inner:
            return inner
    return bytes([version, proto]) + key + (l4[4:6] if proto == 17 else b"")  # UDP: its length


@dataclass
class Packet:
    events: list[PacketEvent]
    nat: list[NatEvent] = field(default_factory=list)

    @property
    def first(self) -> PacketEvent:
        return self.events[0]

    @property
    def last_ns(self) -> int:
        return max(event.ts_ns for event in self.events)


class PacketFolder:
    """Feed events in recording order; `emit` gets each packet once no hop came for GAP_NS (or at `flush`)."""

    def __init__(self, emit: Callable[[Packet], None]) -> None:
        self._emit = emit
        self._pending: OrderedDict[tuple[int, bytes], Packet] = OrderedDict()
        self._by_skb: dict[int, tuple[int, bytes]] = {}  # the latest packet of each sk_buff, for NAT events

    def add(self, event: PacketEvent) -> None:
        self._expire(event.ts_ns)
        key = (event.skb, fingerprint(event.snap))
        packet = self._pending.get(key)
        if packet is not None and event.ts_ns - packet.last_ns <= GAP_NS:
            packet.events.append(event)
            self._pending.move_to_end(key)
        else:
            if packet is not None:
                self._emit(self._pending.pop(key))
            self._pending[key] = Packet([event])
            if len(self._pending) > MAX_PENDING:
                self._emit(self._pending.popitem(last=False)[1])
        self._by_skb[event.skb] = key

    def add_nat(self, event: NatEvent) -> None:
        key = self._by_skb.get(event.skb)
        packet = self._pending.get(key) if key is not None else None
        if packet is not None:
            packet.nat.append(event)

    def _expire(self, now_ns: int) -> None:
        while self._pending:
            key, oldest = next(iter(self._pending.items()))
            if now_ns - oldest.last_ns <= GAP_NS:
                return
            del self._pending[key]
            if self._by_skb.get(key[0]) == key:
                del self._by_skb[key[0]]
            self._emit(oldest)

    def flush(self) -> None:
        while self._pending:
            self._emit(self._pending.popitem(last=False)[1])
        self._by_skb.clear()


def _micros(ns: int) -> str:
    return f"+{ns / 1000:.1f}us"


def drop_service(event: PacketEvent, packet: Packet, names: RecordedNames, identity: Identity | None) -> str:
    """The Service a dropped packet was for, and how that is known: the address its connection dialled (the
    drop's conntrack entry), else the address before this packet's own DNAT, else its destination."""
    dialled = identity.dialled() if identity is not None else None
    if dialled is not None:
        service = names.service_of(*dialled)
        if service:
            return f"service {service} (dialled {dialled[0]}:{dialled[1]}, conntrack)"
    for nat in packet.nat:
        service = names.service_of(nat.before.dst, nat.before.dport)
        if service:
            return f"service {service} (before DNAT to {nat.after.dst}:{nat.after.dport}, traced)"
    service = names.service_of(event.outer.dst, event.outer.dport)
    return f"service {service} (destination)" if service else "service unknown"


class DropCauses:
    """The cause of one dropped packet (tracer/analysis/causes.py), from what the recording holds of its node: the cause
    `podtrace report` gives the packet's drop group, with how it is known. One answer per kind of drop: the rules
    are not matched again for every packet of a storm."""

    def __init__(self, resolver: Resolver, states: Mapping[str, NetnsState]) -> None:
        self.resolver = resolver
        self.states = states
        self._known: dict[tuple[Any, ...], str] = {}

    def __call__(self, event: PacketEvent, identity: Identity | None) -> str:
        names, outer = self.resolver, event.outer
        ident = (identity or NOT_TRACED).as_json()
        key = (event.reason, event.location, event.netns, outer.proto, outer.src, outer.dst, outer.dport,
               event.ifname, event.nf_point, ident.get("ct_dialled"))
        if key not in self._known:
            row = {"reason": names.reason(event.reason), "location": names.symbol(event.location), "count": 1,
                   "bytes": event.len, "proto": outer.proto_name, "src": outer.src, "dst": outer.dst,
                   "dport": outer.dport, "netns": names.netns(event.netns), "ifname": event.ifname or "-",
                   "hook": hook_label(event.nf_point), "last_cpu": event.cpu, **ident}
            cause = explain(row, self.states.get(str(row["netns"])))
            self._known[key] = "" if cause.kind == "unknown" else \
                f"cause: {cause.text}{cause.how() or ' (unknown)'}" + (f"; fix: {cause.fix}" if cause.fix else "")
        return self._known[key]


def packet_comment(packet: Packet, names: RecordedNames, identity_of: Callable[[PacketEvent], Identity | None],
                   cause_of: Callable[[PacketEvent, Identity | None], str] | None = None) -> str:
    """ "packet, 4 hops in 35.2us: +0.0us pt-client/eth0 xmit ...; ...; NAT ...; drop ... ; service ..." """
    events = sorted(packet.events, key=lambda event: event.ts_ns)
    start = events[0].ts_ns
    hops = []
    for event in events:
        where = f"{names.netns_name(event.netns)}/{event.ifname or event.ifindex}"
        if event.is_drop:
            what = f"drop {names.reasons.get(event.reason, f'reason {event.reason}')} at {names.symbol(event.location)}"
        else:
            what = describe_point(event)
        hops.append(f"{_micros(event.ts_ns - start)} {where} {what}")
    parts = [f"packet, {len(events)} hop{'s' if len(events) != 1 else ''} in "
             f"{(events[-1].ts_ns - start) / 1000:.1f}us: " + ", ".join(hops)]
    for nat in sorted(packet.nat, key=lambda nat: nat.ts_ns):
        parts.append(f"NAT {nat.before.describe()} -> {nat.after.describe()} at {point_label(nat.point)} "
                     f"in {names.netns_name(nat.netns)} {_micros(nat.ts_ns - start)}")
    for event in events:
        if event.is_drop:
            identity = identity_of(event)
            parts.append(f"dropped: {names.reasons.get(event.reason, f'reason {event.reason}')}; "
                         + drop_service(event, packet, names, identity))
            cause = cause_of(event, identity) if cause_of is not None else ""
            if cause:
                parts.append(cause)
    first = events[0]
    if first.outer.family:
        for side, ip in (("src", first.outer.src), ("dst", first.outer.dst)):
            pod = names.pod_of_ip(ip)
            if pod:
                parts.append(f"{side} pod {pod}")
    return "; ".join(parts)
