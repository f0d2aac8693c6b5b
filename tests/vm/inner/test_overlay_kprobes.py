"""`podtrace overlay` and `podtrace mtu` with the kprobes of bpf/overlay.c on Debian's 6.1 kernel, run as the real
CLI over real VXLAN and fragmenting traffic in namespaces this module creates.

Two tunnels share one veth underlay (UDP 4789): vx0 (VNI 4242, `local` set, MTU 1450 from its lower device) and
vx1 (VNI 4243, no `local` and no lower device, MTU 1500: its VXLAN packets are too big for the underlay). Known
traffic: small datagrams over vx0, oversize non-DF datagrams over vx0 (cut on vx0 before encapsulation) and over
vx1 (the first cut on the underlay after encapsulation, the rest before it, once the path MTU is learned).
One `podtrace overlay --json` run (one BCC compile) sees it all.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.netns import netns_pair, sh
from support.podtrace import start
from vmfacts import timed

from tracer.benchmarks.netns import Pair

VNI0, VNI1, PORT = 4242, 4243, 4789
SMALL_PORT, INNER_CUT_PORT, OUTER_CUT_PORT, MTU_FRAG_PORT = 7100, 7101, 7102, 7103
# Primes nothing else in these namespaces sends.
SMALL, INNER_CUT, OUTER_CUT, MTU_FRAGS = 13, 5, 3, 7
INNER_CUT_PAYLOAD = 1600  # UDP 1608 + IP 20 > vx0's 1450: two fragments each, before encapsulation
OUTER_CUT_PAYLOAD = 1460  # inner IP 1488 fits vx1's 1500; outer 1538 does not fit the 1500 underlay
VX0 = ("198.19.42.1", "198.19.42.2")
VX1 = ("198.19.43.1", "198.19.43.2")
MTU_UNDERLAY = 1400  # `podtrace mtu`'s path: veth-a lowered so 2000-byte non-DF datagrams are cut on it


def send(netns: str, dst: str, port: int, count: int, size: int, dont_fragment: bool) -> None:
    """UDP datagrams from one socket inside `netns`; dont_fragment=False lets the kernel cut oversize ones."""
    code = (
        "import socket\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.setsockopt(socket.IPPROTO_IP, 10, {2 if dont_fragment else 0})\n"  # IP_MTU_DISCOVER: DO 2, DONT 0
        f"[s.sendto(b'x'*{size},('{dst}',{port})) for _ in range({count})]\n"
    )
    sh(sys.executable, "-c", code, netns=netns)


@contextmanager
def two_tunnels() -> Iterator[Pair]:
    with netns_pair() as pair:
        for ns, dev, local, remote, i in ((pair.a, "veth-a", pair.addr_a, pair.addr_b, 0),
                                          (pair.b, "veth-b", pair.addr_b, pair.addr_a, 1)):
            sh("ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", str(VNI0), "local", local, "remote",
               remote, "dstport", str(PORT), "dev", dev)
            # No `local` (the source is chosen by route) and no lower device (so MTU 1500 is allowed).
            sh("ip", "-n", ns, "link", "add", "vx1", "mtu", "1500", "type", "vxlan", "id", str(VNI1), "remote",
               remote, "dstport", str(PORT))
            for vx, addrs in (("vx0", VX0), ("vx1", VX1)):
                sh("ip", "-n", ns, "addr", "add", f"{addrs[i]}/24", "dev", vx)
                sh("ip", "-n", ns, "link", "set", vx, "up")
        yield pair


@dataclass
class OverlayRun:
    pair: Pair
    out: dict[str, Any]

    def tunnel(self, src: str, dst: str, vni: int) -> dict[str, Any]:
        found = [t for t in self.out["tunnels"] if (t["src"], t["dst"], t["vni"], t["port"]) == (src, dst, vni, PORT)]
        assert found, [(t["src"], t["dst"], t["vni"], t["port"]) for t in self.out["tunnels"]]
        return found[0]


def _save(name: str, text: str) -> None:
    out = os.environ.get("PODTRACE_VM_OUT")
    if out:  # for the host to read after the run
        Path(out, name).write_text(text)


@pytest.fixture(scope="module")
def overlay(modules: tuple[str, ...]) -> Iterator[OverlayRun]:
    with ExitStack() as stack:
        pair = stack.enter_context(two_tunnels())
        began = time.monotonic()
        tracer = start("overlay", "--json", timeout=900)
        timed("podtrace overlay attach", time.monotonic() - began)
        try:
            send(pair.a, VX0[1], SMALL_PORT, SMALL, 64, dont_fragment=True)
            send(pair.a, VX0[1], INNER_CUT_PORT, INNER_CUT, INNER_CUT_PAYLOAD, dont_fragment=False)
            send(pair.a, VX1[1], OUTER_CUT_PORT, OUTER_CUT, OUTER_CUT_PAYLOAD, dont_fragment=False)
            time.sleep(2)
        finally:
            result = tracer.stop(timeout=600)
        _save("overlay-kprobes.json", result.stdout + result.stderr)
        assert result.returncode == 0, result.stderr
        yield OverlayRun(pair, result.lines[-1])


def test_overlay_attaches_the_vxlan_and_fragment_kprobes(overlay: OverlayRun) -> None:
    attached = set(overlay.out["attached"])
    assert {"kprobe vxlan_rcv", "kprobe vxlan_xmit_one", "kprobe ip_do_fragment"} <= attached, attached
    assert overlay.out["counters"]["lost"] == 0, overlay.out["counters"]


def test_overlay_shows_vni_and_endpoints_from_xmit_and_rcv(overlay: OverlayRun) -> None:
    """vxlan_xmit_one sees the inner packet (which the outer-packet filter would reject): every datagram is
    counted there, on the tunnel its forwarding entry names, and again where vxlan_rcv decapsulates it."""
    pair = overlay.pair
    tunnel = overlay.tunnel(pair.addr_a, pair.addr_b, VNI0)
    flows = [f for f in tunnel["flows"] if f["flow"].startswith(f"udp {VX0[0]}:")
             and f["flow"].endswith(f"> {VX0[1]}:{SMALL_PORT}")]
    assert len(flows) == 1, [f["flow"] for f in tunnel["flows"]]
    flow = flows[0]
    assert flow["packets"] == SMALL, flow
    assert flow["points"][f"{pair.a}/vx0 vxlan-xmit"] == SMALL, flow["points"]
    assert flow["points"][f"{pair.b}/veth-b vxlan-rcv"] == SMALL, flow["points"]
    assert flow["points"][f"{pair.a}/veth-a queue"] == SMALL, flow["points"]
    assert flow["bytes"] == SMALL * (64 + 28)


def test_overlay_joins_the_routed_source_tunnel(overlay: OverlayRun) -> None:
    """vx1 has no `local`: its xmit events carry source 0.0.0.0 and are shown on the tunnel seen on the wire."""
    pair = overlay.pair
    assert not [t for t in overlay.out["tunnels"] if t["src"] == "0.0.0.0"], overlay.out["tunnels"]
    tunnel = overlay.tunnel(pair.addr_a, pair.addr_b, VNI1)
    flows = [f for f in tunnel["flows"] if f["flow"].endswith(f"> {VX1[1]}:{OUTER_CUT_PORT}")]
    assert sum(f["points"].get(f"{pair.a}/vx1 vxlan-xmit", 0) for f in flows) == OUTER_CUT, flows


def test_overlay_places_local_fragmentation(overlay: OverlayRun) -> None:
    pair = overlay.pair
    rows = overlay.out["fragmented_locally"]
    vx0_tunnel = f"{pair.addr_a} -> {pair.addr_b} vni {VNI0} udp/{PORT}"
    vx1_tunnel = f"{pair.addr_a} -> {pair.addr_b} vni {VNI1} udp/{PORT}"
    inner = [r for r in rows if r["flow"] == f"udp {VX0[0]} > {VX0[1]}"]
    assert inner == [{"flow": f"udp {VX0[0]} > {VX0[1]}", "where": f"{pair.a}/vx0", "device_mtu": 1450,
                      "packets": INNER_CUT, "stage": "before encapsulation", "tunnel": vx0_tunnel}], rows
    vx0 = overlay.tunnel(pair.addr_a, pair.addr_b, VNI0)
    assert vx0["cut_before_encapsulation"] == INNER_CUT
    assert vx0["inner_fragment_flows"][f"udp {VX0[0]} > {VX0[1]}"] == 2 * INNER_CUT
    # vx1: the first oversize VXLAN packet is cut on the underlay; vxlan_xmit_one then lowers the inner route's
    # path MTU to the underlay's room (skb_tunnel_check_pmtu), so the next ones are cut on vx1 before
    # encapsulation (to 1450, while vx1's device MTU stays 1500).
    underlay = [r for r in rows if r["stage"] == "underlay"]
    assert underlay == [{"flow": f"vxlan {pair.addr_a} > {pair.addr_b} vni {VNI1}", "where": f"{pair.a}/veth-a",
                         "device_mtu": 1500, "packets": 1, "stage": "underlay", "tunnel": vx1_tunnel}], rows
    before = [r for r in rows if r["flow"] == f"udp {VX1[0]} > {VX1[1]}"]
    assert before == [{"flow": f"udp {VX1[0]} > {VX1[1]}", "where": f"{pair.a}/vx1", "device_mtu": 1500,
                       "packets": OUTER_CUT - 1, "stage": "before encapsulation", "tunnel": vx1_tunnel}], rows
    vx1 = overlay.tunnel(pair.addr_a, pair.addr_b, VNI1)
    assert (vx1["cut_on_underlay"], vx1["cut_before_encapsulation"]) == (1, OUTER_CUT - 1)
    assert vx1["inner_fragment_flows"][f"udp {VX1[0]} > {VX1[1]}"] == 2 * (OUTER_CUT - 1)


def test_mtu_sees_packets_the_node_cuts() -> None:
    """`podtrace mtu` traces ip_do_fragment: non-DF datagrams sent meanwhile, cut on the 1400-byte veth, are
    counted in its live figures with that MTU (its own probes are DF and never cut)."""
    with netns_pair() as pair:
        sh("ip", "-n", pair.a, "link", "set", "veth-a", "mtu", str(MTU_UNDERLAY))
        began = time.monotonic()
        tracer = start("mtu", "--from", f"/run/netns/{pair.a}", "--to", pair.addr_b, "--proto", "udp", "--json",
                       "--max-probes", "30", "--watch", "2", timeout=900)
        timed("podtrace mtu attach", time.monotonic() - began)
        try:
            send(pair.a, pair.addr_b, MTU_FRAG_PORT, MTU_FRAGS, 2000, dont_fragment=False)
            stdout, stderr = tracer.process.communicate(timeout=600)
        finally:
            if tracer.process.poll() is None:
                tracer.process.kill()
                tracer.process.wait()
        timed("podtrace mtu run", time.monotonic() - began)
        _save("mtu-kprobes.json", stdout + stderr)
        assert tracer.process.returncode == 0, stderr
        probe = json.loads(stdout.splitlines()[-1])["probe"]
        assert "kprobe ip_do_fragment" in probe["attached"], probe["attached"]
        live = probe["live"]
        assert live["fragmented_locally"] == MTU_FRAGS, live
        assert live["fragmented_locally_mtu"] == {str(MTU_UNDERLAY): MTU_FRAGS}, live
        assert live["fragments"] == 2 * MTU_FRAGS, live  # the pieces, seen queued on veth-a
        assert probe["largest"] == MTU_UNDERLAY, probe["attempts"]
