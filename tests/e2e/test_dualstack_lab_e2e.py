"""`podtrace flows` on the dual-stack lab (`lab up --manifest dualstack --proxy-mode nftables`): traffic from the
client pod to the IPv6 ClusterIP of default/web and to default/web-lb's LoadBalancer IP and ExternalIP, DNATed for
real by the lab's `ip6 kube-proxy` / `ip kube-proxy` tables, and each flow named with its Service port and backend."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.lab import exclusive_lab
from support.podtrace import Running, run, start

from tracer.lab import faults, sh, traffic
from tracer.lab import manifest as mf
from tracer.node.kubeproxy.collect import collect

pytestmark = pytest.mark.root

NODES = ("--node", "pt-node1", "--node", "pt-node2")
DATAGRAMS = 23  # a prime: nothing else in the lab sends exactly this many
CONNECTIONS = 29
LAB = mf.load("dualstack")
WEB = LAB.service("default/web")
WEB_LB = LAB.service("default/web-lb")


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    with exclusive_lab(proxy_mode="nftables", manifest_path="dualstack"):
        yield


def _flows(result: Running, service: str, vip: str) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [row for row in result.rows if row.get("service") == service and row.get("vip") == vip]


def _backends(family: int) -> dict[str, str]:
    """pod -> its address in `family`, for every pod behind default/web (web-lb selects the same pods)."""
    return {ep.pod: ep.ip for ep in LAB.endpoints(WEB, WEB.ports[0], family=family)}


def test_ipv6_cluster_ip_udp_flows_name_every_backend_with_exact_counts(lab: None) -> None:
    tracer = start("flows", "--json", *NODES, "udp port 53 or udp port 5353")
    sent = traffic.probe("default/web:dns ipv6", count=DATAGRAMS)
    time.sleep(0.5)
    result = tracer.stop()
    answered = sent.per_target["default/web:dns ipv6"].endpoints
    assert sum(answered.values()) == DATAGRAMS, sent
    flows = _flows(result, "default/web:dns", WEB.cluster_ip6)
    by_pod = {flow["backend_pod"]: flow for flow in flows}
    assert set(by_pod) == set(answered), flows
    v6 = _backends(6)
    for pod, flow in by_pod.items():
        assert (flow["client"], flow["client_pod"]) == (LAB.pod("client").ip6, "client"), flow
        assert (flow["backend"], flow["backend_port"], flow["port"], flow["proto"]) == (v6[pod], 5353, 53, "udp")
        assert flow["packets_out"] == flow["packets_in"] == flow["connections"] == answered[pod], (flow, answered)
    assert not _flows(result, "default/web:dns", WEB.cluster_ip), "no IPv4 traffic was sent"
    assert result.summary["proxy_mode"] == "nftables" and result.summary["lost"] == 0


@pytest.mark.parametrize(("target", "vip"), [
    ("default/web:http ipv6", WEB.cluster_ip6),
    (f"default/web-lb:http loadbalancer {WEB_LB.lb_ips[0]}", WEB_LB.lb_ips[0]),
    (f"default/web-lb:http external {WEB_LB.external_ips[0]}", WEB_LB.external_ips[0]),
], ids=["ipv6-clusterip", "loadbalancer-ip", "external-ip"])
def test_tcp_flows_to_ipv6_loadbalancer_and_external_ips_are_named(lab: None, target: str, vip: str) -> None:
    service = target.split(" ")[0]
    tracer = start("flows", "--json", *NODES, "tcp port 80 or tcp port 8080")
    sent = traffic.probe(target, count=CONNECTIONS)
    time.sleep(0.5)
    result = tracer.stop()
    answered = sent.per_target[target].endpoints
    assert sum(answered.values()) == CONNECTIONS, sent
    flows = _flows(result, service, vip)
    backends = _backends(6 if ":" in vip else 4)
    assert {flow["backend_pod"] for flow in flows} == set(answered), flows
    for flow in flows:
        assert flow["backend"] == backends[flow["backend_pod"]] and flow["backend_port"] == 8080, flow
        assert flow["port"] == 80 and flow["proto"] == "tcp" and flow["client_pod"] == "client", flow
        assert flow["packets_in"] > 0, "replies un-NATed back to the address dialled"
    # every connection DNATed once, to the backend that answered it
    assert {f["backend_pod"]: f["connections"] for f in flows} == dict(answered), (flows, answered)
    # the masqueraded replies getting the client's address back are no flows of their own
    assert not [r for r in result.rows if "backend" in r and r["service"] == "-"], result.rows
    # nothing else carried the Service's name: no flow to another address charged to it
    assert not [r for r in result.rows if r.get("service") == service and "backend" in r and r["vip"] != vip
                and r["vip"] not in (WEB.cluster_ip, WEB_LB.cluster_ip)]


def test_ipv6_is_on_in_every_lab_namespace(lab: None) -> None:
    """What dual-stack needs of the namespaces: IPv6 enabled, DAD off (no address left tentative), forwarding and
    bridged IPv6 through netfilter on the nodes; and the IPv6 pod routes go through flannel.1, never off the lab."""
    for node in LAB.nodes:
        for key, value in (("net.ipv6.conf.all.disable_ipv6", "0"), ("net.ipv6.conf.all.forwarding", "1"),
                           ("net.ipv6.conf.default.accept_dad", "0"), ("net.bridge.bridge-nf-call-ip6tables", "1")):
            assert sh.read_sysctl(node.netns, key) == value, (node.netns, key)
        peer = next(n for n in LAB.nodes if n is not node)
        assert f"{peer.pod_cidr_v6} via {peer.vtep_ip6} dev flannel.1" in sh.ip("-6", "route", netns=node.netns)
    for pod in LAB.pods:
        assert sh.read_sysctl(pod.netns, "net.ipv6.conf.eth0.accept_dad") == "0"
        addrs = sh.ip("-6", "addr", "show", "dev", "eth0", netns=pod.netns)
        assert f"inet6 {pod.ip6}/64 scope global" in addrs and "tentative" not in addrs and "dadfailed" not in addrs


def test_no_endpoints_reject_of_the_ipv6_cluster_ip_is_charged_to_the_service(lab: None) -> None:
    """`no-endpoints` empties default/web in both tables: the IPv6 ClusterIP's packets go to `ip6 kube-proxy`'s
    reject-chain, and the drop is charged to the Service port by its IPv6 VIP."""
    faults.set_fault("no-endpoints", True)
    try:
        tracer = start("flows", "--json", *NODES, "tcp port 80")
        sent = traffic.probe("default/web:http ipv6", count=5, timeout=0.5)
        time.sleep(0.5)
        result = tracer.stop()
    finally:
        faults.set_fault("no-endpoints", False)
    assert sent.per_target["default/web:http ipv6"].failed == 5, sent
    drops = [row for row in result.rows if row.get("service_drop")]
    assert drops and {row["service"] for row in drops} == {"default/web:http"}, result.rows
    assert all(row["reason"] == "NETFILTER_DROP" and row["dst"] == WEB.cluster_ip6 for row in drops), drops
    # the VIP in brackets, so its port is not read as part of the address
    assert all(row["cause"].startswith("Service default/web:http has no endpoints: kube-proxy rejects its VIP "
                                       f"[{WEB.cluster_ip6}]:80/tcp (ip6 kube-proxy reject-chain #") for row in drops)


def test_node_rules_read_back_name_both_families_and_the_external_addresses(lab: None) -> None:
    """collect() on node1 (what flows, check and record read): one Service port per family, the IPv6 one with the
    pods' IPv6 endpoints; the LB IP and the ExternalIP both found in `service-ips` and named default/web-lb:http."""
    smap = collect("pt-node1")
    assert smap.mode == "nftables"
    v4, v6 = smap.lookup_vip(WEB.cluster_ip, 80, "tcp"), smap.lookup_vip(WEB.cluster_ip6, 80, "tcp")
    assert v4 is not None and v6 is not None and v4 is not v6 and v4.name == v6.name == "default/web:http"
    assert sorted(str(e) for e in v6.endpoints) == sorted(f"[{ip}]:8080" for ip in _backends(6).values())
    lb = smap.lookup_vip(WEB_LB.cluster_ip, 80, "tcp")
    assert lb is not None and lb.node_port == 30040
    assert set(lb.external_ips) | set(lb.lb_ips) == {*WEB_LB.external_ips, *WEB_LB.lb_ips}
    for ip in (*WEB_LB.external_ips, *WEB_LB.lb_ips):
        assert smap.lookup_vip(ip, 80, "tcp") is lb


def test_a_recording_reports_the_ipv6_flows(lab: None, tmp_path: Path) -> None:
    output = tmp_path / "dualstack.ptrec.gz"
    recorder = start("record", "-o", str(output), "--json", *NODES, "udp port 53 or udp port 5353")
    sent = traffic.probe("default/web:dns ipv6", count=DATAGRAMS)
    time.sleep(0.5)
    assert recorder.stop().returncode == 0
    answered = sent.per_target["default/web:dns ipv6"].endpoints
    assert sum(answered.values()) == DATAGRAMS, sent
    result = run("report", "--json", str(output))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    flows = [r for r in rows if r.get("service") == "default/web:dns" and r.get("vip") == WEB.cluster_ip6]
    assert {f["backend_pod"]: f["packets_out"] for f in flows} == dict(answered), rows
    assert all(f["packets_in"] == f["packets_out"] for f in flows)
