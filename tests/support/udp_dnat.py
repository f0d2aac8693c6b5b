"""A pair of throwaway namespaces where b DNATs udp port 5432 to a UDP echo server on its own port 5001, and the
client side's exchanges through it: the traffic `flows`' conntrack-mode tests count. Removed even on failure."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from support.netns import sh
from tracer.benchmarks.netns import Pair, in_netns, veth_pair

VIP_PORT = 5432
ECHO_PORT = 5001
ECHO = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.bind(('0.0.0.0',{ECHO_PORT}))\n"
        "while True:\n    data,peer=s.recvfrom(2048)\n    s.sendto(data,peer)\n")


@contextmanager
def dnat_echo_pair(prefix: str, addr_a: str, addr_b: str) -> Iterator[Pair]:
    with veth_pair(prefix, addr_a, addr_b) as created:
        sh("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", str(VIP_PORT), "-j", "DNAT",
           "--to-destination", f"{created.addr_b}:{ECHO_PORT}", netns=created.b)
        echo = subprocess.Popen(in_netns(created.b, [sys.executable, "-c", ECHO]))
        try:
            time.sleep(0.3)
            yield created
        finally:
            echo.kill()
            echo.wait()


def exchange(pair: Pair, ports: range) -> int:
    """One request and its reply from each client port (a connection each); the replies received."""
    code = ("import socket\nok=0\n"
            f"for port in range({ports.start},{ports.stop}):\n"
            "    s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "    s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('0.0.0.0',port)); s.settimeout(2)\n"
            f"    s.sendto(b'x'*20,('{pair.addr_b}',{VIP_PORT}))\n"
            "    ok+=len(s.recv(100))==20\n    s.close()\nprint(ok)\n")
    done = subprocess.run(in_netns(pair.a, [sys.executable, "-c", code]), capture_output=True, text=True,
                          timeout=60, check=True)
    return int(done.stdout.split()[-1])
