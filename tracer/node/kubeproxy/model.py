"""What kube-proxy programmed on one node, whatever the proxy mode: Service ports with their VIPs, NodePorts and
endpoints (`ServicePort`, `Endpoint`), every rule with what it matches (`Rule`, `Criteria`), and the lookups the
tracer asks of them (`ServiceMap`: which Service is behind an address, which rule dropped a packet). The parsers in
this package build it; `merge` joins the maps of several sources."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tracer.node.kubeproxy.names import PORT_NAME, name_from_chain, service_name_from_comment

NFT_TABLE = "kube-proxy"


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    chain: str = ""  # KUBE-SEP-* or endpoint-* chain doing the DNAT; "" from IPVS

    def __str__(self) -> str:
        return host_port(self.ip, self.port)


@dataclass
class ServicePort:
    """One port of one Service, named as kube-proxy names it: `namespace/name:portname` (no `:port` if unnamed)."""

    name: str
    proto: str
    vip: str = ""
    port: int = 0
    node_port: int = 0
    # ExternalIPs. nftables mode cannot tell an ExternalIP from a LoadBalancer IP (both are `service-ips` elements
    # going to the external-* chain): there a LoadBalancer IP is only known as such when it has source ranges.
    external_ips: list[str] = field(default_factory=list)
    lb_ips: list[str] = field(default_factory=list)  # LoadBalancer ingress IPs
    source_ranges: list[str] = field(default_factory=list)  # loadBalancerSourceRanges (KUBE-FW-* / firewall-*)
    endpoints: list[Endpoint] = field(default_factory=list)
    # externalTrafficPolicy: Local: the endpoints on this node that external traffic goes to (KUBE-SVL-*,
    # KUBE-XLB-*, local-*), and whether external traffic is dropped because there are none.
    local_endpoints: list[Endpoint] = field(default_factory=list)
    no_local_endpoints: bool = False
    no_endpoints: bool = False
    affinity_timeout: int = 0  # sessionAffinity ClientIP, seconds; 0 = none
    chain: str = ""  # KUBE-SVC-* / service-* chain; "" for IPVS and for Services without endpoints

    @property
    def namespace(self) -> str:
        m = PORT_NAME.match(self.name)
        return m.group("ns") if m else ""

    @property
    def service(self) -> str:
        """`namespace/name`, the Service without its port."""
        return self.name.split(":", 1)[0]

    @property
    def port_name(self) -> str:
        m = PORT_NAME.match(self.name)
        return (m.group("port") or "") if m else ""

    def endpoint(self, ip: str, port: int) -> Endpoint | None:
        return next((e for e in self.endpoints if e.ip == ip and e.port == port), None)

    def __str__(self) -> str:
        where = f"{host_port(self.vip, self.port)}/{self.proto}" if self.vip else \
            f"nodeport {self.node_port}/{self.proto}"
        return f"{self.name or '?'} {where}"


@dataclass(frozen=True)
class Criteria:
    """What a rule matches on, as far as a packet's addresses, protocol and port can decide it.

    Address fields are networks ("any of"); empty means "any". `opaque` counts matches this cannot evaluate
    (conntrack state, marks, addrtype, statistic): they are assumed to match, and make a rule less specific.
    """

    src: tuple[str, ...] = ()
    src_neg: bool = False
    dst: tuple[str, ...] = ()
    dst_neg: bool = False
    proto: str = ""
    dports: tuple[tuple[int, int], ...] = ()
    dports_neg: bool = False
    opaque: int = 0

    def score(self, dst: str, dport: int | None, proto: str, src: str | None = None) -> int | None:
        """None when the packet cannot match; otherwise how many criteria it satisfied (specificity)."""
        hits = 0
        if self.proto:
            if self.proto != proto.lower():
                return None
            hits += 1
        for nets, neg, addr in ((self.dst, self.dst_neg, dst), (self.src, self.src_neg, src)):
            if not nets:
                continue
            if addr is None:
                continue
            if in_any(addr, nets) == neg:
                return None
            hits += 1
        if self.dports and dport is not None:
            inside = any(lo <= dport <= hi for lo, hi in self.dports)
            if inside == self.dports_neg:
                return None
            hits += 1
        return hits


@dataclass(frozen=True)
class Rule:
    """One rule, as `iptables-save` prints it or as nft would list it."""

    source: str  # "iptables" or "nftables"
    table: str  # "filter", "nat" ... or "ip kube-proxy"
    chain: str
    position: int  # 1-based index in its chain (iptables); the rule handle (nftables)
    text: str
    verdict: str  # upper case: DROP, REJECT, DNAT, ACCEPT, JUMP, GOTO, RETURN, MASQUERADE, MARK, ... or ""
    target: str = ""  # chain jumped to, if any
    comment: str = ""
    match: Criteria = Criteria()

    @property
    def drops(self) -> bool:
        return self.verdict in ("DROP", "REJECT")

    def where(self) -> str:
        return f"{self.table} {self.chain} #{self.position}"


@dataclass(frozen=True)
class DropMatch:
    """The rule a dropped packet most likely hit, and the Service (and endpoint) it belongs to."""

    rule: Rule
    service: ServicePort | None
    endpoint: Endpoint | None
    services: tuple[ServicePort, ...] = ()  # every candidate when the packet alone cannot tell which Service


@dataclass
class ServiceMap:
    """What kube-proxy programmed on one node. `mode` is the proxy mode found ("none" when no rules were found)."""

    mode: str = "none"
    ports: list[ServicePort] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    node_ips: list[str] = field(default_factory=list)  # NodePort addresses when the rules name them (nftables)
    modes: tuple[str, ...] = ()  # every mode with rules: more than one means leftovers of a mode switch

    # -- counts --
    @property
    def service_count(self) -> int:
        return len({p.service for p in self.ports if p.name}) + len([p for p in self.ports if not p.name])

    @property
    def port_count(self) -> int:
        return len(self.ports)

    @property
    def rule_count(self) -> int:
        return len(self.rules)

    @property
    def kube_rule_count(self) -> int:
        """Rules kube-proxy wrote: KUBE-* chains (iptables) and table kube-proxy (nftables)."""
        return sum(1 for r in self.rules if r.chain.startswith("KUBE-") or r.table.endswith(" " + NFT_TABLE))

    @property
    def no_endpoint_services(self) -> list[ServicePort]:
        return [p for p in self.ports if p.no_endpoints]

    @property
    def node_ports(self) -> dict[tuple[int, str], ServicePort]:
        return {(p.node_port, p.proto): p for p in self.ports if p.node_port}

    # -- lookups --
    def lookup_vip(self, ip: str, port: int, proto: str) -> ServicePort | None:
        """The Service port behind a ClusterIP (or external/LoadBalancer IP) and port."""
        proto = proto.lower()
        for p in self.ports:
            if p.proto == proto and p.port == port and (p.vip == ip or ip in p.external_ips or ip in p.lb_ips):
                return p
        return None

    def lookup_nodeport(self, port: int, proto: str, ip: str | None = None) -> ServicePort | None:
        """The Service port behind a NodePort; with `ip`, only if it is a NodePort address (when those are known)."""
        if ip is not None and self.node_ips and ip not in self.node_ips:
            return None
        return self.node_ports.get((port, proto.lower()))

    def lookup_endpoint(self, ip: str, port: int, proto: str) -> list[ServicePort]:
        """Every Service port with this endpoint (one pod often backs several Services)."""
        proto = proto.lower()
        return [p for p in self.ports if p.proto == proto and p.endpoint(ip, port)]

    def by_name(self, name: str, proto: str | None = None) -> ServicePort | None:
        return next((p for p in self.ports if p.name == name and (proto is None or p.proto == proto.lower())), None)

    def rule_for_drop(self, dst: str, dport: int | None, proto: str, *, src: str | None = None,
                      table: str | None = None, chain: str | None = None,
                      vip: tuple[str, int] | None = None) -> DropMatch | None:
        """The DROP/REJECT rule a packet to `dst:dport/proto` most likely hit, and its Service.

        `table`/`chain` narrow the search when the probe saw them (nft_do_chain, ipt_do_table); `vip` is the
        original destination from conntrack when the packet was already DNATed, which settles the Service when an
        endpoint backs several. Among matching rules the most specific wins, then the first in rule order.
        """
        proto = proto.lower()
        best: tuple[int, int, Rule] | None = None
        for order, rule in enumerate(self.rules):
            if not rule.drops or (chain and rule.chain != chain) or (table and not same_table(rule.table, table)):
                continue
            score = rule.match.score(dst, dport, proto, src)
            # A rule that matches nothing about the packet (ctstate INVALID, the bare reject in reject-chain) is
            # only an answer when the probe saw the packet in that chain.
            if score is None or (score == 0 and not chain):
                continue
            if best is None or (score, -order) > (best[0], -best[1]):
                best = (score, order, rule)
        if best is None:
            return None
        rule = best[2]
        candidates = self._services_for(rule, dst, dport, proto, vip)
        service = candidates[0] if len(candidates) == 1 else None
        endpoint = service.endpoint(dst, dport) if service and dport is not None else None
        return DropMatch(rule, service, endpoint, tuple(candidates))

    def _services_for(self, rule: Rule, dst: str, dport: int | None, proto: str,
                      vip: tuple[str, int] | None) -> list[ServicePort]:
        named = service_name_from_comment(rule.comment) or name_from_chain(rule.chain)
        if named:
            by_name = [p for p in self.ports if p.name == named and p.proto == proto] or \
                      [p for p in self.ports if p.name == named]
            if by_name:
                return by_name[:1]
        by_chain = [p for p in self.ports if p.chain and p.chain == rule.chain]
        if by_chain:
            return by_chain
        if vip is not None:
            found = self.lookup_vip(vip[0], vip[1], proto) or self.lookup_nodeport(vip[1], proto, vip[0])
            if found:
                return [found]
        if dport is not None:
            found = self.lookup_vip(dst, dport, proto)
            if found:
                return [found]
            eps = self.lookup_endpoint(dst, dport, proto)
            if eps:
                return eps
            found = self.lookup_nodeport(dport, proto, dst)
            if found and dst not in {e.ip for p in self.ports for e in p.endpoints}:
                return [found]
        return []

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "modes": list(self.modes), "services": self.service_count,
                "service_ports": self.port_count, "endpoints": sum(len(p.endpoints) for p in self.ports),
                "no_endpoints": [p.name for p in self.no_endpoint_services], "rules": self.rule_count,
                "kube_rules": self.kube_rule_count}


def merge(*maps: ServiceMap) -> ServiceMap:
    """One map from several sources. The mode is the first of nftables, ipvs, iptables that has Services."""
    out = ServiceMap()
    for m in maps:
        out.ports += m.ports
        out.rules += m.rules
        out.node_ips += [ip for ip in m.node_ips if ip not in out.node_ips]
    modes = [mode for m in maps for mode in m.modes]
    with_ports = [mode for m in maps if m.ports for mode in m.modes]
    for mode in ("nftables", "ipvs", "iptables"):
        if mode in with_ports or (not with_ports and mode in modes):
            out.mode = mode
            break
    out.modes = tuple(dict.fromkeys(modes))
    return out


def host_port(ip: str, port: int) -> str:
    """`ip:port`, an IPv6 address in brackets (`[fd00::1]:80`) so the port cannot be read as part of it."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def in_any(addr: str, nets: Iterable[str]) -> bool:
    try:
        a = ipaddress.ip_address(addr)
    except ValueError:
        return False
    for n in nets:
        try:
            if a in ipaddress.ip_network(n, strict=False):
                return True
        except (ValueError, TypeError):
            continue
    return False


def same_table(rule_table: str, asked: str) -> bool:
    return rule_table == asked or rule_table.split(" ")[-1] == asked


def add_once(values: list[str], value: str) -> None:
    if value not in values:
        values.append(value)
