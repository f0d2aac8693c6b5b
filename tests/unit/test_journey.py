"""Matching packets across two nodes' recordings and aligning their clocks (tracer/analysis/journey.py), on packets
built with scapy: the VXLAN datagram node A transmits and the decapsulated packet node B drops are one packet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP

from tests.support.merge_recordings import event
from tracer.analysis.journey import NodeRecording, align, journeys, match, packet_key
from tracer.events import decode as events
from tracer.events.decode import PacketEvent, decode

B_CLOCK_AHEAD_NS = 5_000_000  # node B's wall clock runs 5 ms ahead of node A's


def _event(packet: IP, ts_ns: int, kind: int, reason: int, vxlan: bool = False) -> PacketEvent:
    """The decoded event (in netns 7) of a packet built with scapy, the inner packet of a VXLAN datagram when
    `vxlan`."""
    return decode(event(packet, ts_ns, kind, reason, vxlan=vxlan, skb=0, netns=7))


def _syn(sport: int, seq: int, ip_id: int, src: str = "10.244.0.2", dst: str = "10.244.1.2", dport: int = 8080) -> IP:
    return IP(src=src, dst=dst, id=ip_id, flags="DF") / TCP(sport=sport, dport=dport, flags="S", seq=seq)


def _nodes(a: list[PacketEvent], b: list[PacketEvent]) -> list[NodeRecording]:
    return [NodeRecording("a/pt-node1", 0, frozenset({"10.244.0.2"}), {7: "pt-node1"}, a, {3: "NETFILTER_DROP"}, "1"),
            NodeRecording("b/pt-node2", 0, frozenset({"10.244.1.2"}), {7: "pt-node2"}, b, {3: "NETFILTER_DROP"}, "2")]


def test_the_inner_packet_of_a_vxlan_datagram_and_the_decapsulated_packet_have_one_key() -> None:
    sent = _event(_syn(40312, 1000, 4242), 0, events.EVENT_PATH, events.POINT_XMIT, vxlan=True)
    dropped = _event(_syn(40312, 1000, 4242), 0, events.EVENT_DROP, 3)
    assert packet_key(sent) == packet_key(dropped) is not None
    key = packet_key(sent)
    assert key is not None and (key.src, key.dst, key.ip_id, key.seq) == ("10.244.0.2", "10.244.1.2", 4242, 1000)
    assert packet_key(_event(_syn(40312, 1001, 4242), 0, events.EVENT_DROP, 3)) != key  # another segment


def test_a_packet_with_nothing_to_tell_it_by_is_never_matched() -> None:
    udp = IP(src="10.244.0.2", dst="10.244.1.2", id=0, flags="DF") / UDP(sport=5353, dport=53)
    assert packet_key(_event(udp, 0, events.EVENT_DROP, 3)) is None


def test_clocks_are_aligned_from_packets_both_ways_and_journeys_end_where_the_packet_died() -> None:
    # true times: A sends a SYN at 0, B receives it after 100 us; B answers at 1 ms, A gets it 100 us later.
    # B's events carry B's clock (+5 ms).
    a = [_event(_syn(40312, 1000, 11), 0, events.EVENT_PATH, events.POINT_XMIT, vxlan=True),
         _event(_syn(8080, 5000, 12, src="10.244.1.2", dst="10.244.0.2", dport=40312), 1_100_000, events.EVENT_PATH,
                events.POINT_RX, vxlan=True)]
    b = [_event(_syn(40312, 1000, 11), 100_000 + B_CLOCK_AHEAD_NS, events.EVENT_DROP, 3),
         _event(_syn(8080, 5000, 12, src="10.244.1.2", dst="10.244.0.2", dport=40312), 1_000_000 + B_CLOCK_AHEAD_NS,
                events.EVENT_PATH, events.POINT_XMIT)]
    nodes = _nodes(a, b)
    matched = match(nodes)
    assert len(matched) == 2
    clock = align(nodes, matched)
    assert clock is not None and clock.both_ways and clock.pairs == 2
    assert clock.offset_ns == -B_CLOCK_AHEAD_NS
    found = {j["flow"]: j for j in journeys(nodes, matched, clock)}
    syn = found["tcp 10.244.0.2:40312 > 10.244.1.2:8080"]
    assert [hop["node"] for hop in syn["path"]] == ["a/pt-node1", "b/pt-node2"]
    assert syn["one_way_us"] == 100.0 and syn["one_way"] == "estimated"
    assert syn["died"] == {"node": "b/pt-node2", "reason": "NETFILTER_DROP", "netns": "pt-node2", "packets": 1}
    assert found["tcp 10.244.1.2:8080 > 10.244.0.2:40312"]["died"] is None


def test_recordings_that_share_no_packet_match_nothing() -> None:
    a = [_event(_syn(40312, 1000, 11), 0, events.EVENT_PATH, events.POINT_XMIT, vxlan=True)]
    b = [_event(_syn(40999, 77, 13), 0, events.EVENT_DROP, 3)]
    assert match(_nodes(a, b)) == {}


def test_merge_refuses_the_same_recording_twice_in_one_line() -> None:
    recording = str(Path(__file__).parent / "fixtures" / "recordings" / "v1.ptrec")
    result = subprocess.run([sys.executable, "-m", "tracer.cli.main", "merge", recording, recording],
                            capture_output=True, text=True, check=False, cwd=Path(__file__).parents[2])
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "are the same recording" in result.stderr, result.stderr


def test_one_way_alignment_never_puts_a_packet_on_the_receiver_before_it_left_the_sender() -> None:
    # A queues each SYN and transmits it after a varying delay (the CI run saw 11 us for one, less for another);
    # B receives it 20 us after the transmit. Aligned from the first sighting on A, the slow packet's receive on B
    # came before its transmit on A.
    a, b = [], []
    for n, (start, queue_to_xmit) in enumerate(((0, 2_000), (1_000_000, 11_000))):
        syn = _syn(40312 + n, 1000 + n, 20 + n)
        a += [_event(syn, start, events.EVENT_PATH, events.POINT_QUEUE, vxlan=True),
              _event(syn, start + queue_to_xmit, events.EVENT_PATH, events.POINT_XMIT, vxlan=True)]
        b.append(_event(syn, start + queue_to_xmit + 20_000 + B_CLOCK_AHEAD_NS, events.EVENT_DROP, 3))
    nodes = _nodes(a, b)
    matched = match(nodes)
    clock = align(nodes, matched)
    assert clock is not None and not clock.both_ways and clock.pairs == 2
    for journey in journeys(nodes, matched, clock):
        assert [hop["node"] for hop in journey["path"]] == ["a/pt-node1", "a/pt-node1", "b/pt-node2"], journey
        assert journey["path"][-1]["at"] == "dropped in pt-node2/cni0"
        assert journey["one_way_us"] == 0.0 and journey["one_way"] == "relative"  # both took 20 us: equal


def test_recordings_of_one_boot_share_its_clock_exactly_whatever_the_packets_say() -> None:
    # one machine, one boot: both recordings' events are CLOCK_MONOTONIC; their headers' wall minus monotonic
    # differ by the NTP slew between the two starts (here 3 us). The SYN goes one way only: estimated from it, the
    # one-way latency would be 0 (relative); on the one clock it is the 40 us the timestamps say.
    syn = _syn(40312, 1000, 11)
    a = [_event(syn, 1_000_000, events.EVENT_PATH, events.POINT_XMIT, vxlan=True)]
    b = [_event(syn, 1_040_000, events.EVENT_DROP, 3)]
    nodes = _nodes(a, b)
    nodes[0].wall_offset_ns, nodes[1].wall_offset_ns = 7_000_000_000, 7_000_003_000
    nodes[0].boot_id = nodes[1].boot_id = "5b1c2d8e-0f3a-4c1e-9a77-0e6f3b2a1c90"
    matched = match(nodes)
    clock = align(nodes, matched)
    assert clock is not None and clock.same_clock and clock.pairs == 0
    assert clock.offsets == [0, -3_000]  # b's wall clock back onto a's: its monotonic timestamps unchanged
    assert clock.describe().startswith("same machine clock")
    journey, = journeys(nodes, matched, clock)
    assert journey["one_way_us"] == 40.0 and journey["one_way"] == "same clock"
    # another boot (or no boot id): estimated from the packets as before
    nodes[1].boot_id = "another-boot"
    clock = align(nodes, matched)
    assert clock is not None and not clock.same_clock and clock.pairs == 1
    journey, = journeys(nodes, matched, clock)
    assert journey["one_way"] == "relative" and journey["one_way_us"] == 0.0
