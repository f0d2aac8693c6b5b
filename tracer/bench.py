"""`make bench`: what podtrace costs and carries, measured side by side in one run, written to BENCHMARKS.md.

Every figure is a comparison from the same run (never a timed assertion). Today: the event pipeline
(decode + aggregate on one core); the packet-path overhead and start-up figures come with issue 10.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

from tracer.aggregate import DropTable
from tracer.events import EVENT_DROP, PacketEvent, Tuple, decode, encode


def synthetic_drop_events(count: int, flows: int) -> list[bytes]:
    """Raw drop events over `flows` distinct flows, as the kernel would emit them (encode mirrors the C)."""
    events = []
    for index in range(count):
        flow = index % flows
        outer = Tuple(bytes([10, 244, (flow >> 8) & 0xFF, flow & 0xFF]) + bytes(12),
                      bytes([10, 96, 0, 10]) + bytes(12), 40000 + index % 20000, 80, 4, 6, 0, 0, 0x4000, 60)
        event = PacketEvent(EVENT_DROP, index % 2, 1_000_000 + index, 0xFFFF888000000000 + index * 256,
                            0xFFFFFFFF81F81C50, 6, 4026532000 + flow % 7, 3, 60, 0, 0x0800, 0x04, 60, 0,
                            "eth0", outer, None, bytes(60))
        events.append(encode(event))
    return events


def events_per_second(raw: list[bytes], repeat: int = 5) -> tuple[float, list[float]]:
    """Median rate of decode + DropTable.add over `raw`, and every run's rate."""
    rates = []
    for _ in range(repeat):
        table = DropTable()
        started = time.perf_counter()
        add = table.add
        for data in raw:
            add(decode(data))
        elapsed = time.perf_counter() - started
        rates.append(len(raw) / elapsed)
    return statistics.median(rates), rates


def raw_events_per_second(raw: list[bytes], repeat: int = 5) -> tuple[float, list[float]]:
    """The same through DropTable.add_raw (group on bytes, decode at read time), rows read at the end."""
    rates = []
    for _ in range(repeat):
        table = DropTable()
        started = time.perf_counter()
        add = table.add_raw
        for data in raw:
            add(data)
        table.sorted_groups()
        elapsed = time.perf_counter() - started
        rates.append(len(raw) / elapsed)
    return statistics.median(rates), rates


def measure(label: str, run: Callable[[], tuple[float, list[float]]]) -> tuple[str, float, list[float]]:
    median, runs = run()
    return label, median, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="podtrace benchmarks")
    parser.add_argument("--out", default="BENCHMARKS.md")
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says
    results = []
    for flows in (100, 10_000, 100_000):
        raw = synthetic_drop_events(args.events, flows)
        results.append(measure(f"decode every event, {flows} flows", partial(events_per_second, raw)))
        results.append(measure(f"raw fast path, {flows} flows", partial(raw_events_per_second, raw)))
    lines = [
        "# podtrace benchmarks",
        "",
        f"Machine: {platform.node()}, kernel {platform.release()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; written by `make bench` on {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
        "## Event pipeline (one core)",
        "",
        f"{args.events} raw 296-byte drop events decoded (`tracer.events.decode`) and aggregated "
        "(`tracer.aggregate.DropTable`), median of 5 runs pinned to one CPU. Target: 500k events/s.",
        "",
        "| workload | events/s (median) | runs | vs target |",
        "|---|---|---|---|",
    ]
    for label, median, runs in results:
        ratio = median / 500_000
        lines.append(f"| {label} | {median:,.0f} | {', '.join(f'{r:,.0f}' for r in runs)} | {ratio:.2f}x |")
    text = "\n".join(lines) + "\n"
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
