"""The MTU verdict on link sets recorded from the lab with netlink, event counting, and the probe's search."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.packet import Raw

from tracer.analysis.mtu import LinkInfo, LiveCounts, PathLinks, verdict
from tracer.analysis.mtu_events import (
    FRAG_NEEDED_BY_TRACEPOINT,
    MTU_DROP_REASONS,
    PTB_BY_PATH,
    TOO_BIG_REASONS,
    MtuEventCounter,
    is_frag_needed,
    is_packet_too_big,
    next_hop_mtu,
)
from tracer.events.decode import (
    EVENT_DROP,
    EVENT_ICMP,
    EVENT_PATH,
    POINT_FRAGMENT,
    POINT_NAMES,
    POINT_QUEUE,
    POINT_RX,
    PacketEvent,
    Tuple,
    decode,
    encode,
)
from tracer.node.flannel import parse_subnet_env
from tracer.node.mtu_snmp import parse_snmp, snmp_delta
from tracer.node.mtuprobe import BinarySearch, quoted_ip_id

FIXTURES = Path(__file__).parent / "fixtures" / "mtu"


def _path(name: str) -> PathLinks:
    return PathLinks.from_json(json.loads((FIXTURES / name).read_text()))


def test_lab_remote_pod_without_fault_has_no_mismatch() -> None:
    path = _path("lab-remote-ok.json")
    assert path.to_json() == json.loads((FIXTURES / "lab-remote-ok.json").read_text())  # round trip
    judged = verdict(path)
    assert judged.ok and judged.carried == 1450
    assert judged.text == "no mismatch: pod MTU 1450 <= overlay 1450 (flannel.1, underlay 1500 - 50 VXLAN)"


def test_lab_same_node_pod_has_no_overlay() -> None:
    judged = verdict(_path("lab-local-ok.json"))
    assert judged.ok and judged.overlay_mtu is None
    assert judged.text == "no mismatch: 10.244.0.3 is on this node (via cni0), pod MTU 1450"


def test_lab_mtu_mismatch_names_pod_and_overlay_mtus() -> None:
    path = _path("lab-remote-mtu-mismatch.json")
    judged = verdict(path)
    assert not judged.ok and (judged.pod_mtu, judged.overlay_mtu, judged.carried) == (1500, 1450, 1450)
    assert judged.text.startswith("pod MTU 1500 > overlay 1450: DF packets above 1450 dropped, ICMP frag-needed "
                                  "sent to 10.244.0.2")


def test_mismatch_text_carries_live_counts() -> None:
    counts = LiveCounts(seconds=2.0, frag_needed={"10.244.0.2": 8}, fragments=30)
    text = verdict(_path("lab-remote-mtu-mismatch.json"), counts).text
    assert "ICMP frag-needed sent to 10.244.0.2 (4.0/s)" in text
    assert "(15.0/s fragments)" in text


def test_overlay_larger_than_underlay_allows_and_ipv6_overhead() -> None:
    base = _path("lab-remote-ok.json")
    assert base.overlay is not None and base.pod is not None
    big = dataclasses.replace(base, overlay=dataclasses.replace(base.overlay, mtu=1500),
                              pod=dataclasses.replace(base.pod, mtu=1500))
    judged = verdict(big)
    assert any("overlay MTU 1500 > underlay 1500 - 50 (VXLAN overhead) = 1450" in f for f in judged.findings)
    v6 = dataclasses.replace(base, underlay_family=6)
    assert v6.overhead == 70
    assert "overlay MTU 1450 > underlay 1500 - 70" in verdict(v6).text


def test_flannel_subnet_env() -> None:
    env = parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.0.1/24\nFLANNEL_MTU=1450\n"
                           "FLANNEL_IPMASQ=true\n")
    assert env["FLANNEL_MTU"] == "1450" and env["FLANNEL_SUBNET"] == "10.244.0.1/24"
    path = dataclasses.replace(_path("lab-remote-ok.json"), flannel_mtu=1400)
    assert "FLANNEL_MTU=1400 but flannel.1 has MTU 1450" in verdict(path).text
    assert verdict(dataclasses.replace(_path("lab-remote-ok.json"), flannel_mtu=1450)).ok


def _event(raw: bytes, type_: int, point: int, skb: int, ts: int, reason: int = 0) -> PacketEvent:
    pkt = IP(raw)
    family, proto = 4, pkt.proto
    icmp_type = icmp_code = 0
    if ICMP in pkt:
        icmp_type, icmp_code = pkt[ICMP].type, pkt[ICMP].code
    frag = (int(pkt.flags) << 13) | pkt.frag
    outer = Tuple(socket.inet_aton(pkt.src).ljust(16, b"\0"), socket.inet_aton(pkt.dst).ljust(16, b"\0"), 0, 0,
                  family, proto, icmp_type, icmp_code, frag, pkt.len)
    return PacketEvent(type_, 0, ts, skb, 0, reason if type_ == EVENT_DROP else point, 1, 1, len(raw), 0, 0x800, 4,
                       min(len(raw), 128), 0, "cni0", outer, None, raw[:128])


def test_event_counter_counts_frag_needed_once_per_packet_and_fragments() -> None:
    probe = IP(src="10.244.0.2", dst="10.244.1.2", flags="DF", id=4242) / UDP(sport=1, dport=2) / Raw(b"x" * 1472)
    icmp = bytes(IP(src="10.244.0.1", dst="10.244.0.2") / ICMP(type=3, code=4, nexthopmtu=1450) / bytes(probe)[:28])
    counter = MtuEventCounter({5: "PKT_TOO_BIG"})
    counter.add(_event(icmp, EVENT_PATH, POINT_QUEUE, 0xA, 1_000))  # on cni0
    counter.add(_event(icmp, EVENT_PATH, POINT_QUEUE, 0xA, 2_000))  # the same skb on the bridge port
    counter.add(_event(icmp, EVENT_PATH, POINT_RX, 0xA, 3_000))  # received: not a second send
    counter.add(_event(bytes(probe), EVENT_DROP, 0, 0xB, 500, reason=5))
    frags = IP(src="10.244.0.2", dst="10.244.1.2", id=7) / UDP() / Raw(b"y" * 3000)
    from scapy.layers.inet import fragment

    for i, piece in enumerate(fragment(frags, fragsize=1400)):
        counter.add(_event(bytes(piece), EVENT_PATH, POINT_QUEUE, 0x100 + i, 10_000 + i))
    counts = counter.result(1.0)
    assert counts.frag_needed == {"10.244.0.2": 1}
    assert counts.frag_needed_mtu == {1450: 1}
    assert counts.too_big_drops == 1 and counts.fragments == 3
    event = _event(icmp, EVENT_PATH, POINT_QUEUE, 0xA, 1)
    assert next_hop_mtu(event) == 1450 and quoted_ip_id(event) == 4242


@pytest.mark.parametrize("limit", [68, 69, 576, 1279, 1450, 1499, 1500])
def test_binary_search_finds_the_exact_largest_size(limit: int) -> None:
    search = BinarySearch(68, 1500)
    probes = 0
    while (size := search.next_size()) is not None:
        search.record(size, size <= limit)
        probes += 1
    assert search.largest == limit and probes <= 13


def test_binary_search_when_nothing_arrives() -> None:
    search = BinarySearch(68, 1500)
    assert search.next_size() == 68
    search.record(68, False)
    assert search.done and search.largest is None


def test_link_info_json_shape() -> None:
    link = LinkInfo("eth0", 1500, "veth", "pt-client", 2)
    assert PathLinks.from_json(PathLinks("10.0.0.1", pod=link).to_json()).pod == link


# icmp:icmp_send events (bpf/icmp.c): the event is the offending packet; reason type << 8 | code; location the MTU


def _icmp_sent(raw: bytes, skb: int, ts: int, icmp: tuple[int, int], mtu: int = 0) -> PacketEvent:
    event = _event(raw, EVENT_ICMP, 0, skb, ts)
    return dataclasses.replace(event, reason=(icmp[0] << 8) | icmp[1], location=mtu)


def test_frag_needed_from_the_tracepoint_counts_each_error_with_its_mtu() -> None:
    probe = IP(src="10.244.0.2", dst="10.244.1.2", flags="DF", id=4242) / UDP(sport=1, dport=2) / Raw(b"x" * 1472)
    queued = bytes(IP(src="10.244.0.1", dst="10.244.0.2") / ICMP(type=3, code=4, nexthopmtu=1450) / bytes(probe)[:28])
    events = [_icmp_sent(bytes(probe), 0x10 + i, 1_000 * i, (3, 4), mtu=1450) for i in range(3)]
    events.append(_event(queued, EVENT_PATH, POINT_QUEUE, 0xA, 5_000))  # one of them, seen leaving on cni0
    traced = MtuEventCounter({}, icmp_tracepoint=True)
    fallback = MtuEventCounter({})
    for event in events:
        traced.add(event)
        fallback.add(event)
    counts = traced.result(2.0)
    assert counts.frag_needed == {"10.244.0.2": 3} and counts.frag_needed_mtu == {1450: 3}
    assert counts.frag_needed_seen_by == FRAG_NEEDED_BY_TRACEPOINT
    # Without the tracepoint only the queued ICMP packet is evidence.
    assert fallback.result(2.0).frag_needed == {"10.244.0.2": 1}
    assert "ICMP frag-needed sent to 10.244.0.2 (1.5/s)" in verdict(_path("lab-remote-mtu-mismatch.json"), counts).text


def test_reassembly_timeouts_from_drops_icmp_and_snmp() -> None:
    first = bytes(IP(src="198.18.1.1", dst="198.18.1.2", flags="MF", id=900) / UDP(sport=5, dport=9) / Raw(b"x" * 64))
    reasons = {95: "FRAG_REASM_TIMEOUT", 93: "PKT_TOO_BIG"}
    counter = MtuEventCounter(reasons, icmp_tracepoint=True)
    for i in range(7):
        counter.add(_event(first, EVENT_DROP, 0, 0x20 + i, 10 * i, reason=95))
        counter.add(_icmp_sent(first, 0x20 + i, 10 * i + 1, (11, 1)))
    counts = counter.result(3.5)
    assert counts.reasm_drops == 7 and counts.too_big_drops == 0
    assert counts.reasm_time_exceeded == {"198.18.1.1": 7} and counts.frag_needed == {}
    # Counters read inside the target's namespace at start and end (this fixture: 12 timeouts in all).
    after = parse_snmp((FIXTURES / "snmp-reasm-timeout.txt").read_text())
    assert after["ReasmTimeout"] == 12 and after["ReasmFails"] == 12 and after["ReasmOKs"] == 0
    before = dict(after, ReasmTimeout=5, ReasmFails=5, ReasmReqds=5)
    counts.snmp = {"ptt-b": snmp_delta(before, after)}
    counts.snmp_total = {"ptt-b": after}
    judged = verdict(_path("lab-remote-ok.json"), counts)
    assert not judged.ok
    assert judged.findings == ("7 IPv4 reassembly timeouts in ptt-b (2.0/s; ReasmTimeout +7, ReasmFails +7): "
                               "fragments of those packets never all arrived, so the whole packets were lost; "
                               "7 fragments dropped as FRAG_REASM_TIMEOUT; ICMP time-exceeded (reassembly) sent to "
                               "198.18.1.1 (2.0/s)",)


def test_reassembly_without_snmp_and_earlier_timeouts_as_a_note() -> None:
    counts = LiveCounts(seconds=1.0, reasm_drops=2)
    assert verdict(_path("lab-remote-ok.json"), counts).findings == (
        "IPv4 reassembly timed out (some fragments never arrived): 2 fragments dropped as FRAG_REASM_TIMEOUT",)
    old = LiveCounts(seconds=1.0, snmp={"pt-node2": snmp_delta({}, {})},
                     snmp_total={"pt-node2": {"ReasmTimeout": 4, "ReasmFails": 4}})
    judged = verdict(_path("lab-remote-ok.json"), old)
    assert judged.ok and judged.notes == ("pt-node2 counted 4 reassembly timeouts before this run",)
    assert judged.text.endswith("(pt-node2 counted 4 reassembly timeouts before this run)")


def test_snmp_without_ip_lines_is_rejected() -> None:
    with pytest.raises(ValueError, match="Ip:"):
        parse_snmp("Icmp: InMsgs\nIcmp: 3\n")


# ICMPv6 packet-too-big (no ICMPv6 tracepoint: counted from the packets queued on devices) ---------------------

R_ADDR, A_ADDR, B_ADDR = "fd00:5054:1::2", "fd00:5054:1::1", "fd00:5054:2::2"


def _event6(raw: bytes, type_: int, point: int, skb: int, ts: int, ifname: str = "veth-ra") -> PacketEvent:
    """An IPv6 event as bpf/skb.h fills it (outer tuple, 128-byte snapshot), round-tripped through the raw bytes."""
    from scapy.layers.inet6 import IPv6

    pkt = IPv6(raw)
    outer = Tuple(socket.inet_pton(socket.AF_INET6, pkt.src), socket.inet_pton(socket.AF_INET6, pkt.dst), 0, 0, 6,
                  pkt.nh, raw[40] if pkt.nh == 58 else 0, raw[41] if pkt.nh == 58 else 0, 0, pkt.plen + 40)
    event = PacketEvent(type_, 0, ts, skb, 0, point, 1, 1, len(raw), 0, 0x86DD, 4, min(len(raw), 128), 0, ifname,
                        outer, None, raw[:128])
    return decode(encode(event))


def _ptb(seq: int, mtu: int = 1280) -> bytes:
    from scapy.layers.inet6 import UDP as UDP6
    from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6

    datagram = IPv6(src=A_ADDR, dst=B_ADDR) / UDP6(sport=40000, dport=9) / Raw(seq.to_bytes(4, "big") + b"x" * 1396)
    return bytes(IPv6(src=R_ADDR, dst=A_ADDR) / ICMPv6PacketTooBig(mtu=mtu) / bytes(datagram)[:1232])


def test_packet_too_big_counts_each_error_once_with_its_mtu_apart_from_frag_needed() -> None:
    counter = MtuEventCounter({}, icmp_tracepoint=True)  # the IPv4 tracepoint does not see ICMPv6
    for i in range(5):
        raw = _ptb(i)
        counter.add(_event6(raw, EVENT_PATH, POINT_QUEUE, 0xA, 1_000_000 * i))  # every error reuses one skb
        counter.add(_event6(raw, EVENT_PATH, POINT_QUEUE, 0xB, 1_000_000 * i + 10, "vethpod0"))  # a bridge's clone
        counter.add(_event6(raw, EVENT_PATH, POINT_RX, 0xB, 1_000_000 * i + 20, "eth0"))  # received: not sent
    counter.add(_event6(_ptb(9, mtu=1400), EVENT_PATH, POINT_QUEUE, 0xA, 9_000_000))
    counts = counter.result(2.0)
    assert counts.ptb_sent == {A_ADDR: 6} and counts.ptb_mtu == {1280: 5, 1400: 1}
    assert counts.ptb_seen_by == PTB_BY_PATH
    assert counts.frag_needed == {} and counts.fragments == 0
    event = _event6(_ptb(1), EVENT_PATH, POINT_QUEUE, 0xA, 1)
    assert is_packet_too_big(event) and not is_frag_needed(event) and next_hop_mtu(event) == 1280
    text = verdict(_path("lab-remote-mtu-mismatch.json"), counts).text
    assert f"ICMPv6 packet-too-big sent to {A_ADDR} (3.0/s)" in text


def test_packet_too_big_in_the_node_mtu_section_json_and_text() -> None:
    from tracer.recording.recorded_node import NodeMtu

    counter = MtuEventCounter({})
    for i in range(3):
        counter.add(_event6(_ptb(i), EVENT_PATH, POINT_QUEUE, 0xA, 3_000_000 * i))
    section = NodeMtu("pt-node1", [{"name": "cni0", "mtu": 1500, "kind": "bridge"}], None, counter.result(1.0))
    data = section.to_json()
    assert data["ptb_sent"] == {A_ADDR: 3} and data["ptb_mtu"] == {"1280": 3} and data["frag_needed"] == {}
    assert f"3 packet-too-big sent (ICMPv6) (MTU 1280 x3; to {A_ADDR} x3)" in section.text()


# ip_do_fragment (kprobe, PT_POINT_FRAGMENT): packets this node cut, not fragments seen on the wire --------------


def test_packets_fragmented_locally_are_counted_apart_from_fragments_on_the_wire() -> None:
    from scapy.layers.inet import fragment

    from tracer.recording.recorded_node import relevant

    big = IP(src="10.244.0.2", dst="10.244.1.2", id=77) / UDP(sport=5, dport=9) / Raw(b"z" * 3000)
    counter = MtuEventCounter({})
    for i in range(3):  # three packets cut for a 1450 device, each then queued as three fragments
        cut = _event(bytes(big)[:128], EVENT_PATH, POINT_FRAGMENT, 0x300 + i, 1_000_000 * i)
        raw = encode(dataclasses.replace(cut, location=1450))
        assert relevant(raw, frozenset()) and POINT_NAMES[POINT_FRAGMENT] == "fragment"
        counter.add(decode(raw))
        cut_packet = big.copy()
        cut_packet.id = 100 + i
        for j, piece in enumerate(fragment(cut_packet, fragsize=1400)):
            counter.add(decode(encode(_event(bytes(piece), EVENT_PATH, POINT_QUEUE, 0x400 + j, 1_000_000 * i + j))))
    counter.add(decode(encode(_event(bytes(big)[:128], EVENT_PATH, POINT_FRAGMENT, 0x500, 9_000_000))))  # no MTU
    counts = counter.result(2.0)
    assert counts.fragmented_locally == 4 and counts.fragmented_locally_mtu == {1450: 3}
    assert counts.fragments == 9
    text = verdict(_path("lab-remote-mtu-mismatch.json"), counts).text
    assert "(4.5/s fragments, 2.0/s packets cut by ip_do_fragment)" in text


def test_reassembly_timeouts_are_not_too_big_drops() -> None:
    reasons = {95: "FRAG_REASM_TIMEOUT", 93: "PKT_TOO_BIG"}
    first = bytes(IP(src="198.18.1.1", dst="198.18.1.2", flags="MF", id=900) / UDP(sport=5, dport=9) / Raw(b"x" * 64))
    counter = MtuEventCounter(reasons)
    for i in range(3):
        counter.add(_event(first, EVENT_DROP, 0, 0x20 + i, 10 * i, reason=95))
    counter.add(_event(first, EVENT_DROP, 0, 0x30, 100, reason=93))
    counts = counter.result(1.0)
    assert counts.reasm_drops == 3 and counts.too_big_drops == 1
    assert "FRAG_REASM_TIMEOUT" in MTU_DROP_REASONS and "FRAG_REASM_TIMEOUT" not in TOO_BIG_REASONS
