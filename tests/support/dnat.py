"""Three throwaway namespaces for a DNAT'd connection: a client, a "node" that DNATs a VIP (tcp port 80) to a
backend (8080) and forwards, dropping the DNAT'd packets at FORWARD, and the backend. Removed even on failure."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support.netns import sh


@dataclass
class Dnat:
    client: str
    node: str
    backend: str
    client_addr: str
    backend_addr: str
    vip: str


@pytest.fixture(name="dnat")
def dnat_namespaces() -> Iterator[Dnat]:
    tag = secrets.token_hex(3)
    octet = secrets.randbelow(200) + 20
    names = Dnat(f"ptct-c-{tag}", f"ptct-n-{tag}", f"ptct-b-{tag}", f"198.19.{octet}.2", f"198.19.{octet + 1}.2",
                 f"198.19.{octet + 2}.10")
    made: list[str] = []
    try:
        for ns in (names.client, names.node, names.backend):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "link", "set", "lo", "up", netns=ns)
        sh("ip", "link", "add", "c0", "netns", names.client, "type", "veth", "peer", "name", "n0", "netns", names.node)
        sh("ip", "link", "add", "b0", "netns", names.backend, "type", "veth", "peer", "name", "n1", "netns",
           names.node)
        for ns, dev, addr in ((names.client, "c0", f"198.19.{octet}.2/24"), (names.node, "n0", f"198.19.{octet}.1/24"),
                              (names.node, "n1", f"198.19.{octet + 1}.1/24"),
                              (names.backend, "b0", f"198.19.{octet + 1}.2/24")):
            sh("ip", "addr", "add", addr, "dev", dev, netns=ns)
            sh("ip", "link", "set", dev, "up", netns=ns)
        sh("ip", "route", "add", "default", "via", f"198.19.{octet}.1", netns=names.client)
        sh("ip", "route", "add", "default", "via", f"198.19.{octet + 1}.1", netns=names.backend)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=names.node)
        sh("iptables", "-t", "nat", "-A", "PREROUTING", "-d", names.vip, "-p", "tcp", "--dport", "80", "-j", "DNAT",
           "--to-destination", f"{names.backend_addr}:8080", netns=names.node)
        sh("iptables", "-A", "FORWARD", "-d", names.backend_addr, "-p", "tcp", "--dport", "8080", "-j", "DROP",
           netns=names.node)
        yield names
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)
