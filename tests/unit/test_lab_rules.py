"""kube-proxy rule generation: names, comments and probabilities as kube-proxy writes them."""

from __future__ import annotations

import re

from tracer.lab import faults, iptables_rules, nft_rules
from tracer.lab import manifest as mf


def _ns1_svc1() -> tuple[mf.Service, mf.ServicePort, mf.Endpoint]:
    port = mf.ServicePort("p80", 80, 80, "TCP")
    return mf.Service("ns1", "svc1", "172.30.0.41", (port,)), port, mf.Endpoint("x", "10.180.0.1", 80, "n")


def test_chain_names_match_kube_proxy_fixtures() -> None:
    # Expected names from kube-proxy's own tests (pkg/proxy/iptables and pkg/proxy/nftables proxier_test.go).
    svc, port, ep = _ns1_svc1()
    assert iptables_rules.svc_chain(svc, port) == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert iptables_rules.sep_chain(svc, port, ep) == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    assert nft_rules.service_chain(svc, port) == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert nft_rules.endpoint_chain(svc, port, ep) == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


def test_iptables_default_manifest() -> None:
    m = mf.load()
    text = iptables_rules.render(m, m.nodes[0])
    assert text.count("*filter") == 1 and text.count("*nat") == 1 and text.count("COMMIT") == 2
    web = m.service("default/web")
    svc_c = iptables_rules.svc_chain(web, web.ports[0])
    assert f":{svc_c} - [0:0]" in text
    assert re.search(r'-A KUBE-SERVICES -d 10\.96\.0\.10/32 -p tcp -m comment --comment "default/web:http cluster IP"'
                     rf" -m tcp --dport 80 -j {svc_c}\n", text)
    lb = [line for line in text.splitlines() if line.startswith(f"-A {svc_c} -m comment")]
    assert len(lb) == 3
    assert "--probability 0.3333333333" in lb[0] and "--probability 0.5000000000" in lb[1]
    assert "statistic" not in lb[2]
    assert '"default/web:http -> 10.244.1.3:8080"' in lb[2]
    assert text.count("-j DNAT --to-destination") == 9  # web:http, web:dns, web-nodeport:http x 3 endpoints
    assert "-m udp -j DNAT --to-destination 10.244.0.3:5353" in text
    assert '--comment "default/empty:http has no endpoints" -m tcp --dport 80 -j REJECT' in text
    assert "-A KUBE-NODEPORTS -p tcp -m comment --comment \"default/web-nodeport:http\" -m tcp --dport 30080" in text
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000" in text
    assert "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN" in text
    assert "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE" \
        in text
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in text
    # NodePorts must come last in KUBE-SERVICES.
    services = [line for line in text.splitlines() if line.startswith("-A KUBE-SERVICES") and "REJECT" not in line]
    assert "KUBE-NODEPORTS" in services[-1]


def test_iptables_resync_without_endpoints_deletes_stale_chains() -> None:
    m = mf.load()
    node = m.nodes[0]
    first = iptables_rules.render(m, node)
    stale = tuple(iptables_rules.kube_chains(first))
    assert any(c.startswith("KUBE-SEP-") for c in stale)
    text = iptables_rules.render(m, node, frozenset({"default/web"}), initial=False, stale=stale)
    assert ":PREROUTING" not in text and "-A PREROUTING" not in text
    web = m.service("default/web")
    gone = iptables_rules.svc_chain(web, web.ports[0])
    assert f":{gone} - [0:0]" in text and f"-X {gone}" in text
    assert '"default/web:http has no endpoints"' in text and '"default/web:dns has no endpoints"' in text
    assert text.count("-j DNAT") == 3  # only web-nodeport is left


def test_iptables_dummy_services_scale() -> None:
    m = mf.load().with_dummy_services(2000)
    text = iptables_rules.render(m, m.nodes[0])
    assert text.count("-j KUBE-SVC-") >= 2000
    assert len(set(re.findall(r"KUBE-SEP-[A-Z0-9]{16}", text))) == 6009


def test_nftables_default_manifest() -> None:
    m = mf.load()
    text = nft_rules.render(m, m.nodes[1])
    assert text.startswith("add table ip kube-proxy\ndelete table ip kube-proxy\n")
    for needle in ("add map ip kube-proxy service-ips", "add map ip kube-proxy no-endpoint-services",
                   "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
                   "masquerade fully-random", "add element ip kube-proxy nodeport-ips { 192.168.77.2 }",
                   "numgen random mod 3 vmap", 'comment "default/empty:http" : goto reject-chain',
                   "add element ip kube-proxy service-nodeports { tcp . 30080"):
        assert needle in text, needle
    # Every chain a vmap names is added before the rule that names it.
    added: set[str] = set()
    for line in text.splitlines():
        if line.startswith("add chain ip kube-proxy "):
            added.add(line.split()[4])
        for target in re.findall(r"goto (\S+?)[ ,}]", line):
            if not line.startswith("add element"):
                assert target in added, target


def test_cpu_mask_is_sysfs_bitmap_format() -> None:
    assert faults.cpu_mask(0) == "00000001"
    assert faults.cpu_mask(1) == "00000002"
    assert faults.cpu_mask(31) == "80000000"
    assert faults.cpu_mask(32) == "00000001,00000000"  # 32-bit groups, most significant first


def test_softirq_load_rules_are_one_removable_chain() -> None:
    chain, count = faults.LOAD_CHAIN, faults.LOAD_RULES
    lines = faults._load_rules().splitlines()
    assert lines[0] == "*raw" and lines[-1] == "COMMIT"
    assert f"-I PREROUTING -j {chain}" in lines
    appended = [line for line in lines if line.startswith(f"-A {chain} ")]
    assert len(appended) == count and len(set(appended)) == count
    assert all("192.0.2." in line for line in appended)  # TEST-NET-1: never a lab or real address


def test_ipv6_endpoint_chain_name_matches_kube_proxy() -> None:
    # nft-knftables-v6.nft (kube-proxy's IPv6 ruleset): the address's colons become dots in the chain name.
    port = mf.ServicePort("p80", 80, 80, "TCP")
    svc = mf.Service("ns1", "svc1", "172.30.0.41", (port,), cluster_ip6="fd00:172:30::41")
    assert nft_rules.endpoint_chain(svc, port, mf.Endpoint("x", "fd00:10:180::2:1", 80, "n")) == \
        "endpoint-2CRNCTTE-ns1/svc1/tcp/p80__fd00.10.180..2.1/80"
    assert nft_rules.endpoint_chain(svc, port, mf.Endpoint("x", "fd00:10:180::1", 80, "n")) == \
        "endpoint-ZVRFLKHO-ns1/svc1/tcp/p80__fd00.10.180..1/80"


def test_nftables_dual_stack_manifest() -> None:
    """Both tables; the IPv6 ClusterIP in `ip6 kube-proxy` with the pods' IPv6 endpoints, the ExternalIP and LB IP
    going to the port's external chain (mark for masquerade, then the service chain) as kube-proxy's ns4/svc4."""
    m = mf.load("dualstack")
    text = nft_rules.render(m, m.nodes[0])
    v4, v6 = text.split("add table ip6 kube-proxy\n", 1)
    assert "ip6" not in v4 and " ip " not in v6.replace("ip6", "")
    web, lb = m.service("default/web"), m.service("default/web-lb")
    http = lb.ports[0]
    sc, xc = nft_rules.service_chain(lb, http), nft_rules.external_chain(lb, http)
    for needle in (f"add rule ip kube-proxy {xc} jump mark-for-masquerade", f"add rule ip kube-proxy {xc} goto {sc}",
                   f'service-ips {{ 192.0.2.40 . tcp . 80 comment "default/web-lb:http" : goto {xc} }}',
                   f'service-ips {{ 203.0.113.40 . tcp . 80 comment "default/web-lb:http" : goto {xc} }}',
                   f'service-nodeports {{ tcp . 30040 comment "default/web-lb:http" : goto {xc} }}'):
        assert needle in v4, needle
    for needle in ("add set ip6 kube-proxy cluster-ips { type ipv6_addr ;", "ip6 daddr { fd00:10:96::/112 } drop",
                   "add element ip6 kube-proxy cluster-ips { fd00:10:96::10 }",
                   "ip6 daddr fd00:10:96::10 tcp dport 80 ip6 saddr != fd00:10:244::/56 jump mark-for-masquerade",
                   "meta l4proto tcp dnat to [fd00:10:244:1::2]:8080", "numgen random mod 3 vmap"):
        assert needle in v6, needle
    assert "nodeport-ips {" not in v6.replace("add set ip6 kube-proxy nodeport-ips {", "")
    assert web.cluster_ip6 not in v4 and lb.cluster_ip not in v6
