"""The MTU verdict on link sets recorded from the lab with netlink, event counting, and the probe's search."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.packet import Raw

from tracer.events import EVENT_DROP, EVENT_ICMP, EVENT_PATH, POINT_QUEUE, POINT_RX, PacketEvent, Tuple
from tracer.mtu import (
    FRAG_NEEDED_BY_TRACEPOINT,
    LinkInfo,
    LiveCounts,
    MtuEventCounter,
    PathLinks,
    next_hop_mtu,
    parse_snmp,
    parse_subnet_env,
    snmp_delta,
    verdict,
)
from tracer.mtuprobe import BinarySearch, quoted_ip_id

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
