"""`podtrace drops` names the cause of a drop from the node's own answers: a blackhole route from the FIB, the
rp_filter sysctls of the receiving interface, a DROP rule kube-proxy did not write. Each on state the test builds in
namespaces of its own; the packets are forwarded or received there and never leave them."""

from __future__ import annotations

import time

import pytest
from support.netns import Pair, netns_pair, send_udp, sh
from support.podtrace import start

pytestmark = pytest.mark.root

PRIME = 11
ROUTED = "198.19.200.3"  # behind b, which forwards it into a blackhole


@pytest.fixture
def pair() -> Pair:
    with netns_pair() as created:
        yield created


def _rows(result: object, reason: str) -> list[dict]:
    rows = [row for row in result.rows if row.get("reason") == reason]  # type: ignore[attr-defined]
    assert rows, result.rows  # type: ignore[attr-defined]
    return rows


def test_a_forwarded_packet_into_a_blackhole_route_names_that_route(pair: Pair) -> None:
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=pair.b)
    sh("ip", "route", "add", f"{ROUTED}/32", "via", pair.addr_b, netns=pair.a)
    sh("ip", "route", "add", "blackhole", f"{ROUTED}/32", netns=pair.b)
    tracer = start("drops", "--json", "--netns", pair.b, "udp")
    send_udp(pair.a, ROUTED, 7000, PRIME, src_port=41000)
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    [row] = [row for row in result.rows if row.get("dst") == ROUTED]
    assert row["count"] == PRIME and row["location"].startswith("ip_error"), row
    assert row["cause"] == {
        "kind": "route", "known": "observed",
        "text": f"route lookup: `blackhole {ROUTED}/32` in {pair.b} refuses {ROUTED}",
        "fix": f"ip -n {pair.b} route del blackhole {ROUTED}/32  # if nobody meant it"}


def test_strict_rp_filter_names_the_interface_and_its_sysctls(pair: Pair) -> None:
    spoofed = "198.19.201.5"  # a's second address: b has no route back to it
    sh("ip", "addr", "add", f"{spoofed}/32", "dev", "veth-a", netns=pair.a)
    # ARP from a's own address: rp_filter would refuse an ARP request from the spoofed one, and nothing be sent.
    sh("sysctl", "-qw", "net.ipv4.conf.veth-a.arp_announce=2", netns=pair.a)
    for key in ("all", "veth-b"):
        sh("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=1", netns=pair.b)
    tracer = start("drops", "--json", "--netns", pair.b, "udp")
    sh("python3", "-c", "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
       f"s.bind(('{spoofed}',41001))\n[s.sendto(b'x',('{pair.addr_b}',7001)) for _ in range({PRIME})]", netns=pair.a)
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    [row] = _rows(result, "IP_RPFILTER")
    assert row["count"] == PRIME and row["src"] == spoofed, row
    assert row["cause"]["kind"] == "rp_filter" and row["cause"]["known"] == "observed"
    assert row["cause"]["text"] == (f"reverse-path filter: rp_filter=1 (strict) on {pair.b}/veth-b (all=1, veth-b=1) "
                                    f"dropped a packet from {spoofed}")
    assert row["cause"]["fix"].startswith(f"ip netns exec {pair.b} sysctl -w net.ipv4.conf.all.rp_filter=2")


def test_a_drop_rule_kube_proxy_did_not_write_is_named_matched_with_its_delete_command(pair: Pair) -> None:
    sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", "7002", "-m", "comment", "--comment", "added by hand",
       "-j", "DROP", netns=pair.b)
    tracer = start("drops", "--netns", pair.b, "udp")
    send_udp(pair.a, pair.addr_b, 7002, PRIME, src_port=41002)
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "cause: a DROP rule not written by kube-proxy: filter INPUT #1 `-A INPUT -p udp -m udp --dport 7002 -m " \
           "comment --comment \"added by hand\" -j DROP` (matched)" in " ".join(text.split()), text
    assert f"fix: ip netns exec {pair.b} iptables -t filter -D INPUT 1" in text, text


def test_watch_ends_with_the_drops_it_streamed_grouped_with_their_causes(pair: Pair) -> None:
    """The lines of `watch` say where each packet died; what they cannot say (why) comes after the stream: the
    same groups and causes `drops` gives, in JSON as drop_group objects and in text on stderr."""
    sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", "7003", "-m", "comment", "--comment", "added by hand",
       "-j", "DROP", netns=pair.b)
    streams = start("watch", "--json", "--netns", pair.b, "udp port 7003"), start("watch", "--netns", pair.b, "udp")
    send_udp(pair.a, pair.addr_b, 7003, PRIME, src_port=41003)
    time.sleep(0.5)
    as_json, as_text = (tracer.stop() for tracer in streams)
    assert as_json.returncode == 0 and as_text.returncode == 0, (as_json.stderr, as_text.stderr)
    dropped = [line for line in as_json.lines if line.get("kind") == "drop"]
    assert len(dropped) == PRIME and {line["reason"] for line in dropped} == {"NETFILTER_DROP"}
    [group] = [line for line in as_json.lines if line.get("kind") == "drop_group"]
    assert (group["reason"], group["count"], group["dport"]) == ("NETFILTER_DROP", PRIME, 7003), group
    assert group["cause"]["kind"] == "rule" and group["cause"]["known"] == "matched", group
    assert group["cause"]["fix"].startswith(f"ip netns exec {pair.b} iptables -t filter -D INPUT 1"), group
    assert as_json.lines[-1]["summary"], as_json.lines[-1]  # the summary stays last
    assert as_text.stdout.count("DROP NETFILTER_DROP") == PRIME, as_text.stdout
    text = " ".join(as_text.stderr.split())
    assert "cause: a DROP rule not written by kube-proxy: filter INPUT #1" in text and "(matched)" in text, text
