"""The lab manifest: the shipped default parses into the documented topology; bad manifests fail clearly."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace

import pytest

from tracer.lab import manifest as mf
from tracer.output.errors import LabError


def test_default_topology() -> None:
    m = mf.load()
    assert [n.netns for n in m.nodes] == ["pt-node1", "pt-node2"]
    assert [n.pod_cidr for n in m.nodes] == ["10.244.0.0/24", "10.244.1.0/24"]
    assert m.nodes[1].vtep_ip == "10.244.1.0" and m.nodes[0].gateway == "10.244.0.1"
    assert (m.underlay_mtu, m.overlay_mtu, m.vni, m.vxlan_port, m.overlay_device) == (1500, 1450, 1, 8472,
                                                                                      "flannel.1")
    assert {p.name: p.ip for p in m.pods} == {"client": "10.244.0.2", "web-1": "10.244.0.3",
                                              "web-2": "10.244.1.2", "web-3": "10.244.1.3"}
    assert [p.name for p in m.clients()] == ["client"]
    for pod in m.pods:
        assert pod.host_veth.startswith("veth") and len(pod.host_veth) <= 15


def test_web_has_three_endpoints_on_both_nodes() -> None:
    m = mf.load()
    web = m.service("default/web")
    http = web.ports[0]
    eps = m.endpoints(web, http)
    assert [e.pod for e in eps] == ["web-1", "web-2", "web-3"]
    assert {e.node for e in eps} == {"node1", "node2"}
    assert all(e.port == 8080 for e in eps)
    assert m.endpoints(web, http, frozenset({"default/web"})) == []
    assert m.endpoints(m.service("default/empty"), m.service("default/empty").ports[0]) == []
    assert m.listeners(m.pod("web-2")) == {"TCP": [8080], "UDP": [5353]}
    nodeport = m.service("default/web-nodeport")
    assert nodeport.type == "NodePort" and nodeport.ports[0].node_port == 30080


def test_dummy_services() -> None:
    m = mf.load().with_dummy_services(2000)
    dummies = [s for s in m.services if s.name.startswith("dummy-")]
    assert len(dummies) == 2000
    vips = {s.cluster_ip for s in m.services}
    assert len(vips) == len(m.services)
    net = ipaddress.ip_network(m.service_cidr)
    assert all(ipaddress.ip_address(v) in net for v in vips)
    assert len(m.endpoints(dummies[0], dummies[0].ports[0])) == 3


def test_round_trip() -> None:
    m = mf.load()
    again = mf.parse(json.loads(json.dumps(m.to_dict())))
    assert again.pods == m.pods and again.services == m.services and again.nodes == m.nodes


def _default() -> dict:
    return json.loads(mf.DEFAULT_MANIFEST.read_text())


@pytest.mark.parametrize("change, words", [
    (lambda d: d["pods"].append({"name": "x", "node": "node9"}), "unknown node"),
    (lambda d: d["pods"].append({"name": "x", "node": "node1", "ip": "10.244.1.9"}), "not a usable address"),
    (lambda d: d["pods"].append({"name": "web-1", "node": "node1"}), "unique"),
    (lambda d: d["services"][0].update(cluster_ip="10.200.0.1"), "outside service_cidr"),
    (lambda d: d["services"][0]["ports"][0].update(protocol="SCTP"), "not TCP or UDP"),
    (lambda d: d["nodes"].pop(), "exactly two nodes"),
    (lambda d: d.pop("pods"), "missing key"),
    (lambda d: d["pods"][0].update(name="bad name!"), "letters, digits"),
])
def test_bad_manifests(change, words: str) -> None:
    data = _default()
    change(data)
    with pytest.raises(LabError, match=words):
        mf.parse(data, source="test")


def test_unreadable_manifest(tmp_path) -> None:
    with pytest.raises(LabError, match="cannot read"):
        mf.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabError, match="not valid JSON"):
        mf.load(bad)


def test_dual_stack_topology() -> None:
    m = mf.load("dualstack")
    assert m.dual_stack and m.source == "dualstack"
    assert {p.name: p.ip6 for p in m.pods} == {"client": "fd00:10:244::2", "web-1": "fd00:10:244::3",
                                               "web-2": "fd00:10:244:1::2", "web-3": "fd00:10:244:1::3"}
    assert (m.nodes[1].gateway6, m.nodes[1].vtep_ip6) == ("fd00:10:244:1::1", "fd00:10:244:1::")
    web, lb = m.service("default/web"), m.service("default/web-lb")
    assert [e.ip for e in m.endpoints(web, web.ports[0], family=6)] == [
        "fd00:10:244::3", "fd00:10:244:1::2", "fd00:10:244:1::3"]
    assert (lb.type, lb.external_ips, lb.lb_ips) == ("LoadBalancer", ("192.0.2.40",), ("203.0.113.40",))
    assert web.needs_nftables and lb.needs_nftables
    assert not any(s.needs_nftables for s in mf.load().services) and not mf.load().dual_stack
    again = mf.parse(json.loads(json.dumps(m.to_dict())))
    assert again == replace(m, source="<dict>")


def _dual() -> dict:
    return json.loads(mf.SHIPPED["dualstack"].read_text())


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(cluster_cidr_v6="2a00:1450::/56"), "not a unique-local"),
    (lambda d: d.pop("service_cidr_v6"), "both cluster_cidr_v6 and service_cidr_v6"),
    (lambda d: d["nodes"][0].pop("pod_cidr_v6"), "pod_cidr_v6 goes with cluster_cidr_v6"),
    (lambda d: d["nodes"][0].update(pod_cidr_v6="fd00:99::/64"), "outside cluster_cidr_v6"),
    (lambda d: d["services"][0].update(cluster_ip6="fd00:99::1"), "outside service_cidr_v6"),
    (lambda d: d["services"][1].update(external_ips=["8.8.8.8"]), "not in 192.0.2.0/24"),
    (lambda d: d["services"][1].update(lb_ips=["10.0.0.1"]), "not in 192.0.2.0/24"),
    (lambda d: d["services"][1].update(type="NodePort"), "lb_ips need type LoadBalancer"),
    (lambda d: [d.pop(k) for k in ("cluster_cidr_v6", "service_cidr_v6")] + [n.pop("pod_cidr_v6")
                                                                             for n in d["nodes"]], "dual-stack lab"),
])
def test_bad_dual_stack_manifests(change, words: str) -> None:
    data = _dual()
    change(data)
    with pytest.raises(LabError, match=words):
        mf.parse(data, source="test")


def test_nftables_only_services_are_refused_in_other_modes() -> None:
    from tracer.lab import proxy

    m = mf.load("dualstack")
    for mode in ("iptables", "ipvs"):
        with pytest.raises(LabError, match="nftables mode only"):
            proxy.check_manifest(mode, m)
    proxy.check_manifest("nftables", m)
    proxy.check_manifest("iptables", mf.load())
