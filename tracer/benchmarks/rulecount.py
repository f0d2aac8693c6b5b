"""Rule-count independence: UDP request rate in the lab with 10, 1000, 10000 Services, podtrace off vs on.

"On" is the default drop probes plus BPF netfilter links in the client's node namespace (where kube-proxy's
rules run). Every request uses a fresh socket, so each one is a new conntrack entry that goes through the nat
table: through the `web` Service VIP (DNAT to one of three backends), and straight to a backend pod IP (no
Service matches).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from tracer.benchmarks.netns import in_netns, python_module
from tracer.benchmarks.stats import Section, fmt_rate, fmt_ratio, interleave, median, ratio, spread_percent
from tracer.benchmarks.tracing import Traced, traced
from tracer.lab import control
from tracer.lab import manifest as mf

FLAT_POINTS = 10  # on/off ratios within this many percentage points count as flat

MODES = ("off", "on")
WAIT_FOR_LAB = 900.0


def _wait_until_down(log: Callable[[str], None]) -> None:
    deadline = time.monotonic() + WAIT_FOR_LAB
    if control.is_up():
        log("rule count: the lab is up (someone else's test?); waiting for it to go down")
    while control.is_up():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the lab stayed up for {WAIT_FOR_LAB:g} s; not tearing down someone else's lab")
        time.sleep(5)


def _rr(netns: str, dst: str, port: int, seconds: float) -> float:
    argv = in_netns(netns, python_module("tracer.benchmarks.load", "rr", "--dst", dst, "--port", str(port),
                                         "--duration", f"{seconds:g}"))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the UDP request generator failed: {proc.stderr.strip()[-300:]}")
    result = json.loads(proc.stdout.splitlines()[-1])
    if not result["ok"]:
        raise RuntimeError(f"no UDP replies from {dst}:{port} in the lab")
    return float(result["rate"])


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
        f"medians). On: drop probes + netfilter links in {node}.",
        ["Services", "target", "off req/s", "on req/s", "on vs off", "off vs 10 Services"],
    )
    baseline: dict[str, float] = {}
    ratios: dict[str, list[float]] = {name: [] for name in targets}
    _wait_until_down(log)
    for count in counts:
        log(f"rule count: lab up with {count} Services")
        started = time.monotonic()
        control.up(services=count)
        setup = time.monotonic() - started
        rates: dict[tuple[str, str], list[float]] = {(n, m): [] for n in targets for m in MODES}
        try:
            for rnd, mode in interleave(MODES, repeats):
                log(f"rule count: {count} Services, round {rnd + 1}/{repeats}, {mode}")
                context: AbstractContextManager[Traced | None] = (
                    nullcontext() if mode == "off" else traced(["--netfilter-netns", node]))
                with context:
                    for name, (dst, port) in targets.items():
                        rates[(name, mode)].append(_rr(client.netns, dst, port, seconds))
        finally:
            control.down()
        section.notes.append(f"{count:,} Services: `lab up` took {setup:.1f} s.")
        for name in targets:
            noise = spread_percent(rates[(name, "off")])
            if noise > 10:
                section.notes.append(f"{count:,} Services, {name}: podtrace-off runs spread over {noise:.0f}% of "
                                     "their median (noise from other work on the machine).")
            off, on = median(rates[(name, "off")]), median(rates[(name, "on")])
            baseline.setdefault(name, off)
            ratios[name].append(ratio(on, off))
            section.rows.append([f"{count:,}", name, fmt_rate(off), fmt_rate(on), fmt_ratio(on, off),
                                 f"{ratio(off, baseline[name]):.2f}x"])
    for name, values in ratios.items():
        spread = (max(values) - min(values)) * 100
        section.notes.append(f"{name}: on/off ratio {', '.join(f'{v:.3f}' for v in values)} across "
                             f"{', '.join(f'{c:,}' for c in counts)} Services (spread {spread:.1f} points).")
        if spread > FLAT_POINTS:
            # Not flat, or too noisy to tell: either way the target is not shown to be met.
            section.missed.append(f"{name}: on/off ratio spread {spread:.1f} points across rule counts "
                                  f"(flat means within {FLAT_POINTS} points); inconclusive on a busy machine")
    return section
