"""The packet-path benchmark's direct cost measure: busy CPU time from /proc/stat and podtrace's share of it."""

from __future__ import annotations

import os

from tracer.benchmarks.packetpath import PodtraceShare, busy_cpu_seconds

# A real /proc/stat head: cpu user nice system idle iowait irq softirq steal guest guest_nice
STAT = """cpu  4705 150 1120 1643370 500 10 200 9999 0 0
cpu0 2000 100 600 821000 250 5 100 5000 0 0
"""


def test_busy_cpu_seconds_counts_user_nice_system_irq_softirq_not_idle_iowait_or_steal() -> None:
    ticks = 4705 + 150 + 1120 + 10 + 200
    assert busy_cpu_seconds(STAT) == ticks / os.sysconf("SC_CLK_TCK")


def test_podtrace_share_is_bpf_plus_consumer_over_busy_time() -> None:
    assert PodtraceShare(bpf_s=0.02, consumer_s=0.03, busy_s=5.0).percent == 1.0
    assert PodtraceShare().percent == 0.0  # no busy time measured: no share, not a division error
