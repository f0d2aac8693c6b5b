"""kfree_skb ns per drop: the drop probe on tp_btf and on its raw-tracepoint fallback, against a baseline commit.

A paced UDP flood to a closed port in a namespace that tracks connections (a conntrack rule, as on every Kubernetes
node) makes one NO_SOCKET drop per datagram, each with its conntrack entry. The traced consumer (drops mode) runs in
three versions, interleaved: the baseline commit's tree, this checkout forced onto the raw tracepoint
(PODTRACE_RAW_TP_DROPS), and this checkout as it attaches by default (tp_btf where the kernel allows). The figure is
the kernel's own accounting (kernel.bpf_stats_enabled) of the consumer's own drop program: ns per run, one run per
freed skb. The rate is paced below what the consumer reads, so every drop builds its events (a full ring would make
runs cheaper); lost events are shown.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tracer.benchmarks.netns import in_netns, python_module, sh, udp_no_ports, veth_pair
from tracer.benchmarks.probecost import baseline_tree, bpf_stats, program_deltas, program_stats, programs_of
from tracer.benchmarks.stats import Section, fmt_rate, interleave, median
from tracer.benchmarks.tracing import traced

# main before the drop probe moved to tp_btf (issue 18): the raw tracepoint with one helper read per field.
DEFAULT_BASELINE = "928c881"
BEFORE_ENV = "PODTRACE_BENCH_BEFORE"  # another baseline commit for this section and tracer/benchmarks/flowcost.py
TARGET_NS = 300
RATE = 40000  # drops/s: below what one consumer reads (the sustained section: 50k/s with 0 lost)
PORT = 9
VERSIONS = ("baseline", "raw_tp", "tp_btf")
LABELS = {"baseline": "baseline {ref} (raw tracepoint)", "raw_tp": "now, raw tracepoint fallback",
          "tp_btf": "now, as attached by default"}
# Program names as bpftool shows them: BCC names a RAW_TRACEPOINT_PROBE by its tracepoint, tracer/probes/tpbtf.py too.
DROP_PROGRAMS = ("kfree_skb", "pt_drop_raw_tp")


def _one_run(pair_a: str, dst: str, version: str, tree: Path | None,
             seconds: float) -> tuple[float, int, int, list[str]]:
    """ns per run of the consumer's drop program, its runs, the events it lost, and what it attached."""
    env = dict(os.environ)
    env.pop("PODTRACE_RAW_TP_DROPS", None)
    if version == "raw_tp":
        env["PODTRACE_RAW_TP_DROPS"] = "1"
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    with traced([], env=env, cwd=str(tree) if tree else None) as handle:
        before = programs_of(handle.pid)
        flood = subprocess.run(in_netns(pair_a, python_module(
            "tracer.benchmarks.load", "flood", "--dst", dst, "--port", str(PORT), "--rate", str(RATE),
            "--duration", f"{seconds:g}")), capture_output=True, text=True, timeout=seconds + 60, check=True,
            cwd=str(Path(__file__).resolve().parents[2]))
        json.loads(flood.stdout.splitlines()[-1])
        after = program_stats()
    costs = program_deltas(before, after)
    drop = [costs[name] for name in DROP_PROGRAMS if name in costs and costs[name].runs]
    if len(drop) != 1:
        raise RuntimeError(f"{version}: expected one drop program among {sorted(costs)}")
    return drop[0].ns_per_run, drop[0].runs, int(handle.counters.get("lost", 0)), list(
        handle.result.get("attached", []))


def run(quick: bool, log: Callable[[str], None], baseline: str = "") -> Section:
    ref = baseline or os.environ.get(BEFORE_ENV, DEFAULT_BASELINE)
    repeats, seconds = (1, 1.0) if quick else (3, 4.0)
    section = Section(
        "kfree_skb ns/drop",
        f"Nanoseconds per run of the drop program (kernel.bpf_stats_enabled), one run per freed skb, under a paced "
        f"{RATE // 1000}k/s flood of 18-byte UDP datagrams to a closed port in a namespace with conntrack on (each "
        f"drop carries its conntrack event): {seconds:g} s per run, {repeats} interleaved rounds, medians. "
        f"Target: <= {TARGET_NS} ns per drop. Set `{BEFORE_ENV}` to compare with another commit.",
        ["version", "ns/drop", "vs baseline", "drops measured", "lost events", "target"],
    )
    ns: dict[str, list[float]] = {}
    runs: dict[str, int] = {}
    lost: dict[str, int] = {}
    with baseline_tree(ref) as tree, veth_pair("ptdc", "198.19.11.1", "198.19.11.2") as pair, bpf_stats():
        # Registers conntrack in the namespace (a Kubernetes node always has it): each drop has an nf_conn.
        sh("iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP", netns=pair.b)
        versions = VERSIONS if tree else VERSIONS[1:]
        if tree is None:
            section.notes.append(f"Baseline `{ref}` is not available here: only this checkout is measured.")
        before = udp_no_ports(pair.b)
        for rnd, version in interleave(list(versions), repeats):
            log(f"kfree_skb ns/drop: round {rnd + 1}/{repeats}, {version}")
            cost, count, missed, attached = _one_run(pair.a, pair.addr_b, version,
                                                     tree if version == "baseline" else None, seconds)
            ns.setdefault(version, []).append(cost)
            runs[version] = runs.get(version, 0) + count
            lost[version] = lost.get(version, 0) + missed
            if version == "tp_btf" and "tp_btf kfree_skb" not in attached:
                section.notes.append(f"This kernel did not take tp_btf: the default attached {attached}.")
        drops = udp_no_ports(pair.b) - before
    base = median(ns.get("baseline", []))
    for version in versions:
        value = median(ns[version])
        versus = f"{value / base:.3f}x ({(value / base - 1) * 100:+.1f}%)" if base else "-"
        met = "met" if value <= TARGET_NS else f"missed (+{value - TARGET_NS:,.0f} ns)"
        section.rows.append([LABELS[version].format(ref=ref), f"{value:,.0f}", versus, f"{runs[version]:,}",
                             f"{lost[version]:,}", met if version != "baseline" else "-"])
        if version == "tp_btf" and value > TARGET_NS:
            section.missed.append(f"kfree_skb {value:,.0f} ns per drop (target <= {TARGET_NS} ns)")
    section.notes.append(f"NO_SOCKET drops counted by the receiving namespace's UDP NoPorts over the run: "
                         f"{fmt_rate(drops)}; runs include drops elsewhere on the machine while the probe was "
                         f"attached (it is unscoped), each a full drop too.")
    return section
