"""What kube-proxy's own test rulesets encode, read from the Go tests' Service and EndpointSlice objects (see
tests/unit/fixtures/kube-proxy/README.md), and one check of a parsed ServiceMap against it.

Each entry is one Service port as the Go test builds it; nothing here is derived from the rulesets themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.node.kubeproxy.model import ServiceMap


@dataclass(frozen=True)
class Expected:
    name: str
    cluster_ip: str
    port: int
    endpoints: frozenset[str]
    proto: str = "tcp"
    node_port: int = 0
    external_ips: frozenset[str] = frozenset()
    lb_ips: frozenset[str] = frozenset()
    source_ranges: frozenset[str] = frozenset()
    local_endpoints: frozenset[str] = frozenset()
    no_endpoints: bool = False
    no_local_endpoints: bool = False  # externalTrafficPolicy Local and no endpoint on this node
    affinity: int = 0


def _f(*items: str) -> frozenset[str]:
    return frozenset(items)


# TestOverallIPTablesRules and TestOverallNFTablesRules build the same six Services (testNodeName = "test-node";
# an endpoint is local only when its NodeName is set to it).
OVERALL = (
    Expected("ns1/svc1:p80", "172.30.0.41", 80, _f("10.180.0.1:80")),
    # LoadBalancer, Local policy; its only endpoint has no NodeName, so it is not local: external traffic dropped
    Expected("ns2/svc2:p80", "172.30.0.42", 80, _f("10.180.0.2:80"), node_port=3001,
             external_ips=_f("192.168.99.22"), lb_ips=_f("1.2.3.4"), no_local_endpoints=True),
    Expected("ns3/svc3:p80", "172.30.0.43", 80, _f("10.180.0.3:80"), node_port=3003),
    # Type NodePort without a NodePort number in the test object: no NodePort rule
    Expected("ns4/svc4:p80", "172.30.0.44", 80, _f("10.180.0.4:80", "10.180.0.5:80"),
             external_ips=_f("192.168.99.33")),
    Expected("ns5/svc5:p80", "172.30.0.45", 80, _f("10.180.0.3:80"), node_port=3002, lb_ips=_f("5.6.7.8"),
             source_ranges=_f("203.0.113.0/25"), affinity=10800),
    Expected("ns6/svc6:p80", "172.30.0.46", 80, _f(), no_endpoints=True),
)

# TestEnableLocalhostNodePortsIPv6: NodePort 30001, Local policy, ff06::c2 on this node.
IPV6_IPTABLES = (
    Expected("ns1/svc1:p80", "fd00:ab34::20", 80, _f("[ff06::c1]:80", "[ff06::c2]:80"), node_port=30001,
             local_endpoints=_f("[ff06::c2]:80")),
)

# TestExternalTrafficPolicyLocal (iptables proxier_test.go): LoadBalancer 1.2.3.4, ExternalIP 192.168.99.11,
# NodePort 3001, externalTrafficPolicy Local; 10.180.2.1 has NodeName test-node (local, in KUBE-SVL), 10.180.0.1 none.
ETP_LOCAL_V4 = (
    Expected("ns1/svc1:p80", "172.30.0.41", 80, _f("10.180.0.1:80", "10.180.2.1:80"), node_port=3001,
             external_ips=_f("192.168.99.11"), lb_ips=_f("1.2.3.4"), local_endpoints=_f("10.180.2.1:80")),
)

# TestEnableLocalhostNodePortsIPv4: NodePort 30001, Local policy, 10.244.2.1 on this node.
LOCALHOST_NODEPORTS_V4 = (
    Expected("ns1/svc1:p80", "10.69.0.10", 80, _f("10.244.0.1:80", "10.244.2.1:80"), node_port=30001,
             local_endpoints=_f("10.244.2.1:80")),
)

# knftables fake_test.go, IPv6 case.
IPV6_NFT = (
    Expected("ns1/svc1:p80", "fd00:172:30::41", 80, _f("[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"),
             node_port=3001),
)

# The GKE 1.2.4 node: names from the comments (unnamed ports are `ns/name`), endpoints from the DNAT targets.
GKE_1_2 = (
    Expected("kube-system/default-http-backend:http", "10.83.242.211", 80, _f("10.80.0.4:8080"), node_port=31291),
    Expected("kube-system/heapster", "10.83.247.155", 80, _f("10.80.0.6:8082")),
    Expected("kube-system/kube-dns:dns", "10.83.240.10", 53, _f("10.80.0.5:53"), proto="udp"),
    Expected("kube-system/kube-dns:dns-tcp", "10.83.240.10", 53, _f("10.80.0.5:53")),
    Expected("kube-system/kubernetes-dashboard", "10.83.254.147", 80, _f("10.80.0.3:9090")),
    Expected("default/kubernetes:https", "10.83.240.1", 443, _f("23.251.134.151:443")),
)


def check(smap: ServiceMap, expected: tuple[Expected, ...], *, lb_known: bool = True) -> None:
    """Every VIP:port (ClusterIP, ExternalIP, LoadBalancer IP) and NodePort maps to the right Service port and
    endpoints, and nothing else is there.

    `lb_known=False` for nftables: its rules do not tell a LoadBalancer IP from an ExternalIP unless the IP has
    source ranges (firewall-ips), so there the other LB IPs must be reported as external IPs, not as LB IPs.
    """
    assert sorted((p.name, p.proto) for p in smap.ports) == sorted((e.name, e.proto) for e in expected)
    for e in expected:
        p = smap.lookup_vip(e.cluster_ip, e.port, e.proto)
        assert p is not None, f"{e.cluster_ip}:{e.port} not found"
        assert (p.name, p.vip) == (e.name, e.cluster_ip)
        assert {str(ep) for ep in p.endpoints} == e.endpoints, e.name
        assert {str(ep) for ep in p.local_endpoints} == e.local_endpoints, e.name
        for ip in e.external_ips | e.lb_ips:
            found = smap.lookup_vip(ip, e.port, e.proto)
            assert found is p, f"{ip}:{e.port} -> {found}"
        if lb_known:
            assert (set(p.external_ips), set(p.lb_ips)) == (e.external_ips, e.lb_ips), e.name
        else:
            assert set(p.lb_ips) == e.lb_ips & {ip for ip in e.lb_ips if e.source_ranges}, e.name
            assert set(p.external_ips) | set(p.lb_ips) == e.external_ips | e.lb_ips, e.name
        if e.node_port:
            assert smap.lookup_nodeport(e.node_port, e.proto) is p, e.name
        assert p.node_port == e.node_port, e.name
        assert set(p.source_ranges) == e.source_ranges, e.name
        assert (p.no_endpoints, p.no_local_endpoints, p.affinity_timeout) == \
               (e.no_endpoints, e.no_local_endpoints, e.affinity), e.name
