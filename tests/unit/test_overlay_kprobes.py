"""The tunnel table fed the kprobe points of bpf/overlay.c (vxlan_rcv, vxlan_xmit_one, ip_do_fragment), and the
overlay session's probe build: its kprobe events skip the outer-packet filter."""

from __future__ import annotations

import argparse
import json
import os
import socket

import pytest

from tracer.analysis.overlay import TunnelTable
from tracer.events.decode import (
    EVENT_PATH,
    FLAG_INNER,
    FLAG_PARSED,
    POINT_FRAGMENT,
    POINT_QUEUE,
    POINT_RX,
    POINT_VXLAN_RCV,
    POINT_VXLAN_XMIT,
    PacketEvent,
    Tuple,
)

N1, N2 = "192.168.77.1", "192.168.77.2"
CLIENT, WEB = "10.244.0.2", "10.244.1.2"
VMLINUX = "/sys/kernel/btf/vmlinux"


def v4(addr: str) -> bytes:
    return socket.inet_aton(addr) + bytes(12)


def tup(src: str, dst: str, sport: int = 0, dport: int = 0, proto: int = 17, frag: int = 0, ip_len: int = 60) -> Tuple:
    return Tuple(v4(src), v4(dst), sport, dport, 4, proto, 0, 0, frag, ip_len)


def event(point: int, outer: Tuple, inner: Tuple | None = None, vni: int = 0, ifname: str = "eth0",
          location: int = 0) -> PacketEvent:
    flags = FLAG_PARSED | (FLAG_INNER if inner else 0)
    return PacketEvent(EVENT_PATH, 0, 1, 0xFFFF0000, location, point, 1, 2, outer.ip_len, 0, 0x0800, flags, 0, vni,
                       ifname, outer, inner, b"")


def xmit(inner: Tuple, src: str = N1, dst: str = N2, port: int = 8472, vni: int = 1) -> PacketEvent:
    """vxlan_xmit_one as bpf/overlay.c reports it: the tunnel from struct vxlan_rdst (no outer IP header yet:
    no frag bits, no length), the packet as the inner tuple."""
    return event(POINT_VXLAN_XMIT, tup(src, dst, 0, port, ip_len=0), inner, vni, "flannel.1")


def wire(inner: Tuple, src: str = N1, dst: str = N2, port: int = 8472, vni: int = 1, point: int = POINT_QUEUE,
         outer_frag: int = 0) -> PacketEvent:
    return event(point, tup(src, dst, 40000, port, frag=outer_frag, ip_len=inner.ip_len + 50), inner, vni)


def tunnels(table: TunnelTable) -> dict[tuple[str, str, int, int], dict]:
    return {(t["src"], t["dst"], t["vni"], t["port"]): t for t in table.to_json()["tunnels"]}


def test_xmit_and_rcv_kprobes_join_the_wire_tunnel_once_per_packet() -> None:
    table = TunnelTable()
    for sport in (1000, 1001, 1002):
        inner = tup(CLIENT, WEB, sport, 5353, ip_len=33)
        table.add(xmit(inner), "pt-node1/flannel.1 vxlan-xmit")
        table.add(wire(inner), "pt-node1/eth0 queue")
        table.add(wire(inner, point=POINT_VXLAN_RCV), "pt-node2/eth0 vxlan-rcv")
        table.add(wire(inner, point=POINT_RX), "pt-node2/eth0 rx")
    (tunnel,) = tunnels(table).values()
    assert (tunnel["src"], tunnel["dst"], tunnel["vni"], tunnel["port"]) == (N1, N2, 1, 8472)
    assert tunnel["packets"] == 3
    assert tunnel["points"] == {"pt-node1/eth0 queue": 3, "pt-node1/flannel.1 vxlan-xmit": 3,
                                "pt-node2/eth0 rx": 3, "pt-node2/eth0 vxlan-rcv": 3}
    flow = tunnel["flows"][0]
    assert flow["packets"] == 1 and flow["bytes"] == 33
    assert "pt-node1/flannel.1 vxlan-xmit" in flow["points"]


def test_xmit_only_shows_the_tunnel_with_vni_and_endpoints() -> None:
    """Only the kprobe saw the packet (e.g. --netns of the sending node with the underlay elsewhere)."""
    table = TunnelTable()
    table.add(xmit(tup(CLIENT, WEB, 1000, 80, proto=6), port=4789, vni=4242), "n1/vx0 vxlan-xmit")
    (tunnel,) = tunnels(table).values()
    assert (tunnel["src"], tunnel["dst"], tunnel["vni"], tunnel["port"]) == (N1, N2, 4242, 4789)
    assert [f["flow"] for f in tunnel["flows"]] == [f"tcp {CLIENT}:1000 > {WEB}:80"]
    assert f"tunnel {N1} -> {N2} vni 4242 udp/4789: 1 packets" in table.format_text()


def test_xmit_on_a_port_outside_the_well_known_two_is_still_a_tunnel() -> None:
    table = TunnelTable()
    table.add(xmit(tup(CLIENT, WEB, 1, 2), port=4790, vni=9), "n1/vx9 vxlan-xmit")
    assert list(tunnels(table)) == [(N1, N2, 9, 4790)]
    table.add(wire(tup(CLIENT, WEB, 1, 2), port=4790, vni=9), "n1/eth0 queue")  # not recognisable on the wire
    assert list(tunnels(table)) == [(N1, N2, 9, 4790)]


def test_unspecified_source_joins_the_one_wire_tunnel_to_that_remote() -> None:
    """A vxlan device without `local`: vxlan_dev.cfg.saddr is zero and the kernel picks the source by route."""
    table = TunnelTable()
    inner = tup(CLIENT, WEB, 1000, 5353)
    table.add(xmit(inner, src="0.0.0.0"), "n1/vx0 vxlan-xmit")
    table.add(xmit(inner, src="0.0.0.0"), "n1/vx0 vxlan-xmit")
    table.add(wire(inner), "n1/eth0 queue")
    found = tunnels(table)
    assert list(found) == [(N1, N2, 1, 8472)]
    assert found[(N1, N2, 1, 8472)]["points"] == {"n1/eth0 queue": 1, "n1/vx0 vxlan-xmit": 2}
    assert found[(N1, N2, 1, 8472)]["packets"] == 2
    # The table keeps what it was fed: reading twice gives the same answer.
    assert tunnels(table) == found
    assert len(table.tunnels) == 2  # the unspecified one is still there, untouched


def test_unspecified_source_stays_apart_when_ambiguous_or_unseen() -> None:
    table = TunnelTable()
    inner = tup(CLIENT, WEB, 1000, 5353)
    table.add(xmit(inner, src="0.0.0.0", dst="192.168.77.9"), "n1/vx0 vxlan-xmit")
    table.add(xmit(inner, src="0.0.0.0"), "n1/vx0 vxlan-xmit")
    table.add(wire(inner, src=N1), "n1/eth0 queue")
    table.add(wire(inner, src="192.168.78.1"), "n1/eth1 queue")  # two sources to N2: which one is unknowable
    assert sorted(tunnels(table)) == [("0.0.0.0", N2, 1, 8472), ("0.0.0.0", "192.168.77.9", 1, 8472),
                                      (N1, N2, 1, 8472), ("192.168.78.1", N2, 1, 8472)]


def test_packets_cut_before_encapsulation_are_placed_in_their_tunnel() -> None:
    """Pod MTU 1500 over a 1450 overlay: node1 cuts the 1500-byte non-DF packet on flannel.1, then each
    fragment rides the tunnel as an inner fragment."""
    table = TunnelTable()
    whole = tup(CLIENT, WEB, 1000, 5353, ip_len=1500)
    for _ in range(3):
        table.add(event(POINT_FRAGMENT, whole, ifname="flannel.1", location=1450), "pt-node1/flannel.1")
        for frag in (tup(CLIENT, WEB, 1000, 5353, frag=0x2000, ip_len=1444), tup(CLIENT, WEB, frag=0xB4, ip_len=76)):
            table.add(xmit(frag), "pt-node1/flannel.1 vxlan-xmit")
    data = table.to_json()
    tunnel = tunnels(table)[(N1, N2, 1, 8472)]
    assert tunnel["cut_before_encapsulation"] == 3 and tunnel["cut_on_underlay"] == 0
    assert tunnel["inner_fragments"] == 6
    assert data["fragmented_locally"] == [{
        "flow": f"udp {CLIENT} > {WEB}", "where": "pt-node1/flannel.1", "device_mtu": 1450, "packets": 3,
        "stage": "before encapsulation", "tunnel": f"{N1} -> {N2} vni 1 udp/8472"}]
    assert (f"       3 cut before encapsulation at pt-node1/flannel.1 (device MTU 1450)  udp {CLIENT} > {WEB}"
            in table.format_text())
    json.dumps(data)


def test_vxlan_packets_cut_on_the_underlay_and_others_outside() -> None:
    table = TunnelTable()
    inner = tup(CLIENT, WEB, 1000, 5353, ip_len=1480)
    outer_whole = tup(N1, N2, 40000, 8472, ip_len=1530)  # the VXLAN packet before it was cut
    table.add(event(POINT_FRAGMENT, outer_whole, inner, vni=1, location=1500), "pt-node1/eth0")
    table.add(event(POINT_FRAGMENT, outer_whole, inner, vni=1, location=1500), "pt-node1/eth0")
    table.add(event(POINT_FRAGMENT, tup("10.0.0.1", "10.0.0.2", 5, 6, ip_len=3000), location=1400), "host/veth-a")
    data = table.to_json()
    tunnel = tunnels(table)[(N1, N2, 1, 8472)]
    assert tunnel["cut_on_underlay"] == 2 and tunnel["packets"] == 0  # a cut is not a packet seen on the wire
    rows = {r["stage"]: r for r in data["fragmented_locally"]}
    assert rows["underlay"]["packets"] == 2 and rows["underlay"]["device_mtu"] == 1500
    assert rows["outside tunnels"] == {"flow": "udp 10.0.0.1 > 10.0.0.2", "where": "host/veth-a", "device_mtu": 1400,
                                       "packets": 1, "stage": "outside tunnels", "tunnel": None}
    text = table.format_text()
    assert "fragmented locally: 1 udp 10.0.0.1 > 10.0.0.2 at host/veth-a (device MTU 1400)" in text
    assert f"       2 cut underlay at pt-node1/eth0 (device MTU 1500)  vxlan {N1} > {N2} vni 1" in text


def test_overlay_session_asks_for_unfiltered_overlay_kprobes() -> None:
    from tracer.sources.session import probe_config

    args = argparse.Namespace(filter=["udp port 8472"], ringbuf_pages=256, duration=None, netns=None, ifname=None,
                              tc=[])
    assert probe_config(args, path=True, overlay=True).overlay_kprobes_unfiltered
    assert not probe_config(args, path=True).overlay_kprobes_unfiltered


@pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason=f"{VMLINUX} is not readable here")
def test_unfiltered_flag_reaches_the_compiler_only_when_asked() -> None:
    from tracer.kernel.btf import Btf
    from tracer.probes.build import ProbeConfig, build
    from tracer.probes.pcapfilter import compile_filter

    btf = Btf.load(VMLINUX)
    config = ProbeConfig(filter=compile_filter("udp port 8472"), path=True, kprobes=("vxlan", "fragmentation"))
    plain = build(btf, config)
    config.overlay_kprobes_unfiltered = True
    overlay = build(btf, config)
    assert "overlay_kprobe" in overlay.programs
    assert "-DPT_KP_OVERLAY_UNFILTERED=1" in overlay.cflags
    assert "-DPT_KP_OVERLAY_UNFILTERED=1" not in plain.cflags
    assert "#ifndef PT_KP_OVERLAY_UNFILTERED" in overlay.text
    # Without kprobe programs there is nothing to leave unfiltered.
    config.kprobes = ()
    assert not any("OVERLAY_UNFILTERED" in flag for flag in build(btf, config).cflags)
