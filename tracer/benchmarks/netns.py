"""Two throwaway namespaces joined by a veth, for the packet-path and drop-rate benchmarks.

Addresses are in 198.19.0.0/24 (the benchmarking range) and exist only inside these namespaces.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


def sh(*argv: str, netns: str | None = None, timeout: float = 60) -> str:
    command = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class Pair:
    a: str
    b: str
    addr_a: str = "198.19.0.1"
    addr_b: str = "198.19.0.2"

    def inode(self, name: str) -> int:
        return os.stat(f"/run/netns/{name}").st_ino


@contextmanager
def veth_pair(prefix: str = "ptb", addr_a: str = "198.19.0.1", addr_b: str = "198.19.0.2") -> Iterator[Pair]:
    """Namespaces PREFIX-<tag>-a and -b joined by veth-a/veth-b; removed on exit, even after a failure."""
    tag = uuid.uuid4().hex[:6]
    pair = Pair(f"{prefix}-{tag}-a", f"{prefix}-{tag}-b", addr_a, addr_b)
    try:
        sh("ip", "netns", "add", pair.a)
        sh("ip", "netns", "add", pair.b)
        sh("ip", "-n", pair.a, "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", pair.b)
        for ns, dev, addr in ((pair.a, "veth-a", pair.addr_a), (pair.b, "veth-b", pair.addr_b)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in (pair.a, pair.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@contextmanager
def iperf_server(pair: Pair, port: int) -> Iterator[None]:
    """iperf3 -s in namespace b for the duration of the block."""
    process = subprocess.Popen(in_netns(pair.b, ["iperf3", "-s", "-p", str(port)]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # listening before the first client connects
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Node:
    """A "node" namespace with "pods" behind veths (vpN on the node, eth0 in the pod), as CNI plugins wire them."""

    netns: str
    pods: list[str]
    node_ip: str
    pod_ips: list[str]


@contextmanager
def node_with_pods(prefix: str = "pts", count: int = 2, subnet: str = "198.18.240") -> Iterator[Node]:
    """PREFIX-TAG-node with PREFIX-TAG-pod0.. at SUBNET.10.., node SUBNET.1; removed on exit, even after a failure."""
    tag = uuid.uuid4().hex[:6]
    node = Node(f"{prefix}-{tag}-node", [f"{prefix}-{tag}-pod{i}" for i in range(count)], f"{subnet}.1",
                [f"{subnet}.{10 + i}" for i in range(count)])
    made: list[str] = []
    try:
        for name in (node.netns, *node.pods):
            sh("ip", "netns", "add", name)
            made.append(name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        for index, (pod, ip) in enumerate(zip(node.pods, node.pod_ips)):
            dev = f"vp{index}"
            sh("ip", "-n", node.netns, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", pod)
            sh("ip", "-n", node.netns, "addr", "add", f"{node.node_ip}/32", "dev", dev)
            sh("ip", "-n", node.netns, "link", "set", dev, "up")
            sh("ip", "-n", node.netns, "route", "add", f"{ip}/32", "dev", dev)
            sh("ip", "-n", pod, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", pod, "link", "set", "eth0", "up")
            sh("ip", "-n", pod, "route", "add", f"{node.node_ip}/32", "dev", "eth0")
        yield node
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def udp_no_ports(netns: str) -> int:
    """The namespace's UdpNoPorts counter: datagrams that found no socket (each a NO_SOCKET drop)."""
    for line in sh("nstat", "-az", "UdpNoPorts", netns=netns).splitlines():
        if line.startswith("UdpNoPorts"):
            return int(line.split()[1])
    raise RuntimeError(f"no UdpNoPorts counter in {netns}")
