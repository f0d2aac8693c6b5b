"""Drill-down by identity: a drop group's, a Service flow's or one connection's recent packets, across NAT.

The queries over what the Model (tui/model.py) keeps: its drop timelines, the path events per flow and the NAT
rewrites seen. A connection is its tuple with the source port (never another connection to the same address), and
after a DNAT only the connections NAT made from the flow count. Drops kept as raw ring-buffer bytes (the Model's
fast path) are decoded here, when someone opens a timeline.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from tracer.analysis.aggregate import DropKey
from tracer.analysis.nfverdict import hook_label
from tracer.events.decode import EVENT_ICMP, PROTO_NAMES, NatEvent, PacketEvent, Tuple, decode, format_addr
from tracer.output.report import Resolver, describe_point
from tracer.probes.nf_points import point_label

FlowKey = tuple[int, int, bytes, bytes, int]  # family, proto, saddr, daddr, dport: a packet's path across netns
ConnKey = tuple[int, int, bytes, bytes, int, int]  # and its source port: one connection, one direction
Hop = PacketEvent | NatEvent  # what a timeline shows: packet events and the NAT rewrites between them


@dataclass(frozen=True)
class TimelineRow:
    ts_ns: int
    delta_ns: int  # since the previous row; 0 for the first
    time: str  # HH:MM:SS.micro
    cpu: int
    where: str  # netns/ifname
    what: str  # "DROP NETFILTER_DROP @nft_do_chain+0x...", "rx"/"queue"/"tc-in", "DNAT"/"SNAT"
    flow: str  # the packet's tuple at this hop (a NAT row: before the rewrite)
    length: int
    is_drop: bool
    hook: str = ""  # the netfilter hook a drop passed last, a NAT rewrite's netfilter point ("-" for path events)
    nat: str = ""  # a NAT row: "before -> after"; a rewritten packet's later hops: "was <before>"
    is_nat: bool = False
    location: str = ""  # drops: the kernel function that freed the packet
    conn: ConnKey | None = None  # the packet's connection at this hop (a NAT row: before the rewrite)




def flow_of(event: PacketEvent) -> FlowKey:
    return tuple_flow(event.outer)


def tuple_flow(t: Tuple) -> FlowKey:
    return (t.family, t.proto, t.saddr, t.daddr, t.dport)


def ip_flow(proto: str, src: str, dst: str, dport: int) -> FlowKey:
    """A FlowKey from text (the Services view's rows)."""
    family = 6 if ":" in dst else 4
    af = socket.AF_INET6 if family == 6 else socket.AF_INET

    def raw(ip: str) -> bytes:
        return socket.inet_pton(af, ip).ljust(16, b"\0")

    return (family, {"tcp": 6, "udp": 17, "sctp": 132}.get(proto, 0), raw(src), raw(dst), dport)


def nat_change(before: Tuple, after: Tuple) -> tuple[str, str, str]:
    """What a NAT rewrite changed: ("DNAT", "10.96.0.10:80", "10.244.1.5:8080"), SNAT likewise, or both."""
    dnat = (before.daddr, before.dport) != (after.daddr, after.dport)
    snat = (before.saddr, before.sport) != (after.saddr, after.sport)
    if dnat and not snat:
        return "DNAT", f"{before.dst}:{before.dport}", f"{after.dst}:{after.dport}"
    if snat and not dnat:
        return "SNAT", f"{before.src}:{before.sport}", f"{after.src}:{after.sport}"
    return "NAT", before.describe(), after.describe()



def packet_key(t: Tuple) -> ConnKey:
    """A tuple with its source port: one connection, as a NAT rewrite is keyed."""
    return (t.family, t.proto, t.saddr, t.daddr, t.sport, t.dport)


def packet_of(kept: PacketEvent | bytes) -> PacketEvent:
    """A kept drop: decoded already, or raw bytes from the fast path."""
    return decode(kept) if isinstance(kept, bytes) else kept


class Timelines:
    """The drill-down queries, mixed into the Model: they read its stores under its lock."""

    names: Resolver
    lock: threading.Lock
    timeline_len: int
    timelines: OrderedDict[DropKey, deque[Any]]
    paths: OrderedDict[FlowKey, deque[Hop]]
    nat_before: OrderedDict[FlowKey, set[FlowKey]]
    rewrites: OrderedDict[ConnKey, NatEvent]

    def find(self, ident: str) -> DropKey | None:
        """The drop group a row id names; the Model defines it (its drop table), this mixin only calls it."""
        raise NotImplementedError

    def timeline(self, ident: str) -> list[TimelineRow]:
        """The recent packets of one drop group: its drops, the path events of the same flow and of the flows NAT
        rewrote into it (a Service VIP before DNAT), and those rewrites, oldest first."""
        key = self.find(ident)
        if key is None:
            return []
        with self.lock:
            drops = [packet_of(kept) for kept in self.timelines.get(key, ())]
        return self._rows(drops, (key[3], key[4], key[5], key[6], key[7]))

    def flow_timeline(self, flow: FlowKey) -> list[TimelineRow]:
        """The recent packets of one flow (e.g. client -> Service VIP, or client -> backend after DNAT), with the
        drops of the same flow, across its NAT rewrites. After a rewrite only the connections NAT made from this
        flow count: another Service's connections to the same backend share its post-DNAT addresses."""
        with self.lock:
            drops = self._drops_of(self._related(flow))
            made: set[ConnKey] = set()  # the connections NAT made from this flow: both sides of each rewrite
            for after, event in self.rewrites.items():
                before = packet_key(event.before)
                if _key_flow(before) == flow:
                    made |= {before, after}
            # and what a later rewrite (SNAT after DNAT) made of those, and the replies of all of them
            made = _with_replies(made | {after for after, event in self.rewrites.items()
                                         if packet_key(event.before) in made})
        if not made:  # not a flow NAT rewrote (a post-DNAT or plain flow): every packet of it
            return self._rows(drops, flow)
        return self._rows(drops, flow, made, keep=flow)

    def connection_timeline(self, conn: ConnKey) -> list[TimelineRow]:
        """One connection's packets only: its tuple, what NAT rewrote it from or into, and the replies of each
        (never another connection to the same address and port)."""
        with self.lock:
            keys = self._connection_keys(conn)
            flow = _key_flow(conn)
            drops = self._drops_of(self._related(flow))
        return self._rows(drops, flow, keys)

    def _connection_keys(self, conn: ConnKey) -> set[ConnKey]:
        keys = {conn}
        rewrite = self.rewrites.get(conn)  # conn is what a rewrite made
        if rewrite is not None:
            keys.add(packet_key(rewrite.before))
        keys |= {after for after, event in self.rewrites.items() if packet_key(event.before) == conn}
        return _with_replies(keys)

    def _drops_of(self, flows: set[FlowKey]) -> list[PacketEvent]:
        """The kept drops of these flows (a drop group's key holds its flow from index 3 on)."""
        return [packet_of(kept) for key, events in self.timelines.items() if (key[3], key[4], key[5], key[6], key[7])
                in flows for kept in events]

    def _related(self, flow: FlowKey) -> set[FlowKey]:
        """The flow, the flows NAT rewrote into it, and the flows it was rewritten into."""
        related = {flow, *self.nat_before.get(flow, ())}
        related |= {after for after, befores in self.nat_before.items() if flow in befores}
        return related

    def _rows(self, drops: list[PacketEvent], flow: FlowKey, conns: set[ConnKey] | None = None,
              keep: FlowKey | None = None) -> list[TimelineRow]:
        """`conns`: only the hops of these connections, and of the flow `keep` whatever their connection."""
        with self.lock:
            hops: list[Hop] = list(drops)
            seen: set[int] = set()
            for related in self._related(flow):
                for hop in self.paths.get(related, ()):
                    if id(hop) not in seen:  # a NAT event is stored under its before and after flows
                        seen.add(id(hop))
                        hops.append(hop)
            if conns is not None:
                hops = [hop for hop in hops if not conns.isdisjoint(_hop_conns(hop))
                        or (keep is not None and any(_key_flow(conn) == keep for conn in _hop_conns(hop)))]
            rewrites = dict(self.rewrites)
        events = sorted(hops, key=lambda e: e.ts_ns)[-self.timeline_len * 3:]
        rows = []
        previous = 0
        for event in events:
            rows.append(self._timeline_row(event, event.ts_ns - previous if previous else 0, rewrites))
            previous = event.ts_ns
        return rows

    def _stamp(self, ts_ns: int) -> str:
        wall = self.names.wall(ts_ns)
        return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1e6) % 1_000_000:06d}"

    def _timeline_row(self, event: Hop, delta: int, rewrites: dict[ConnKey, NatEvent]) -> TimelineRow:
        names = self.names
        if isinstance(event, NatEvent):
            kind, before, after = nat_change(event.before, event.after)
            return TimelineRow(event.ts_ns, delta, self._stamp(event.ts_ns), event.cpu, f"{names.netns(event.netns)}/-",
                               kind, event.before.describe(), 0, False, point_label(event.point),
                               f"{before} -> {after}", True, conn=packet_key(event.before))
        location = ""
        if event.is_drop:
            what = f"DROP {names.reason(event.reason)}"
            location = names.symbol(event.location)
            hook = hook_label(event.nf_point) if event.nf_point else "-"
        elif event.type == EVENT_ICMP:  # an ICMP error the node sent about this packet (reason = type << 8 | code)
            what = f"ICMP {event.reason >> 8}/{event.reason & 0xff} sent" + (f" mtu {event.location}" if event.location
                                                                            else "")
            hook = "icmp_send"
        else:
            what = describe_point(event)
            hook = "-"
        flow = event.outer.describe()
        if event.inner:
            flow += f" [vxlan {event.vni}: {event.inner.describe()}]"
        nat = ""
        rewrite = rewrites.get(packet_key(event.outer))
        if rewrite is not None and rewrite.before != rewrite.after and rewrite.ts_ns <= event.ts_ns:
            nat = f"was {nat_change(rewrite.before, rewrite.after)[1]}"
        return TimelineRow(event.ts_ns, delta, self._stamp(event.ts_ns), event.cpu,
                           f"{names.netns(event.netns)}/{event.ifname or '-'}", what, flow, event.len, event.is_drop,
                           hook, nat, location=location, conn=packet_key(event.inner or event.outer))



def connection_text(conn: ConnKey) -> str:
    family, proto, saddr, daddr, sport, dport = conn
    src, dst = format_addr(family, saddr), format_addr(family, daddr)
    if family == 6:
        src, dst = f"[{src}]", f"[{dst}]"
    return f"{PROTO_NAMES.get(proto, str(proto))} {src}:{sport} > {dst}:{dport}"


def _with_replies(keys: set[ConnKey]) -> set[ConnKey]:
    return keys | {(family, proto, daddr, saddr, dport, sport) for family, proto, saddr, daddr, sport, dport in keys}


def _key_flow(conn: ConnKey) -> FlowKey:
    return conn[0], conn[1], conn[2], conn[3], conn[5]


def _hop_conns(hop: Hop) -> tuple[ConnKey, ...]:
    """The connection keys a hop belongs to: a NAT rewrite's both sides; a packet's tuple (and its inner one)."""
    if isinstance(hop, NatEvent):
        return packet_key(hop.before), packet_key(hop.after)
    return (packet_key(hop.outer),) if hop.inner is None else (packet_key(hop.outer), packet_key(hop.inner))

