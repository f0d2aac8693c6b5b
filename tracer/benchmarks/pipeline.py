"""Event pipeline on one core: raw drop events decoded and aggregated (DropTable), and the raw fast path."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from tracer.aggregate import DropTable
from tracer.benchmarks.stats import Section, fmt_rate, median
from tracer.events import EVENT_DROP, PacketEvent, Tuple, decode, encode

TARGET = 500_000


def drop_event(index: int, flows: int) -> PacketEvent:
    """The index-th synthetic drop event over `flows` distinct flows (source 10.x.y.z from the flow number)."""
    flow = index % flows
    outer = Tuple(bytes([10, (flow >> 16) & 0xFF, (flow >> 8) & 0xFF, flow & 0xFF]) + bytes(12),
                  bytes([10, 96, 0, 10]) + bytes(12), 40000 + index % 20000, 80, 4, 6, 0, 0, 0x4000, 60)
    return PacketEvent(EVENT_DROP, index % 2, 1_000_000 + index, 0xFFFF888000000000 + index * 256,
                       0xFFFFFFFF81F81C50, 6, 4026532000 + flow % 7, 3, 60, 0, 0x0800, 0x04, 60, 0,
                       "eth0", outer, None, bytes(60))


def synthetic_drop_events(count: int, flows: int) -> list[bytes]:
    """Raw drop events over `flows` distinct flows, as the kernel would emit them (encode mirrors the C)."""
    return [encode(drop_event(index, flows)) for index in range(count)]


def events_per_second(raw: list[bytes], repeat: int = 5) -> list[float]:
    """Rates of decode + DropTable.add over `raw`, one per run."""
    rates = []
    for _ in range(repeat):
        table = DropTable()
        started = time.perf_counter()
        add = table.add
        for data in raw:
            add(decode(data))
        rates.append(len(raw) / (time.perf_counter() - started))
    return rates


def raw_events_per_second(raw: list[bytes], repeat: int = 5) -> list[float]:
    """The same through DropTable.add_raw (group on bytes, decode at read time), rows read at the end."""
    rates = []
    for _ in range(repeat):
        table = DropTable()
        started = time.perf_counter()
        add = table.add_raw
        for data in raw:
            add(data)
        table.sorted_groups()
        rates.append(len(raw) / (time.perf_counter() - started))
    return rates


def run(quick: bool, log: Callable[[str], None], events: int = 200_000) -> Section:
    if quick:
        events = min(events, 20_000)
    repeat = 2 if quick else 5
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})  # one core, as the target says; restored for the other sections
    section = Section(
        "Event pipeline (one core)",
        f"{events:,} raw drop events decoded (`tracer.events.decode`) and aggregated "
        f"(`tracer.aggregate.DropTable`), median of {repeat} runs pinned to one CPU. Target: "
        f"{fmt_rate(TARGET)} events/s.",
        ["workload", "events/s (median)", "runs", "vs target"],
    )
    try:
        for flows in (100, 10_000, 100_000):
            log(f"pipeline: {flows} flows")
            raw = synthetic_drop_events(events, flows)
            for label, measure in ((f"decode every event, {flows:,} flows", events_per_second),
                                   (f"raw fast path, {flows:,} flows", raw_events_per_second)):
                runs = measure(raw, repeat)
                rate = median(runs)
                section.rows.append([label, f"{rate:,.0f}", ", ".join(f"{r:,.0f}" for r in runs),
                                     f"{rate / TARGET:.2f}x"])
                if rate < TARGET:
                    section.missed.append(
                        f"{label}: {rate:,.0f} events/s, {1 - rate / TARGET:.0%} under {TARGET:,}/s "
                        "(a full decode builds two dataclasses per event in pure Python; the live commands use "
                        "the raw fast path)." if "decode" in label else
                        f"{label}: {rate:,.0f} events/s, {1 - rate / TARGET:.0%} under {TARGET:,}/s.")
    finally:
        os.sched_setaffinity(0, affinity)
    return section
