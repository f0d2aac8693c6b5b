"""softirq and NAPI latency: NET_RX/NET_TX wait and run histograms kept in the kernel, softnet_stat deltas.

The BPF side (bpf/softirq.c) keeps per-CPU log2 histograms; tracer/probes/softirq_probe.py loads it with BCC and takes
`SoftirqSnapshot`s of the maps and /proc/net/softnet_stat. Everything here is pure but reading softnet_stat:
`SoftirqAggregator` takes snapshots (live or recorded) and reports per-CPU deltas with p50/p99/max estimated from
the log2 buckets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SLOTS = 48  # PT_SIRQ_SLOTS in bpf/softirq.c
# hists index in bpf/softirq.c -> (softirq, phase). "wait_ksoftirqd" is the subset of waits whose handler ran in
# ksoftirqd: the deferred ones, the only ones CPU starvation lengthens (see bpf/softirq.c).
HISTS: tuple[tuple[str, str], ...] = (("NET_TX", "wait"), ("NET_TX", "run"), ("NET_RX", "wait"), ("NET_RX", "run"),
                                      ("NET_TX", "wait_ksoftirqd"), ("NET_RX", "wait_ksoftirqd"))
NAPI_FIELDS = ("polls", "work", "exhausted", "idle")  # PT_NAPI_* order
SOFTNET_STAT = "/proc/net/softnet_stat"

HistKey = tuple[str, str]  # ("NET_RX", "wait")


# Histograms ------------------------------------------------------------------------------------------------


def slot_bounds(slot: int) -> tuple[int, int]:
    """Values slot `slot` holds, as [low, high): slot 0 is exactly 0, slot s > 0 is [2^(s-1), 2^s)."""
    if slot <= 0:
        return 0, 1
    return 1 << (slot - 1), 1 << slot


def slot_of(value: int) -> int:
    """The slot the kernel puts `value` in (pt_log2_slot): floor(log2(v)) + 1, capped at the last slot."""
    return min(value.bit_length(), SLOTS - 1)


@dataclass(frozen=True)
class Log2Hist:
    """A log2 histogram of nanoseconds: counts per slot, plus the exact count, sum and max the kernel kept."""

    slots: tuple[int, ...] = (0,) * SLOTS
    count: int = 0
    sum_ns: int = 0
    max_ns: int = 0

    @classmethod
    def of_values(cls, values: Iterable[int]) -> Log2Hist:
        slots = [0] * SLOTS
        count = total = peak = 0
        for value in values:
            slots[slot_of(value)] += 1
            count += 1
            total += value
            peak = max(peak, value)
        return cls(tuple(slots), count, total, peak)

    def __sub__(self, older: Log2Hist) -> Log2Hist:
        """What was added since `older` (the kernel's counters only grow); max stays the newer one's."""
        slots = tuple(max(0, a - b) for a, b in zip(self.slots, older.slots))
        return Log2Hist(slots, max(0, self.count - older.count), max(0, self.sum_ns - older.sum_ns), self.max_ns)

    def __add__(self, other: Log2Hist) -> Log2Hist:
        slots = tuple(a + b for a, b in zip(self.slots, other.slots))
        return Log2Hist(slots, self.count + other.count, self.sum_ns + other.sum_ns, max(self.max_ns, other.max_ns))

    @property
    def total(self) -> int:
        return sum(self.slots)

    @property
    def mean_ns(self) -> float:
        return self.sum_ns / self.count if self.count else 0.0

    def percentile(self, q: float) -> float:
        """Estimate of the q-quantile (0 < q <= 1) in ns: linear interpolation inside the bucket that holds it.

        The error is bounded by the bucket: the true value lies in [low, high) of the slot returned from.
        When the kernel's max falls inside that bucket it caps the estimate.
        """
        if not 0 < q <= 1:
            raise ValueError(f"quantile {q} is not in (0, 1]")
        total = self.total
        if not total:
            return 0.0
        rank = q * total
        seen = 0
        for slot, n in enumerate(self.slots):
            if not n:
                continue
            if seen + n >= rank:
                low, high = slot_bounds(slot)
                if self.max_ns and low <= self.max_ns < high:
                    high = self.max_ns + 1
                return low + (high - low) * (rank - seen) / n
            seen += n
        return float(slot_bounds(SLOTS - 1)[1])

    def nonzero(self) -> list[tuple[int, int, int]]:
        """(low, high, count) of every non-empty bucket, for printing and JSON."""
        return [(*slot_bounds(slot), n) for slot, n in enumerate(self.slots) if n]


# softnet_stat ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftnetRow:
    """One CPU's line of /proc/net/softnet_stat (net/core/net-procfs.c softnet_seq_show)."""

    cpu: int
    processed: int
    dropped: int  # backlog queue full (netdev_max_backlog): packets lost before any protocol saw them
    time_squeeze: int  # net_rx_action ran out of budget or time with work left
    received_rps: int = 0
    flow_limit: int = 0

    def __sub__(self, older: SoftnetRow) -> SoftnetRow:
        # 32-bit counters printed with %08x: a wrap is a small negative difference.
        def d(a: int, b: int) -> int:
            return (a - b) % (1 << 32)

        return SoftnetRow(self.cpu, d(self.processed, older.processed), d(self.dropped, older.dropped),
                          d(self.time_squeeze, older.time_squeeze), d(self.received_rps, older.received_rps),
                          d(self.flow_limit, older.flow_limit))


def parse_softnet_stat(text: str) -> dict[int, SoftnetRow]:
    """CPU -> counters. Since 5.10 the 13th column is the CPU id; before, lines are in order of online CPUs."""
    rows: dict[int, SoftnetRow] = {}
    for index, line in enumerate(text.splitlines()):
        words = line.split()
        if not words:
            continue
        try:
            cols = [int(word, 16) for word in words]
        except ValueError as err:
            raise ValueError(f"softnet_stat line {index + 1} is not hex: {line!r}") from err
        if len(cols) < 3:
            raise ValueError(f"softnet_stat line {index + 1} has {len(cols)} columns, expected at least 3")
        cpu = cols[12] if len(cols) >= 13 else index
        rps = cols[9] if len(cols) > 9 else 0
        flow = cols[10] if len(cols) > 10 else 0
        rows[cpu] = SoftnetRow(cpu, cols[0], cols[1], cols[2], rps, flow)
    return rows


def read_softnet_stat(path: str = SOFTNET_STAT) -> dict[int, SoftnetRow]:
    with open(path, encoding="ascii") as handle:
        return parse_softnet_stat(handle.read())


# Snapshots and aggregation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftirqSnapshot:
    """Cumulative kernel counters at one moment: histograms and NAPI counts per CPU, softnet_stat per CPU."""

    ts: float  # time.monotonic()
    hists: Mapping[int, Mapping[HistKey, Log2Hist]]  # cpu -> (softirq, phase) -> histogram
    napi: Mapping[int, Mapping[str, int]] = field(default_factory=dict)  # cpu -> NAPI_FIELDS -> count
    softnet: Mapping[int, SoftnetRow] = field(default_factory=dict)


@dataclass(frozen=True)
class CpuReport:
    cpu: int | None  # None: all CPUs together
    hists: dict[HistKey, Log2Hist]
    napi: dict[str, int]
    softnet: SoftnetRow | None

    def stats(self, key: HistKey) -> dict[str, float]:
        hist = self.hists.get(key, Log2Hist())
        return {"count": hist.count, "p50_ns": hist.percentile(0.5), "p99_ns": hist.percentile(0.99),
                "max_ns": hist.max_ns, "mean_ns": hist.mean_ns}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cpu": "all" if self.cpu is None else self.cpu}
        for softirq, phase in HISTS:
            key = (softirq, phase)
            s = self.stats(key)
            hist = self.hists.get(key, Log2Hist())
            out[f"{softirq.lower()}_{phase}"] = {
                "count": s["count"], "p50_us": round(s["p50_ns"] / 1000, 3), "p99_us": round(s["p99_ns"] / 1000, 3),
                "max_us": round(s["max_ns"] / 1000, 3), "mean_us": round(s["mean_ns"] / 1000, 3),
                "buckets_ns": [[low, high, n] for low, high, n in hist.nonzero()],
            }
        out["napi"] = dict(self.napi)
        if self.softnet is not None:
            out["softnet"] = {"processed": self.softnet.processed, "dropped": self.softnet.dropped,
                              "time_squeeze": self.softnet.time_squeeze}
        return out


# How far back report(window=...) can look when asked to keep snapshots: the TUI's longest window is 60 s.
RECENT_SECONDS = 62.0


class SoftirqAggregator:
    """Deltas between a base snapshot and the latest, per CPU and for all CPUs: the base is the first snapshot, or
    for `report(window=...)` the newest one at least that many seconds old (kept for up to `keep_seconds`).

    Pure: feed it snapshots (from `SoftirqProbe.snapshot()` or a recording) with `add()`, then call `report()`.
    """

    def __init__(self, keep_seconds: float = 0.0) -> None:
        self.first: SoftirqSnapshot | None = None
        self.last: SoftirqSnapshot | None = None
        self.snapshots = 0
        self.keep_seconds = keep_seconds  # 0: only the first and the latest (a one-shot measurement)
        self.recent: deque[SoftirqSnapshot] = deque()

    def add(self, snapshot: SoftirqSnapshot) -> None:
        if self.first is None:
            self.first = snapshot
        self.last = snapshot
        self.snapshots += 1
        if self.keep_seconds:
            self.recent.append(snapshot)
            # the newest snapshot at least keep_seconds old stays: it is the longest window's base
            while len(self.recent) > 2 and self.recent[1].ts <= snapshot.ts - self.keep_seconds:
                self.recent.popleft()

    def base(self, window: float | None = None) -> SoftirqSnapshot | None:
        """The snapshot a report subtracts: the first, or the newest at least `window` s before the latest (the
        oldest kept when none is that old: a window longer than what was seen covers what was seen)."""
        if window is None or not self.recent or self.last is None:
            return self.first
        older = [snap for snap in self.recent if snap.ts <= self.last.ts - window]
        return older[-1] if older else self.recent[0]

    @property
    def seconds(self) -> float:
        return self.seconds_in()

    def seconds_in(self, window: float | None = None) -> float:
        """The time the report covers."""
        base = self.base(window)
        if base is None or self.last is None:
            return 0.0
        return self.last.ts - base.ts

    def report(self, window: float | None = None) -> list[CpuReport]:
        """One CpuReport per CPU (sorted), then the all-CPU one (cpu None). Empty before two snapshots."""
        first, last = self.base(window), self.last
        if first is None or last is None or self.snapshots < 2 or first is last:
            return []
        cpus = sorted(set(last.hists) | set(last.softnet) | set(last.napi))
        rows = []
        for cpu in cpus:
            hists = {}
            for key in HISTS:
                new = last.hists.get(cpu, {}).get(key, Log2Hist())
                old = first.hists.get(cpu, {}).get(key, Log2Hist())
                hists[key] = new - old
            napi = {name: max(0, last.napi.get(cpu, {}).get(name, 0) - first.napi.get(cpu, {}).get(name, 0))
                    for name in NAPI_FIELDS}
            softnet = None
            if cpu in last.softnet:
                base = first.softnet.get(cpu, SoftnetRow(cpu, 0, 0, 0))
                softnet = last.softnet[cpu] - base
            rows.append(CpuReport(cpu, hists, napi, softnet))
        rows.append(_total(rows))
        return rows


def worst_cpu(rows: Sequence[CpuReport]) -> int | None:
    """The CPU whose NET_RX waited longest at p99 (its backlog drops break ties); None unless two or more CPUs
    did receive work (one is not "worst" of anything)."""
    scored = [(row.stats(("NET_RX", "wait"))["p99_ns"], row.softnet.dropped if row.softnet else 0, row.cpu)
              for row in rows if row.cpu is not None]
    scored = [score for score in scored if score[0] or score[1]]
    return max(scored, key=lambda score: (score[0], score[1]))[2] if len(scored) > 1 else None


def _total(rows: Sequence[CpuReport]) -> CpuReport:
    hists = {key: Log2Hist() for key in HISTS}
    napi = dict.fromkeys(NAPI_FIELDS, 0)
    softnet: SoftnetRow | None = None
    for row in rows:
        for key in HISTS:
            hists[key] = hists[key] + row.hists.get(key, Log2Hist())
        for name in NAPI_FIELDS:
            napi[name] += row.napi.get(name, 0)
        if row.softnet is not None:
            s = row.softnet
            if softnet is None:
                softnet = SoftnetRow(-1, 0, 0, 0)
            softnet = SoftnetRow(-1, softnet.processed + s.processed, softnet.dropped + s.dropped,
                                 softnet.time_squeeze + s.time_squeeze, softnet.received_rps + s.received_rps,
                                 softnet.flow_limit + s.flow_limit)
    return CpuReport(None, hists, napi, softnet)


# A NET_RX softirq that runs inline (irq exit, local_bh_enable) waits microseconds; one deferred behind busy tasks
# waits until ksoftirqd gets the CPU or the next tick: a millisecond or more is a starved softirq.
STARVED_WAIT_NS = 1_000_000
# net_rx_action stops at its budget or 2 ms now and then on any busy receiver (seen: 1 in 3 s of quiet lab traffic);
# it is a finding when it keeps happening.
SQUEEZES_PER_SECOND = 5


def findings(rows: Sequence[CpuReport], seconds: float) -> list[str]:
    """What the figures mean, one line per CPU and problem (empty when nothing is wrong)."""
    out = []
    per_second = max(seconds, 1e-9)
    for row in rows:
        if row.cpu is None:
            continue
        where = f"CPU {row.cpu}"
        sn = row.softnet
        if sn is not None and sn.dropped:
            rate = sn.dropped / per_second
            out.append(f"{where}: input backlog overflowed, {sn.dropped} packets dropped ({rate:,.0f}/s): the kernel "
                       "dropped them before any socket or netfilter saw them")
        wait = row.stats(("NET_RX", "wait"))
        if wait["count"] and wait["p99_ns"] >= STARVED_WAIT_NS:
            p99, longest = format_us(wait["p99_ns"]), format_us(wait["max_ns"])
            out.append(f"{where}: NET_RX waited {p99} at p99 (max {longest}) before "
                       "running: softirq starved (receive work this CPU cannot keep up with, or tasks holding it)")
        polls, exhausted = row.napi.get("polls", 0), row.napi.get("exhausted", 0)
        if polls and exhausted * 2 >= polls:
            out.append(f"{where}: {exhausted} of {polls} NAPI polls used their whole budget: receive work is backing "
                       "up")
        if sn is not None and sn.time_squeeze >= SQUEEZES_PER_SECOND * per_second:
            rate = sn.time_squeeze / per_second
            out.append(f"{where}: net_rx_action ran out of budget or time {sn.time_squeeze} times ({rate:,.0f}/s, "
                       "time_squeeze)")
    return out


def format_us(ns: float) -> str:
    """A latency in ns as "1.5us" or "3.9ms" (the CLI table and the TUI view)."""
    if ns >= 1_000_000:
        return f"{ns / 1_000_000:.1f}ms"
    return f"{ns / 1000:.1f}us"


def format_table(rows: Sequence[CpuReport], seconds: float) -> str:
    """A human table (under 100 columns): per CPU, NET_RX and NET_TX wait/run p50/p99/max, NAPI, softnet."""
    lines = [f"softirq latency over {seconds:.1f} s (wait: raise -> entry, run: entry -> exit; p50/p99 from log2 "
             "buckets)", "defer: the waits whose handler ran in ksoftirqd (shown when there were some)",
             f"{'cpu':>4} {'softirq':7} {'phase':5} {'count':>9} {'p50':>9} {'p99':>9} {'max':>9}"]
    for row in rows:
        cpu = "all" if row.cpu is None else str(row.cpu)
        for softirq in ("NET_RX", "NET_TX"):
            for phase in ("wait", "run", "wait_ksoftirqd"):
                s = row.stats((softirq, phase))
                if phase == "wait_ksoftirqd" and not s["count"]:
                    continue
                label = "defer" if phase == "wait_ksoftirqd" else phase
                lines.append(f"{cpu:>4} {softirq:7} {label:5} {int(s['count']):>9} {format_us(s['p50_ns']):>9} "
                             f"{format_us(s['p99_ns']):>9} {format_us(s['max_ns']):>9}")
    lines.append("")
    lines.append(f"{'cpu':>4} {'napi polls':>11} {'exhausted':>10} {'packets':>10} {'processed':>10} {'dropped':>8} "
                 f"{'squeezed':>9}")
    for row in rows:
        cpu = "all" if row.cpu is None else str(row.cpu)
        sn = row.softnet
        lines.append(f"{cpu:>4} {row.napi.get('polls', 0):>11} {row.napi.get('exhausted', 0):>10} "
                     f"{row.napi.get('work', 0):>10} {sn.processed if sn else '-':>10} {sn.dropped if sn else '-':>8} "
                     f"{sn.time_squeeze if sn else '-':>9}")
    lines.append("")
    lines += [f"! {line}" for line in findings(rows, seconds)] or ["no softirq trouble seen"]
    return "\n".join(lines) + "\n"
