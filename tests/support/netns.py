"""Throwaway network namespaces for end-to-end tests: created per test, removed even when the test fails.

Addresses live only inside these namespaces (198.18.0.0/15, the benchmarking range), never on the host.
"""

from __future__ import annotations

import itertools
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tracer.benchmarks.netns import Pair, veth_pair

_counter = itertools.count(1)


def sh(*argv: str, check: bool = True, netns: str | None = None, timeout: float = 60) -> str:
    command = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@contextmanager
def netns_pair() -> Iterator[Pair]:
    """Two namespaces joined by a veth: a (addr_a) <-> b (addr_b), removed even when the test fails."""
    index = next(_counter) % 250 + 1
    with veth_pair("ptt", f"198.18.{index}.1", f"198.18.{index}.2") as pair:
        yield pair


@contextmanager
def throwaway_netns(prefix: str = "ptt-") -> Iterator[str]:
    """One empty named namespace (<prefix><uuid>), removed even when the test fails."""
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def _family(dst: str) -> str:
    return "AF_INET6" if ":" in dst else "AF_INET"


def send_udp(netns: str, dst: str, port: int, count: int, size: int = 32, src_port: int = 0) -> None:
    """Send `count` UDP datagrams from inside `netns` (a tiny Python sender run there); IPv6 when dst is."""
    code = (
        "import socket,sys\n"
        f"s=socket.socket(socket.{_family(dst)},socket.SOCK_DGRAM)\n"
        f"s.bind(('{'::' if ':' in dst else '0.0.0.0'}',{src_port}))\n"
        f"[s.sendto(b'x'*{size},('{dst}',{port})) for _ in range({count})]\n"
    )
    sh(_python(), "-c", code, netns=netns)


def tcp_connect_attempts(netns: str, dst: str, port: int, count: int) -> None:
    """`count` TCP connection attempts (one SYN each) to a closed port; each is refused by a RST. IPv6 when dst is."""
    code = (
        "import socket\n"
        f"for _ in range({count}):\n"
        f"    s=socket.socket(socket.{_family(dst)}); s.settimeout(2)\n"
        f"    try: s.connect(('{dst}',{port}))\n"
        "    except OSError: pass\n"
        "    s.close()\n"
    )
    sh(_python(), "-c", code, netns=netns)


def _python() -> str:
    import sys

    return sys.executable
