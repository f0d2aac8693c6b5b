"""The benchmark's pure helpers: medians, ratios, schedules, formatting, and the report layout (no root)."""

from __future__ import annotations

from tracer.benchmarks.pipeline import drop_event
from tracer.benchmarks.run import render, summary
from tracer.benchmarks.stats import (
    Section,
    cost_percent,
    fmt_bytes,
    fmt_rate,
    fmt_ratio,
    interleave,
    markdown_table,
    median,
    ratio,
)
from tracer.events.decode import decode, encode


def test_median_and_ratio_tolerate_missing_runs() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0]) == 1.5
    assert median([]) == 0.0
    assert ratio(95.0, 100.0) == 0.95
    assert ratio(1.0, 0.0) == 0.0


def test_cost_percent_is_the_slowdown_of_on_against_off() -> None:
    assert round(cost_percent(95.0, 100.0), 6) == 5.0
    assert round(cost_percent(102.0, 100.0), 6) == -2.0
    assert cost_percent(1.0, 0.0) == 0.0


def test_interleave_runs_every_mode_once_per_round() -> None:
    assert interleave(("off", "on"), 3) == [(0, "off"), (0, "on"), (1, "off"), (1, "on"), (2, "off"), (2, "on")]
    assert interleave(("off",), 0) == []


def test_formatting() -> None:
    assert fmt_rate(24_130_000_000, "bit/s") == "24.13G bit/s"
    assert fmt_rate(1_234_567) == "1.23M"
    assert fmt_rate(45_600, "pkt/s") == "45.6k pkt/s"
    assert fmt_rate(12) == "12"
    assert fmt_ratio(97.0, 100.0) == "0.970x (-3.0%)"
    assert fmt_ratio(101.0, 100.0) == "1.010x (+1.0%)"
    assert fmt_ratio(1.0, 0.0) == "n/a"
    assert fmt_bytes(3 << 20) == "3.0 MiB"


def test_markdown_table_escapes_pipes() -> None:
    assert markdown_table(["a", "b"], [["1", "x|y"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | x\\|y |"]


def test_section_lists_notes_and_missed_targets() -> None:
    section = Section("Figure", "what it measures", ["k", "v"], [["x", "1"]], notes=["a note"],
                      missed=["over by 2 points"], seconds=3.2)
    text = section.markdown()
    assert text.startswith("## Figure\n\nwhat it measures\n\n| k | v |")
    assert "- a note\n- **Target missed:** over by 2 points\n" in text
    assert "_Section run time: 3 s._" in text


def test_report_summary_marks_errors_and_misses() -> None:
    sections = [Section("A", seconds=1), Section("B", missed=["slow"]), Section("C", error="boom")]
    assert [row[1] for row in summary(sections).rows] == ["ok", "target missed", "error"]
    text = render(sections, quick=True, total_seconds=5)
    assert text.startswith("# podtrace benchmarks\n\nMachine: ")
    assert "| A | ok | 1 s |" in text and "**Error:** boom" in text


def test_synthetic_flows_are_distinct_past_65536() -> None:
    sources = {decode(encode(drop_event(index, 200_000))).outer.saddr for index in (0, 65_536, 131_072)}
    assert len(sources) == 3


def test_spread_is_the_range_over_the_median() -> None:
    from tracer.benchmarks.stats import spread_percent

    assert spread_percent([90.0, 100.0, 110.0]) == 20.0
    assert spread_percent([]) == 0.0


def test_merge_keeps_the_sections_not_run_and_says_where_each_comes_from() -> None:
    from tracer.benchmarks.run import merge, render

    def section(title: str, value: str) -> Section:
        made = Section(title, f"{title} intro", ["figure"], [[value]])
        made.seconds = 2
        return made

    first = render([section("A", "1"), section("B", "2"), section("C", "3")], False, 6, "0 0 0")
    fresh = section("B", "20")
    fresh_text = render([fresh], False, 2, "0 0 0", "python -m tracer.benchmarks --only b")
    again = merge(first, fresh_text, [fresh], "2026-12-07 15:31")
    assert [line for line in again.splitlines() if line.startswith("## ")] == ["## Summary", "## A", "## B", "## C"]
    assert "| 20 |" in again and "| 2 |" not in again and "| 1 |" in again and "| 3 |" in again
    assert "Written by `python -m tracer.benchmarks --only b`" in again
    assert "Re-run on 2026-12-07 15:31: B." in again
    assert "Every other section: from the report written by `make bench`" in again
    later = section("C", "30")
    twice = merge(again, render([later], False, 2), [later], "T2")
    assert "Re-run on T2: C." in twice and "Re-run on 2026-12-07 15:31: B." in twice
    assert twice.count("## C") == 1
    assert "| 20 |" in twice and "| 30 |" in twice
    assert "Every other section: from the report written by `make bench`" in twice
