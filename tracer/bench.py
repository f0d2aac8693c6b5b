"""`make bench`: what podtrace costs and carries, measured side by side in one run, written to BENCHMARKS.md.

Every figure is a comparison from the same run, never a timed assertion: the benchmark exits non-zero only when a
section fails with an error, never because a number is slow. Each section lives in tracer/benchmarks/.

    python -m tracer.bench --out BENCHMARKS.md [--quick] [--only pipeline,memory]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable

from tracer.benchmarks import (
    dropcost,
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


def render(sections: list[Section], quick: bool, total_seconds: float, load: str = "") -> str:
    head = [
        "# podtrace benchmarks",
        "",
        f"Machine: {machine.describe()}.",
        "",
        f"Written by `{'python -m tracer.bench --quick' if quick else 'make bench'}` on "
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracer.bench", description="podtrace benchmarks")
    parser.add_argument("--out", default="BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test: figures are noisy)")
    parser.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}")
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
            except Exception as err:  # noqa: BLE001 - one failed section must not lose the others' figures
                _log(f"{name} failed:\n{traceback.format_exc()}")
                section = Section(name, error=f"{type(err).__name__}: {err}")
        section.seconds = time.monotonic() - section_started
        sections.append(section)
        _log(f"{name}: {'error' if section.error else 'done'} in {section.seconds:.0f} s")
    text = render(sections, args.quick, time.monotonic() - started,
                  f"{load_before} at the start, {load_average()} at the end")
    with open(args.out, "w", encoding="utf-8") as handle:
        handle.write(text)
    sys.stdout.write(text)
    return 1 if any(section.error for section in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
