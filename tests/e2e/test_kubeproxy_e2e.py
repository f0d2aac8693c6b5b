"""kube-proxy rules and conntrack read back from a real namespace: rules loaded with iptables-restore, a NATed
connection created by sending through the DNAT, then `tracer.node.kubeproxy.collect` and `conntrack` asked about
both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.netns import Pair, netns_pair, send_udp, sh, throwaway_netns
from support.quoted_comments import WRITTEN

from tracer.node import conntrack
from tracer.node.kubeproxy.collect import collect

pytestmark = pytest.mark.root

VIP, EMPTY_VIP = "10.96.99.10", "10.96.99.20"
PRIME = 7
SPORT = 40053
FIXTURES = Path(__file__).parents[1] / "unit" / "fixtures" / "kubeproxy"


def ruleset(backend: str) -> str:
    """A kube-proxy iptables-mode ruleset in miniature: one Service with one endpoint (the peer namespace) plus a
    NodePort, and one Service without endpoints."""
    return f"""*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d {EMPTY_VIP}/32 -p tcp -m comment --comment "e2e/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SVC-E2EDNS0000000000 - [0:0]
:KUBE-SEP-E2EDNS0000000000 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-NODEPORTS -p udp -m comment --comment "e2e/echo:dns" -m udp --dport 30053 -j KUBE-SVC-E2EDNS0000000000
-A KUBE-SERVICES -d {VIP}/32 -p udp -m comment --comment "e2e/echo:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-E2EDNS0000000000
-A KUBE-SVC-E2EDNS0000000000 -m comment --comment "e2e/echo:dns -> {backend}:5353" -j KUBE-SEP-E2EDNS0000000000
-A KUBE-SEP-E2EDNS0000000000 -p udp -m comment --comment "e2e/echo:dns" -m udp -j DNAT --to-destination {backend}:5353
COMMIT
"""  # noqa: E501  (iptables-save lines are long)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with netns_pair() as created:
        rules = tmp_path / "rules"
        rules.write_text(ruleset(created.addr_b))
        sh("iptables-restore", str(rules), netns=created.a)
        # Locally generated packets are routed before nat OUTPUT rewrites them: the VIPs need a route.
        sh("ip", "route", "add", "10.96.0.0/16", "dev", "veth-a", netns=created.a)
        yield created


def test_collect_finds_services_endpoints_and_rules(pair: Pair) -> None:
    m = collect(pair.a)
    assert m.mode == "iptables" and m.service_count == 2
    echo = m.lookup_vip(VIP, 53, "udp")
    assert echo is not None and echo.name == "e2e/echo:dns" and echo.node_port == 30053
    assert [(e.ip, e.port, e.chain) for e in echo.endpoints] == [(pair.addr_b, 5353, "KUBE-SEP-E2EDNS0000000000")]
    assert m.lookup_endpoint(pair.addr_b, 5353, "udp") == [echo]
    assert [p.name for p in m.no_endpoint_services] == ["e2e/empty:http"]
    assert m.kube_rule_count == 5 and m.rule_count == 8  # 3 jumps from built-in chains
    hit = m.rule_for_drop(EMPTY_VIP, 80, "tcp", src=pair.addr_a)
    assert hit is not None and hit.service is not None and hit.service.name == "e2e/empty:http"
    assert (hit.rule.table, hit.rule.chain, hit.rule.position, hit.rule.verdict) == ("filter", "KUBE-SERVICES", 1,
                                                                                     "REJECT")
    # The peer namespace has no rules at all.
    assert collect(pair.b).mode == "none"


def test_conntrack_lists_the_dnat_with_both_tuples(pair: Pair) -> None:
    send_udp(pair.a, VIP, 53, PRIME, src_port=SPORT)
    orig = conntrack.CtTuple(pair.addr_a, VIP, "udp", SPORT, 53)
    want = conntrack.CtTuple(pair.addr_b, pair.addr_a, "udp", 5353, SPORT)
    deadline = time.monotonic() + 5
    found: list[conntrack.CtEntry] = []
    while not found and time.monotonic() < deadline:
        found = [e for e in conntrack.entries(pair.a, nat_only=True) if e.orig == orig]
        if not found:
            time.sleep(0.05)
    assert len(found) == 1, conntrack.entries(pair.a)
    (entry,) = found
    assert entry.reply == want and entry.dnat and not entry.snat
    assert entry.backend == (pair.addr_b, 5353) and "DST_NAT" in entry.status_names
    assert conntrack.lookup_nat(orig, pair.a) == want
    assert conntrack.NatTable(conntrack.entries(pair.a)).lookup(orig) == want
    assert conntrack.lookup_nat(conntrack.CtTuple(pair.addr_a, VIP, "udp", SPORT + 1, 53), pair.a) is None
    # Nothing crossed into the peer's table as NAT: b only saw the already-translated packets.
    assert not [e for e in conntrack.entries(pair.b) if e.orig.dst == VIP]


def test_health_reads_count_and_max_inside_the_netns(pair: Pair) -> None:
    send_udp(pair.a, VIP, 53, PRIME, src_port=SPORT)
    h = conntrack.health(pair.a)
    listed = len(conntrack.entries(pair.a))
    assert h.count >= 1 and abs(h.count - listed) <= 2  # entries can come and go between the two reads
    assert h.max > 0 and h.max == int(sh("cat", "/proc/sys/net/netfilter/nf_conntrack_max", netns=pair.a))
    assert h.count == int(sh("cat", "/proc/sys/net/netfilter/nf_conntrack_count", netns=pair.a)) or abs(
        h.count - listed) <= 2
    assert len(h.cpus) >= 1 and [c.cpu for c in h.cpus] == sorted(c.cpu for c in h.cpus)
    assert not h.full and h.drop == 0
    assert h.cpus == tuple(conntrack.parse_conntrack_s(sh("conntrack", "-S", netns=pair.a)))


def test_comments_with_quotes_come_back_as_written() -> None:
    r"""Comments with ', " and \ loaded by iptables-restore and read back by collect (iptables-save escapes all three);
    the unit fixture is what iptables-save prints for them here."""
    with throwaway_netns() as ns:
        sh("iptables-restore", str(FIXTURES / "quoted-comments.restore"), netns=ns)
        saved = sh("iptables-save", netns=ns)
        m = collect(ns)
    assert [r.comment for r in m.rules if r.source == "iptables"] == WRITTEN
    rules = [line for line in saved.splitlines() if line.startswith("-A ")]
    fixture = (FIXTURES / "quoted-comments-iptables.save").read_text().splitlines()
    assert rules == [line for line in fixture if line.startswith("-A ")]
