"""What the TUI shows, computed off the UI thread: drop groups, their rate and recent packets, the event rate.

Pure: takes decoded events and a clock, no Textual. The reader thread (tui/sources.py) feeds it and posts its
snapshots; screens never see individual events, only a Snapshot at a steady few Hz.
"""

from __future__ import annotations

import heapq
import struct
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tracer.analysis.aggregate import DropKey, DropTable, drop_key
from tracer.analysis.severity import classify, rank
from tracer.events.decode import (
    EVENT_CT,
    EVENT_DROP,
    EVENT_ICMP,
    EVENT_NAT,
    EVENT_NF_VERDICT,
    EVENT_SIZE,
    EVENT_SIZES,
    POINT_FRAGMENT,
    POINT_TC_EGRESS,
    POINT_TC_INGRESS,
    POINT_VXLAN_RCV,
    POINT_VXLAN_XMIT,
    NatEvent,
    PacketEvent,
    decode,
    decode_any,
)
from tracer.output.report import Resolver, drop_rows
from tui.pyfilter import Predicate
from tui.timelines import ConnKey, FlowKey, Hop, Timelines, flow_of, packet_key, tuple_flow

SPARK = "▁▂▃▄▅▆▇█"
SPARK_SECONDS = 10  # one character per second
# The drops view's and Softirq view's time windows (`w` cycles them): seconds, None for since the start.
WINDOWS: tuple[float | None, ...] = (None, 10.0, 60.0)
KEEP_SECONDS = 61  # per-second drop counts kept per group: the longest window, and the second being counted
RATE_BUCKET_NS = 100_000_000
NS = 1_000_000_000
_TS = struct.Struct("<Q")  # ts_ns at offset 8 of every event (tracer/events.field_offsets)

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
    generation: int = 0  # the model's filter and window changes so far: an older snapshot is a stale frame


def window_label(window: float | None) -> str:
    return "since start" if window is None else f"last {window:.0f} s"


def key_id(key: DropKey) -> str:
    """A stable string for a drop group (DataTable row keys)."""
    reason, location, netns, family, proto, saddr, daddr, dport, ifname = key
    return f"{reason}:{location:x}:{netns}:{family}:{proto}:{saddr.hex()}:{daddr.hex()}:{dport}:{ifname}"


def sparkline(counts: list[int]) -> str:
    top = max(counts, default=0)
    if top == 0:
        return " " * len(counts)
    return "".join(" " if c == 0 else SPARK[min(len(SPARK) - 1, (c * len(SPARK) - 1) // top)] for c in counts)


class Model(Timelines):
    """Thread-safe aggregation: `add()`/`add_raw()` from the reader, `snapshot()`/`timeline()` from anywhere.

    `add_raw` is the fast path for a ring buffer's bytes: a drop that no view filter and no event-fed table needs
    to see decoded is grouped on its raw bytes (DropTable.add_raw) and kept raw in its timeline and the history,
    decoded only when a row or a timeline is read. Everything else is decoded and goes through `add`."""

    def __init__(
        self,
        names: Resolver,
        clock: Callable[[], int] | None = None,
        timeline_len: int = 32,
        history_len: int = 20_000,
        max_timelines: int = 2000,
        max_rows: int = 100,
        max_groups: int = 100_000,
    ) -> None:
        self.names = names
        self.clock = clock  # monotonic ns like bpf_ktime_get_ns; None: the newest event's time (replay)
        self.timeline_len = timeline_len
        self.max_timelines = max_timelines
        self.max_rows = max_rows
        self.max_groups = max_groups  # drop groups kept; past it the oldest is evicted and counted
        self.history: deque[Any] = deque(maxlen=history_len)
        self.tables: dict[str, TableSource] = {}
        self.lock = threading.Lock()
        self.received = 0
        self.probe_events: dict[str, int] = {}
        self.predicate: Predicate | None = None
        self.filter_text = ""
        self.window: float | None = None
        self.explain: Callable[[list[dict[str, Any]]], None] | None = None  # SessionInfo.explain
        self.generation = 0
        self._reset()

    def _event_fed(self) -> list[Any]:
        return [table for table in self.tables.values() if getattr(table, "uses_events", False)]

    def _reset(self) -> None:
        self._fed = self._event_fed()
        for table in self._fed:
            table.reset()
        self.drops = DropTable(self.max_groups)
        self.events = 0
        self.path_events = 0
        self.nat_events = 0
        self.latest_ns = 0
        self.timelines: OrderedDict[DropKey, deque[PacketEvent | bytes]] = OrderedDict()
        self.paths: OrderedDict[FlowKey, deque[Hop]] = OrderedDict()
        # NAT rewrites seen, both ways: after flow -> before flows, and per connection the rewrite itself, so a
        # timeline follows a packet across its DNAT and says on every later hop what it was before.
        self.nat_before: OrderedDict[FlowKey, set[FlowKey]] = OrderedDict()
        self.rewrites: OrderedDict[ConnKey, NatEvent] = OrderedDict()
        self.per_second: dict[DropKey, dict[int, int]] = {}
        self.rate_buckets: deque[list[int]] = deque()  # [bucket index, count]
        # The top groups of the last snapshot and the groups touched since: a group's count only grows, so only
        # these can make the next top (a full ranking of 100k groups four times a second was most of the reader).
        self._top: list[DropKey] = []
        self._touched: set[DropKey] = set()
        self._ranked = False

    # -- feeding --

    def add(self, events: Iterable[Any]) -> None:
        """Decoded events: packet events (drops, path), NAT rewrites; other kinds are only counted per probe."""
        with self.lock:
            self._fed = self._event_fed()  # tables may be added after the model is made
            for event in events:
                self._add_decoded(event)

    def add_raw(self, raws: Iterable[bytes]) -> None:
        """Raw ring-buffer bytes (LiveSource, ReplaySource): plain drops on the fast path, the rest decoded."""
        with self.lock:
            self._fed = self._event_fed()
            fast = self._fast()
            wanted = [table.wants_raw for table in self._fed]
            wants = wanted[0] if len(wanted) == 1 else lambda data: any(want(data) for want in wanted)
            for data in raws:
                kind = data[0]
                if kind == EVENT_CT:
                    continue  # a drop's conntrack companion: part of that drop, as the kernel's counters count it
                if len(data) < EVENT_SIZES.get(kind, EVENT_SIZE):
                    continue  # short: nothing to decode (the source counts what it could not read)
                if fast and kind == EVENT_DROP and not wants(data):
                    self.received += 1
                    self.probe_events["drops"] = self.probe_events.get("drops", 0) + 1
                    self.history.append(data)
                    self._add_raw_drop(data)
                else:
                    self._add_decoded(decode_any(data))

    def _fast(self) -> bool:
        """Whether plain drops may skip decoding: no view filter, and every event-fed table can say from the
        bytes which events it needs (`wants_raw`)."""
        return self.predicate is None and all(hasattr(table, "wants_raw") for table in self._fed)

    def _add_decoded(self, event: Any) -> None:
        if event.type == EVENT_CT:
            return  # a drop's conntrack companion: part of that drop, as the kernel's counters count it
        self.received += 1
        probe = probe_of(event)
        self.probe_events[probe] = self.probe_events.get(probe, 0) + 1
        if isinstance(event, (PacketEvent, NatEvent)):
            self.history.append(event)
            self._add(event)

    def _add_raw_drop(self, data: bytes) -> None:
        self.events += 1
        ts_ns = _TS.unpack_from(data, 8)[0]
        self._count_rate(ts_ns)
        self.drops.add_raw(data)
        self._count_drop(self.drops.raw_key(data), data, ts_ns)

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
        self._count_drop(drop_key(event), event, event.ts_ns)  # the DropTable's own group key

    def _count_drop(self, key: DropKey, kept: PacketEvent | bytes, ts_ns: int) -> None:
        """A drop in its group's timeline and per-second counts."""
        self._touched.add(key)
        evicted = _bounded_append(self.timelines, key, kept, self.timeline_len, self.max_timelines)
        if evicted is not None:
            self.per_second.pop(evicted, None)
        seconds = self.per_second.get(key)
        if seconds is None:
            seconds = self.per_second[key] = {}
        second = ts_ns // NS
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
        self.rewrites[packet_key(event.after)] = event
        while len(self.rewrites) > self.max_timelines * 4:
            self.rewrites.popitem(last=False)

    def set_window(self, seconds: float | None) -> None:
        """The time window of the drops' counts and the softirq figures (rates are per second whatever it is)."""
        with self.lock:
            self.window = seconds
            self.generation += 1

    def set_filter(self, expression: str, predicate: Predicate | None) -> None:
        """Re-aggregate the kept history under a new view filter (nothing is reattached)."""
        with self.lock:
            self.filter_text = expression
            self.predicate = predicate
            self.generation += 1
            self._reset()
            fast = self._fast()
            for kept in self.history:
                if isinstance(kept, bytes):  # a plain drop, kept raw: decoded only if the filter must see it
                    if fast:
                        self._add_raw_drop(kept)
                    else:
                        self._add(decode(kept))
                else:
                    self._add(kept)

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
                            self.nat_events, self.window, self.generation)

    def _drop_rows(self, now: int, window: float | None) -> list[dict[str, Any]]:
        """The top groups, by count since the start or, with a window, by their drops in its last seconds (kept
        for the groups with recent packets: the timelines' LRU); "count" is then the window's."""
        last_second = now // NS
        self.drops.fold()
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
            candidates = self._candidates(groups)
        top = heapq.nsmallest(self.max_rows, candidates,
                              key=lambda item: (-counts.get(item[0], item[1].count), -item[1].last_ns))
        if window is None:
            self._top, self._ranked = [key for key, _row in top], True
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

    def _candidates(self, groups: dict[DropKey, Any]) -> list[tuple[DropKey, Any]]:
        """The groups that can be in the top since the start: the last top and those touched since, unless a top
        group was evicted (then every group)."""
        touched, self._touched = self._touched, set()
        if not self._ranked or any(key not in groups for key in self._top):
            return list(groups.items())
        return [(key, groups[key]) for key in touched.union(self._top) if key in groups]

    def find(self, ident: str) -> DropKey | None:
        with self.lock:
            self.drops.fold()
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
        self.explain(rows)  # outside the lock
        cause: dict[str, Any] | None = rows[0].get("cause")
        return cause

def _bounded_append(store: OrderedDict[Any, deque[Any]], key: Any, event: Any, length: int, limit: int) -> Any:
    """Append to key's deque, making room by evicting the least recently inserted key, which is returned."""
    found = store.get(key)
    if found is not None:
        found.append(event)
        return None
    evicted = store.popitem(last=False)[0] if len(store) >= limit else None
    store[key] = deque([event], maxlen=length)
    return evicted
