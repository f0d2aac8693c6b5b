"""50k drop events/s sustained: paced UDP to a closed port in a namespace, the traced consumer reading them all."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

from tracer.benchmarks.netns import in_netns, python_module, veth_pair
from tracer.benchmarks.stats import Section, fmt_rate
from tracer.benchmarks.tracing import traced

RATE = 50_000
SENDERS = 2
CLOSED_PORT = 9  # nothing listens in the receiving namespace: every datagram is a NO_SOCKET drop


def run(quick: bool, log: Callable[[str], None]) -> Section:
    duration = 5.0 if quick else 60.0
    log(f"sustained drops: {RATE}/s for {duration:g} s")
    with veth_pair() as pair:
        args = ["--filter", f"udp and host {pair.addr_b}"]
        with traced(args) as handle:
            senders = [subprocess.Popen(
                in_netns(pair.a, python_module("tracer.benchmarks.load", "flood", "--dst", pair.addr_b,
                                                "--port", str(CLOSED_PORT), "--rate", str(RATE / SENDERS),
                                                "--duration", str(duration))),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(SENDERS)]
            results = []
            for sender in senders:
                out, err = sender.communicate(timeout=duration + 60)
                if sender.returncode != 0:
                    raise RuntimeError(f"the UDP sender failed: {err.strip()[-300:]}")
                results.append(json.loads(out.splitlines()[-1]))
    sent = sum(int(r["sent"]) for r in results)
    seconds = max(float(r["seconds"]) for r in results)
    counters = handle.counters
    drops = int(handle.result.get("drops", 0))
    lost = int(counters.get("lost", 0))
    section = Section(
        "Sustained drop events",
        f"{SENDERS} paced senders, {RATE:,} UDP datagrams/s in total to a closed port in another namespace "
        f"(one NO_SOCKET drop each) for {duration:g} s, filter `udp and host {pair.addr_b}`; the consumer child "
        "(LiveSource + DropTable.add_raw, as `podtrace drops`) reads the ring buffer. Target: zero lost.",
        ["offered", "sent", "drop events read", "kernel events", "lost", "read / sent"],
        [[f"{fmt_rate(RATE, '/s')} x {duration:g} s", f"{sent:,} ({fmt_rate(sent / seconds, '/s')})",
          f"{drops:,}", f"{int(counters.get('events', 0)):,}", f"{lost:,}",
          f"{drops / sent:.4f}" if sent else "n/a"]],
    )
    section.notes.append("Kernel counters: " + ", ".join(f"{k}={v:,}" for k, v in counters.items()))
    if sent < RATE * duration * 0.95:
        section.missed.append(f"the senders reached only {sent / seconds:,.0f}/s of {RATE:,}/s "
                              "(Python senders sharing the machine's CPUs with the consumer)")
    if lost:
        section.missed.append(f"{lost:,} events lost ({lost / max(sent, 1):.2%}): the consumer did not keep up "
                              "with the ring buffer at this rate on this machine")
    return section
