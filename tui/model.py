"""What the TUI shows, computed off the UI thread: drop groups, their rate and recent packets, the event rate.

Pure: takes decoded events and a clock, no Textual. The reader thread (tui/sources.py) feeds it and posts its
snapshots; screens never see individual events, only a Snapshot at a steady few Hz.
"""

from __future__ import annotations

import heapq
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tracer.analysis.aggregate import DropKey, DropTable, drop_key
from tracer.analysis.nfverdict import hook_label
from tracer.analysis.severity import classify, rank
from tracer.events.decode import (
    EVENT_CT,
    EVENT_DROP,
    EVENT_ICMP,
    EVENT_NAT,
    EVENT_NF_VERDICT,
    POINT_FRAGMENT,
    POINT_TC_EGRESS,
    POINT_TC_INGRESS,
    POINT_VXLAN_RCV,
    POINT_VXLAN_XMIT,
    PROTO_NAMES,
    NatEvent,
    PacketEvent,
    Tuple,
    format_addr,
)
from tracer.output.report import Resolver, describe_point, drop_rows
from tracer.probes.nf_points import point_label
from tui.pyfilter import Predicate

SPARK = "▁▂▃▄▅▆▇█"
SPARK_SECONDS = 10  # one character per second
# The drops view's and Softirq view's time windows (`w` cycles them): seconds, None for since the start.
WINDOWS: tuple[float | None, ...] = (None, 10.0, 60.0)
KEEP_SECONDS = 61  # per-second drop counts kept per group: the longest window, and the second being counted
RATE_BUCKET_NS = 100_000_000
NS = 1_000_000_000

FlowKey = tuple[int, int, bytes, bytes, int]  # family, proto, saddr, daddr, dport: a packet's path across netns
ConnKey = tuple[int, int, bytes, bytes, int, int]  # and its source port: one connection, one direction
Hop = PacketEvent | NatEvent  # what a timeline shows: packet events and the NAT rewrites between them
POINT_PROBES = {POINT_TC_INGRESS: "tc", POINT_TC_EGRESS: "tc", POINT_VXLAN_RCV: "overlay_kprobe",
                POINT_VXLAN_XMIT: "overlay_kprobe", POINT_FRAGMENT: "overlay_kprobe"}
TYPE_PROBES = {EVENT_DROP: "drops", EVENT_NAT: "netfilter", EVENT_ICMP: "icmp", EVENT_NF_VERDICT: "nf_kprobe"}


def probe_of(event: Any) -> str:
    """The probe (tracer.probes.registry.COUNTER_SLOTS) that emitted a decoded event, from its type and point code."""
    if event.type in TYPE_PROBES:
        return str(TYPE_PROBES[event.type])
    return POINT_PROBES.get(event.reason, "path")


class TableSource(Protocol):
    """Rows of dicts for the views other concerns fill (service flows, overlay/MTU, softirq, node).

    Optional: `uses_drops` (rows(drops=...) gets the drop rows, always since the start: its own packet counts
    are), `uses_events` (add(event) for every event the view filter keeps, reset() when it changes), `uses_window`
    (its `window` attribute is set to the model's before each rows()), close() (called when the app exits).
    """

    columns: list[str]

    def rows(self) -> list[dict[str, Any]]: ...


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


@dataclass(frozen=True)
class Snapshot:
    """Everything the screens draw, as plain data."""

    events: int  # after the view filter
    received: int  # every event the source delivered
    rate: float  # events/s over the last second
    counters: dict[str, int]
    # tracer.output.report.drop_rows() dicts plus "key", "spark" and "severity", problems first
    drops: list[dict[str, Any]]
    drop_groups: int
    drop_total: int
    evicted: int
    path_events: int
    view_filter: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    probe_events: dict[str, int] = field(default_factory=dict)  # events decoded per probe, before the view filter
    probe_counters: dict[str, dict[str, int]] = field(default_factory=dict)  # the kernel's counters per probe
    nat_events: int = 0
    window: float | None = None  # the drops' and softirq's time window (s); None: since the start


def window_label(window: float | None) -> str:
    return "since start" if window is None else f"last {window:.0f} s"


def key_id(key: DropKey) -> str:
    """A stable string for a drop group (DataTable row keys)."""
    reason, location, netns, family, proto, saddr, daddr, dport, ifname = key
    return f"{reason}:{location:x}:{netns}:{family}:{proto}:{saddr.hex()}:{daddr.hex()}:{dport}:{ifname}"


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


def sparkline(counts: list[int]) -> str:
    top = max(counts, default=0)
    if top == 0:
        return " " * len(counts)
    return "".join(" " if c == 0 else SPARK[min(len(SPARK) - 1, (c * len(SPARK) - 1) // top)] for c in counts)


def _packet_key(t: Tuple) -> ConnKey:
    """A tuple with its source port: one connection, as a NAT rewrite is keyed."""
    return (t.family, t.proto, t.saddr, t.daddr, t.sport, t.dport)


class Model:
    """Thread-safe aggregation: `add()` from the reader thread, `snapshot()`/`timeline()` from anywhere."""

    def __init__(
        self,
        names: Resolver,
        clock: Callable[[], int] | None = None,
        timeline_len: int = 32,
        history_len: int = 20_000,
        max_timelines: int = 2000,
        max_rows: int = 100,
    ) -> None:
        self.names = names
        self.clock = clock  # monotonic ns like bpf_ktime_get_ns; None: the newest event's time (replay)
        self.timeline_len = timeline_len
        self.max_timelines = max_timelines
        self.max_rows = max_rows
        self.history: deque[Any] = deque(maxlen=history_len)
        self.tables: dict[str, TableSource] = {}
        self.lock = threading.Lock()
        self.received = 0
        self.probe_events: dict[str, int] = {}
        self.predicate: Predicate | None = None
        self.filter_text = ""
        self.window: float | None = None
        self.explain: Callable[[list[dict[str, Any]]], None] | None = None  # SessionInfo.explain
        self._reset()

    def _event_fed(self) -> list[Any]:
        return [table for table in self.tables.values() if getattr(table, "uses_events", False)]

    def _reset(self) -> None:
        self._fed = self._event_fed()
        for table in self._fed:
            table.reset()
        self.drops = DropTable()
        self.events = 0
        self.path_events = 0
        self.nat_events = 0
        self.latest_ns = 0
        self.timelines: OrderedDict[DropKey, deque[PacketEvent]] = OrderedDict()
        self.paths: OrderedDict[FlowKey, deque[Hop]] = OrderedDict()
        # NAT rewrites seen, both ways: after flow -> before flows, and per connection the rewrite itself, so a
        # timeline follows a packet across its DNAT and says on every later hop what it was before.
        self.nat_before: OrderedDict[FlowKey, set[FlowKey]] = OrderedDict()
        self.rewrites: OrderedDict[ConnKey, NatEvent] = OrderedDict()
        self.per_second: dict[DropKey, dict[int, int]] = {}
        self.rate_buckets: deque[list[int]] = deque()  # [bucket index, count]

    # -- feeding --

    def add(self, events: Iterable[Any]) -> None:
        """Decoded events: packet events (drops, path), NAT rewrites; other kinds are only counted per probe."""
        with self.lock:
            self._fed = self._event_fed()  # tables may be added after the model is made
            for event in events:
                if event.type == EVENT_CT:
                    continue  # a drop's conntrack companion: part of that drop, as the kernel's counters count it
                self.received += 1
                probe = probe_of(event)
                self.probe_events[probe] = self.probe_events.get(probe, 0) + 1
                if isinstance(event, (PacketEvent, NatEvent)):
                    self.history.append(event)
                    self._add(event)

    def _add(self, event: Hop) -> None:
        if isinstance(event, NatEvent):
            self._add_nat(event)  # no packet bytes to filter on: rewrites are few (first packet of each)
            return
        if self.predicate is not None and not self.predicate(event):
            return
        self.events += 1
        for table in self._fed:
            table.add(event)
        self._count_rate(event.ts_ns)
        if not event.is_drop:
            self.path_events += 1
            _bounded_append(self.paths, flow_of(event), event, self.timeline_len, self.max_timelines)
            return
        self.drops.add(event)
        key = drop_key(event)  # the DropTable's own group key
        evicted = _bounded_append(self.timelines, key, event, self.timeline_len, self.max_timelines)
        if evicted is not None:
            self.per_second.pop(evicted, None)
        seconds = self.per_second.setdefault(key, {})
        second = event.ts_ns // NS
        seconds[second] = seconds.get(second, 0) + 1
        if len(seconds) > KEEP_SECONDS * 2:
            for old in sorted(seconds)[:-KEEP_SECONDS]:
                del seconds[old]

    def _count_rate(self, ts_ns: int) -> None:
        self.latest_ns = max(self.latest_ns, ts_ns)
        bucket = ts_ns // RATE_BUCKET_NS
        if self.rate_buckets and self.rate_buckets[-1][0] == bucket:
            self.rate_buckets[-1][1] += 1
        else:
            self.rate_buckets.append([bucket, 1])
            while len(self.rate_buckets) > 64:
                self.rate_buckets.popleft()

    def _add_nat(self, event: NatEvent) -> None:
        self.nat_events += 1
        before, after = tuple_flow(event.before), tuple_flow(event.after)
        _bounded_append(self.paths, after, event, self.timeline_len, self.max_timelines)
        if before != after:
            _bounded_append(self.paths, before, event, self.timeline_len, self.max_timelines)
        befores = self.nat_before.get(after)
        if befores is None:
            befores = self.nat_before[after] = set()
            while len(self.nat_before) > self.max_timelines:
                self.nat_before.popitem(last=False)
        if len(befores) < 64:  # a backend behind many VIPs: enough to follow, bounded
            befores.add(before)
        self.rewrites[_packet_key(event.after)] = event
        while len(self.rewrites) > self.max_timelines * 4:
            self.rewrites.popitem(last=False)

    def set_window(self, seconds: float | None) -> None:
        """The time window of the drops' counts and the softirq figures (rates are per second whatever it is)."""
        with self.lock:
            self.window = seconds

    def set_filter(self, expression: str, predicate: Predicate | None) -> None:
        """Re-aggregate the kept history under a new view filter (nothing is reattached)."""
        with self.lock:
            self.filter_text = expression
            self.predicate = predicate
            self._reset()
            for event in self.history:
                self._add(event)

    # -- reading --

    def now_ns(self) -> int:
        return self.clock() if self.clock is not None else self.latest_ns

    def snapshot(self, counters: dict[str, int], probe_counters: dict[str, dict[str, int]] | None = None) -> Snapshot:
        with self.lock:
            now = self.now_ns()
            since = (now - NS) // RATE_BUCKET_NS
            rate = float(sum(count for bucket, count in self.rate_buckets if since < bucket <= now // RATE_BUCKET_NS))
            rows = self._drop_rows(now, None)
            shown = rows if self.window is None else self._drop_rows(now, self.window)
            tables = {}
            for name, source in self.tables.items():
                try:
                    if getattr(source, "uses_window", False):
                        source.window = self.window  # type: ignore[attr-defined]
                    # A source with `uses_drops` (the Services view) attributes the drop groups itself: since the
                    # start, as its packet counts are, whatever the window.
                    uses_drops = getattr(source, "uses_drops", False)
                    tables[name] = source.rows(drops=rows) if uses_drops else source.rows()  # type: ignore[call-arg]
                except Exception:  # a broken extra table must not stop the drops view
                    tables[name] = []
            return Snapshot(self.events, self.received, rate, dict(counters), shown, len(self.drops), self.drops.total,
                            self.drops.evicted, self.path_events, self.filter_text, tables, dict(self.probe_events),
                            {probe: dict(values) for probe, values in (probe_counters or {}).items()},
                            self.nat_events, self.window)

    def _drop_rows(self, now: int, window: float | None) -> list[dict[str, Any]]:
        """The top groups, by count since the start or, with a window, by their drops in its last seconds (kept
        for the groups with recent packets: the timelines' LRU); "count" is then the window's."""
        last_second = now // NS
        groups = self.drops.groups
        counts: dict[DropKey, int] = {}
        if window is not None:
            first = last_second - int(window) + 1
            for key, seconds in self.per_second.items():
                recent = sum(n for second, n in seconds.items() if first <= second <= last_second)
                if recent and key in groups:
                    counts[key] = recent
            candidates = [(key, groups[key]) for key in counts]
        else:
            candidates = list(groups.items())
        top = heapq.nsmallest(self.max_rows, candidates,
                              key=lambda item: (-counts.get(item[0], item[1].count), -item[1].last_ns))
        view = DropTable()
        view.groups = dict(top)
        rows = drop_rows(view, self.names)
        for (key, _row), out in zip(view.sorted_groups(), rows):  # drop_rows' own order
            out["severity"] = classify(out["reason"], out["location"])
            seconds = self.per_second.get(key, {})
            out["key"] = key_id(key)
            out["spark"] = sparkline([seconds.get(s, 0) for s in range(last_second - SPARK_SECONDS + 1,
                                                                           last_second + 1)])
            if window is not None:
                out["total"] = out["count"]
                out["count"] = counts[key]
        if window is not None:
            rows.sort(key=lambda out: -out["count"])
        # Benign frees last, the rest by count: on a real node a firewall's policy drop outranks a handful of
        # unclassified multicast frees (NOT_SPECIFIED counts as loss), so class alone must not order them.
        rows.sort(key=lambda out: rank(out["severity"]) == rank("benign"))
        return rows

    def find(self, ident: str) -> DropKey | None:
        with self.lock:
            for key in self.drops.groups:
                if key_id(key) == ident:
                    return key
        return None

    def cause(self, ident: str) -> dict[str, Any] | None:
        """Why the drops of one group died (tracer/analysis/causes.py as JSON), None when it is gone or nothing
        explains. Live this reads the namespace (routes, rules, sysctls: up to seconds), so it is asked for on a
        drill-down, never per snapshot, and outside the lock."""
        key = self.find(ident)
        if key is None or self.explain is None:
            return None
        with self.lock:
            group = self.drops.groups.get(key)
            if group is None:
                return None
            view = DropTable()
            view.groups = {key: group}
            rows = drop_rows(view, self.names)
        self.explain(rows)
        cause: dict[str, Any] | None = rows[0].get("cause")
        return cause

    def timeline(self, ident: str) -> list[TimelineRow]:
        """The recent packets of one drop group: its drops, the path events of the same flow and of the flows NAT
        rewrote into it (a Service VIP before DNAT), and those rewrites, oldest first."""
        key = self.find(ident)
        if key is None:
            return []
        with self.lock:
            drops = list(self.timelines.get(key, ()))
        return self._rows(drops, (key[3], key[4], key[5], key[6], key[7]))

    def flow_timeline(self, flow: FlowKey) -> list[TimelineRow]:
        """The recent packets of one flow (e.g. client -> Service VIP, or client -> backend after DNAT), with the
        drops of the same flow, across its NAT rewrites. After a rewrite only the connections NAT made from this
        flow count: another Service's connections to the same backend share its post-DNAT addresses."""
        with self.lock:
            drops = self._drops_of(self._related(flow))
            made: set[ConnKey] = set()  # the connections NAT made from this flow: both sides of each rewrite
            for after, event in self.rewrites.items():
                before = _packet_key(event.before)
                if _key_flow(before) == flow:
                    made |= {before, after}
            # and what a later rewrite (SNAT after DNAT) made of those, and the replies of all of them
            made = _with_replies(made | {after for after, event in self.rewrites.items()
                                         if _packet_key(event.before) in made})
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
            keys.add(_packet_key(rewrite.before))
        keys |= {after for after, event in self.rewrites.items() if _packet_key(event.before) == conn}
        return _with_replies(keys)

    def _drops_of(self, flows: set[FlowKey]) -> list[PacketEvent]:
        """The kept drops of these flows (a drop group's key holds its flow from index 3 on)."""
        return [event for key, events in self.timelines.items() if (key[3], key[4], key[5], key[6], key[7])
                in flows for event in events]

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
                               f"{before} -> {after}", True, conn=_packet_key(event.before))
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
        rewrite = rewrites.get(_packet_key(event.outer))
        if rewrite is not None and rewrite.before != rewrite.after and rewrite.ts_ns <= event.ts_ns:
            nat = f"was {nat_change(rewrite.before, rewrite.after)[1]}"
        return TimelineRow(event.ts_ns, delta, self._stamp(event.ts_ns), event.cpu,
                           f"{names.netns(event.netns)}/{event.ifname or '-'}", what, flow, event.len, event.is_drop,
                           hook, nat, location=location, conn=_packet_key(event.inner or event.outer))


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
        return _packet_key(hop.before), _packet_key(hop.after)
    return (_packet_key(hop.outer),) if hop.inner is None else (_packet_key(hop.outer), _packet_key(hop.inner))


def _bounded_append(store: OrderedDict[Any, deque[Any]], key: Any, event: Any, length: int, limit: int) -> Any:
    """Append to key's deque, making room by evicting the least recently inserted key, which is returned."""
    found = store.get(key)
    if found is not None:
        found.append(event)
        return None
    evicted = store.popitem(last=False)[0] if len(store) >= limit else None
    store[key] = deque([event], maxlen=length)
    return evicted
