"""`make bench`: what podtrace costs and carries, measured side by side in one run, written to BENCHMARKS.md.

Every figure is a comparison from the same run, never a timed assertion: the benchmark exits non-zero only when a
section fails with an error, never because a number is slow. Each section lives in tracer/benchmarks/.

    python -m tracer.benchmarks --out BENCHMARKS.md [--quick] [--only pipeline,memory]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback
from collections.abc import Callable

from tracer.benchmarks import (
    dropcost,
    flowcost,
    machine,
    memory,
    neighbour,
    packetpath,
    pipeline,
    probecost,
    reader,
    rulecount,
    serve,
    startup,
    sustained,
    tui,
)
from tracer.benchmarks.stats import Section

SECTIONS: dict[str, tuple[Callable[[bool, Callable[[str], None]], Section], bool]] = {
    # name: (run, needs root)
    "pipeline": (pipeline.run, False),
    "memory": (memory.run, False),
    "startup": (startup.run, True),
    "packetpath": (packetpath.run, True),
    "probecost": (probecost.run, True),
    "dropcost": (dropcost.run, True),
    "flowcost": (flowcost.run, True),
    "sustained": (sustained.run, True),
    "rulecount": (rulecount.run, True),
    "neighbour": (neighbour.run, True),
    "reader": (reader.run, True),
    "serve": (serve.run, True),
    "tui": (tui.run, False),
}


def _log(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


def summary(sections: list[Section]) -> Section:
    """The first table of the report: every section, whether it met its targets, how long it took."""
    rows = []
    for section in sections:
        state = "error" if section.error else ("target missed" if section.missed else "ok")
        rows.append([section.title, state, f"{section.seconds:.0f} s"])
    return Section("Summary", "", ["figure", "result", "run time"], rows)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def render(sections: list[Section], quick: bool, total_seconds: float, load: str = "", command: str = "") -> str:
    head = [
        "# podtrace benchmarks",
        "",
        f"Machine: {machine.describe()}.",
        "",
        f"Written by `{command or ('python -m tracer.benchmarks --quick' if quick else 'make bench')}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')} in {total_seconds:.0f} s. Every figure is a side-by-side comparison "
        "from this one run; slow numbers never fail the benchmark, errors do.",
        "",
    ]
    if load:
        head += [f"Load average (1, 5, 15 min) {load}: anything above 0 is other work sharing the CPUs, "
                 "which shows up as run-to-run spread.", ""]
    body = [summary(sections).markdown().rsplit("_Section run time", 1)[0].rstrip(), ""]
    body += [section.markdown() for section in sections]
    return "\n".join(head + body)


def _blocks(text: str) -> tuple[str, list[tuple[str, str]]]:
    """A report's head and its "## " sections as (title, markdown), in order."""
    parts = re.split(r"(?m)^(?=## )", text)
    return parts[0], [(part.splitlines()[0][3:].strip(), part) for part in parts[1:]]


def merge(previous: str, fresh: str, ran: list[Section], when: str = "") -> str:
    """`fresh` (a report of the sections just run) merged into a previous report: the sections run replace theirs,
    the others keep their text and their Summary rows, and the head says which sections are from which run."""
    old_head, old_blocks = _blocks(previous)
    new_head, new_blocks = _blocks(fresh)
    new_by_title, old_by_title = dict(new_blocks), dict(old_blocks)
    titles = [title for title, _ in old_blocks if title != "Summary"]
    titles += [title for title, _ in new_blocks if title != "Summary" and title not in titles]
    old_rows = {}
    for line in old_by_title.get("Summary", "").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("figure", "---"):
            old_rows[cells[0]] = cells
    ran_titles = {section.title for section in ran}
    rows = []
    for title in titles:
        fresh_row = next((summary([section]).rows[0] for section in ran if section.title == title), None)
        rows.append(fresh_row or old_rows.get(title, [title, "(not in the previous summary)", "-"]))
    # Where each section comes from: this run, earlier partial runs (carried forward), or the first full report.
    lines = [f"Re-run on {when or time.strftime('%Y-%m-%d %H:%M')}: {', '.join(t for t in titles if t in ran_titles)}."]
    for earlier in re.findall(r"(?m)^Re-run on (\d{4}-\d\d-\d\d \d\d:\d\d|[^:]+): (.*)\.$", old_head):
        kept = [t for t in earlier[1].split(", ") if t not in ran_titles]
        if kept:
            lines.append(f"Re-run on {earlier[0]}: {', '.join(kept)}.")
    origin = re.search(r"(?m)^Every other section: (.*)$", old_head)
    if origin:
        lines.append(origin.group(0))
    else:
        written = re.search(r"(?m)^Written by (.*? in \d+ s)\.", old_head)
        machine_line = re.search(r"(?m)^Machine: (.*)\.$", old_head)
        parts = [f"written by {written.group(1)}" if written else "",
                 f"machine: {machine_line.group(1)}" if machine_line else ""]
        lines.append(f"Every other section: from the report {'; '.join(p for p in parts if p) or 'before'}.")
    head = new_head.rstrip() + "\n\n" + "\n\n".join(lines) + "\n\n"
    body = [summary_table(rows).rstrip(), ""]
    body += [new_by_title.get(title, old_by_title.get(title, "")).rstrip() + "\n" for title in titles]
    return head + "\n".join(body)


def summary_table(rows: list[list[str]]) -> str:
    return Section("Summary", "", ["figure", "result", "run time"], rows).markdown().rsplit("_Section run time", 1)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracer.benchmarks", description="podtrace benchmarks")
    parser.add_argument("--out", default="BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test: figures are noisy)")
    parser.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}; the "
                        "other sections of an existing --out file are kept")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.only.split(",") if name.strip()] or list(SECTIONS)
    unknown = [name for name in wanted if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    started = time.monotonic()
    load_before = load_average()
    sections = []
    for name in wanted:
        run, needs_root = SECTIONS[name]
        section_started = time.monotonic()
        if needs_root and os.geteuid() != 0:
            section = Section(name, error="needs root (network namespaces, BPF): run `sudo make bench`")
        else:
            try:
                section = run(args.quick, _log)
            except Exception as err:  # one failed section must not lose the others' figures
                _log(f"{name} failed:\n{traceback.format_exc()}")
                section = Section(name, error=f"{type(err).__name__}: {err}")
        section.seconds = time.monotonic() - section_started
        sections.append(section)
        _log(f"{name}: {'error' if section.error else 'done'} in {section.seconds:.0f} s")
    text = render(sections, args.quick, time.monotonic() - started,
                  f"{load_before} at the start, {load_average()} at the end",
                  f"python -m tracer.benchmarks --only {args.only}{' --quick' if args.quick else ''}" if args.only else
                  "")
    if args.only and os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as handle:
            text = merge(handle.read(), text, sections)
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(text)
    sys.stdout.write(text)
    return 1 if any(section.error for section in sections) else 0

