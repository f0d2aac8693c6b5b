"""Flows mode per packet: BPF ns and CPU per packet of a DNAT'd UDP flood, tracer off vs a baseline vs this checkout
(its default conntrack-driven mode, bpf/nfct.c, and its per-packet --hook-timing mode, bpf/netfilter.c).

The traced consumer loads what `podtrace flows` needs: the drop probe and the netfilter links, in both namespaces of
a veth pair whose receiver DNATs the flood's port to a socket that reads it (a Service's translation; one conntrack
entry). The flood is paced, so the figure is cost per packet rather than a throughput a shared machine makes noisy:
the sender's CPU time (its own rusage) plus the machine's softirq time (/proc/stat), where the receive path and
most netfilter programs run, divided by the packets sent; and the kernel's own run time of the consumer's programs
(kernel.bpf_stats_enabled) per packet. Targets (DESIGN.md): flows <= 5% of a packet's cost.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tracer.benchmarks.dropcost import BEFORE_ENV, DEFAULT_BASELINE
from tracer.benchmarks.netns import Pair, in_netns, python_module, sh, veth_pair
from tracer.benchmarks.probecost import (
    ProgramCost,
    baseline_tree,
    bpf_stats,
    program_deltas,
    program_stats,
    programs_of,
)
from tracer.benchmarks.stats import Section, interleave, median
from tracer.benchmarks.tracing import traced

REPO = Path(__file__).resolve().parents[2]
RATE = 50000  # packets/s, paced: below what the sink reads, so no socket drops
SERVICE_PORT, BACKEND_PORT = 5300, 5301
TARGET_PERCENT = 5.0
VERSIONS = ("off", "baseline", "hooks", "now")
LABELS = {"off": "tracer off", "hooks": "flows --hook-timing, now (every packet at 11 points)",
          "now": "flows, now (conntrack-driven, the default)"}
SINK = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,8<<20)\n"
        f"s.bind(('0.0.0.0',{BACKEND_PORT}))\nwhile True:\n    s.recv(2048)\n")


def _softirq_seconds() -> float:
    """The machine's softirq time so far (the "cpu" line of /proc/stat, field 7, in USER_HZ ticks)."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = handle.readline().split()
    return int(fields[7]) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _service(pair: Pair) -> Iterator[None]:
    """In b: the flood's port DNATed to a reading socket, as kube-proxy translates a Service to its backend."""
    sh("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", str(SERVICE_PORT), "-j", "DNAT",
       "--to-destination", f"{pair.addr_b}:{BACKEND_PORT}", netns=pair.b)
    sink = subprocess.Popen(in_netns(pair.b, [sys.executable, "-c", SINK]))
    try:
        time.sleep(0.3)
        yield
    finally:
        sink.kill()
        sink.wait()


def _flood(pair: Pair, seconds: float) -> tuple[int, float, float]:
    """Packets sent, the sender's CPU seconds and the machine's softirq seconds over the flood."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    softirq = _softirq_seconds()
    done = subprocess.run(in_netns(pair.a, python_module(
        "tracer.benchmarks.load", "flood", "--dst", pair.addr_b, "--port", str(SERVICE_PORT), "--rate", str(RATE),
        "--duration", f"{seconds:g}", "--size", "18")), capture_output=True, text=True, timeout=seconds + 60,
        check=True, cwd=str(REPO))
    softirq = _softirq_seconds() - softirq
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sender = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return int(json.loads(done.stdout.splitlines()[-1])["sent"]), sender, softirq


def _one_run(pair: Pair, version: str, tree: Path | None, seconds: float,
             programs: dict[str, ProgramCost]) -> tuple[float, float]:
    """CPU ns per packet (sender + softirq) and BPF ns per packet (0 when off); each program's runs and time are
    added to `programs`."""
    if version == "off":
        sent, sender, softirq = _flood(pair, seconds)
        return (sender + softirq) * 1e9 / sent, 0.0
    env = dict(os.environ, PYTHONPATH=str(tree)) if tree else None
    mode = ["--conntrack-flows"] if version == "now" else []
    with traced(["--netfilter-netns", pair.a, "--netfilter-netns", pair.b, *mode], env=env,
                cwd=str(tree) if tree else None) as handle:
        before = programs_of(handle.pid)
        sent, sender, softirq = _flood(pair, seconds)
        after = program_stats()
    deltas = program_deltas(before, after)
    for name, cost in deltas.items():
        total = programs.setdefault(name, ProgramCost())
        total.runs += cost.runs
        total.ns += cost.ns
    programs.setdefault("_packets", ProgramCost()).runs += sent
    return (sender + softirq) * 1e9 / sent, sum(cost.ns for cost in deltas.values()) / sent


DROP_PORT = 5999  # the receiver's INPUT drops it: a netfilter drop per packet


def _netfilter_drop_note(pair: Pair, seconds: float) -> str:
    """What a packet netfilter drops costs in each mode: the drop program per drop (the conntrack mode walks the
    drop's stack to name its hook) plus the netfilter programs it passed."""
    sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", str(DROP_PORT), "-j", "DROP", netns=pair.b)
    parts = []
    for version, mode in (("--hook-timing", []), ("default (conntrack)", ["--conntrack-flows"])):
        with traced(["--netfilter-netns", pair.a, "--netfilter-netns", pair.b, *mode]) as handle:
            before = programs_of(handle.pid)
            subprocess.run(in_netns(pair.a, python_module(
                "tracer.benchmarks.load", "flood", "--dst", pair.addr_b, "--port", str(DROP_PORT), "--rate",
                str(RATE // 2), "--duration", f"{seconds:g}", "--size", "18")), capture_output=True, text=True,
                timeout=seconds + 60, check=True, cwd=str(REPO))
            after = program_stats()
        deltas = program_deltas(before, after)
        drop = deltas.get("kfree_skb", ProgramCost())
        packets = max((cost.runs for name, cost in deltas.items() if name != "kfree_skb"), default=0) or 1
        others = sum(cost.ns for name, cost in deltas.items() if name != "kfree_skb") / packets
        parts.append(f"{version}: the drop program {drop.ns_per_run:,.0f} ns per drop ({drop.runs:,} runs) + "
                     f"{others:,.0f} ns of netfilter programs per packet = {drop.ns_per_run + others:,.0f} ns")
    return (f"A packet INPUT drops (a {RATE // 2000}k/s flood to port {DROP_PORT}, {seconds:g} s, one run each): "
            + "; ".join(parts) + ". The conntrack mode's stack walk (nf_hook_slow's caller names the hook) is paid "
            "per netfilter drop the session traces, instead of a program at every hook on every packet.")


def _program_note(label: str, programs: dict[str, ProgramCost]) -> str:
    """Where the BPF time goes (bpf_stats per program, summed over rounds): runs and ns per packet sent."""
    packets = programs.pop("_packets", ProgramCost()).runs or 1
    parts = [f"`{name}` {cost.runs / packets:.2f} runs x {cost.ns_per_run:,.0f} ns = {cost.ns / packets:,.0f} ns"
             for name, cost in sorted(programs.items(), key=lambda item: -item[1].ns) if cost.runs]
    return f"{label}, per packet: " + "; ".join(parts) + "."


def run(quick: bool, log: Callable[[str], None], baseline: str = "") -> Section:
    ref = baseline or os.environ.get(BEFORE_ENV, DEFAULT_BASELINE)
    repeats, seconds = (1, 1.0) if quick else (5, 4.0)  # five rounds: a shared machine's softirq time is noisy
    section = Section(
        "Flows mode per packet",
        f"A paced {RATE // 1000}k/s flood of 18-byte UDP datagrams to a port the receiver DNATs to a reading socket "
        f"(one Service translation), {seconds:g} s per run, {repeats} interleaved rounds, medians. The traced "
        f"consumer loads what `podtrace flows` does (drop probe, netfilter links in both namespaces): by default the "
        f"conntrack-driven programs (bpf/nfct.c), with --hook-timing the per-packet ones (bpf/netfilter.c, what the "
        f"baseline's flows always ran). CPU per packet "
        f"is the sender's CPU time plus the machine's softirq time over packets sent; BPF per packet is the kernel's "
        f"run time of the consumer's own programs (kernel.bpf_stats_enabled). Baseline `{ref}`; set `{BEFORE_ENV}` "
        f"to compare with another commit. Target: flows <= {TARGET_PERCENT:g}% CPU per packet over tracer off.",
        ["version", "CPU ns/packet", "vs off", "BPF ns/packet", "target"],
    )
    cpu: dict[str, list[float]] = {}
    bpf: dict[str, list[float]] = {}
    programs: dict[str, dict[str, ProgramCost]] = {}
    with baseline_tree(ref) as tree, veth_pair("ptfc", "198.19.13.1", "198.19.13.2") as pair, _service(pair), \
            bpf_stats():
        versions = VERSIONS if tree else ("off", "hooks", "now")
        if tree is None:
            section.notes.append(f"Baseline `{ref}` is not available here: only this checkout is measured.")
        for rnd, version in interleave(list(versions), repeats):
            log(f"flows per packet: round {rnd + 1}/{repeats}, {version}")
            per_cpu, per_bpf = _one_run(pair, version, tree if version == "baseline" else None, seconds,
                                        programs.setdefault(version, {}))
            cpu.setdefault(version, []).append(per_cpu)
            bpf.setdefault(version, []).append(per_bpf)
        log("flows per packet: netfilter drops")
        drop_note = _netfilter_drop_note(pair, seconds)
    off = median(cpu["off"])
    for version in versions:
        value = median(cpu[version])
        label = {**LABELS, "baseline": f"flows, baseline `{ref}`"}[version]
        if version == "off":
            section.rows.append([label, f"{value:,.0f}", "-", "-", "-"])
            continue
        percent = (value / off - 1) * 100 if off else 0.0
        met = "met" if percent <= TARGET_PERCENT else "missed"
        section.rows.append([label, f"{value:,.0f}", f"{percent:+.1f}%", f"{median(bpf[version]):,.0f}", met])
        if version == "now" and percent > TARGET_PERCENT:
            section.missed.append(f"flows mode costs {percent:+.1f}% CPU per packet (target <= {TARGET_PERCENT:g}%)")
    section.notes.append("Each round, CPU ns/packet: " + "; ".join(
        f"{version} " + ", ".join(f"{value:,.0f}" for value in cpu[version]) for version in versions) + ".")
    section.notes.append("A one-way UDP flood is the conntrack mode's worst case: every packet of it is ctinfo NEW "
                         "(no reply yet), so each one reads its entry's status (one helper call) to tell the same "
                         "connection from a recycled nf_conn; packets of established connections only look their "
                         "entry up. The sender's namespace has no NAT: its packets read the status and return.")
    for version in versions[1:]:
        section.notes.append(_program_note({**LABELS, "baseline": f"Baseline `{ref}`"}[version].split(" (")[0],
                                           programs[version]))
    section.notes.append(drop_note)
    section.notes.append("Softirq time is the whole machine's (other work on it shows up there); sender CPU is the "
                         "flood process's own.")
    return section
