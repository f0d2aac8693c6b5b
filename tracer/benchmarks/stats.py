"""Pure helpers for the benchmarks: medians, ratios, interleaved schedules and Markdown tables."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Section:
    """One figure of BENCHMARKS.md: a title, what was measured, a table, and what missed its target."""

    title: str
    intro: str = ""
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    # Further tables after the first: (caption, headers, rows).
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if self.intro:
            lines += [self.intro, ""]
        if self.error:
            lines += [f"**Error:** {self.error}", ""]
        if self.headers:
            lines += [markdown_table(self.headers, self.rows), ""]
        for caption, headers, rows in self.tables:
            lines += [caption, "", markdown_table(headers, rows), ""]
        lines += [f"- {note}" for note in self.notes]
        lines += [f"- **Target missed:** {miss}" for miss in self.missed]
        if self.notes or self.missed:
            lines.append("")
        lines += [f"_Section run time: {self.seconds:.0f} s._", ""]
        return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    """Median, 0.0 for no values (a failed run must not turn into an exception in the report)."""
    return float(statistics.median(values)) if values else 0.0


def spread_percent(values: Sequence[float]) -> float:
    """(max - min) / median of repeated runs, in percent: how far apart identical runs landed (the noise)."""
    middle = median(values)
    return (max(values) - min(values)) / middle * 100.0 if values and middle > 0 else 0.0


def ratio(value: float, baseline: float) -> float:
    """value / baseline; 0.0 when there is no baseline."""
    return value / baseline if baseline > 0 else 0.0


def cost_percent(on: float, off: float) -> float:
    """How much lower `on` is than `off`, in percent (negative: `on` was faster, i.e. noise)."""
    return (1.0 - ratio(on, off)) * 100.0 if off > 0 else 0.0


def interleave(modes: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """(round, mode) in the order runs happen: every mode once per round, so drift hits all modes alike."""
    return [(rnd, mode) for rnd in range(repeats) for mode in modes]


def fmt_rate(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M', 45600 -> '45.6k'; with a unit appended after a space."""
    magnitude = abs(value)
    if magnitude >= 1e9:
        text = f"{value / 1e9:.2f}G"
    elif magnitude >= 1e6:
        text = f"{value / 1e6:.2f}M"
    elif magnitude >= 1e3:
        text = f"{value / 1e3:.1f}k"
    else:
        text = f"{value:.0f}"
    return f"{text} {unit}".rstrip()


def fmt_ratio(on: float, off: float) -> str:
    """'0.97x (-3.0%)': on relative to off."""
    if off <= 0:
        return "n/a"
    return f"{ratio(on, off):.3f}x ({-cost_percent(on, off):+.1f}%)"


def fmt_bytes(count: float) -> str:
    return f"{count / (1 << 20):.1f} MiB"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; '|' inside cells is escaped."""
    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    lines = [cells(headers), "|" + "|".join("---" for _ in headers) + "|"]
    lines += [cells(row) for row in rows]
    return "\n".join(lines)
