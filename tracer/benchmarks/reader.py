"""Consumer cost per event: podtrace's mmap ring-buffer reader (tracer/sources/ringbuf.py) vs BCC's callback reader.

The traced consumer reads a drop storm (a Python sender flooding a closed UDP port in a namespace pair) with each
reader in turn, interleaved; the figure is the consumer process's CPU time per event it read, which is stable on
a shared machine where rates are not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from tracer.benchmarks.netns import in_netns, veth_pair
from tracer.benchmarks.stats import Section, interleave, median
from tracer.benchmarks.tracing import traced

PORT = 5977
READERS = ("podtrace mmap", "bcc callback")


def _storm(netns: str, dst: str, seconds: float) -> list[str]:
    code = ("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"end=time.monotonic()+{seconds}\n"
            f"while time.monotonic()<end:\n    [s.sendto(b'x'*18,('{dst}',{PORT})) for _ in range(1000)]\n")
    return in_netns(netns, [sys.executable, "-c", code])


def run(quick: bool, log: Callable[[str], None]) -> Section:
    seconds, repeats = (2.0, 1) if quick else (5.0, 3)
    section = Section(
        "Ring buffer reader",
        f"CPU time of the consumer per event read, under a drop storm ({seconds:g} s per run, {repeats} interleaved "
        f"rounds, medians): podtrace's own reader of the ring buffer's mmap'd pages vs BCC's per-event callback "
        f"(`PODTRACE_BCC_RINGBUF=1`). Both fold every event into the drops table (DropTable.add_raw).",
        ["reader", "events read/s", "lost", "consumer CPU per event"],
    )
    per_event: dict[str, list[float]] = {r: [] for r in READERS}
    rates: dict[str, list[float]] = {r: [] for r in READERS}
    lost: dict[str, list[float]] = {r: [] for r in READERS}
    with veth_pair("ptrr", "198.19.11.1", "198.19.11.2") as pair:
        for rnd, reader in interleave(READERS, repeats):
            log(f"ring buffer reader: round {rnd + 1}/{repeats}, {reader}")
            env = dict(os.environ)
            env.pop("PODTRACE_BCC_RINGBUF", None)
            if reader == "bcc callback":
                env["PODTRACE_BCC_RINGBUF"] = "1"
            with traced(["--filter", f"udp port {PORT}"], env=env) as handle:
                before = handle.cpu_seconds()
                subprocess.run(_storm(pair.a, pair.addr_b, seconds), check=True, timeout=seconds * 3)
                cpu = handle.cpu_seconds() - before
            events = int(handle.result.get("events_read", 0))
            per_event[reader].append(cpu / events if events else 0.0)
            rates[reader].append(events / seconds)
            lost[reader].append(float(handle.counters.get("lost", 0)))
    for reader in READERS:
        section.rows.append([reader, f"{median(rates[reader]):,.0f}", f"{median(lost[reader]):,.0f}",
                             f"{median(per_event[reader]) * 1e6:.2f} µs"])
    return section
