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
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from tracer.benchmarks.pipeline import synthetic_drop_events
from tracer.benchmarks.stats import Section
from tracer.output.report import Resolver

OFFERED = 200_000  # events/s
FLOWS = 100_000
RING = 262_144  # events the ring buffer holds before the kernel counts losses
TARGET_P99_MS = 100.0
TARGET_RSS_MB = 150.0
UNANSWERED_S = 10.0  # a view key whose tab has not switched after this long is counted as unanswered
KEYS = ("2", "1", "4", "1")
VIEWS = {"1": "drops", "2": "flows", "4": "softirq"}


class StormSource:
    """Raw events at `rate`/s by wall clock from a pool cycled over; what waits past `ring` events is lost.

    The pool is made in start(), where the reader runs (the UI's process or the ingest child), as a kernel's ring
    buffer lives with its reader: the UI process holds no events it did not draw."""

    def __init__(self, make_pool: Callable[[], list[bytes]], rate: float = OFFERED, ring: int = RING,
                 batch: int = 4096) -> None:
        self.make_pool = make_pool
        self.pool: list[bytes] = []
        self.rate = rate
        self.ring = ring
        self.batch = batch
        self.position = 0
        self.delivered = 0
        self.lost = 0
        self.backlog = 0.0
        self.last = 0.0

    def start(self, progress: bool = False) -> None:
        self.pool = self.make_pool()
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
        from tracer.events.decode import decode_any

        return [decode_any(raw) for raw in self.poll_raw(timeout_ms)]

    def counters(self) -> dict[str, int]:
        return {"seen": self.delivered + self.lost, "events": self.delivered, "lost": self.lost}


def _peak_rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (the ingest child), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _taken(app: Any) -> tuple[float, float]:
    """Events delivered to the reader and lost so far, as the source counts them (wherever it runs)."""
    counters = app.latest.counters if app.latest is not None else {}
    return float(counters.get("events", 0)), float(counters.get("lost", 0))


async def _drive(app: Any, warmup: float, presses: int, gap: float) -> dict[str, float]:
    from tui.keys import deliver_key  # textual only when this section runs

    latencies: list[float] = []
    unanswered = 0
    async with app.run_test(size=(120, 40)) as pilot:
        began = time.monotonic()
        while time.monotonic() - began < warmup:
            await pilot.pause(0.1)
        child = getattr(app.reader, "pid", None)  # the ingest process, when there is one
        ui0, cpu0, wall0 = time.thread_time(), time.process_time(), time.monotonic()
        child0 = _cpu_seconds(child) if child else 0.0
        delivered0, lost0 = _taken(app)
        for index in range(presses):
            key = KEYS[index % len(KEYS)]
            started = time.perf_counter()
            deliver_key(app, key)  # as a terminal sends it: pilot.press() waits for the process to go idle
            await pilot._wait_for_screen()  # the screen's queues drained behind the key
            await pilot._wait_for_screen()  # once more: the view switch's own refresh messages
            while app.query_one("TabbedContent").active != VIEWS[key]:
                if time.perf_counter() - started > UNANSWERED_S:
                    unanswered += 1  # said in the table, and its wait counted: never an endless bench
                    break
                await asyncio.sleep(0.001)
            latencies.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(gap)
        wall = time.monotonic() - wall0
        ui = time.thread_time() - ui0
        total = time.process_time() - cpu0
        delivered, lost = _taken(app)
        result = {
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "max": max(latencies),
            "ui_cpu": ui / wall,
            # the reader's CPU: the rest of the UI process (thread mode), or the child's (process mode)
            "reader_cpu": ((_cpu_seconds(child) - child0) if child else total - ui) / wall,
            "delivered": (delivered - delivered0) / wall, "lost": (lost - lost0) / wall,
            "rows": float(len(app.snapshot.drops) if app.snapshot else 0),
            "child_rss": _peak_rss_mb(child) if child else 0.0,
            "unanswered": float(unanswered),
        }
        await pilot.press("q")
    result["rss"] = _peak_rss_mb()
    return result


def measure(ingest: str, warmup: float, presses: int, gap: float, log: Callable[[str], None]) -> dict[str, float]:
    from tui.app import PodtraceApp  # textual only when this section runs
    from tui.sources import SessionInfo

    names = Resolver({6: "NO_SOCKET"}, lambda inode: f"netns:{inode}", lambda address: f"0x{address:x}")
    info = SessionInfo(names, node="bench", kernel=os.uname().release, mode="live", programs=["drops"],
                       attached=["raw tracepoint kfree_skb"], live_clock=True)
    app = PodtraceApp(StormSource(lambda: synthetic_drop_events(FLOWS, FLOWS)), info, ingest=ingest)
    return asyncio.run(_drive(app, warmup, presses, gap))


def measure_apart(ingest: str, warmup: float, presses: int, log: Callable[[str], None]) -> dict[str, float]:
    """measure() in a fresh interpreter: a peak RSS (VmHWM) is a process's whole life, so the two modes must not
    share one."""
    log(f"tui ({ingest} ingest): {OFFERED} events/s offered over {FLOWS} flows, {presses} key presses")
    # stdin from /dev/null: the app runs headless and must not share the caller's terminal or pipe
    done = subprocess.run([sys.executable, "-m", "tracer.benchmarks.tui", ingest, str(warmup), str(presses)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1200, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {ingest} run failed: {done.stderr.strip()[-500:]}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def run(quick: bool, log: Callable[[str], None]) -> Section:
    started = time.monotonic()
    warmup, presses = (2.0, 20) if quick else (5.0, 60)
    # Side by side in one run: ingestion in a thread beside the UI (before) and in a child process (`podtrace tui`).
    thread = measure_apart("thread", warmup, presses, log)
    child = measure_apart("process", warmup, presses, log)

    def both(name: str, form: str) -> list[str]:
        return [form.format(thread[name]), form.format(child[name])]

    section = Section(
        "TUI under a drop storm",
        f"The real app (Pilot, headless, 120x40) fed through its own ingestion from a source offering {OFFERED:,} raw "
        f"drop events/s over {FLOWS:,} flows (tracer/benchmarks/tui.py), with the Reader in a thread beside the UI "
        "and in a child process of its own (tui/ingest.py, what `podtrace tui` uses). Latency: a view key pressed "
        "until the app and its widgets have processed it and everything queued behind it.",
        ["figure", "thread ingest", "process ingest", "target"],
        [["key-to-repaint p50", *both("p50", "{:.0f} ms"), ""],
         ["key-to-repaint p99", *both("p99", "{:.0f} ms"), f"< {TARGET_P99_MS:.0f} ms"],
         ["key-to-repaint max", *both("max", "{:.0f} ms"), ""],
         [f"keys not answered in {UNANSWERED_S:.0f} s", *both("unanswered", "{:.0f}"), "0"],
         ["UI thread CPU", *both("ui_cpu", "{:.0%} of a core"), ""],
         ["reader (decode + aggregate) CPU", *both("reader_cpu", "{:.0%} of a core"), ""],
         ["events taken by the reader", *both("delivered", "{:,.0f}/s"), f"{OFFERED:,}/s offered"],
         ["events lost (ring full)", *both("lost", "{:,.0f}/s"), ""],
         ["peak RSS, UI process", *both("rss", "{:.0f} MB"), f"<= {TARGET_RSS_MB:.0f} MB"],
         ["peak RSS, ingest process", "-", f"{child['child_rss']:.0f} MB", ""]],
    )
    if child["p99"] >= TARGET_P99_MS:
        section.missed.append(f"key-to-repaint p99 {child['p99']:.0f} ms (target < {TARGET_P99_MS:.0f} ms)")
    if child["unanswered"]:
        section.missed.append(f"{child['unanswered']:.0f} view keys not answered within {UNANSWERED_S:.0f} s")
    if child["rss"] > TARGET_RSS_MB:
        section.missed.append(f"peak RSS of the UI {child['rss']:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB)")
    section.seconds = time.monotonic() - started
    return section


if __name__ == "__main__":  # one mode, measured alone (measure_apart)
    mode, warm, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(measure(mode, warm, count, 0.2, lambda _line: None)))
