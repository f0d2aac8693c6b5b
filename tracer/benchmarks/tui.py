"""The TUI under a drop storm: the real app (Textual's Pilot, headless) fed through its own ingestion path (the
Reader thread polling a source's raw events, as LiveSource's ring buffer delivers them), measured from inside.

- The storm: synthetic raw drop events over 100k flows, offered at 200k events/s by wall clock. What the reader
  does not take within a ring buffer's worth (256k events) is counted lost, as the kernel would.
- Key-to-repaint latency: from a view key (`1`/`2`/`4`, alternating) until Pilot has delivered it and every
  message queued on the app and the screen's widgets behind it has been processed (twice: the view switch queues
  its own refreshes), the new tab active. The key waited behind whatever the UI thread was doing (drawing
  snapshots, the GIL held by the reader). Pilot's pause() is not used: it waits for the whole process to go idle,
  which a storm never lets happen. p50 and p99 over the presses.
- UI CPU: the CPU time of the thread running the app's event loop over the measured window; the reader's (decode
  and aggregation) is the rest of the process's CPU time. RSS: the process's peak (VmHWM) after the run.

Textual is imported only inside run(): tracer/ stays headless when this module is imported (bench.py imports it).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from tracer.benchmarks.pipeline import synthetic_drop_events
from tracer.benchmarks.stats import Section, median
from tracer.report import Resolver

OFFERED = 200_000  # events/s
FLOWS = 100_000
RING = 262_144  # events the ring buffer holds before the kernel counts losses
TARGET_P99_MS = 100.0
TARGET_RSS_MB = 150.0
KEYS = ("2", "1", "4", "1")
VIEWS = {"1": "drops", "2": "flows", "4": "softirq"}


class StormSource:
    """Raw events at `rate`/s by wall clock from a pool cycled over; what waits past `ring` events is lost."""

    def __init__(self, pool: list[bytes], rate: float = OFFERED, ring: int = RING, batch: int = 4096) -> None:
        self.pool = pool
        self.rate = rate
        self.ring = ring
        self.batch = batch
        self.position = 0
        self.delivered = 0
        self.lost = 0
        self.backlog = 0.0
        self.last = 0.0

    def start(self, progress: bool = False) -> None:
        self.last = time.monotonic()

    def poll_raw(self, timeout_ms: int = 100) -> list[bytes]:
        now = time.monotonic()
        self.backlog += (now - self.last) * self.rate
        self.last = now
        if self.backlog > self.ring:
            self.lost += int(self.backlog - self.ring)
            self.backlog = float(self.ring)
        take = min(int(self.backlog), self.batch)
        if take <= 0:
            time.sleep(min(timeout_ms / 1000, 0.005))
            return []
        self.backlog -= take
        end = self.position + take
        out = self.pool[self.position:end]
        if end > len(self.pool):
            out += self.pool[:end - len(self.pool)]
        self.position = end % len(self.pool)
        self.delivered += take
        return out

    def poll(self, timeout_ms: int = 100) -> list[Any]:
        from tracer.events import decode_any

        return [decode_any(raw) for raw in self.poll_raw(timeout_ms)]

    def counters(self) -> dict[str, int]:
        return {"seen": self.delivered + self.lost, "events": self.delivered, "lost": self.lost}


def _peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def _drive(app: Any, warmup: float, presses: int, gap: float) -> dict[str, float]:
    latencies: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        began = time.monotonic()
        while time.monotonic() - began < warmup:
            await pilot.pause(0.1)
        ui0, cpu0, wall0 = time.thread_time(), time.process_time(), time.monotonic()
        source = app.source
        delivered0, lost0 = source.delivered, source.lost
        for index in range(presses):
            key = KEYS[index % len(KEYS)]
            started = time.perf_counter()
            await pilot.press(key)  # delivered, and the screen's queues drained behind it
            await pilot._wait_for_screen()  # noqa: SLF001 - once more: the view switch's own refresh messages
            assert app.query_one("TabbedContent").active == VIEWS[key]
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(gap)
        wall = time.monotonic() - wall0
        ui = time.thread_time() - ui0
        total = time.process_time() - cpu0
        result = {
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "max": max(latencies),
            "ui_cpu": ui / wall, "reader_cpu": (total - ui) / wall,
            "delivered": (source.delivered - delivered0) / wall, "lost": (source.lost - lost0) / wall,
            "rows": float(len(app.snapshot.drops) if app.snapshot else 0),
        }
        await pilot.press("q")
    result["rss"] = _peak_rss_mb()
    return result


def measure(warmup: float, presses: int, gap: float, log: Callable[[str], None]) -> dict[str, float]:
    from tui.app import PodtraceApp  # noqa: PLC0415 - textual only when this section runs
    from tui.sources import SessionInfo

    pool = synthetic_drop_events(FLOWS, FLOWS)
    names = Resolver({6: "NO_SOCKET"}, lambda inode: f"netns:{inode}", lambda address: f"0x{address:x}")
    info = SessionInfo(names, node="bench", kernel=os.uname().release, mode="live", programs=["drops"],
                       attached=["raw tracepoint kfree_skb"], live_clock=True)
    app = PodtraceApp(StormSource(pool), info)
    log(f"tui: {OFFERED} events/s offered over {FLOWS} flows, {presses} key presses")
    return asyncio.run(_drive(app, warmup, presses, gap))


def run(quick: bool, log: Callable[[str], None]) -> Section:
    started = time.monotonic()
    runs = [measure(2.0 if quick else 5.0, 20 if quick else 60, 0.2, log) for _ in range(1 if quick else 1)]
    result = {name: median([one[name] for one in runs]) for name in runs[0]}
    section = Section(
        "TUI under a drop storm",
        f"The real app (Pilot, headless, 120x40) fed by its Reader thread from a source offering {OFFERED:,} raw drop "
        f"events/s over {FLOWS:,} flows (tracer/benchmarks/tui.py). Latency: a view key pressed until the app "
        "and its widgets have processed it and everything queued behind it.",
        ["figure", "value", "target"],
        [["key-to-repaint p50", f"{result['p50']:.0f} ms", ""],
         ["key-to-repaint p99", f"{result['p99']:.0f} ms", f"< {TARGET_P99_MS:.0f} ms"],
         ["key-to-repaint max", f"{result['max']:.0f} ms", ""],
         ["UI thread CPU", f"{result['ui_cpu']:.0%} of a core", ""],
         ["reader (decode + aggregate) CPU", f"{result['reader_cpu']:.0%} of a core", ""],
         ["events taken by the reader", f"{result['delivered']:,.0f}/s of {OFFERED:,}", ""],
         ["events lost (ring full)", f"{result['lost']:,.0f}/s", ""],
         ["peak RSS", f"{result['rss']:.0f} MB", f"<= {TARGET_RSS_MB:.0f} MB"]],
    )
    if result["p99"] >= TARGET_P99_MS:
        section.missed.append(f"key-to-repaint p99 {result['p99']:.0f} ms (target < {TARGET_P99_MS:.0f} ms)")
    if result["rss"] > TARGET_RSS_MB:
        section.missed.append(f"peak RSS {result['rss']:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB)")
    section.seconds = time.monotonic() - started
    return section
