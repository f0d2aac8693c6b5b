"""The Softirq view: tracer.analysis.softirq's kernel histograms, per CPU, as p50/p99 and a bar of the log2 buckets.

`softirq_rows` is pure (CpuReports in, rows out). `SoftirqTable` is the live TableSource: its own thread loads
bpf/softirq.c (tracer.probes.softirq_probe.SoftirqProbe) on first use, once the attach ladder has been probed
(two BCC compiles at once crash), and takes a snapshot every second, so neither the reader thread nor the UI
waits on BCC.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from tracer.analysis.softirq import (
    HISTS,
    RECENT_SECONDS,
    CpuReport,
    SoftirqAggregator,
    SoftirqSnapshot,
    format_us,
    worst_cpu,
)
from tracer.output.errors import PodtraceError
from tracer.probes.softirq_probe import SoftirqProbe
from tui.model import sparkline

COLUMNS = ["cpu", "kind", "p50", "p99", "dropped", "squeezes", "histogram"]


def histogram_bar(slots: Sequence[int]) -> str:
    """The non-empty range of log2 buckets as bars, with the range: "[1us..64us) ▂▅█▃"."""
    used = [i for i, n in enumerate(slots) if n]
    if not used:
        return ""
    first, last = used[0], used[-1]
    low = 0 if first == 0 else 1 << (first - 1)
    return f"[{format_us(low)}..{format_us(1 << last)}) {sparkline(list(slots[first:last + 1]))}"


def softirq_rows(reports: Sequence[CpuReport]) -> list[dict[str, Any]]:
    """One row per CPU and softirq phase that saw work, then the all-CPU ones; backlog drops and squeezes
    (/proc/net/softnet_stat) on each CPU's first row. The CPU whose NET_RX waited longest is marked worst, its rows
    in red (`_style`)."""
    rows = []
    worst = worst_cpu(reports)
    for report in reports:
        first = True
        for key in HISTS:
            hist = report.hists.get(key)
            if hist is None or not hist.count:
                continue
            softnet = report.softnet if first else None
            cpu = "all" if report.cpu is None else f"{report.cpu} worst" if report.cpu == worst and first \
                else report.cpu
            rows.append({"cpu": cpu, "kind": f"{key[0]} {key[1]}",
                         "p50": format_us(hist.percentile(0.5)), "p99": format_us(hist.percentile(0.99)),
                         "dropped": softnet.dropped if softnet else "", "squeezes": softnet.time_squeeze if softnet
                         else "", "histogram": histogram_bar(hist.slots)})
            if report.cpu is not None and report.cpu == worst:
                rows[-1]["_style"] = "bold red"
            first = False
    return rows


class SoftirqTable:
    """A TableSource (tui/model.py) over a live SoftirqProbe, started lazily in its own thread."""

    columns = COLUMNS
    uses_window = True  # the model sets `window` (seconds, None: since start)

    def __init__(self, probe: Callable[[], Any] = SoftirqProbe, interval: float = 1.0,
                 after: threading.Event | None = None) -> None:
        self._make_probe = probe
        self._after = after  # BCC compiles one program at a time: wait for the attach ladder's probing
        self.interval = interval
        self.window: float | None = None
        self.error = ""
        self._aggregator = SoftirqAggregator(keep_seconds=RECENT_SECONDS)
        self._lock = threading.Lock()  # the probe's thread adds snapshots while the model reads
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def rows(self) -> list[dict[str, Any]]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="podtrace-softirq", daemon=True)
            self._thread.start()
        if self.error:
            return [{"cpu": "-", "kind": f"unavailable: {self.error}"}]
        with self._lock:
            return softirq_rows(self._aggregator.report(self.window))

    def _run(self) -> None:
        if self._after is not None:
            while not self._after.wait(0.2):
                if self._stopped.is_set():
                    return
        probe = self._make_probe()
        try:
            probe.start(progress=False)
            while not self._stopped.is_set():
                snapshot: SoftirqSnapshot = probe.snapshot()
                with self._lock:
                    self._aggregator.add(snapshot)
                self._stopped.wait(self.interval)
        except Exception as err:  # BCC raises broadly; the view says what failed
            self.error = err.one_line() if isinstance(err, PodtraceError) else str(err) or type(err).__name__
        finally:
            probe.close()

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)


class RecordedSoftirqTable:
    """The Softirq view of a recording (`record --softirq`): its snapshots as the reader has read them so far
    (tracer.sources.replay.ReplaySource.softirq), from the first to the latest."""

    columns = COLUMNS
    uses_window = True

    def __init__(self, source: Any) -> None:
        self.source = source
        self.window: float | None = None

    def rows(self) -> list[dict[str, Any]]:
        aggregator = getattr(self.source, "softirq", None)
        return softirq_rows(aggregator.report(self.window)) if aggregator is not None else []
