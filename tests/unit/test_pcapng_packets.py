"""Folding a packet's hops into one frame: packets built with scapy, NAT and VXLAN as the kernel leaves them."""

from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from tracer.analysis.identity import Identity
from tracer.events.decode import (
    EVENT_DROP,
    EVENT_NAT,
    EVENT_PATH,
    FLAG_PARSED,
    POINT_RX,
    POINT_XMIT,
    NatEvent,
    PacketEvent,
)
from tracer.events.decode import Tuple as T
from tracer.recording import pcapng_packets
from tracer.recording.pcapng_packets import GAP_NS, Packet, PacketFolder, fingerprint, packet_comment
from tracer.sources.replay import RecordedNames

NODE1, NODE2 = 4026532001, 4026532002
SKB = 0xFFFF888012340000
SYN = IP(src="10.244.0.2", dst="10.96.0.10", id=4242) / TCP(sport=40312, dport=80, flags="S", seq=1000)


def v4(addr: str) -> bytes:
    return socket.inet_aton(addr) + bytes(12)


def tcp_tuple(packet: IP) -> T:
    return T(v4(packet.src), v4(packet.dst), packet[TCP].sport, packet[TCP].dport, 4, 6, 0, 0, 0x4000, len(packet))


def hop(packet: IP, ts_ns: int, netns: int = NODE1, ifname: str = "eth0", skb: int = SKB, drop: int = 0,
        point: int = POINT_RX) -> PacketEvent:
    raw = bytes(packet)
    return PacketEvent(EVENT_DROP if drop else EVENT_PATH, 0, ts_ns, skb, 0xFFFFFFFF81000000 if drop else 0,
                       drop or point, netns, 2, len(raw), 0, 0x0800, FLAG_PARSED, len(raw), 0, ifname,
                       tcp_tuple(packet) if TCP in packet else T(v4(packet.src), v4(packet.dst), 0, 0, 4,
                                                                   packet.proto, 0, 0, 0, len(raw)), None, raw)


def names() -> RecordedNames:
    lab = {"services": {"default/web:http": {"vip": "10.96.0.10", "port": 80}},
           "pods": {"client": {"ip": "10.244.0.2"}, "web-2": {"ip": "10.244.1.2"}}}
    return RecordedNames(reasons={6: "NETFILTER_DROP"}, netns={NODE1: "pt-node1", NODE2: "pt-node2"},
                         symbols={0xFFFFFFFF81000000: "nft_do_chain+0x46f"}, lab=lab)


def fold(events: list[PacketEvent | NatEvent]) -> list[Packet]:
    out: list[Packet] = []
    folder = PacketFolder(out.append)
    for event in events:
        if isinstance(event, NatEvent):
            folder.add_nat(event)
        else:
            folder.add(event)
    folder.flush()
    return out


def test_a_packet_dnatted_between_hops_is_one_frame_with_its_nat_and_service() -> None:
    """The SYN to the VIP at node1, DNATed to web-2 (addresses, port and checksums rewritten), then dropped on node2."""
    dnatted = SYN.copy()
    dnatted.dst, dnatted[TCP].dport = "10.244.1.2", 8080
    nat = NatEvent(EVENT_NAT, 0, 1_500, SKB, NODE1, 1, 900, tcp_tuple(SYN), tcp_tuple(dnatted))
    events: list[PacketEvent | NatEvent] = [hop(SYN, 1_000), nat,
                                            hop(dnatted, 9_000, ifname="flannel.1", point=POINT_XMIT),
                                            hop(dnatted, 31_000, NODE2, "cni0", drop=6)]
    [packet] = fold(events)
    assert fingerprint(bytes(SYN)) == fingerprint(bytes(dnatted)) != b""
    comment = packet_comment(packet, names(), lambda event: None)
    assert comment.startswith("packet, 3 hops in 30.0us: +0.0us pt-node1/eth0 rx, +8.0us pt-node1/flannel.1 xmit")
    assert "+30.0us pt-node2/cni0 drop NETFILTER_DROP at nft_do_chain+0x46f" in comment
    assert "NAT tcp 10.244.0.2:40312 > 10.96.0.10:80 -> tcp 10.244.0.2:40312 > 10.244.1.2:8080" in comment
    assert "dropped: NETFILTER_DROP; service default/web:http (before DNAT to 10.244.1.2:8080, traced)" in comment
    assert "src pod default/client" in comment


def test_the_service_comes_from_the_drops_conntrack_entry_first() -> None:
    dnatted = SYN.copy()
    dnatted.dst, dnatted[TCP].dport = "10.244.1.2", 8080
    drop = hop(dnatted, 5_000, NODE2, "cni0", drop=6)
    identity = Identity("conntrack", "entry", "original", tcp_tuple(SYN), tcp_tuple(dnatted), dnat=True)
    [packet] = fold([drop])
    comment = packet_comment(packet, names(), lambda event: identity if event is drop else None)
    assert "service default/web:http (dialled 10.96.0.10:80, conntrack)" in comment
    assert "service unknown" in packet_comment(packet, names(), lambda event: None)  # 10.244.1.2:8080 is no VIP


def test_other_packets_on_the_same_skb_are_other_frames() -> None:
    """A retransmitted SYN (the next IP ID), an RST whose ID and sequence are 0 twice (other acks), and the same
    bytes again after more than GAP_NS."""
    again = SYN.copy()
    again.id = 4243
    rst1 = IP(src="10.96.0.10", dst="10.244.0.2", id=0) / TCP(sport=80, dport=40312, flags="RA", seq=0, ack=1001)
    rst2 = IP(src="10.96.0.10", dst="10.244.0.2", id=0) / TCP(sport=80, dport=40313, flags="RA", seq=0, ack=7001)
    packets = fold([hop(SYN, 1_000), hop(again, 2_000), hop(rst1, 3_000), hop(rst2, 4_000),
                    hop(SYN, 5_000 + GAP_NS + 1)])
    assert len(packets) == 5 and all(len(packet.events) == 1 for packet in packets)


def test_a_vxlan_hop_joins_the_packet_it_carries() -> None:
    inner = SYN.copy()
    outer = (IP(src="192.168.77.1", dst="192.168.77.2", id=9) / UDP(sport=51000, dport=8472) / VXLAN(vni=1)
             / Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / inner)
    assert fingerprint(bytes(outer)) == fingerprint(bytes(inner))
    [packet] = fold([hop(inner, 1_000, ifname="flannel.1"), hop(outer, 2_000, ifname="eth0", point=POINT_XMIT)])
    assert [event.ifname for event in packet.events] == ["flannel.1", "eth0"]


def test_pending_packets_are_bounded_and_emitted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcapng_packets, "MAX_PENDING", 3)  # the bound, small enough to see
    out: list[Packet] = []
    folder = PacketFolder(out.append)
    for i in range(10):
        packet = SYN.copy()
        packet.id = i
        folder.add(hop(packet, 1_000 + i))
    assert len(out) == 7  # the oldest went out as the bound was passed
    folder.flush()
    assert sorted(p.first.snap[4:6] for p in out) == sorted(bytes(IP(id=i))[4:6] for i in range(10))
