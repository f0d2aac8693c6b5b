"""podtrace drops/watch against real probes, real traffic and real faults in throwaway namespaces."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from support.netns import Pair, netns_pair, send_udp, sh, tcp_connect_attempts
from support.podtrace import start

pytestmark = pytest.mark.root

PRIME = 13
NETFILTER_FUNCTIONS = {"nf_hook_slow", "nft_do_chain", "ipt_do_table"}


@pytest.fixture
def pair() -> Pair:
    with netns_pair() as created:
        yield created


def _only_row(rows: list[dict], **match: object) -> dict:
    found = [row for row in rows if all(row.get(key) == value for key, value in match.items())]
    assert len(found) == 1, f"expected one row matching {match}, got {found} (all rows: {rows})"
    return found[0]


def test_iptables_drop_reports_netfilter_drop_with_exact_tuple_and_count(pair: Pair) -> None:
    sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", "5001", "-j", "DROP", netns=pair.b)
    tracer = start("drops", "--json", "--netns", pair.b, "udp")
    send_udp(pair.a, pair.addr_b, 5001, PRIME, src_port=40001)
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    row = _only_row(result.rows, dport=5001)
    assert row["reason"] == "NETFILTER_DROP"
    assert row["count"] == PRIME
    assert (row["proto"], row["src"], row["sport"], row["dst"]) == ("udp", pair.addr_a, 40001, pair.addr_b)
    assert row["netns"] == pair.b and row["ifname"] == "veth-b"
    # iptables-nft drops inside nft_do_chain; legacy iptables in nf_hook_slow after ipt_do_table's verdict.
    assert row["location"].split("+")[0] in NETFILTER_FUNCTIONS, row["location"]
    assert result.summary["lost"] == 0


def test_udp_and_tcp_to_closed_ports_are_no_socket(pair: Pair) -> None:
    tracer = start("drops", "--json", "--netns", pair.b, "--fail-on-drops")
    send_udp(pair.a, pair.addr_b, 5002, PRIME, src_port=40002)
    tcp_connect_attempts(pair.a, pair.addr_b, 5003, 7)
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 3, "--fail-on-drops exits 3 when drops matched"
    udp = _only_row(result.rows, proto="udp", dport=5002)
    assert (udp["reason"], udp["count"], udp["src"], udp["sport"]) == ("NO_SOCKET", PRIME, pair.addr_a, 40002)
    assert udp["location"].startswith("__udp4_lib_rcv"), udp["location"]
    tcp = _only_row(result.rows, proto="tcp", dport=5003)
    assert (tcp["reason"], tcp["count"], tcp["src"], tcp["dst"]) == ("NO_SOCKET", 7, pair.addr_a, pair.addr_b)


def test_filter_excluding_the_traffic_gives_no_events_and_port_filter_keeps_one_port(pair: Pair) -> None:
    excluded = start("drops", "--json", "--netns", pair.b, "udp port 6999")
    only_5005 = start("drops", "--json", "--netns", pair.b, "udp port 5005")
    send_udp(pair.a, pair.addr_b, 5004, PRIME)
    send_udp(pair.a, pair.addr_b, 5005, 11)
    time.sleep(0.5)
    excluded_result, only_result = excluded.stop(), only_5005.stop()
    assert excluded_result.rows == [] and excluded_result.summary["events"] == 0
    assert [(row["dport"], row["count"]) for row in only_result.rows] == [(5005, 11)]


def test_netns_filter_keeps_other_namespaces_out(pair: Pair) -> None:
    tracer = start("drops", "--json", "--netns", pair.a, "udp port 5006")
    send_udp(pair.a, pair.addr_b, 5006, PRIME)  # dropped in b (closed port), not in a
    time.sleep(0.5)
    result = tracer.stop()
    assert result.rows == []


def test_burst_larger_than_the_ring_buffer_is_counted_as_lost_and_tracing_continues(pair: Pair) -> None:
    # One 4 KiB page holds about 13 events: a burst of thousands overflows it between two polls 200 ms apart.
    tracer = start("drops", "--json", "--netns", pair.b, "--ringbuf-pages", "1", "--poll-interval", "200", "udp")
    send_udp(pair.a, pair.addr_b, 5007, 20000)
    time.sleep(1.0)
    send_udp(pair.a, pair.addr_b, 5008, 7)
    time.sleep(0.5)
    result = tracer.stop()
    summary = result.summary
    assert summary["lost"] > 0, summary
    burst = _only_row(result.rows, dport=5007)
    assert burst["count"] + summary["lost"] == 20000, (burst["count"], summary)
    assert _only_row(result.rows, dport=5008)["count"] == 7, "events after the burst still arrive"


def test_watch_streams_drop_and_path_events_for_matching_packets(pair: Pair) -> None:
    tracer = start("watch", "--json", "--netns", pair.b, "udp port 5009")
    send_udp(pair.a, pair.addr_b, 5009, 3, src_port=40009)
    time.sleep(0.5)
    result = tracer.stop()
    events = result.rows
    drops = [event for event in events if event["kind"] == "drop"]
    received = [event for event in events if event["kind"] == "path" and event["point"] == "rx"]
    assert len(drops) == 3 and {event["reason"] for event in drops} == {"NO_SOCKET"}
    assert len(received) == 3
    for event in received:
        assert (event["src"], event["sport"], event["dst"], event["dport"]) == (pair.addr_a, 40009, pair.addr_b, 5009)
        assert event["ifname"] == "veth-b" and event["netns"] == pair.b
    assert result.summary["lost"] == 0


def test_ifname_keeps_one_device_and_the_packet_mark_is_reported(pair: Pair) -> None:
    """Closed-port drops in b on veth-b (from a) and on lo (b to itself); an iptables MARK on the veth ones."""
    sh("iptables", "-t", "mangle", "-A", "PREROUTING", "-i", "veth-b", "-p", "udp", "--dport", "5014",
       "-j", "MARK", "--set-mark", "0x4000", netns=pair.b)
    tracer = start("watch", "--json", "--netns", pair.b, "--ifname", "veth-b", "udp port 5014")
    everywhere = start("watch", "--json", "--netns", pair.b, "udp port 5014")
    send_udp(pair.a, pair.addr_b, 5014, PRIME, src_port=40014)
    send_udp(pair.b, "127.0.0.1", 5014, 5, src_port=40015)
    time.sleep(0.5)
    only_veth, both = tracer.stop(), everywhere.stop()
    drops = [event for event in only_veth.rows if event["kind"] == "drop"]
    assert len(drops) == PRIME and {(event["ifname"], event["sport"]) for event in drops} == {("veth-b", 40014)}
    assert {event.get("mark") for event in drops} == {"0x4000"}
    # Without --ifname the loopback drops are there too, unmarked.
    loopback = [event for event in both.rows if event["kind"] == "drop" and event["ifname"] == "lo"]
    assert len(loopback) == 5 and all("mark" not in event for event in loopback)


def _dest_unreachables_sent(netns: str) -> int:
    """Icmp OutDestUnreachs of a namespace (/proc/net/snmp): the kernel's own count of port unreachables sent."""
    names, values = (line.split()[1:] for line in sh("cat", "/proc/net/snmp", netns=netns).splitlines()
                     if line.startswith("Icmp:"))
    return int(dict(zip(names, values, strict=True))["OutDestUnreachs"])


def test_path_events_past_the_rate_limit_are_counted_as_sampled(pair: Pair) -> None:
    """--path-rate 5: of 211 received datagrams a CPU reports 5 per second and counts the rest; drops are never
    sampled. Over budget a packet is skipped before it is copied, so before the filter: the port unreachables the
    namespace sends back (net_dev_queue, not UDP) may be counted as sampled too, never more of them than it sent."""
    sent = 211
    tracer = start("watch", "--json", "--path-rate", "5", "--netns", pair.b, "udp port 5012")
    unreachables = _dest_unreachables_sent(pair.b)
    send_udp(pair.a, pair.addr_b, 5012, sent, src_port=40012)
    time.sleep(0.5)
    result = tracer.stop()
    unreachables = _dest_unreachables_sent(pair.b) - unreachables
    received = [event for event in result.rows if event["kind"] == "path" and event["point"] == "rx"]
    drops = [event for event in result.rows if event["kind"] == "drop"]
    assert len(drops) == sent
    # One window of 5 per CPU that received (the burst takes well under a second; two windows at most).
    assert 5 <= len(received) <= 5 * 2 * (os.cpu_count() or 1), len(received)
    assert sent - len(received) <= result.summary["sampled"] <= sent - len(received) + unreachables
    assert result.summary["lost"] == 0


def test_tc_on_a_chosen_interface_adds_ingress_path_events_and_cleans_up(pair: Pair) -> None:
    tracer = start("watch", "--json", "--netns", pair.b, "--tc", f"{pair.b}/veth-b", "udp port 5010")
    send_udp(pair.a, pair.addr_b, 5010, 5, src_port=40010)
    time.sleep(0.5)
    result = tracer.stop()
    tc_in = [event for event in result.rows if event.get("point") == "tc-in"]
    assert len(tc_in) == 5
    for event in tc_in:
        assert (event["src"], event["sport"], event["dst"], event["dport"]) == (pair.addr_a, 40010, pair.addr_b, 5010)
        assert event["ifname"] == "veth-b"
    left = sh("tc", "filter", "show", "dev", "veth-b", "ingress", netns=pair.b)
    assert "podtrace" not in left, left


def _xmit_pairs(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The queue and xmit path events of a watch, each xmit checked against the queue event of its skb and device."""
    queued = [event for event in rows if event.get("point") == "queue"]
    sent = [event for event in rows if event.get("point") == "xmit"]
    by_skb = {(event["skb"], event["ifname"]): event for event in queued}
    for event in sent:
        before = by_skb[(event["skb"], event["ifname"])]
        for field in ("src", "sport", "dst", "dport", "netns"):
            assert event[field] == before[field], (field, before, event)
        assert event["xmit"] == "ok" and 0 <= event["qdisc_ns"] < 1_000_000_000, event
    return queued, sent


def test_xmit_events_follow_queued_packets_with_their_time_in_the_qdisc(pair: Pair) -> None:
    """A token bucket (1 mbit, one packet of burst) on veth-a holds a burst of 1,000-byte datagrams: the first goes
    straight to the driver, the later ones wait about 8 ms each. net_dev_xmit gives each packet its wait."""
    sh("tc", "qdisc", "add", "dev", "veth-a", "root", "tbf", "rate", "1mbit", "burst", "1600", "latency", "1s",
       netns=pair.a)
    tracer = start("watch", "--json", "--netns", pair.a, "udp port 5011")
    send_udp(pair.a, pair.addr_b, 5011, PRIME, size=1000, src_port=40011)
    time.sleep(PRIME * 0.008 + 0.5)
    result = tracer.stop()
    queued, sent = _xmit_pairs(result.rows)
    assert len(queued) == len(sent) == PRIME, result.rows
    assert {event["ifname"] for event in sent} == {"veth-a"}
    waits = sorted(event["qdisc_ns"] for event in sent)
    # PRIME packets of 1,028 bytes on the wire at 1 mbit: the last waits (PRIME - 1) x 8.2 ms behind the others.
    assert waits[0] < 5_000_000 and waits[-1] > (PRIME - 2) * 8_000_000, waits
    assert result.summary["lost"] == 0


def test_xmit_of_a_vxlan_device_and_of_its_underlay_are_told_apart(pair: Pair) -> None:
    """vx0's transmit queues the same skb again on veth-a (the encapsulated packet) before vx0's own net_dev_xmit
    fires: each device's xmit event must carry that device's packet."""
    _vxlan_towards_b(pair)
    tracer = start("watch", "--json", "--netns", pair.a, "udp port 5031 or udp port 4789")
    send_udp(pair.a, INNER_B, 5031, PRIME, src_port=40031)
    time.sleep(0.5)
    queued, sent = _xmit_pairs(tracer.stop().rows)
    for device, dport in (("vx0", 5031), ("veth-a", 4789)):
        assert len([e for e in queued if e["ifname"] == device and e["dport"] == dport]) == PRIME, queued
        assert len([e for e in sent if e["ifname"] == device and e["dport"] == dport]) == PRIME, sent
    assert len(sent) == 2 * PRIME


# IPv6 and VXLAN ------------------------------------------------------------------------------------------------


def _add_ipv6(pair: Pair) -> tuple[str, str]:
    """ULA addresses on the pair's veths (fd00:5055::/48 exists only inside these namespaces), usable at once."""
    addr_a, addr_b = "fd00:5055:1::1", "fd00:5055:1::2"
    for ns, dev, addr in ((pair.a, "veth-a", addr_a), (pair.b, "veth-b", addr_b)):
        sh("ip", "-n", ns, "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad")
    return addr_a, addr_b


def test_ipv6_udp_tcp_and_icmpv6_drops_carry_the_ipv6_tuple(pair: Pair) -> None:
    addr_a, addr_b = _add_ipv6(pair)
    sh("ip6tables", "-A", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-j", "DROP", netns=pair.b)
    tracer = start("drops", "--json", "--netns", pair.b, "ip6 and not (icmp6 and ip6[40] >= 133)")  # not ND
    send_udp(pair.a, addr_b, 5020, PRIME, src_port=40020)
    tcp_connect_attempts(pair.a, addr_b, 5021, 7)
    sh("ping", "-6", "-c", "5", "-i", "0.05", "-W", "1", addr_b, check=False, netns=pair.a)
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    udp = _only_row(result.rows, proto="udp", dport=5020)
    assert (udp["reason"], udp["count"], udp["src"], udp["sport"], udp["dst"]) == (
        "NO_SOCKET", PRIME, addr_a, 40020, addr_b)
    assert udp["location"].startswith("__udp6_lib_rcv"), udp["location"]
    assert (udp["netns"], udp["ifname"]) == (pair.b, "veth-b")
    tcp = _only_row(result.rows, proto="tcp", dport=5021)
    assert (tcp["reason"], tcp["count"], tcp["src"], tcp["dst"]) == ("NO_SOCKET", 7, addr_a, addr_b)
    icmp6 = _only_row(result.rows, proto="icmp6")
    assert (icmp6["reason"], icmp6["count"], icmp6["src"], icmp6["dst"]) == ("NETFILTER_DROP", 5, addr_a, addr_b)
    assert icmp6["location"].split("+")[0] in NETFILTER_FUNCTIONS, icmp6["location"]
    assert result.summary["lost"] == 0


VNI = 42
INNER_A, INNER_B = "198.18.251.1", "198.18.251.2"


def _vxlan_towards_b(pair: Pair) -> None:
    """vx0 in a (VNI 42, port 4789) tunnelling to b's underlay address, where no VXLAN device listens."""
    sh("ip", "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "remote", pair.addr_b, "local", pair.addr_a,
       "dstport", "4789", "dev", "veth-a", netns=pair.a)
    # No IPv6 on vx0: its router solicitations and MLD reports would be more tunnelled packets to b.
    sh("sysctl", "-qw", "net.ipv6.conf.vx0.disable_ipv6=1", netns=pair.a)
    sh("ip", "addr", "add", f"{INNER_A}/24", "dev", "vx0", netns=pair.a)
    sh("ip", "link", "set", "vx0", "up", netns=pair.a)
    # A static neighbour: the inner packets go out at once, with no ARP (not IP) in between.
    sh("ip", "neigh", "add", INNER_B, "lladdr", "02:00:00:00:00:02", "dev", "vx0", "nud", "permanent", netns=pair.a)


def test_vxlan_packet_dropped_on_the_underlay_carries_its_inner_flow_and_vni(pair: Pair) -> None:
    """a encapsulates into VXLAN (VNI 42, port 4789) towards b, where no VXLAN device listens: the outer UDP
    datagram dies as NO_SOCKET in b, and podtrace reads the inner packet's tuple out of it."""
    _vxlan_towards_b(pair)
    tracer = start("drops", "--json", "--netns", pair.b, "udp port 4789")
    watch = start("watch", "--json", "--netns", pair.b, "udp port 4789")
    send_udp(pair.a, INNER_B, 5030, PRIME, src_port=40030)
    time.sleep(0.5)
    result, watched = tracer.stop(), watch.stop()
    assert result.returncode == 0, result.stderr
    row = _only_row(result.rows, dport=4789)
    assert (row["reason"], row["count"], row["proto"], row["src"], row["dst"]) == (
        "NO_SOCKET", PRIME, "udp", pair.addr_a, pair.addr_b)
    assert (row["vni"], row["inner"]) == (VNI, f"udp {INNER_A}:40030 > {INNER_B}:5030")
    # The streamed events carry the inner flow too: on receive (path) and at the drop.
    for kind in ("path", "drop"):
        events = [event for event in watched.rows if event["kind"] == kind]
        assert len(events) == PRIME, (kind, watched.rows)
        assert {(event["vni"], event["inner"]) for event in events} == {(VNI, f"udp {INNER_A}:40030 > {INNER_B}:5030")}


def test_a_namespace_only_a_process_holds_is_named_after_that_process() -> None:
    """No `ip netns` name (a container's namespace): the drop names the process living in it."""
    tracer = start("drops", "--json", "udp port 5040")
    sender = (
        "import socket,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"[s.sendto(b'x',('127.0.0.1',5040)) for _ in range({PRIME})]\n"
        "print('sent',flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen(["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {sys.executable} -c \"$0\"",
                               sender], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "sent"
        with open(f"/proc/{holder.pid}/comm", encoding="utf-8") as handle:
            comm = handle.read().strip()
        time.sleep(2.5)  # past the name cache's refresh interval, so the new namespace is looked up at exit
        result = tracer.stop()
    finally:
        holder.kill()
        holder.wait()
    row = _only_row(result.rows, dport=5040)
    assert (row["reason"], row["count"], row["ifname"]) == ("NO_SOCKET", PRIME, "lo")
    assert row["netns"] == f"pid {holder.pid} ({comm})", row


def test_delivered_traffic_is_consumed_not_dropped(pair: Pair) -> None:
    """Datagrams a socket reads, a TCP exchange and pings answered: freed as consumed (SKB_CONSUMED or consume_skb),
    never reported as drops; the same session still sees a real drop."""
    server = (
        "import socket\n"
        "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(('0.0.0.0',5060))\n"
        "t=socket.socket(); t.bind(('0.0.0.0',5061)); t.listen()\n"
        "print('ready',flush=True)\n"
        f"[u.recv(64) for _ in range({PRIME})]\n"
        "c,_=t.accept(); got=b''\n"
        "while len(got)<20000:\n"  # read it all: closing on unread data is a real drop (QUEUE_PURGE)
        "    got+=c.recv(65536)\n"
        "c.sendall(got); c.shutdown(socket.SHUT_WR); c.recv(1); c.close()\n"
    )
    listener = subprocess.Popen(["ip", "netns", "exec", pair.b, sys.executable, "-c", server],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        tracer = start("drops", "--json", "--netns", pair.b, "udp port 5060 or tcp port 5061 or icmp or udp port 5062")
        send_udp(pair.a, pair.addr_b, 5060, PRIME)
        client = (
            "import socket\n"
            f"s=socket.create_connection(('{pair.addr_b}',5061),timeout=5); s.sendall(b'y'*20000)\n"
            "got=b''\n"
            "while len(got)<20000:\n"
            "    got+=s.recv(65536)\n"
            "s.close()\n"
        )
        sh(sys.executable, "-c", client, netns=pair.a)
        sh("ping", "-c", "3", "-i", "0.05", "-W", "1", pair.addr_b, netns=pair.a)
        send_udp(pair.a, pair.addr_b, 5062, 3)  # closed: the one real drop
        listener.wait(timeout=10)
        time.sleep(0.5)
        result = tracer.stop()
    finally:
        listener.kill()
        listener.wait()
    assert [(row["reason"], row["dport"], row["count"]) for row in result.rows] == [("NO_SOCKET", 5062, 3)], result.rows
