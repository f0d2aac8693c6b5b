"""ICMPv6 packet-too-big on the host kernel, counted from real path events (no kernel has an ICMPv6 send tracepoint).

Three namespaces a - r - b joined by veths, IPv6 only (ULA fd00:5054::/48, inside these namespaces only): a->r at
MTU 1500, r->b at 1280. IPv6 routers never fragment, so each 1448-byte datagram from a to b is dropped in r
(PKT_TOO_BIG, ip6_forward) and answered by one packet-too-big quoting 1280. The counts podtrace gives
(tracer.analysis.mtu_events.MtuEventCounter) must equal the datagrams sent and r's own Icmp6OutPktTooBigs counter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from support.netns import sh

pytestmark = pytest.mark.root

PRIME = 37  # datagrams sent, a prime so a coincidence (double counting, a lost half) cannot match
PAYLOAD = 1400  # UDP payload: 1448-byte IPv6 packets, above the 1280 link and below the 1500 one
A_ADDR, R_ADDR_A, R_ADDR_B, B_ADDR = "fd00:5054:1::1", "fd00:5054:1::2", "fd00:5054:2::1", "fd00:5054:2::2"
PORT = 9

# IPV6_MTU_DISCOVER (23) = IPV6_PMTUDISC_PROBE (3): the path MTU learned from the first packet-too-big is ignored,
# so every datagram leaves a whole (else a fragments the rest itself and r has nothing more to refuse). A sequence
# number makes each datagram, and so each error quoting it, distinct; the pace keeps them apart in time.
SENDER = (
    "import socket,sys,time\n"
    "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.IPPROTO_IPV6,23,3)\n"
    "for i in range(int(sys.argv[3])):\n"
    "    s.sendto(i.to_bytes(4,'big')+b'x'*(int(sys.argv[4])-4),(sys.argv[1],int(sys.argv[2])))\n"
    "    time.sleep(0.01)\n"
)


@dataclass
class Routed:
    a: str
    r: str
    b: str

    def inode(self, name: str) -> int:
        return os.stat(f"/run/netns/{name}").st_ino


@contextmanager
def routed_v6() -> Iterator[Routed]:
    """a --1500-- r --1280-- b with IPv6 forwarding in r; the namespaces are removed even when the test fails."""
    tag = uuid.uuid4().hex[:6]
    net = Routed(f"ptb6-{tag}-a", f"ptb6-{tag}-r", f"ptb6-{tag}-b")
    try:
        for ns in (net.a, net.r, net.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", net.a, "link", "add", "veth-a", "mtu", "1500", "type", "veth", "peer", "name", "veth-ra",
           "mtu", "1500", "netns", net.r)
        sh("ip", "-n", net.r, "link", "add", "veth-rb", "mtu", "1280", "type", "veth", "peer", "name", "veth-b",
           "mtu", "1280", "netns", net.b)
        for ns, dev, addr in ((net.a, "veth-a", A_ADDR), (net.r, "veth-ra", R_ADDR_A), (net.r, "veth-rb", R_ADDR_B),
                              (net.b, "veth-b", B_ADDR)):
            sh("ip", "-n", ns, "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")  # usable at once
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", net.a, "-6", "route", "add", "default", "via", R_ADDR_A)
        sh("ip", "-n", net.b, "-6", "route", "add", "default", "via", R_ADDR_B)
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", netns=net.r)
        yield net
    finally:
        for ns in (net.a, net.r, net.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def snmp6(netns: str) -> dict[str, int]:
    lines = sh("cat", "/proc/net/snmp6", netns=netns).split("\n")
    return {name: int(value) for name, value in (line.split() for line in lines if line.strip())}


def test_packet_too_big_sent_is_counted_once_per_datagram_with_the_mtu_it_quotes() -> None:
    from tracer.analysis.mtu_events import PTB_BY_PATH, MtuEventCounter, is_packet_too_big
    from tracer.events.decode import EVENT_PATH, POINT_QUEUE
    from tracer.probes.build import ProbeConfig
    from tracer.probes.pcapfilter import compile_filter
    from tracer.sources.live import LiveSource

    with routed_v6() as net:
        # ICMPv6 rate limiting: the default ratemask exempts type 2, but the brief is an exact count: no limit in r.
        print("net.ipv6.icmp.ratelimit in r:", sh("sysctl", "-n", "net.ipv6.icmp.ratelimit", netns=net.r).strip())
        sh("sysctl", "-qw", "net.ipv6.icmp.ratelimit=0", netns=net.r)
        # Neighbours resolved before tracing (small packets pass): the datagrams then meet only the MTU.
        sh("ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", B_ADDR, netns=net.a)
        inodes = {net.inode(ns): ns for ns in (net.a, net.r, net.b)}
        config = ProbeConfig(path=True, drops=True, filter=compile_filter(f"icmp6 or (ip6 and udp port {PORT})"))
        before = snmp6(net.r)
        events = []
        with LiveSource(config) as source:
            assert "tracepoint net:net_dev_queue" in source.attached
            sh(sys.executable, "-c", SENDER, B_ADDR, str(PORT), str(PRIME), str(PAYLOAD), netns=net.a)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                events += [e for e in source.poll(100) if e.netns in inodes]
                if sum(1 for e in events if is_packet_too_big(e) and e.reason == POINT_QUEUE) >= PRIME:
                    break
            events += [e for e in source.poll(200) if e.netns in inodes]
            reasons = source.reasons
        after = snmp6(net.r)

        counter = MtuEventCounter(reasons)
        for event in events:
            counter.add(event)
        counts = counter.result(1.0)
        sent_by_kernel = after["Icmp6OutPktTooBigs"] - before["Icmp6OutPktTooBigs"]
        print(f"packet-too-big sent (ICMPv6): {counts.ptb_sent}, MTU {counts.ptb_mtu}; r's Icmp6OutPktTooBigs "
              f"+{sent_by_kernel}; too-big drops {counts.too_big_drops}")
        assert sent_by_kernel == PRIME  # the kernel's own count: no rate limit cut any
        assert counts.ptb_sent == {A_ADDR: PRIME}
        assert counts.ptb_mtu == {1280: PRIME}
        assert counts.ptb_seen_by == PTB_BY_PATH
        assert counts.frag_needed == {} and counts.fragments == 0
        assert counts.too_big_drops == PRIME  # ip6_forward: kfree_skb_reason(skb, SKB_DROP_REASON_PKT_TOO_BIG)
        queued = [e for e in events if e.type == EVENT_PATH and e.reason == POINT_QUEUE and is_packet_too_big(e)]
        assert {(inodes[e.netns], e.ifname, e.outer.src) for e in queued} == {(net.r, "veth-ra", R_ADDR_A)}
        # And none of the datagrams reached b.
        assert not [e for e in events if inodes[e.netns] == net.b and e.outer.proto == 17]
