"""Rule-count independence: podtrace's cost per packet in the lab with 10, 1000, 10000 Services.

"On" is the default drop probes plus BPF netfilter links in the client's node namespace (where kube-proxy's
rules run). Every request uses a fresh socket, so each one is a new conntrack entry that goes through the nat
table: through the `web` Service VIP (DNAT to one of three backends), and straight to a backend pod IP (no
Service matches).

Two figures: the request rate off vs on (context: on a shared machine the runs spread more than the cost being
measured), and the verdict's figure, the kernel's own accounting of each podtrace program
(kernel.bpf_stats_enabled): nanoseconds per run, runs per request, and BPF nanoseconds per request.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tracer.benchmarks.netns import in_netns, python_module
from tracer.benchmarks.probecost import ProgramCost, bpf_stats, program_deltas, program_stats, programs_of
from tracer.benchmarks.stats import Section, fmt_rate, fmt_ratio, interleave, median, ratio, spread_percent
from tracer.benchmarks.tracing import traced
from tracer.lab import control
from tracer.lab import manifest as mf

FLAT_PERCENT = 20.0  # flat: per packet, the most Services within this of the fewest (one program: ns/run spread)
MIN_RUNS = 1000  # a program with fewer runs per round has a ns/run too noisy to judge (e.g. rare drops)

# Every packet in the node namespace enters netfilter once, at PREROUTING (arrived) or OUTPUT (sent from it): the
# first-priority links there count the packets, from the kernel's own run counts.
PACKET_COUNTERS = ("pt_nf_pre_first", "pt_nf_out_first")

MODES = ("off", "on")
WAIT_FOR_LAB = 900.0


@dataclass
class CountResult:
    """Per rule count: every traced round's program costs and requests sent."""

    rounds: list[tuple[dict[str, ProgramCost], int]] = field(default_factory=list)

    def ns_per_run_rounds(self, name: str) -> list[float]:
        return [costs[name].ns_per_run for costs, _ in self.rounds if costs.get(name, ProgramCost()).runs]

    def ns_per_run(self, name: str) -> float:
        return median(self.ns_per_run_rounds(name))

    def min_runs(self, name: str) -> int:
        return min((costs.get(name, ProgramCost()).runs for costs, _ in self.rounds), default=0)

    def runs_per_request(self, name: str) -> float:
        runs = sum(costs.get(name, ProgramCost()).runs for costs, _ in self.rounds)
        return ratio(runs, sum(requests for _, requests in self.rounds))

    def ns_per_request_rounds(self) -> list[float]:
        """BPF time of all podtrace programs per request sent, per round: the added cost per request."""
        return [ratio(sum(c.ns for c in costs.values()), requests) for costs, requests in self.rounds if requests]

    def ns_per_request(self) -> float:
        return median(self.ns_per_request_rounds())

    def ns_per_packet_rounds(self) -> list[float]:
        """BPF time of all podtrace programs per packet the node namespace saw (PACKET_COUNTERS runs), per round."""
        values = []
        for costs, _ in self.rounds:
            packets = sum(costs.get(name, ProgramCost()).runs for name in PACKET_COUNTERS)
            if packets:
                values.append(sum(c.ns for c in costs.values()) / packets)
        return values

    def ns_per_packet(self) -> float:
        return median(self.ns_per_packet_rounds())

    def names(self) -> set[str]:
        return {name for costs, _ in self.rounds for name in costs}


def flat_verdict(name: str, ns_by_count: Sequence[float], noise: float | None = None,
                 limit: float = FLAT_PERCENT) -> str | None:
    """None when ns/run across rule counts stays within `limit` percent of its median, else why it is not flat.

    `noise` is how far repeated rounds at one rule count spread (percent; None with one round): a spread across
    rule counts no larger than that cannot be told apart from noise, and the message says so.
    """
    spread = spread_percent(ns_by_count)
    if spread <= limit:
        return None
    trend = ratio(ns_by_count[-1], ns_by_count[0])
    if noise is None:
        against = "one round per rule count: no measure of the noise"
    elif spread <= noise:
        against = f"repeated rounds at one rule count already spread up to {noise:.0f}%: within the noise, inconclusive"
    else:
        against = f"more than the {noise:.0f}% repeated rounds at one rule count spread"
    return (f"{name}: ns/run {', '.join(f'{v:,.0f}' for v in ns_by_count)} across rule counts spreads over "
            f"{spread:.0f}% of its median (flat means within {limit:g}%), {trend:.2f}x with the most Services vs "
            f"the fewest; {against}")


def round_noise(per_count_rounds: Sequence[Sequence[float]]) -> float | None:
    """The largest spread of repeated rounds at one rule count (percent); None when a count had a single round."""
    if any(len(rounds) < 2 for rounds in per_count_rounds):
        return None
    return max(spread_percent(rounds) for rounds in per_count_rounds)


def shared_shift(ratios: Sequence[float]) -> str:
    """How the judged programs' ns/run moved between the fewest and most Services, all together or apart."""
    if not ratios:
        return ""
    low, high = min(ratios), max(ratios)
    together = (" every program moved the same way, including those that never see a NAT decision: a "
                "machine-wide shift (CPU frequency, the host stealing the CPU, cache contention from other work) "
                "rather than the rules" if high < 1 or low > 1 else "")
    return f"from {low:.2f}x to {high:.2f}x (median {median(ratios):.2f}x);{together}".rstrip(";")


def _wait_until_down(log: Callable[[str], None]) -> None:
    deadline = time.monotonic() + WAIT_FOR_LAB
    if control.is_up():
        log("rule count: the lab is up (someone else's test?); waiting for it to go down")
    while control.is_up():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the lab stayed up for {WAIT_FOR_LAB:g} s; not tearing down someone else's lab")
        time.sleep(5)


def _rr(netns: str, dst: str, port: int, seconds: float) -> dict[str, float]:
    """The request generator's result: rate (replies/s), ok and failed requests."""
    argv = in_netns(netns, python_module("tracer.benchmarks.load", "rr", "--dst", dst, "--port", str(port),
                                         "--duration", f"{seconds:g}"))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the UDP request generator failed: {proc.stderr.strip()[-300:]}")
    result: dict[str, float] = json.loads(proc.stdout.splitlines()[-1])
    if not result["ok"]:
        raise RuntimeError(f"no UDP replies from {dst}:{port} in the lab")
    return result


BpfTable = tuple[list[list[str]], list[str], list[str]]


def _spread_cells(values: Sequence[float], noise: float | None) -> list[str]:
    """Spread across rule counts, the rounds' own spread (noise), and the most Services vs the fewest."""
    return [f"{spread_percent(values):.0f}%", "-" if noise is None else f"{noise:.0f}%",
            f"{ratio(values[-1], values[0]):.2f}x"]


def bpf_table(counts: Sequence[int], results: Mapping[int, CountResult]) -> BpfTable:
    """Rows of the BPF cost table, notes, and missed targets (the verdict: all programs' BPF time per packet)."""
    rows: list[list[str]] = []
    notes: list[str] = []
    missed: list[str] = []
    names = sorted(set().union(*(results[c].names() for c in counts)))
    judged_any = False
    shifts: list[float] = []  # ns/run with the most Services over the fewest, per judged program
    for name in names:
        values = [results[c].ns_per_run(name) for c in counts]
        runs = [results[c].min_runs(name) for c in counts]
        noise = round_noise([results[c].ns_per_run_rounds(name) for c in counts])
        judged = all(values) and min(runs) >= MIN_RUNS
        spreads = _spread_cells(values, noise) if all(values) else ["-", "-", "-"]
        if all(values) and not judged:
            spreads[0] = f"({spreads[0]}, too few runs)"
        rows.append([name] + [f"{v:,.0f}" if v else "-" for v in values] + spreads
                    + [" / ".join(f"{results[c].runs_per_request(name):.2f}" for c in counts)])
        if not judged:
            notes.append(f"{name}: fewer than {MIN_RUNS:,} runs per round at some rule count (min "
                         f"{min(runs):,}): shown, not judged.")
            continue
        judged_any = True
        shifts.append(ratio(values[-1], values[0]))
        verdict = flat_verdict(name, values, noise)
        if verdict:  # a detail: the target is the cost per packet of all programs together (below)
            notes.append(f"One program: {verdict}.")
    if judged_any:
        notes.append(f"ns/run with {counts[-1]:,} vs {counts[0]:,} Services, over the judged programs: "
                     f"{shared_shift(shifts)}.")
    totals = [results[c].ns_per_request() for c in counts]
    noise = round_noise([results[c].ns_per_request_rounds() for c in counts])
    rows.append(["all programs, ns per request"] + [f"{v:,.0f}" for v in totals] + _spread_cells(totals, noise)
                + ["-"])
    per_packet = [results[c].ns_per_packet() for c in counts]
    if all(per_packet):
        noise = round_noise([results[c].ns_per_packet_rounds() for c in counts])
        packets = [sum(results[c].runs_per_request(name) for name in PACKET_COUNTERS) for c in counts]
        rows.append(["all programs, ns per packet"] + [f"{v:,.0f}" for v in per_packet]
                    + _spread_cells(per_packet, noise) + [" / ".join(f"{p:.2f}" for p in packets) + " packets"])
        notes.append("Packets are counted by the kernel: every packet in the node namespace runs "
                     f"{' or '.join(PACKET_COUNTERS)} once (arriving or locally sent); the runs/request column of the "
                     "per-packet row is packets per request.")
        verdict = per_packet_verdict(counts, per_packet, noise)
        if verdict:
            missed.append(verdict)
    else:
        missed.append(f"no packets counted ({' / '.join(PACKET_COUNTERS)} never ran): no cost per packet to judge")
    return rows, notes, missed


def per_packet_verdict(counts: Sequence[int], per_packet: Sequence[float], noise: float | None) -> str | None:
    """The target: podtrace's BPF time per packet with the most Services within FLAT_PERCENT of the fewest.

    A cost that grew with the rules would show there (iptables alone: 0.2x the request rate at 10,000 Services);
    a middle value off by noise does not make a trend. None when flat, else the figures and the noise beside them.
    """
    trend = ratio(per_packet[-1], per_packet[0])
    if abs(trend - 1.0) * 100.0 <= FLAT_PERCENT:
        return None
    noise_text = f"repeated rounds at one rule count spread up to {noise:.0f}%" if noise is not None else \
        "one round per rule count: no measure of the noise"
    return (f"BPF time per packet {', '.join(f'{v:,.0f} ns' for v in per_packet)} at "
            f"{', '.join(f'{c:,}' for c in counts)} Services: {trend:.2f}x with the most vs the fewest (flat: within "
            f"{FLAT_PERCENT:g}%); {noise_text}")


def run(quick: bool, log: Callable[[str], None]) -> Section:
    counts = (10, 1000) if quick else (10, 1000, 10_000)
    repeats, seconds = (1, 1.0) if quick else (3, 3.0)
    manifest = mf.load(None)
    client = next(p for p in manifest.pods if p.name == "client")
    backend = next(p for p in manifest.pods if p.name == "web-1")
    node = manifest.node(client.node).netns
    service = next(s for s in manifest.services if s.name == "web")
    dns = next(p for p in service.ports if p.protocol == "UDP")
    targets = {"via Service VIP": (service.cluster_ip, dns.port),
               "to a pod IP": (backend.ip, dns.target_port)}
    section = Section(
        "Rule-count independence",
        f"The lab (iptables kube-proxy rules) with N dummy Services; from the client pod, UDP request/response "
        f"with a fresh socket per request ({seconds:g} s per run, {repeats} interleaved rounds of off/on, "
        f"medians). On: drop probes + netfilter links in {node}. The verdict is the last row of the second table: "
        f"podtrace's BPF time per packet, from the kernel's own accounting of each program "
        f"(`kernel.bpf_stats_enabled`) in the on rounds, both targets together, flat when the most Services cost "
        f"within {FLAT_PERCENT:g}% of the fewest; the request rates are context.",
        ["Services", "target", "off req/s", "on req/s", "on vs off", "off vs 10 Services"],
    )
    baseline: dict[str, float] = {}
    ratios: dict[str, list[float]] = {name: [] for name in targets}
    results: dict[int, CountResult] = {}
    off_vs_fewest: dict[str, float] = {}  # off req/s with the most Services over that with the fewest
    _wait_until_down(log)
    with bpf_stats():
        for count in counts:
            log(f"rule count: lab up with {count} Services")
            started = time.monotonic()
            control.up(services=count)
            setup = time.monotonic() - started
            rates: dict[tuple[str, str], list[float]] = {(n, m): [] for n in targets for m in MODES}
            result = results[count] = CountResult()
            try:
                for rnd, mode in interleave(MODES, repeats):
                    log(f"rule count: {count} Services, round {rnd + 1}/{repeats}, {mode}")
                    if mode == "off":
                        for name, (dst, port) in targets.items():
                            rates[(name, mode)].append(_rr(client.netns, dst, port, seconds)["rate"])
                        continue
                    requests = 0
                    with traced(["--netfilter-netns", node]) as handle:
                        before = programs_of(handle.pid)  # this consumer's programs, not other tenants'
                        for name, (dst, port) in targets.items():
                            measured = _rr(client.netns, dst, port, seconds)
                            rates[(name, mode)].append(measured["rate"])
                            requests += int(measured["ok"] + measured["failed"])
                        after = program_stats()
                    result.rounds.append((program_deltas(before, after), requests))
            finally:
                control.down()
            section.notes.append(f"{count:,} Services: `lab up` took {setup:.1f} s.")
            for name in targets:
                noise = spread_percent(rates[(name, "off")])
                if noise > 10:
                    section.notes.append(f"{count:,} Services, {name}: podtrace-off runs spread over {noise:.0f}% "
                                         "of their median (noise from other work on the machine).")
                off, on = median(rates[(name, "off")]), median(rates[(name, "on")])
                baseline.setdefault(name, off)
                off_vs_fewest[name] = ratio(off, baseline[name])
                ratios[name].append(ratio(on, off))
                section.rows.append([f"{count:,}", name, fmt_rate(off), fmt_rate(on), fmt_ratio(on, off),
                                     f"{ratio(off, baseline[name]):.2f}x"])
    for name, values in ratios.items():
        spread = (max(values) - min(values)) * 100
        section.notes.append(f"Context, {name}: on/off request-rate ratio {', '.join(f'{v:.3f}' for v in values)} "
                             f"across {', '.join(f'{c:,}' for c in counts)} Services (spread {spread:.1f} points; "
                             "throughput ratios on a shared machine are dominated by run-to-run noise).")
    rows, notes, missed = bpf_table(counts, results)
    section.tables.append((
        "Kernel accounting of podtrace's programs in the on rounds: ns per run (median over rounds), the spread of "
        f"ns/run across rule counts (flat: within {FLAT_PERCENT:g}% of the median) beside the spread of repeated "
        "rounds at one rule count (the largest: the noise; on a VM a run's time includes the host stealing the "
        "CPU), and runs per request sent.",
        ["program"] + [f"ns/run, {c:,} Services" for c in counts]
        + ["spread across counts", "spread across rounds", f"{counts[-1]:,} vs {counts[0]:,}", "runs/request"],
        rows))
    section.notes += notes
    fewest, most = results[counts[0]], results[counts[-1]]
    section.notes.append(
        f"Side by side, {counts[-1]:,} vs {counts[0]:,} Services: iptables alone (podtrace off) serves "
        + ", ".join(f"{value:.2f}x the requests/s {name}" for name, value in off_vs_fewest.items())
        + f"; podtrace's BPF time is {ratio(most.ns_per_packet(), fewest.ns_per_packet()):.2f}x per packet and "
        f"{ratio(most.ns_per_request(), fewest.ns_per_request()):.2f}x per request.")
    section.notes.append(
        "Why the BPF cost can stay flat while iptables slows down (the off req/s column): kube-proxy's iptables "
        "rules are walked in order, so every new connection through the nat table costs more with more Services; "
        "podtrace's programs never walk the rules: the netfilter links run once per packet at fixed hook "
        "priorities before and after the iptables chains, and kfree_skb once per dropped packet, each doing a "
        "bounded amount of work (parse the headers, filter, look up or update its own maps).")
    section.notes.append(
        "kfree_skb fires for every dropped packet on the host, not only the lab's, so its runs per request include "
        "other work's drops; the netfilter links see only the node namespace's packets. Programs are the ones "
        "loaded since just before the consumer started (a program someone else loads in that second would count).")
    section.missed += missed
    return section
