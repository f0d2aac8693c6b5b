"""Probe cost per run: the kernel's own accounting (bpf_stats) of each podtrace program, this version vs a baseline.

Under one 64-byte UDP flood over a veth, each mode (drops, path, netfilter) runs the traced consumer of this
checkout and of a baseline commit (extracted with `git archive`, run from its own directory), interleaved. The
kernel counts every program run and its time (kernel.bpf_stats_enabled), so the figure is nanoseconds per run of
each program: far less sensitive to other work on the machine than a throughput ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracer.benchmarks.netns import Pair, in_netns, iperf_server, veth_pair
from tracer.benchmarks.stats import Section, fmt_rate, fmt_ratio, interleave, median
from tracer.benchmarks.tracing import traced

# The last commit of the first development session: the figures in BENCHMARKS.md before the probe optimizations.
DEFAULT_BASELINE = "3b4aef2"
REPO = Path(__file__).resolve().parents[2]
PORT = 5211
MODES = ("drops", "path", "netfilter")
# bpftool versions that predate a program type print its number: 32 is BPF_PROG_TYPE_NETFILTER. "tracing":
# tp_btf programs (tracer/probes/tpbtf.py).
PROGRAM_TYPES = ("tracepoint", "raw_tracepoint", "tracing", "netfilter", 32, "sched_cls", "kprobe")


@contextmanager
def baseline_tree(ref: str) -> Iterator[Path | None]:
    """The baseline commit's files in a temporary directory; None when this is not a git checkout holding it."""
    with tempfile.TemporaryDirectory(prefix="podtrace-baseline-") as tmp:
        archive = Path(tmp, "tree.tar")
        with archive.open("wb") as out:
            made = subprocess.run(["git", "-C", str(REPO), "archive", ref], stdout=out, stderr=subprocess.PIPE,
                                  check=False)
        if made.returncode != 0:
            yield None
            return
        tree = Path(tmp, "tree")
        tree.mkdir()
        subprocess.run(["tar", "-x", "-f", str(archive), "-C", str(tree)], check=True)  # our own commit's files
        yield tree


@contextmanager
def bpf_stats() -> Iterator[None]:
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = path.read_text().strip()
    path.write_text("1")
    try:
        yield
    finally:
        path.write_text(before)


def program_stats() -> dict[int, dict[str, Any]]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {prog["id"]: prog for prog in json.loads(out) if prog.get("type") in PROGRAM_TYPES}


def program_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs process `pid` holds open: its fds' `prog_id` in /proc/PID/fdinfo.

    A consumer's own programs, whatever else is loaded on the machine meanwhile (another tenant's tracer, a test
    run), which a before/after diff of `bpftool prog show` would count as the consumer's."""
    ids = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for entry in fdinfo.iterdir():
        try:
            text = entry.read_text()
        except OSError:  # closed since the listing
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def programs_of(pid: int) -> dict[int, dict[str, Any]]:
    """`bpftool prog show` records of the programs process `pid` loaded (program_ids_of)."""
    ids = program_ids_of(pid)
    return {prog_id: prog for prog_id, prog in program_stats().items() if prog_id in ids}


@dataclass
class ProgramCost:
    """One program's runs and run time over one traced round (summed over programs of the same name)."""

    runs: int = 0
    ns: int = 0

    @property
    def ns_per_run(self) -> float:
        return self.ns / self.runs if self.runs else 0.0


def program_deltas(before: Mapping[int, Mapping[str, Any]],
                   after: Mapping[int, Mapping[str, Any]]) -> dict[str, ProgramCost]:
    """Runs and run time each program (by name) added between two `bpftool prog show` snapshots by id."""
    costs: dict[str, ProgramCost] = {}
    for pid, prog in before.items():
        now = after.get(pid)
        if now is None:
            continue
        cost = costs.setdefault(str(prog["name"]), ProgramCost())
        cost.runs += int(now.get("run_cnt", 0)) - int(prog.get("run_cnt", 0))
        cost.ns += int(now.get("run_time_ns", 0)) - int(prog.get("run_time_ns", 0))
    return costs


def _mode_args(mode: str, pair: Pair) -> list[str]:
    if mode == "drops":
        return []
    if mode == "path":
        return ["--path", "--filter", f"host {pair.addr_b}"]
    return ["--netfilter-netns", pair.a, "--netfilter-netns", pair.b]


def _flood(pair: Pair, seconds: float) -> float:
    argv = ["iperf3", "-c", pair.addr_b, "-p", str(PORT), "-t", f"{seconds:g}", "-J", "-u", "-l", "64", "-b", "0"]
    proc = subprocess.run(in_netns(pair.a, argv), capture_output=True, text=True, timeout=seconds + 30, check=False)
    data = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "end" not in data:
        raise RuntimeError(f"iperf3 failed ({proc.returncode}): {data.get('error', proc.stderr.strip())}")
    total = data["end"]["sum"]
    return (total["packets"] - total["lost_packets"]) / total["seconds"]


def _one_run(pair: Pair, mode: str, tree: Path | None, seconds: float) -> tuple[dict[str, float], float]:
    """ns per run of each program this consumer loaded (new program ids), and the UDP rate received."""
    env = dict(os.environ, PYTHONPATH=str(tree)) if tree else None
    with traced(_mode_args(mode, pair), env=env, cwd=str(tree) if tree else None) as handle:
        before = programs_of(handle.pid)
        rate = _flood(pair, seconds)
        after = program_stats()
    costs = {name: cost.ns_per_run for name, cost in program_deltas(before, after).items() if cost.runs > 0}
    return costs, rate


def run(quick: bool, log: Callable[[str], None], baseline: str = "") -> Section:
    ref = baseline or os.environ.get("PODTRACE_BENCH_BASELINE", DEFAULT_BASELINE)
    repeats, seconds = (1, 1.0) if quick else (3, 3.0)
    section = Section(
        "Probe cost per run",
        f"Nanoseconds per run of each podtrace BPF program, from the kernel's own accounting "
        f"(`kernel.bpf_stats_enabled`), under a 64-byte UDP flood over a veth ({seconds:g} s per run, {repeats} "
        f"interleaved rounds, medians): this checkout vs baseline commit `{ref}` (its own tracer and bpf/, run from "
        f"a `git archive` of it). Set `PODTRACE_BENCH_BASELINE` to compare with another commit.",
        ["mode", "program", f"ns/run {ref}", "ns/run now", "now vs baseline"],
    )
    costs: dict[tuple[str, str], dict[str, list[float]]] = {}
    rates: dict[tuple[str, str], list[float]] = {}
    with baseline_tree(ref) as tree, veth_pair("ptpc", "198.19.7.1", "198.19.7.2") as pair, iperf_server(pair, PORT), \
            bpf_stats():
        versions = ("baseline", "now") if tree else ("now",)
        if tree is None:
            section.notes.append(f"Baseline `{ref}` is not available here (not a git checkout holding it): only "
                                 f"this checkout is measured.")
        labels = [f"{mode}:{version}" for mode in MODES for version in versions]
        for rnd, label in interleave(labels, repeats):
            mode, version = label.split(":")
            log(f"probe cost: round {rnd + 1}/{repeats}, {mode} ({version})")
            per_program, rate = _one_run(pair, mode, tree if version == "baseline" else None, seconds)
            rates.setdefault((mode, version), []).append(rate)
            for name, ns in per_program.items():
                costs.setdefault((mode, name), {}).setdefault(version, []).append(ns)
    for (mode, name), by_version in sorted(costs.items()):
        base, now = median(by_version.get("baseline", [])), median(by_version.get("now", []))
        section.rows.append([mode, name, f"{base:,.0f}" if base else "-", f"{now:,.0f}" if now else "-",
                             fmt_ratio(now, base) if base and now else "-"])
    for mode in MODES:
        base, now = median(rates.get((mode, "baseline"), [])), median(rates.get((mode, "now"), []))
        section.notes.append(f"{mode}: UDP 64 B received {fmt_rate(base, 'pkt/s') if base else '-'} with the "
                             f"baseline, {fmt_rate(now, 'pkt/s')} now")
    section.notes.append(f"Python {sys.version.split()[0]}; programs are matched by name, so a program only one "
                         f"version has shows '-' for the other.")
    return section
