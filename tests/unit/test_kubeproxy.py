"""kube-proxy rule parsing against real dumps from the lab (tests/unit/fixtures/kubeproxy/README.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from support.quoted_comments import WRITTEN

from tracer.node.kubeproxy.collect import collect
from tracer.node.kubeproxy.iptables import iptables_variant, parse_iptables_save
from tracer.node.kubeproxy.ipvsadm import parse_ipvsadm
from tracer.node.kubeproxy.model import ServiceMap, merge
from tracer.node.kubeproxy.names import service_name_from_comment
from tracer.node.kubeproxy.nftables import parse_nft_json
from tracer.output.errors import PodtraceError

FIX = Path(__file__).parent / "fixtures" / "kubeproxy"
WEB = ["10.244.0.3", "10.244.1.2", "10.244.1.3"]


def load(name: str) -> str:
    return (FIX / name).read_text()


@pytest.fixture(scope="module")
def ipt() -> ServiceMap:
    return parse_iptables_save(load("lab-iptables-node1.save"))


@pytest.fixture(scope="module")
def nft() -> ServiceMap:
    return parse_nft_json(load("lab-nft-node1.json"))


def _expect_lab_services(m: ServiceMap) -> None:
    assert m.service_count == 3 and m.port_count == 4
    http = m.lookup_vip("10.96.0.10", 80, "TCP")
    assert http is not None and http.name == "default/web:http"
    assert (http.namespace, http.service, http.port_name) == ("default", "default/web", "http")
    assert [(e.ip, e.port) for e in http.endpoints] == [(ip, 8080) for ip in WEB]
    dns = m.lookup_vip("10.96.0.10", 53, "udp")
    assert dns is not None and dns.name == "default/web:dns"
    assert [(e.ip, e.port) for e in dns.endpoints] == [(ip, 5353) for ip in WEB]
    assert m.lookup_vip("10.96.0.10", 53, "tcp") is None
    nodeport = m.lookup_nodeport(30080, "tcp")
    assert nodeport is not None and nodeport.name == "default/web-nodeport:http" and nodeport.vip == "10.96.0.20"
    assert [p.name for p in m.no_endpoint_services] == ["default/empty:http"]
    empty = m.lookup_vip("10.96.0.30", 80, "tcp")
    assert empty is not None and empty.no_endpoints and empty.endpoints == []
    backed = sorted(p.name for p in m.lookup_endpoint("10.244.1.2", 8080, "tcp"))
    assert backed == ["default/web-nodeport:http", "default/web:http"]
    assert m.lookup_endpoint("10.244.1.2", 5353, "tcp") == []


def test_iptables_services(ipt: ServiceMap) -> None:
    assert ipt.mode == "iptables"
    _expect_lab_services(ipt)
    http = ipt.by_name("default/web:http")
    assert http is not None and http.chain == "KUBE-SVC-CDGGSHYLG3RE2FKL"
    assert http.endpoints[0].chain == "KUBE-SEP-TCD3IFXQZW3ZEZQU"  # the first the statistic match tries


def test_iptables_rule_counts(ipt: ServiceMap) -> None:
    text = load("lab-iptables-node1.save")
    assert ipt.rule_count == sum(1 for line in text.splitlines() if line.startswith("-A "))
    assert ipt.kube_rule_count == sum(1 for line in text.splitlines() if line.startswith("-A KUBE-"))
    assert ipt.summary()["endpoints"] == 9


def test_nftables_services(nft: ServiceMap) -> None:
    assert nft.mode == "nftables"
    _expect_lab_services(nft)
    assert nft.node_ips == ["192.168.77.1"]
    assert nft.lookup_nodeport(30080, "tcp", "192.168.77.1") is not None
    assert nft.lookup_nodeport(30080, "tcp", "10.244.0.3") is None
    http = nft.by_name("default/web:http")
    assert http is not None and http.chain == "service-SUSTUHLJ-default/web/tcp/http"
    assert http.endpoints[1].chain == "endpoint-SVLGPL42-default/web/tcp/http__10.244.1.2/8080"
    assert nft.rule_count == nft.kube_rule_count == 47  # 46 rules in table kube-proxy + 1 no-endpoint element


def test_nft_rule_text(nft: ServiceMap) -> None:
    texts = {r.text for r in nft.rules}
    assert "meta l4proto udp dnat to 10.244.1.3:5353" in texts
    assert 'ip daddr 10.96.0.0/16 drop comment "Drop traffic to unallocated ClusterIPs"' in texts
    assert "ip daddr . meta l4proto . th dport vmap @service-ips" in texts


def test_no_endpoints_reject_iptables() -> None:
    m = parse_iptables_save(load("lab-iptables-node2-faults.save"))
    assert sorted(p.name for p in m.no_endpoint_services) == ["default/empty:http", "default/web:dns",
                                                               "default/web:http"]
    hit = m.rule_for_drop("10.96.0.10", 80, "tcp", src="10.244.0.2")
    assert hit is not None and hit.rule.verdict == "REJECT"
    assert (hit.rule.table, hit.rule.chain, hit.rule.position) == ("filter", "KUBE-SERVICES", 1)
    assert '"default/web:http has no endpoints"' in hit.rule.text
    assert hit.service is not None and hit.service.name == "default/web:http"


def test_no_endpoints_reject_nftables(nft: ServiceMap) -> None:
    hit = nft.rule_for_drop("10.96.0.30", 80, "tcp")
    assert hit is not None and hit.rule.verdict == "REJECT"
    assert (hit.rule.table, hit.rule.chain) == ("ip kube-proxy", "reject-chain")
    assert "@no-endpoint-services" in hit.rule.text and "10.96.0.30 . tcp . 80" in hit.rule.text
    assert hit.service is not None and hit.service.name == "default/empty:http"


def test_nft_faults_no_endpoints() -> None:
    m = parse_nft_json(load("lab-nft-node2-faults.json"), skip_tables=["ip filter"])
    assert sorted(p.name for p in m.no_endpoint_services) == ["default/empty:http", "default/web:dns",
                                                               "default/web:http"]
    hit = m.rule_for_drop("10.96.0.10", 53, "udp")
    assert hit is not None and hit.service is not None and hit.service.name == "default/web:dns"
    assert all(r.table == "ip kube-proxy" for r in m.rules)


def test_drop_backend_attributed_with_vip() -> None:
    """The lab's drop-backend fault: a FORWARD DROP for one endpoint; the VIP from conntrack names the Service."""
    m = merge(parse_nft_json(load("lab-nft-node1.json")),
              parse_iptables_save(load("lab-nft-node2-faults-iptables.save")))
    assert m.mode == "nftables" and m.modes == ("nftables",)
    hit = m.rule_for_drop("10.244.1.2", 8080, "tcp", vip=("10.96.0.10", 80))
    assert hit is not None
    assert (hit.rule.table, hit.rule.chain, hit.rule.position, hit.rule.verdict) == ("filter", "FORWARD", 1, "DROP")
    assert hit.service is not None and hit.service.name == "default/web:http"
    assert hit.endpoint is not None and (hit.endpoint.ip, hit.endpoint.port) == ("10.244.1.2", 8080)
    # Without the VIP both Services this pod backs are candidates, and neither is claimed.
    unsure = m.rule_for_drop("10.244.1.2", 8080, "tcp")
    assert unsure is not None and unsure.service is None
    assert sorted(p.name for p in unsure.services) == ["default/web-nodeport:http", "default/web:http"]
    # Another endpoint is not dropped by that rule (nor by anything else specific).
    assert m.rule_for_drop("10.244.1.3", 8080, "tcp") is None


def test_drop_rule_narrowed_by_chain(ipt: ServiceMap) -> None:
    hit = ipt.rule_for_drop("10.244.1.3", 8080, "tcp", chain="KUBE-FORWARD")
    assert hit is not None and "--ctstate INVALID" in hit.rule.text
    assert ipt.rule_for_drop("10.244.1.3", 8080, "tcp") is None
    assert ipt.rule_for_drop("10.244.1.3", 8080, "tcp", table="nat") is None


def test_unallocated_cluster_ip_nftables(nft: ServiceMap) -> None:
    wrong_port = nft.rule_for_drop("10.96.0.10", 81, "tcp")
    assert wrong_port is not None and wrong_port.rule.verdict == "REJECT"
    assert wrong_port.rule.chain == "cluster-ips-check" and wrong_port.service is None
    unallocated = nft.rule_for_drop("10.96.7.7", 80, "tcp")
    assert unallocated is not None and unallocated.rule.verdict == "DROP"


@pytest.mark.parametrize(("comment", "name"), [
    ("default/web:http cluster IP", "default/web:http"),
    ("default/web:http -> 10.244.0.3:8080", "default/web:http"),
    ("default/empty:http has no endpoints", "default/empty:http"),
    ("kube-system/kube-dns:dns-tcp", "kube-system/kube-dns:dns-tcp"),
    ("default/kubernetes", "default/kubernetes"),
    ("masquerade traffic for default/web-nodeport:http external destinations", "default/web-nodeport:http"),
    ("kubernetes service portals", ""),
    ("podtrace-lab fault drop-backend", ""),
])
def test_service_name_from_comment(comment: str, name: str) -> None:
    assert service_name_from_comment(comment) == name


@pytest.mark.parametrize("name", ["quoted-comments-iptables.save", "quoted-comments-iptables-S.txt"])
def test_comments_with_quotes_read_as_written(name: str) -> None:
    r"""iptables-save escapes ', " and \ inside a quoted comment (`else\'s`): the reader gives what was written."""
    m = parse_iptables_save(load(name))
    assert [r.comment for r in m.rules] == WRITTEN
    # The rule's text stays the line as the tool printed it, escapes and all.
    assert '--comment "block someone else\\\'s scanner"' in m.rules[1].text
    hit = m.rule_for_drop("10.96.0.10", 80, "tcp", src="10.244.1.7")
    assert hit is not None and (hit.rule.chain, hit.rule.position) == ("INPUT", 2)
    assert hit.rule.comment == "block someone else's scanner" and hit.service is None
    empty = m.by_name("default/empty:http", "tcp")
    assert empty is not None and empty.no_endpoints and (empty.vip, empty.port) == ("10.96.0.20", 80)


def test_ipvsadm() -> None:
    m = parse_ipvsadm(load("ipvsadm-Ln.txt"))
    assert m.mode == "ipvs" and m.port_count == 5
    http = m.lookup_vip("10.96.0.10", 80, "tcp")
    assert http is not None and http.name == "" and [e.ip for e in http.endpoints] == WEB
    empty = m.lookup_vip("10.96.0.30", 80, "tcp")
    assert empty is not None and empty.no_endpoints


def test_iptables_variant() -> None:
    assert iptables_variant(load("lab-iptables-node1.save")) == "nf_tables"
    assert iptables_variant("# Generated by iptables-save v1.8.7 (legacy) on x\n") == "legacy"


def test_empty_inputs() -> None:
    assert parse_iptables_save("").mode == "none"
    assert parse_nft_json('{"nftables": [{"metainfo": {"json_schema_version": 1}}]}').mode == "none"
    assert merge().mode == "none"


def test_collect_with_a_fake_runner() -> None:
    outputs = {"iptables-save": load("lab-iptables-node1.save"), "iptables-legacy-save": "",
               "nft": '{"nftables": []}'}
    seen: list[list[str]] = []

    def run(argv: Sequence[str]) -> str | None:
        seen.append(list(argv))
        return outputs.get(argv[0])

    m = collect(runner=run)
    assert m.mode == "iptables" and m.service_count == 3
    assert ["nft", "-j", "list", "ruleset"] in seen and ["iptables-legacy-save"] in seen


def test_collect_errors() -> None:
    with pytest.raises(PodtraceError, match="neither iptables-save nor nft"):
        collect(runner=lambda argv: None)
    with pytest.raises(PodtraceError, match="does not exist"):
        collect("podtrace-no-such-netns")

    def failing(argv: Sequence[str]) -> str | None:
        raise PodtraceError(f"`{argv[0]}` failed: Permission denied")

    with pytest.raises(PodtraceError, match="Permission denied"):
        collect(runner=failing)
