"""The event-pipeline benchmark's parts: timing split, notes, and the raw fast path agreeing with decode (no root)."""

from __future__ import annotations

from tracer.analysis.aggregate import DropTable
from tracer.benchmarks.pipeline import (
    RawRun,
    _workloads,
    fmt_ms,
    median_run,
    raw_miss,
    raw_note,
    raw_runs,
    synthetic_drop_events,
)
from tracer.benchmarks.stats import Section
from tracer.events.decode import decode


def test_raw_run_rates_and_read_share() -> None:
    run = RawRun(events=1000, add_s=0.5, fold_s=0.3, sort_s=0.2, groups=100)
    assert run.rate == 1000.0
    assert run.add_rate == 2000.0
    assert round(run.read_share, 6) == 0.5


def test_median_run_takes_each_part_apart() -> None:
    runs = [RawRun(10, 1.0, 5.0, 0.1, 4), RawRun(10, 3.0, 1.0, 0.3, 4), RawRun(10, 2.0, 3.0, 0.2, 4)]
    assert median_run(runs) == RawRun(10, 2.0, 3.0, 0.2, 4)


def test_notes_say_where_the_time_goes_and_by_how_much() -> None:
    run = RawRun(events=200_000, add_s=0.2, fold_s=0.25, sort_s=0.15, groups=100_000)
    note = raw_note("raw, 100k flows", run, target=500_000)
    assert "add_raw alone 1,000,000 events/s (2.00x the target)" in note
    assert "folds 100,000 raw groups in 250 ms and sorts them in 150 ms (4.0 us per group)" in note
    assert "67% of the end-to-end time" in note
    miss = raw_miss("raw, 100k flows", run.rate, run, target=500_000)
    assert miss.startswith("raw, 100k flows: 333,333 events/s, 33% under 500,000/s.")
    assert "seen 2 times" in miss and "67% of the time" in miss


def test_fmt_ms_keeps_a_decimal_for_small_times() -> None:
    assert fmt_ms(0.0004) == "0.4 ms"
    assert fmt_ms(0.25) == "250 ms"
    assert fmt_ms(1.5) == "1,500 ms"


def test_workloads_keep_the_old_rows_and_add_a_repeating_one() -> None:
    full = _workloads(False, 200_000)
    assert full[:3] == [(200_000, 100, True), (200_000, 10_000, True), (200_000, 100_000, True)]
    assert full[3] == (1_000_000, 100_000, False)  # every flow seen ten times, raw fast path only
    assert _workloads(True, 20_000)[3] == (100_000, 10_000, False)


def test_raw_runs_fold_every_group_once() -> None:
    raw = synthetic_drop_events(3_000, 1_000)
    (run,) = raw_runs(raw, repeat=1)
    assert (run.events, run.groups) == (3_000, 1_000)
    assert run.add_s > 0 and run.fold_s > 0 and run.sort_s > 0


def test_raw_fast_path_matches_decode_on_the_benchmark_workload_with_eviction() -> None:
    raw = synthetic_drop_events(5_000, 1_500)
    fast, decoded = DropTable(max_groups=600), DropTable(max_groups=600)
    for data in raw:
        fast.add_raw(data)
        decoded.add(decode(data))
    assert (fast.total, fast.evicted) == (decoded.total, decoded.evicted) == (5_000, 4_400)

    def rows(table: DropTable) -> list[tuple]:
        return [(key, row.count, row.bytes, row.first_ns, row.last_ns, row.last_sport, row.ifname,
                 row.last_event) for key, row in table.sorted_groups()]

    assert rows(fast) == rows(decoded)


def test_section_renders_further_tables_after_the_first() -> None:
    section = Section("F", "intro", ["a"], [["1"]], notes=["n"],
                      tables=[("Second table.", ["b", "c"], [["2", "3"]])])
    text = section.markdown()
    assert "| a |\n|---|\n| 1 |\n\nSecond table.\n\n| b | c |\n|---|---|\n| 2 | 3 |\n\n- n\n" in text
