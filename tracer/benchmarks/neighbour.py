"""A noisy neighbour: another namespace floods a closed port while a session traces one node's drops.

The session is the traced consumer with the node's netfilter links (what `flows --node` loads). Scoped (`--node`,
tracer/probes/scope.py), the neighbour's drops cost one map lookup each in the kernel and no event; unscoped (what
`flows --netns X` did before the scope), every one of them is an event the consumer must read, or lose.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from tracer.benchmarks.netns import in_netns, node_with_pods, udp_no_ports, veth_pair
from tracer.benchmarks.stats import Section, fmt_rate
from tracer.benchmarks.tracing import traced
from tracer.node.names import netns_inode

NODE_DROPS = 997  # datagrams to a closed port in the node's pod, paced over the storm (a prime)


def _python(netns: str, code: str) -> list[str]:
    return in_netns(netns, [sys.executable, "-c", code])


def _storm(netns: str, dst: str, seconds: float) -> list[str]:
    """As many datagrams as one Python sender manages in `seconds`, to a closed port: each a NO_SOCKET drop."""
    return _python(netns, "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                          f"end=time.monotonic()+{seconds}\n"
                          f"while time.monotonic()<end:\n    [s.sendto(b'x'*18,('{dst}',9)) for _ in range(1000)]\n")


def _paced(netns: str, dst: str, seconds: float) -> list[str]:
    return _python(netns, "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                          f"for _ in range({NODE_DROPS}):\n    s.sendto(b'y',('{dst}',9)); "
                          f"time.sleep({seconds / NODE_DROPS:.6f})\n")


def run(quick: bool, log: Callable[[str], None]) -> Section:
    seconds = 3.0 if quick else 10.0
    section = Section(
        "Noisy neighbour",
        f"A session with a node's netfilter links traces the node while an unrelated pair of namespaces floods a "
        f"closed UDP port for {seconds:g} s; meanwhile {NODE_DROPS} datagrams to a closed port in the node's pod "
        f"make the drops the session is there for (filter `udp port 9`, which the storm matches too). Scoped: "
        f"`--node` (the node and its pods in a BPF map, tracer/probes/scope.py); "
        "unscoped: no kernel scope, as `flows --netns` ran before it.",
        ["session", "storm drops/s", "pod's drops seen", "other drops read", "lost", "consumer CPU s"],
    )
    for mode in ("scoped", "unscoped"):
        with node_with_pods("ptnb", 1, "198.18.241") as node, veth_pair("ptnn", "198.19.9.1", "198.19.9.2") as other:
            args = ["--netfilter-netns", node.netns, "--filter", "udp port 9"] + (
                ["--node", node.netns] if mode == "scoped" else [])
            log(f"noisy neighbour: {mode}")
            pod = str(netns_inode(node.pods[0]))
            before = udp_no_ports(other.b)
            with traced(args) as handle:
                cpu_before = handle.cpu_seconds()
                storm = subprocess.Popen(_storm(other.a, other.addr_b, seconds))
                subprocess.run(_paced(node.netns, node.pod_ips[0], seconds * 0.9), check=True, timeout=seconds * 3)
                storm.wait(timeout=seconds * 3)
                cpu = handle.cpu_seconds() - cpu_before
            storm_rate = (udp_no_ports(other.b) - before) / seconds
        by_netns = {key: int(count) for key, count in handle.result.get("drops_by_netns", {}).items()}
        seen = by_netns.pop(pod, 0)
        lost = int(handle.counters.get("lost", 0))
        section.rows.append([mode, fmt_rate(storm_rate), f"{seen:,} of {NODE_DROPS}", f"{sum(by_netns.values()):,}",
                             f"{lost:,}", f"{cpu:.2f}"])
    section.notes.append("Lost events are the ring buffer's: an unscoped session that cannot keep up with the storm "
                         "loses the pod's drops among the neighbour's.")
    return section
