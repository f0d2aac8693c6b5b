"""Throwaway network namespaces for end-to-end tests: created per test, removed even when the test fails.

Addresses live only inside these namespaces (198.18.0.0/15, the benchmarking range), never on the host.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_counter = itertools.count(1)


def sh(*argv: str, check: bool = True, netns: str | None = None, timeout: float = 60) -> str:
    command = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@dataclass
class Pair:
    """Two namespaces joined by a veth: a (addr_a) <-> b (addr_b)."""

    a: str
    b: str
    addr_a: str
    addr_b: str

    def inode(self, name: str) -> int:
        return os.stat(f"/run/netns/{name}").st_ino


@contextmanager
def netns_pair() -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:6]
    index = next(_counter) % 250 + 1
    pair = Pair(f"ptt-{tag}-a", f"ptt-{tag}-b", f"198.18.{index}.1", f"198.18.{index}.2")
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


def send_udp(netns: str, dst: str, port: int, count: int, size: int = 32, src_port: int = 0) -> None:
    """Send `count` UDP datagrams from inside `netns` (a tiny Python sender run there)."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.bind(('0.0.0.0',{src_port}))\n"
        f"[s.sendto(b'x'*{size},('{dst}',{port})) for _ in range({count})]\n"
    )
    sh(_python(), "-c", code, netns=netns)


def tcp_connect_attempts(netns: str, dst: str, port: int, count: int) -> None:
    """`count` TCP connection attempts (one SYN each) to a closed port; each is refused by a RST."""
    code = (
        "import socket\n"
        f"for _ in range({count}):\n"
        "    s=socket.socket(); s.settimeout(2)\n"
        f"    try: s.connect(('{dst}',{port}))\n"
        "    except OSError: pass\n"
        "    s.close()\n"
    )
    sh(_python(), "-c", code, netns=netns)


def _python() -> str:
    import sys

    return sys.executable
