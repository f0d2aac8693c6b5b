"""softirq aggregation without a kernel: log2 slot math, percentile estimates, softnet_stat parsing and deltas."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tracer.analysis.softirq import (
    HISTS,
    SLOTS,
    CpuReport,
    Log2Hist,
    SoftirqAggregator,
    SoftirqSnapshot,
    SoftnetRow,
    _total,
    findings,
    format_table,
    parse_softnet_stat,
    slot_bounds,
    slot_of,
)

FIXTURES = Path(__file__).parent / "fixtures" / "softnet"


def test_slots_match_the_kernel_log2() -> None:
    # pt_log2_slot in bpf/softirq.c: floor(log2(v)) + 1, 0 for 0.
    assert [slot_of(v) for v in (0, 1, 2, 3, 4, 1023, 1024, 1025)] == [0, 1, 2, 2, 3, 10, 11, 11]
    assert slot_of(1 << 60) == SLOTS - 1
    for value in (1, 5, 999, 123456789):
        low, high = slot_bounds(slot_of(value))
        assert low <= value < high


def test_percentile_lies_in_the_right_bucket_and_is_monotonic() -> None:
    rng = random.Random(7)
    values = [rng.randint(1, 100_000) for _ in range(5000)]
    hist = Log2Hist.of_values(values)
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        true = ordered[int(q * len(ordered)) - 1]
        estimate = hist.percentile(q)
        low, high = slot_bounds(slot_of(true))
        assert low <= estimate <= high, (q, true, estimate)
    qs = [hist.percentile(q / 100) for q in range(1, 101)]
    assert qs == sorted(qs)
    assert hist.percentile(1.0) <= hist.max_ns + 1


def test_percentile_of_one_value_is_capped_by_the_exact_max() -> None:
    hist = Log2Hist.of_values([1000] * 10)
    assert 512 <= hist.percentile(0.5) <= 1001
    assert hist.percentile(0.99) <= 1001
    assert hist.mean_ns == 1000


def test_empty_and_invalid_quantiles() -> None:
    assert Log2Hist().percentile(0.99) == 0.0
    with pytest.raises(ValueError):
        Log2Hist.of_values([1]).percentile(0)


def test_delta_of_cumulative_histograms() -> None:
    old = Log2Hist.of_values([10, 20, 3000])
    new = old + Log2Hist.of_values([5000, 7000])
    delta = new - old
    assert delta.count == 2 and delta.sum_ns == 12000 and delta.total == 2
    assert delta.nonzero() == [(4096, 8192, 2)]


def test_softnet_stat_recorded_on_618() -> None:
    before = parse_softnet_stat((FIXTURES / "host-6.18-before.txt").read_text())
    after = parse_softnet_stat((FIXTURES / "host-6.18-after.txt").read_text())
    assert sorted(before) == [0, 1]  # CPU ids from column 13
    assert before[0] == SoftnetRow(0, 0x2C2A9, 0, 1, 0, 0)
    delta = {cpu: after[cpu] - before[cpu] for cpu in after}
    assert (delta[0].processed, delta[1].processed) == (50009, 17270)
    assert sum(d.processed for d in delta.values()) >= 50000  # the 50000-datagram flood crossed the backlog
    assert all(d.dropped == 0 and d.time_squeeze == 0 for d in delta.values())


def test_softnet_stat_before_the_cpu_column_uses_line_order() -> None:
    # Pre-5.10 kernels print 11 columns and skip offline CPUs; the recorded sample cut to that width.
    old = "\n".join(" ".join(line.split()[:11]) for line in (FIXTURES / "host-6.18-after.txt").read_text().splitlines())
    rows = parse_softnet_stat(old)
    assert sorted(rows) == [0, 1] and rows[1].processed == 0x3024B


def test_softnet_counters_wrap_at_32_bits() -> None:
    assert (SoftnetRow(0, 5, 0, 0) - SoftnetRow(0, 0xFFFFFFFE, 0, 0)).processed == 7


def test_bad_softnet_line_is_reported() -> None:
    with pytest.raises(ValueError, match="not hex"):
        parse_softnet_stat("zz 00 00\n")


def _snapshot(ts: float, waits: dict[int, list[int]], processed: dict[int, int]) -> SoftirqSnapshot:
    hists = {cpu: {key: Log2Hist.of_values(values if key == ("NET_RX", "wait") else []) for key in HISTS}
             for cpu, values in waits.items()}
    softnet = {cpu: SoftnetRow(cpu, n, 0, 0) for cpu, n in processed.items()}
    napi = {cpu: {"polls": len(values), "work": len(values), "exhausted": 0, "idle": 0}
            for cpu, values in waits.items()}
    return SoftirqSnapshot(ts, hists, napi, softnet)


def test_aggregator_reports_deltas_per_cpu_and_for_all() -> None:
    agg = SoftirqAggregator()
    assert agg.report() == []
    agg.add(_snapshot(10.0, {0: [100], 1: []}, {0: 5, 1: 7}))
    agg.add(_snapshot(11.0, {0: [100, 2000, 2100], 1: [50_000]}, {0: 8, 1: 17}))
    rows = agg.report()
    assert [row.cpu for row in rows] == [0, 1, None]
    cpu0, cpu1, total = rows
    assert cpu0.hists[("NET_RX", "wait")].count == 2
    assert cpu0.softnet is not None and cpu0.softnet.processed == 3
    assert total.hists[("NET_RX", "wait")].count == 3 and total.napi["polls"] == 3
    assert total.softnet is not None and total.softnet.processed == 13
    assert 32768 <= total.stats(("NET_RX", "wait"))["p99_ns"] <= 50_001
    assert agg.seconds == 1.0
    table = format_table(rows, agg.seconds)
    assert max(len(line) for line in table.splitlines()) < 100
    assert rows[-1].to_json()["net_rx_wait"]["count"] == 3


def test_waits_deferred_to_ksoftirqd_have_their_own_row_and_json() -> None:
    waits = Log2Hist.of_values([400, 500, 600])
    deferred = Log2Hist.of_values([40_000])  # one of the NET_RX waits ended in ksoftirqd
    row = CpuReport(None, {("NET_RX", "wait"): waits, ("NET_RX", "wait_ksoftirqd"): deferred}, {}, None)
    table = format_table([row], 1.0)
    defer = [line for line in table.splitlines() if " defer " in line]
    assert len(defer) == 1 and defer[0].split()[:4] == ["all", "NET_RX", "defer", "1"]
    assert "NET_TX  defer" not in table  # no deferred NET_TX waits: no row
    assert row.to_json()["net_rx_wait_ksoftirqd"]["count"] == 1
    assert max(len(line) for line in table.splitlines()) < 100


def _report(cpu: int, waits: list[int], napi: dict[str, int], dropped: int = 0, squeezed: int = 0) -> CpuReport:
    hists = {key: Log2Hist() for key in HISTS}
    hists[("NET_RX", "wait")] = Log2Hist.of_values(waits)
    return CpuReport(cpu, hists, napi, SoftnetRow(cpu, 1000, dropped, squeezed))


def test_findings_name_the_starved_cpu_and_nothing_on_a_healthy_one() -> None:
    healthy = _report(0, [400] * 990 + [2000] * 10, {"polls": 100, "exhausted": 1})
    starved = _report(1, [1500] * 90 + [3_900_000] * 10, {"polls": 40, "exhausted": 30}, dropped=500, squeezed=30)
    lines = findings([healthy, starved, _total([healthy, starved])], seconds=2.0)
    assert all(line.startswith("CPU 1: ") for line in lines), lines
    assert any("500 packets dropped (250/s)" in line for line in lines)
    assert any("NET_RX waited" in line and "ms at p99" in line for line in lines)
    assert any("30 of 40 NAPI polls" in line for line in lines)
    assert any("30 times (15/s, time_squeeze)" in line for line in lines)
    assert findings([healthy], seconds=2.0) == []
    # An occasional squeeze is how a busy receiver works, not a finding.
    assert findings([_report(0, [400] * 100, {"polls": 10, "exhausted": 0}, squeezed=3)], seconds=2.0) == []
    assert "no softirq trouble seen" in format_table([healthy], 2.0)
    assert "! CPU 1: input backlog overflowed" in format_table([healthy, starved], 2.0)
