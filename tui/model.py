"""What the TUI shows, computed off the UI thread: drop groups, their rate and recent packets, the event rate.

Pure: takes decoded events and a clock, no Textual. The reader thread (tui/sources.py) feeds it and posts its
snapshots; screens never see individual events, only a Snapshot at a steady few Hz.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tracer.aggregate import DropKey, DropTable
from tracer.events import POINT_NAMES, PacketEvent
from tracer.report import Resolver, drop_rows
from tui.pyfilter import Predicate

SPARK = "▁▂▃▄▅▆▇█"
SPARK_SECONDS = 10  # one character per second
RATE_BUCKET_NS = 100_000_000
NS = 1_000_000_000

FlowKey = tuple[int, int, bytes, bytes, int]  # family, proto, saddr, daddr, dport: a packet's path across netns


class TableSource(Protocol):
    """Rows of dicts for the views other concerns fill (service flows, overlay/MTU, softirq, node).

    Optional: `uses_drops` (rows(drops=...) gets the shown drop rows), `uses_events` (add(event) for every event
    the view filter keeps, reset() when it changes), close() (called when the app exits).
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
    what: str  # "DROP NETFILTER_DROP at nft_do_chain+0x..." or "rx"/"queue"/"xmit"
    flow: str
    length: int
    is_drop: bool


@dataclass(frozen=True)
class Snapshot:
    """Everything the screens draw, as plain data."""

    events: int  # after the view filter
    received: int  # every event the source delivered
    rate: float  # events/s over the last second
    counters: dict[str, int]
    drops: list[dict[str, Any]]  # tracer.report.drop_rows() dicts plus "key" and "spark"
    drop_groups: int
    drop_total: int
    evicted: int
    path_events: int
    view_filter: str
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def key_id(key: DropKey) -> str:
    """A stable string for a drop group (DataTable row keys)."""
    reason, location, netns, family, proto, saddr, daddr, dport = key
    return f"{reason}:{location:x}:{netns}:{family}:{proto}:{saddr.hex()}:{daddr.hex()}:{dport}"


def flow_of(event: PacketEvent) -> FlowKey:
    t = event.outer
    return (t.family, t.proto, t.saddr, t.daddr, t.dport)


def sparkline(counts: list[int]) -> str:
    top = max(counts, default=0)
    if top == 0:
        return " " * len(counts)
    return "".join(" " if c == 0 else SPARK[min(len(SPARK) - 1, (c * len(SPARK) - 1) // top)] for c in counts)


class Model:
    """Thread-safe aggregation: `add()` from the reader thread, `snapshot()`/`timeline()` from anywhere."""

    def __init__(
        self,
        names: Resolver,
        clock: Callable[[], int] | None = None,
        timeline_len: int = 32,
        history_len: int = 50_000,
        max_timelines: int = 2000,
        max_rows: int = 500,
    ) -> None:
        self.names = names
        self.clock = clock  # monotonic ns like bpf_ktime_get_ns; None: the newest event's time (replay)
        self.timeline_len = timeline_len
        self.max_timelines = max_timelines
        self.max_rows = max_rows
        self.history: deque[PacketEvent] = deque(maxlen=history_len)
        self.tables: dict[str, TableSource] = {}
        self.lock = threading.Lock()
        self.received = 0
        self.predicate: Predicate | None = None
        self.filter_text = ""
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
        self.latest_ns = 0
        self.timelines: OrderedDict[DropKey, deque[PacketEvent]] = OrderedDict()
        self.paths: OrderedDict[FlowKey, deque[PacketEvent]] = OrderedDict()
        self.per_second: dict[DropKey, dict[int, int]] = {}
        self.rate_buckets: deque[list[int]] = deque()  # [bucket index, count]

    # -- feeding --

    def add(self, events: Iterable[PacketEvent]) -> None:
        with self.lock:
            self._fed = self._event_fed()  # tables may be added after the model is made
            for event in events:
                self.received += 1
                self.history.append(event)
                self._add(event)

    def _add(self, event: PacketEvent) -> None:
        if self.predicate is not None and not self.predicate(event):
            return
        self.events += 1
        for table in self._fed:
            table.add(event)
        self.latest_ns = max(self.latest_ns, event.ts_ns)
        bucket = event.ts_ns // RATE_BUCKET_NS
        if self.rate_buckets and self.rate_buckets[-1][0] == bucket:
            self.rate_buckets[-1][1] += 1
        else:
            self.rate_buckets.append([bucket, 1])
            while len(self.rate_buckets) > 64:
                self.rate_buckets.popleft()
        if not event.is_drop:
            self.path_events += 1
            _bounded_append(self.paths, flow_of(event), event, self.timeline_len, self.max_timelines)
            return
        self.drops.add(event)
        outer = event.outer
        key: DropKey = (event.reason, event.location, event.netns, outer.family, outer.proto, outer.saddr,
                        outer.daddr, outer.dport)
        evicted = _bounded_append(self.timelines, key, event, self.timeline_len, self.max_timelines)
        if evicted is not None:
            self.per_second.pop(evicted, None)
        seconds = self.per_second.setdefault(key, {})
        second = event.ts_ns // NS
        seconds[second] = seconds.get(second, 0) + 1
        if len(seconds) > SPARK_SECONDS * 2:
            for old in sorted(seconds)[:-SPARK_SECONDS]:
                del seconds[old]

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

    def snapshot(self, counters: dict[str, int]) -> Snapshot:
        with self.lock:
            now = self.now_ns()
            since = (now - NS) // RATE_BUCKET_NS
            rate = float(sum(count for bucket, count in self.rate_buckets if since < bucket <= now // RATE_BUCKET_NS))
            top = heapq.nsmallest(
                self.max_rows, self.drops.groups.items(), key=lambda item: (-item[1].count, -item[1].last_ns)
            )
            view = DropTable()
            view.groups = dict(top)
            rows = drop_rows(view, self.names)
            last_second = now // NS
            for (key, _row), out in zip(top, rows):
                seconds = self.per_second.get(key, {})
                out["key"] = key_id(key)
                out["spark"] = sparkline([seconds.get(s, 0) for s in range(last_second - SPARK_SECONDS + 1,
                                                                               last_second + 1)])
            tables = {}
            for name, source in self.tables.items():
                try:
                    # A source with `uses_drops` (the Services view) attributes the shown drop groups itself.
                    uses_drops = getattr(source, "uses_drops", False)
                    tables[name] = source.rows(drops=rows) if uses_drops else source.rows()  # type: ignore[call-arg]
                except Exception:  # noqa: BLE001 - a broken extra table must not stop the drops view
                    tables[name] = []
            return Snapshot(self.events, self.received, rate, dict(counters), rows, len(self.drops), self.drops.total,
                            self.drops.evicted, self.path_events, self.filter_text, tables)

    def find(self, ident: str) -> DropKey | None:
        with self.lock:
            for key in self.drops.groups:
                if key_id(key) == ident:
                    return key
        return None

    def timeline(self, ident: str) -> list[TimelineRow]:
        """The recent packets of one drop group: its drops and the path events of the same flow, oldest first."""
        key = self.find(ident)
        if key is None:
            return []
        with self.lock:
            drops = list(self.timelines.get(key, ()))
            flow = (key[3], key[4], key[5], key[6], key[7])
            path = list(self.paths.get(flow, ()))
        events = sorted(drops + path, key=lambda e: e.ts_ns)[-self.timeline_len * 2:]
        rows = []
        previous = 0
        for event in events:
            rows.append(self._timeline_row(event, event.ts_ns - previous if previous else 0))
            previous = event.ts_ns
        return rows

    def _timeline_row(self, event: PacketEvent, delta: int) -> TimelineRow:
        names = self.names
        wall = names.wall(event.ts_ns)
        stamp = time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1e6) % 1_000_000:06d}"
        if event.is_drop:
            what = f"DROP {names.reason(event.reason)} @{names.symbol(event.location)}"
        else:
            what = POINT_NAMES.get(event.reason, str(event.reason))
        flow = event.outer.describe()
        if event.inner:
            flow += f" [vxlan {event.vni}: {event.inner.describe()}]"
        return TimelineRow(event.ts_ns, delta, stamp, event.cpu, f"{names.netns(event.netns)}/{event.ifname or '-'}",
                           what, flow, event.len, event.is_drop)


def _bounded_append(store: OrderedDict[Any, deque[PacketEvent]], key: Any, event: PacketEvent, length: int,
                    limit: int) -> Any:
    """Append to key's deque, making room by evicting the least recently inserted key, which is returned."""
    found = store.get(key)
    if found is not None:
        found.append(event)
        return None
    evicted = store.popitem(last=False)[0] if len(store) >= limit else None
    store[key] = deque([event], maxlen=length)
    return evicted
