"""`podtrace check`'s MTU arithmetic on real IPIP and Geneve devices (the host kernel has neither): a throwaway node
namespace with an underlay, a tunnel over it and a pod veth, as Calico (IPIP) or OVN/Antrea (Geneve) set them up."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from support.podtrace import run

UNDERLAY_MTU = 1500


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True, timeout=30)


@dataclass
class Node:
    netns: str
    pod: str
    veth: str


@pytest.fixture
def node() -> Iterator[Node]:
    """Node netns: eth0 (underlay, default route) and a pod veth; pod netns: its eth0 at 1500, like the node's."""
    tag = uuid.uuid4().hex[:6]
    made = Node(f"ptchk-{tag}-node", f"ptchk-{tag}-pod", f"vethchk{tag}")
    peer = f"ptchk-{tag}-peer"
    try:
        for netns in (made.netns, made.pod, peer):
            _ip("netns", "add", netns)
        _ip("-n", made.netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer)
        _ip("-n", made.netns, "addr", "add", "198.18.9.1/24", "dev", "eth0")
        _ip("-n", made.netns, "link", "set", "eth0", "up")
        _ip("-n", made.netns, "route", "add", "default", "via", "198.18.9.254", "dev", "eth0", "onlink")
        _ip("-n", made.netns, "link", "add", made.veth, "type", "veth", "peer", "name", "eth0", "netns", made.pod)
        _ip("-n", made.netns, "link", "set", made.veth, "up")
        yield made
    finally:
        for netns in (made.netns, made.pod, peer):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


def _check(netns: str) -> list[dict[str, Any]]:
    result = run("check", "--json", "--netns", netns, "--window", "0", timeout=300)
    assert result.returncode in (0, 3), result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[-1]["summary"] is True and result.returncode == (3 if rows[-1]["fail"] else 0)
    return rows[:-1]


def _mtu(rows: list[dict[str, Any]], check: str, starts: str = "") -> dict[str, Any]:
    found = [r for r in rows if r["area"] == "mtu" and r["check"] == check and r["value"].startswith(starts)]
    assert len(found) == 1, [(r["check"], r["value"]) for r in rows if r["area"] == "mtu"]
    return found[0]


def test_ipip_leaves_room_for_1480(modules: tuple[str, ...], node: Node) -> None:
    subprocess.run(["modprobe", "ipip"], check=True, capture_output=True)
    _ip("-n", node.netns, "link", "add", "tunlchk", "type", "ipip", "local", "198.18.9.1", "dev", "eth0")
    rows = _check(node.netns)
    overlay = _mtu(rows, "overlay", "tunlchk ")
    assert (overlay["severity"], overlay["value"]) == ("ok", "tunlchk 1480 (ipip over eth0 1500: room for 1480)")
    pods = _mtu(rows, "pods")
    assert pods["severity"] == "fail"
    # The ipip module also puts its fallback tunl0 (1480, no underlay named) in every namespace: either names it.
    assert pods["value"] in (f"{node.veth} 1500, {node.pod}:eth0 1500 > 1480 carried by {tunnel} (ipip)"
                             for tunnel in ("tunlchk", "tunl0")), pods
    assert pods["fix"].startswith(f"for d in {node.veth}; do ip link set dev $d mtu 1480; done; "
                                  f"ip -n {node.pod} link set dev eth0 mtu 1480")
    _ip("-n", node.netns, "link", "set", node.veth, "mtu", "1480")
    _ip("-n", node.pod, "link", "set", "eth0", "mtu", "1480")
    assert _mtu(_check(node.netns), "pods")["severity"] == "ok"


def test_geneve_device_at_the_underlays_mtu_fails(modules: tuple[str, ...], node: Node) -> None:
    subprocess.run(["modprobe", "geneve"], check=True, capture_output=True)
    _ip("-n", node.netns, "link", "add", "genevchk", "type", "geneve", "id", "7", "remote", "198.18.9.2")
    _ip("-n", node.netns, "link", "set", "genevchk", "mtu", str(UNDERLAY_MTU))
    rows = _check(node.netns)
    overlay = _mtu(rows, "overlay", "genevchk ")
    assert overlay["severity"] == "fail"
    assert overlay["value"] == "genevchk 1500 (geneve over eth0 1500: room for 1450)"
    assert overlay["fix"] == "ip link set dev genevchk mtu 1450"
    assert _mtu(rows, "pods")["value"].endswith("> 1450 carried by genevchk (geneve over eth0 1500 - 50)")
