"""kube-proxy's rules read back from a node: Service VIP:port/proto -> Service name -> endpoints, and which rule a
dropped packet hit.

Three proxy modes, three sources, one `ServiceMap`:
- iptables mode: `iptables-save` / `ip6tables-save` text (iptables-nft and iptables-legacy print the same format),
  or `iptables -S` (no table headers). Names come from the rule comments kube-proxy writes, current and old
  (`"default/web:http cluster IP"`, `"kube-system/heapster: cluster IP"` for an unnamed port in kube-proxy 1.2,
  `"default/web:http -> 10.244.0.3:8080"`, `"... has no endpoints"`, `"... has no local endpoints"`); endpoints from
  the DNAT in each KUBE-SEP-* chain, local ones from KUBE-SVL-* / KUBE-XLB-* (pkg/proxy/iptables).
- nftables mode: `nft -j list ruleset`, tables `ip kube-proxy` and `ip6 kube-proxy` (pkg/proxy/nftables): the
  `service-ips` map (ClusterIP -> service-* chain, ExternalIP and LoadBalancer IP -> external-* chain),
  `service-nodeports`, `firewall-ips` (source ranges), the `service-*` chains picking `endpoint-*` chains with
  `numgen random`, `dnat to` in each endpoint chain, and `no-endpoint-services` / `no-endpoint-nodeports`
  elements (goto reject-chain: no endpoints; drop: Local policy without a local endpoint).
- IPVS mode: `ipvsadm -Ln` text, one virtual server per VIP:port with its real servers. IPVS carries no names.

Parsing is pure (text or JSON in, `ServiceMap` out); `collect()` runs the commands, in a named netns when asked.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from tracer.errors import PodtraceError

PROTOS = ("tcp", "udp", "sctp")
NFT_TABLE = "kube-proxy"
# Tables iptables-nft keeps in nftables: their rules are read from iptables-save, not from the nft JSON, so a rule
# is never counted twice.
IPTABLES_NFT_TABLES = ("filter", "nat", "mangle", "raw", "security")

_PORT_NAME = re.compile(r"^(?P<ns>[^/\s]+)/(?P<name>[^:\s]+)(?::(?P<port>\S+))?$")
# kube-proxy nftables chain names: <kind>-<hash8>-<ns>/<name>/<proto>/<portname>[__<ip>/<port>]
_NFT_CHAIN = re.compile(r"^(?P<kind>service|external|endpoint|firewall|local)-(?P<hash>[A-Z2-7]{8})-(?P<ns>[^/]+)/"
                        r"(?P<name>[^/]+)/(?P<proto>[a-z]+)/(?P<port>[^_/]*)(?:__(?P<ip>[^/]+)/(?P<epport>\d+))?$")
_AFFINITY = re.compile(r"--rcheck --seconds (\d+)")


# ---- the model -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    chain: str = ""  # KUBE-SEP-* or endpoint-* chain doing the DNAT; "" from IPVS

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


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
        m = _PORT_NAME.match(self.name)
        return m.group("ns") if m else ""

    @property
    def service(self) -> str:
        """`namespace/name`, the Service without its port."""
        return self.name.split(":", 1)[0]

    @property
    def port_name(self) -> str:
        m = _PORT_NAME.match(self.name)
        return (m.group("port") or "") if m else ""

    def endpoint(self, ip: str, port: int) -> Endpoint | None:
        return next((e for e in self.endpoints if e.ip == ip and e.port == port), None)

    def __str__(self) -> str:
        where = f"{self.vip}:{self.port}/{self.proto}" if self.vip else f"nodeport {self.node_port}/{self.proto}"
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
            if _in_any(addr, nets) == neg:
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
            if not rule.drops or (chain and rule.chain != chain) or (table and not _same_table(rule.table, table)):
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
        named = service_name_from_comment(rule.comment) or _name_from_chain(rule.chain)
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


# Comments kube-proxy writes around a Service port name, old and new (pkg/proxy/iptables/proxier.go).
_COMMENT_FORMS = tuple(re.compile(f) for f in (
    r"^(?:masquerade |pod |masquerade LOCAL |route LOCAL )?traffic for (?P<n>\S+) external destinations$",
    r"^masquerade LOCAL traffic for (?P<n>\S+) LB IP$",
    r"^route LOCAL traffic for (?P<n>\S+) LB IP to service chain$",
    r"^other traffic to (?P<n>\S+) will be dropped by KUBE-PROXY-FIREWALL$",
    r"^(?P<n>\S+) traffic not accepted by KUBE-FW-\S+$",
    r"^(?P<n>\S+) health check node port$",
    r"^(?P<n>\S+?):? ?(?:cluster IP|external IP|loadbalancer IP|has no endpoints|has no local endpoints)$",
    r"^(?P<n>\S+?) -> \S+$",
    r"^(?P<n>\S+)$",
))


def service_name_from_comment(comment: str) -> str:
    """`default/web:http` from kube-proxy's comments ("... cluster IP", "... -> 10.0.0.1:80", "... has no endpoints",
    "masquerade traffic for ... external destinations"); "" when the comment names no Service.

    An unnamed port is `ns/name` in current kube-proxy and `ns/name:` in old ones ("kube-system/heapster: cluster
    IP"); both give `ns/name`."""
    text = comment.strip()
    for form in _COMMENT_FORMS:
        m = form.match(text)
        if m:
            name = m.group("n")
            name = name[:-1] if name.endswith(":") else name
            return name if _PORT_NAME.match(name) else ""
    return ""


# ---- iptables-save ---------------------------------------------------------------------------------------------


@dataclass
class _IptRule:
    table: str
    chain: str
    position: int
    line: str
    args: list[str]


def _ipt_criteria(args: Sequence[str]) -> tuple[Criteria, str, str, str, dict[str, str]]:
    """Criteria, verdict, jump target, comment and target options (--to-destination ...) of one rule."""
    src: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()
    src_neg = dst_neg = dports_neg = False
    proto = verdict = target = comment = ""
    dports: tuple[tuple[int, int], ...] = ()
    opaque = 0
    options: dict[str, str] = {}
    neg = False
    in_target = False
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else ""
        if a == "!":
            neg = True
            i += 1
            continue
        if in_target:
            if a.startswith("--"):
                options[a[2:]] = nxt if nxt and not nxt.startswith("--") else ""
                i += 2 if options[a[2:]] else 1
            else:
                i += 1
            continue
        if a in ("-s", "--source"):
            src, src_neg = tuple(nxt.split(",")), neg
        elif a in ("-d", "--destination"):
            dst, dst_neg = tuple(nxt.split(",")), neg
        elif a in ("-p", "--protocol"):
            proto = "" if neg else nxt.lower()
            opaque += 1 if neg else 0
        elif a in ("--dport", "--destination-port", "--dports", "--destination-ports"):
            dports, dports_neg = _port_ranges(nxt), neg
        elif a == "--comment":
            comment = nxt
        elif a in ("-j", "--jump", "-g", "--goto"):
            builtin = nxt.upper() in ("ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "MARK",
                                      "LOG", "REDIRECT", "CONNMARK", "NOTRACK", "CT")
            verdict = nxt.upper() if builtin else ("JUMP" if a in ("-j", "--jump") else "GOTO")
            target = "" if builtin else nxt
            in_target = True
        elif a in ("-m", "--match"):
            if nxt not in ("comment", "tcp", "udp", "sctp", "multiport"):
                opaque += 1
        elif a in ("-i", "-o", "--in-interface", "--out-interface"):
            opaque += 1
        elif not a.startswith("-") or a in ("-A", "--append"):
            i += 1
            continue
        i += 2 if a not in ("!",) else 1
        neg = False
    crit = Criteria(src, src_neg, dst, dst_neg, proto, dports, dports_neg, opaque)
    return crit, verdict, target, comment, options


def _port_ranges(text: str) -> tuple[tuple[int, int], ...]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        if lo.isdigit():
            out.append((int(lo), int(hi) if hi.isdigit() else int(lo)))
    return tuple(out)


def parse_iptables_save(text: str) -> ServiceMap:
    """Services, endpoints, NodePorts and every rule from `iptables-save` / `ip6tables-save` output (any tables, nft
    or legacy), or from `iptables -S` (no `*table` headers: those rules get table "", the command does not say)."""
    raw: list[_IptRule] = []
    table = ""
    positions: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            args = _split(line)
            if len(args) < 2:
                continue
            key = (table, args[1])
            positions[key] = positions.get(key, 0) + 1
            raw.append(_IptRule(table, args[1], positions[key], line, args))
    smap = ServiceMap()
    ports: dict[tuple[str, str], ServicePort] = {}

    def port_for(name: str, proto: str) -> ServicePort:
        if (name, proto) not in ports:
            ports[(name, proto)] = ServicePort(name, proto)
        return ports[(name, proto)]

    sep_target: dict[str, tuple[str, int]] = {}
    sep_name: dict[str, str] = {}
    jumps: dict[str, list[str]] = {}  # KUBE-SVC-* -> its KUBE-SEP-* chains, in rule order
    local_jumps: dict[str, list[str]] = {}  # Service port name -> KUBE-SEP-* chains of its KUBE-SVL-*/KUBE-XLB-*
    # Rules without -p that still name a port (KUBE-FW-*, KUBE-SVC-*, KUBE-XLB-*): applied by name at the end.
    ranges: dict[str, list[str]] = {}
    no_local: set[str] = set()
    affinity: dict[str, int] = {}
    has_kube = False
    for r in raw:
        crit, verdict, target, comment, options = _ipt_criteria(r.args)
        smap.rules.append(Rule("iptables", r.table, r.chain, r.position, r.line, verdict, target, comment, crit))
        if r.chain.startswith("KUBE-"):
            has_kube = True
        name = service_name_from_comment(comment)
        proto = crit.proto
        if r.chain.startswith(("KUBE-SVC-", "KUBE-SVL-", "KUBE-XLB-")) and target.startswith("KUBE-SEP-"):
            jumps.setdefault(r.chain, []).append(target)
            if name:
                sep_name.setdefault(target, name)
                if r.chain.startswith(("KUBE-SVL-", "KUBE-XLB-")):
                    local_jumps.setdefault(name, []).append(target)
        if r.chain.startswith("KUBE-SEP-") and verdict == "DNAT":
            ip, _, port = options.get("to-destination", "").rpartition(":")
            if ip and port.isdigit():
                sep_target[r.chain] = (ip.strip("[]"), int(port))
            if name:
                sep_name[r.chain] = name
        elif not name:
            continue
        elif r.chain == "KUBE-SERVICES" and comment.endswith(" cluster IP") and crit.dst and crit.dports:
            p = port_for(name, proto)
            p.vip, p.port = _host(crit.dst[0]), crit.dports[0][0]
            if verdict in ("JUMP", "GOTO") and not target.startswith("KUBE-MARK-"):
                p.chain = target
        elif comment.endswith(" external IP") and crit.dst:
            _add(port_for(name, proto).external_ips, _host(crit.dst[0]))
        elif comment.endswith(" loadbalancer IP") and crit.dst:
            _add(port_for(name, proto).lb_ips, _host(crit.dst[0]))
        elif r.chain.startswith("KUBE-FW-") and crit.src and not crit.src_neg and target != "KUBE-MARK-DROP":
            # "-s 203.0.113.0/25 -j KUBE-EXT-...": a loadBalancerSourceRanges entry let through. No -p here: the
            # port is found by name once every rule is read.
            ranges.setdefault(name, []).extend(crit.src)
        elif r.chain == "KUBE-NODEPORTS" and crit.dports and proto and not comment.endswith(" health check node port"):
            port_for(name, proto).node_port = crit.dports[0][0]
        elif comment.endswith(" has no local endpoints") and (verdict in ("REJECT", "DROP") or
                                                               target == "KUBE-MARK-DROP"):
            # externalTrafficPolicy: Local and no endpoint on this node: external traffic is dropped, in-cluster
            # traffic to the ClusterIP is not.
            if crit.dports and not crit.dst and proto:
                port_for(name, proto).node_port = port_for(name, proto).node_port or crit.dports[0][0]
            no_local.add(name)
        elif comment.endswith(" has no endpoints") and verdict in ("REJECT", "DROP"):
            p = port_for(name, proto)
            p.no_endpoints = True
            if r.chain == "KUBE-EXTERNAL-SERVICES" and crit.dports:
                p.node_port = p.node_port or crit.dports[0][0]
            elif crit.dst and crit.dports:
                p.vip, p.port = _host(crit.dst[0]), crit.dports[0][0]
        if r.chain.startswith("KUBE-SVC-"):
            m = _AFFINITY.search(r.line)
            if m:
                affinity[name] = int(m.group(1))
    for p in ports.values():
        for net in ranges.get(p.name, []):
            _add(p.source_ranges, net)
        p.no_local_endpoints = p.name in no_local
        p.affinity_timeout = affinity.get(p.name, 0)
    # Endpoints in the order the Service chain picks them, then any SEP chain reached only by name (KUBE-SVL-*).
    seps_by_name: dict[str, list[str]] = {}
    for sep, sep_owner in sep_name.items():
        seps_by_name.setdefault(sep_owner, []).append(sep)
    for p in ports.values():
        seps = jumps.get(p.chain, []) + seps_by_name.get(p.name, [])
        for sep in seps:
            if sep in sep_target and not p.endpoint(*sep_target[sep]):
                p.endpoints.append(Endpoint(*sep_target[sep], sep))
        for sep in local_jumps.get(p.name, []):
            if sep in sep_target and not any(e.chain == sep for e in p.local_endpoints):
                p.local_endpoints.append(Endpoint(*sep_target[sep], sep))
    smap.ports = list(ports.values())
    if has_kube or smap.ports:
        smap.mode = "iptables"
        smap.modes = ("iptables",)
    return smap


# iptables-save's quoting: a word is a "..." string (with \" and \\ escaped inside) or a run of non-blanks.
_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_ESCAPE = re.compile(r"\\(.)")


def _split(line: str) -> list[str]:
    """The words of one rule line, as shlex.split gives them on iptables-save's output (the 416 rule lines of the
    fixtures: identical), without shlex's cost (2.5 of 3.5 s profiled on 15,054 rules)."""
    return [_ESCAPE.sub(r"\1", m.group(1)) if m.group(1) is not None else m.group(2) for m in _WORD.finditer(line)]


def _add(values: list[str], value: str) -> None:
    if value not in values:
        values.append(value)


def iptables_variant(text: str) -> str:
    """"nf_tables" or "legacy" from iptables-save's header comment; "" when it does not say."""
    m = re.search(r"# Generated by ip6?tables-save v[\d.]+ \((\w+)\)", text)
    return m.group(1) if m else ""


# ---- nft -j list ruleset ---------------------------------------------------------------------------------------


def parse_nft_json(data: str | dict[str, Any], skip_tables: Iterable[str] = ()) -> ServiceMap:
    """Services from table `kube-proxy` and every rule of every table (minus `skip_tables`, "family name" strings:
    the iptables-nft tables whose rules iptables-save already gave)."""
    doc = json.loads(data) if isinstance(data, str) else data
    objs = [o for o in doc.get("nftables", []) if isinstance(o, dict)]
    skip = set(skip_tables)
    sets: dict[tuple[str, str, str], list[Any]] = {}
    set_meta: dict[tuple[str, str, str], dict[str, Any]] = {}
    chains: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    maps: dict[tuple[str, str, str], dict[str, Any]] = {}
    has_table = False
    for o in objs:
        kind, body = next(iter(o.items()))
        if not isinstance(body, dict):
            continue
        if kind == "table" and body.get("name") == NFT_TABLE:
            has_table = True
        key = (body.get("family", ""), body.get("table", ""), body.get("name", ""))
        if kind == "set":
            sets[key] = body.get("elem", [])
            set_meta[key] = body
        elif kind == "map":
            maps[key] = body
            sets[key] = [e[0] if isinstance(e, list) and e else e for e in body.get("elem", [])]
        elif kind == "rule":
            chains.setdefault((body.get("family", ""), body.get("table", ""), body.get("chain", "")), []).append(body)
    smap = ServiceMap()
    # By family too: a dual-stack Service port is one port in `ip kube-proxy` and one in `ip6 kube-proxy`, each
    # with its own ClusterIP and endpoints (as ip6tables-save and iptables-save give two).
    ports: dict[tuple[str, str, str], ServicePort] = {}
    for (family, table, chain), rules in chains.items():
        tname = f"{family} {table}"
        if tname in skip:
            continue
        for rule in rules:
            crit, verdict, target = _nft_criteria(rule.get("expr", []), sets, family, table)
            text = _nft_text(rule.get("expr", []))
            if rule.get("comment"):
                text += f' comment "{rule["comment"]}"'
            smap.rules.append(Rule("nftables", tname, chain, int(rule.get("handle", 0)), text, verdict, target,
                                   rule.get("comment", ""), crit))
    for family in ("ip", "ip6"):
        def port_for(name: str, proto: str, family: str = family) -> ServicePort:
            return ports.setdefault((family, name, proto), ServicePort(name, proto))

        _nft_services(family, sets, set_meta, maps, chains, port_for, smap)
    smap.ports = list(ports.values())
    if has_table:
        smap.mode = "nftables"
        smap.modes = ("nftables",)
    return smap


def _nft_services(family: str, sets: dict[tuple[str, str, str], list[Any]],
                  set_meta: dict[tuple[str, str, str], dict[str, Any]],
                  maps: dict[tuple[str, str, str], dict[str, Any]],
                  chains: dict[tuple[str, str, str], list[dict[str, Any]]],
                  port_for: Callable[[str, str], ServicePort], smap: ServiceMap) -> None:
    """The Service ports of table `<family> kube-proxy` (pkg/proxy/nftables/proxier.go).

    `service-ips` holds the ClusterIP (goto service-*) and the ExternalIPs and LoadBalancer IPs (goto external-*)
    of each port; `no-endpoint-services` the same addresses when there is nothing to send them to. Which address is
    the ClusterIP is decided by the `cluster-ips` set (or the service CIDR of the "unallocated ClusterIPs" rule), not
    by the order nft lists elements in (hash order)."""
    t = (family, NFT_TABLE)
    node_ips = sets.get((*t, "nodeport-ips"), [])
    smap.node_ips += [str(v) for v in (_nft_scalar(ip) for ip in node_ips) if isinstance(v, str)]
    cluster_set = sets.get((*t, "cluster-ips"))
    cluster_ips = {str(_nft_scalar(v)) for v in cluster_set or []}
    service_cidrs = [net for r in chains.get((*t, "cluster-ips-check"), [])
                     if any(isinstance(e, dict) and "drop" in e for e in r.get("expr", []))
                     for net in _nft_criteria(r.get("expr", []), sets, family, NFT_TABLE)[0].dst]

    def is_cluster_ip(ip: str, p: ServicePort) -> bool:
        if cluster_set is not None:
            return ip in cluster_ips
        return ip == p.vip or (not p.vip and _in_any(ip, service_cidrs))

    externals: list[tuple[ServicePort, str]] = []
    for key, verdict_obj, comment in _map_elems(maps.get((*t, "service-ips"))):
        if len(key) != 3:
            continue
        chain = _goto_target(verdict_obj)
        # The chain name carries ns/name/proto/port as kube-proxy built it; element comments are free text.
        name = _name_from_chain(chain) or comment
        p = port_for(name, str(key[1]))
        if chain.startswith("service-"):
            p.vip, p.port, p.chain = str(key[0]), int(key[2]), chain
            p.endpoints = _nft_endpoints(chains, family, chain)
        else:  # external-* (or a local-* / service-* chain reached through it): an ExternalIP or LoadBalancer IP
            p.port = p.port or int(key[2])
            externals.append((p, str(key[0])))
            _nft_external(chains, family, chain, p)
    for key, verdict_obj, comment in _map_elems(maps.get((*t, "service-nodeports"))):
        if len(key) != 2:
            continue
        chain = _goto_target(verdict_obj)
        p = port_for(_name_from_chain(chain) or comment, str(key[0]))
        p.node_port = int(key[1])
        _nft_external(chains, family, chain, p)
    lb: set[str] = set()
    for key, verdict_obj, comment in _map_elems(maps.get((*t, "firewall-ips"))):
        if len(key) != 3:
            continue
        chain = _goto_target(verdict_obj)
        p = port_for(_name_from_chain(chain) or comment, str(key[1]))
        # Only LoadBalancer IPs have source ranges: this one is an LB IP, not an ExternalIP.
        lb.add(str(key[0]))
        _add(p.lb_ips, str(key[0]))
        for rule in chains.get((*t, chain), []):
            crit, verdict, _ = _nft_criteria(rule.get("expr", []), sets, family, NFT_TABLE)
            if verdict == "DROP" and crit.src and crit.src_neg:
                for net in crit.src:
                    _add(p.source_ranges, net)
    for mname in ("no-endpoint-services", "no-endpoint-nodeports"):
        for key, verdict_obj, comment in _map_elems(maps.get((*t, mname))):
            proto = str(key[-2]) if len(key) >= 2 else ""
            p = port_for(comment, proto)
            # drop: externalTrafficPolicy Local with no endpoint on this node (the ClusterIP still has endpoints);
            # goto reject-chain: no endpoints at all.
            dropped = verdict_obj == {"drop": None}
            if len(key) == 3:
                ip = str(key[0])
                p.port = p.port or int(key[2])
                if is_cluster_ip(ip, p):
                    p.vip = ip
                    p.no_endpoints = True
                else:
                    externals.append((p, ip))
                    p.no_local_endpoints |= dropped
                    p.no_endpoints |= not dropped
            elif len(key) == 2:
                p.node_port = int(key[-1])
                p.no_local_endpoints |= dropped
                p.no_endpoints |= not dropped
            smap.rules.append(_no_endpoint_rule(family, mname, key, verdict_obj, comment, chains))
    for p, ip in externals:
        if ip not in lb:
            _add(p.external_ips, ip)
    for (fam, table, name), body in set_meta.items():
        m = _NFT_CHAIN.match(name.replace("affinity-", "endpoint-", 1)) if name.startswith("affinity-") else None
        if fam == family and table == NFT_TABLE and m and body.get("timeout"):
            p = port_for(f"{m.group('ns')}/{m.group('name')}" + (f":{m.group('port')}" if m.group("port") else ""),
                         m.group("proto"))
            p.affinity_timeout = int(body["timeout"])


def _nft_external(chains: dict[tuple[str, str, str], list[dict[str, Any]]], family: str, chain: str,
                  p: ServicePort) -> None:
    """Local endpoints of an external-* chain that sends external traffic on to a local-* chain (Local policy)."""
    for rule in chains.get((family, NFT_TABLE, chain), []):
        for e in rule.get("expr", []):
            target = _goto_target(e) if isinstance(e, dict) else ""
            if target.startswith("local-"):
                for ep in _nft_endpoints(chains, family, target):
                    if ep not in p.local_endpoints:
                        p.local_endpoints.append(ep)


def _map_elems(m: dict[str, Any] | None) -> list[tuple[list[Any], Any, str]]:
    """(key parts, verdict, comment) of each element of a verdict map."""
    out = []
    for e in (m or {}).get("elem", []):
        if not isinstance(e, list) or len(e) != 2:
            continue
        key, verdict = e
        comment = ""
        if isinstance(key, dict) and "elem" in key:
            comment = key["elem"].get("comment", "")
            key = key["elem"].get("val")
        parts = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
        out.append((parts, verdict, comment))
    return out


def _goto_target(verdict: Any) -> str:
    if isinstance(verdict, dict):
        for k in ("goto", "jump"):
            if k in verdict:
                return str(verdict[k].get("target", ""))
    return ""


def _name_from_chain(chain: str) -> str:
    m = _NFT_CHAIN.match(chain)
    if not m:
        return ""
    return f"{m.group('ns')}/{m.group('name')}" + (f":{m.group('port')}" if m.group("port") else "")


def _nft_endpoints(chains: dict[tuple[str, str, str], list[dict[str, Any]]], family: str,
                   service_chain: str) -> list[Endpoint]:
    """Endpoint chains the service chain's `numgen` vmap picks, each with the address its `dnat` goes to."""
    out: list[Endpoint] = []
    for rule in chains.get((family, NFT_TABLE, service_chain), []):
        for expr in rule.get("expr", []):
            vmap = expr.get("vmap") if isinstance(expr, dict) else None
            if not vmap:
                continue
            for entry in vmap.get("data", {}).get("set", []):
                target = _goto_target(entry[1]) if isinstance(entry, list) and len(entry) == 2 else ""
                for erule in chains.get((family, NFT_TABLE, target), []):
                    for e in erule.get("expr", []):
                        if isinstance(e, dict) and "dnat" in e and e["dnat"].get("port") is not None:
                            out.append(Endpoint(str(e["dnat"]["addr"]), int(e["dnat"]["port"]), target))
    return out


def _no_endpoint_rule(family: str, mapname: str, key: list[Any], verdict_obj: Any, comment: str,
                      chains: dict[tuple[str, str, str], list[dict[str, Any]]]) -> Rule:
    """A `no-endpoint-*` vmap element as a rule: the check chain's lookup sends the packet to reject-chain (or drop)."""
    target = _goto_target(verdict_obj)
    verdict = "DROP" if verdict_obj == {"drop": None} else "REJECT"
    handle = 0
    for rule in chains.get((family, NFT_TABLE, target), []):
        exprs = rule.get("expr", [])
        if any(isinstance(e, dict) and "drop" in e for e in exprs):
            verdict, handle = "DROP", int(rule.get("handle", 0))
        elif any(isinstance(e, dict) and "reject" in e for e in exprs):
            verdict, handle = "REJECT", int(rule.get("handle", 0))
    check = "service-endpoints-check" if mapname == "no-endpoint-services" else "nodeport-endpoints-check"
    elem = " . ".join(str(k) for k in key)
    verdict_text = f"goto {target}" if target else verdict.lower()
    text = (f'{verdict.lower()} (from {check}: vmap @{mapname} element {{ {elem} comment "{comment}" : '
            f"{verdict_text} }})")
    proto = str(key[-2]) if len(key) >= 2 else ""
    dst = (str(key[0]),) if len(key) == 3 else ()
    crit = Criteria(dst=dst, proto=proto, dports=((int(key[-1]), int(key[-1])),))
    return Rule("nftables", f"{family} {NFT_TABLE}", target or check, handle, text, verdict, target, comment, crit)


def _nft_criteria(exprs: list[Any], sets: dict[tuple[str, str, str], list[Any]], family: str,
                  table: str) -> tuple[Criteria, str, str]:
    src: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()
    src_neg = dst_neg = dports_neg = False
    proto = verdict = target = ""
    dports: tuple[tuple[int, int], ...] = ()
    opaque = 0
    for e in exprs:
        if not isinstance(e, dict):
            continue
        kind, body = next(iter(e.items()))
        if kind == "match" and isinstance(body, dict):
            left, right, op = body.get("left"), body.get("right"), body.get("op", "==")
            neg = op == "!="
            field_ = _nft_field(left)
            values = _nft_values(right, sets, family, table)
            if field_ in ("saddr", "daddr") and values is not None and op in ("==", "!=", "in"):
                nets = tuple(str(v) for v in values)
                if field_ == "saddr":
                    src, src_neg = nets, neg
                else:
                    dst, dst_neg = nets, neg
            elif field_ == "l4proto" and values is not None and len(values) == 1 and not neg:
                proto = str(values[0])
            elif field_ == "dport" and values is not None:
                dports, dports_neg = _nft_ports(values), neg
                if isinstance(left, dict) and left.get("payload", {}).get("protocol") in PROTOS:
                    proto = left["payload"]["protocol"]
            else:
                opaque += 1
        elif kind in ("accept", "drop", "return", "continue"):
            verdict = kind.upper()
        elif kind == "reject":
            verdict = "REJECT"
        elif kind in ("jump", "goto") and isinstance(body, dict):
            verdict, target = kind.upper(), str(body.get("target", ""))
        elif kind in ("dnat", "snat", "masquerade", "redirect"):
            verdict = kind.upper()
        elif kind == "vmap":
            verdict = verdict or "VMAP"
        elif kind not in ("counter", "log", "mangle", "xt"):
            opaque += 1
    return Criteria(src, src_neg, dst, dst_neg, proto, dports, dports_neg, opaque), verdict, target


def _nft_field(left: Any) -> str:
    if isinstance(left, dict):
        if "payload" in left:
            return str(left["payload"].get("field", ""))
        if "meta" in left:
            return str(left["meta"].get("key", ""))
    return ""


def _nft_values(right: Any, sets: dict[tuple[str, str, str], list[Any]], family: str,
                table: str) -> list[Any] | None:
    """Literal values of a match's right side: a value, a prefix, an anonymous set or a named set's elements."""
    if isinstance(right, (str, int)):
        if isinstance(right, str) and right.startswith("@"):
            elems = sets.get((family, table, right[1:]))
            return None if elems is None else [_nft_scalar(v) for v in elems]
        return [right]
    if isinstance(right, dict):
        if "prefix" in right:
            return [f"{right['prefix']['addr']}/{right['prefix']['len']}"]
        if "set" in right:
            return [_nft_scalar(v) for v in right["set"]]
        if "range" in right:
            return [tuple(right["range"])]
    return None


def _nft_scalar(v: Any) -> Any:
    if isinstance(v, dict):
        if "prefix" in v:
            return f"{v['prefix']['addr']}/{v['prefix']['len']}"
        if "range" in v:
            return tuple(v["range"])
        if "elem" in v:
            return _nft_scalar(v["elem"].get("val"))
    return v


def _nft_ports(values: list[Any]) -> tuple[tuple[int, int], ...]:
    out = []
    for v in values:
        if isinstance(v, tuple) and len(v) == 2:
            out.append((int(v[0]), int(v[1])))
        elif isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
            out.append((int(v), int(v)))
    return tuple(out)


def _nft_text(exprs: list[Any]) -> str:
    """nft's own syntax for the expressions kube-proxy uses; anything else as compact JSON."""
    return " ".join(_nft_expr_text(e) for e in exprs)


def _nft_operand(x: Any) -> str:
    if isinstance(x, dict):
        if "payload" in x:
            p = x["payload"]
            return f"{p.get('protocol', 'th')} {p.get('field', '')}".strip()
        if "meta" in x:
            return f"meta {x['meta'].get('key', '')}"
        if "ct" in x:
            return f"ct {x['ct'].get('key', '')}"
        if "concat" in x:
            return " . ".join(_nft_operand(c) for c in x["concat"])
        if "prefix" in x:
            return f"{x['prefix']['addr']}/{x['prefix']['len']}"
        if "range" in x:
            return f"{x['range'][0]}-{x['range'][1]}"
        if "set" in x:
            return "{ " + ", ".join(_nft_operand(v) for v in x["set"]) + " }"
        if "numgen" in x:
            n = x["numgen"]
            return f"numgen {n.get('mode', 'random')} mod {n.get('mod', 0)}"
        if "&" in x or "|" in x or "^" in x:
            op = next(iter(x))
            a, b = x[op]
            return f"{_nft_operand(a)} {op} {_nft_operand(b)}"
        if "elem" in x:
            return _nft_operand(x["elem"].get("val"))
        return json.dumps(x, separators=(",", ":"))
    if isinstance(x, list):
        if len(x) == 2:
            return f"{_nft_operand(x[0])} : {_nft_expr_text(x[1])}"
        return "{ " + ", ".join(_nft_operand(v) for v in x) + " }"
    return str(x)


def _nft_expr_text(e: Any) -> str:
    if not isinstance(e, dict):
        return str(e)
    kind, body = next(iter(e.items()))
    if kind == "match":
        op = body.get("op", "==")
        sep = " " if op in ("==", "in") else f" {op} "
        return f"{_nft_operand(body.get('left'))}{sep}{_nft_operand(body.get('right'))}"
    if kind in ("accept", "drop", "return", "continue"):
        return kind
    if kind in ("jump", "goto"):
        return f"{kind} {body.get('target', '')}"
    if kind == "reject":
        return "reject" if not body else f"reject with {body.get('type', '')} {body.get('expr', '')}".rstrip()
    if kind in ("dnat", "snat"):
        port = f":{body['port']}" if body.get("port") is not None else ""
        return f"{kind} to {body.get('addr', '')}{port}"
    if kind == "masquerade":
        flags = body.get("flags") if isinstance(body, dict) else None
        return "masquerade" + (f" {flags if isinstance(flags, str) else ','.join(flags)}" if flags else "")
    if kind == "vmap":
        return f"{_nft_operand(body.get('key'))} vmap {_nft_operand(body.get('data'))}"
    if kind == "mangle":
        return f"{_nft_operand(body.get('key'))} set {_nft_operand(body.get('value'))}"
    if kind == "counter":
        return f"counter packets {body.get('packets', 0)} bytes {body.get('bytes', 0)}" if body else "counter"
    if kind == "xt":
        return f"xt {body.get('type', '')} {body.get('name', '')}".strip()
    return json.dumps(e, separators=(",", ":"))


# ---- ipvsadm -Ln -----------------------------------------------------------------------------------------------

_IPVS_VS = re.compile(r"^(?P<proto>TCP|UDP|SCTP)\s+(?P<addr>\S+):(?P<port>\d+)\s+(?P<sched>\S+)")
_IPVS_RS = re.compile(r"^\s+->\s+(?P<addr>\S+):(?P<port>\d+)\s+(?P<fwd>\w+)\s+(?P<weight>\d+)")


def parse_ipvsadm(text: str) -> ServiceMap:
    """Virtual servers and real servers from `ipvsadm -Ln`. IPVS keeps no Service names: `name` stays ""."""
    smap = ServiceMap()
    current: ServicePort | None = None
    for line in text.splitlines():
        vs = _IPVS_VS.match(line)
        if vs:
            current = ServicePort("", vs.group("proto").lower(), vip=vs.group("addr").strip("[]"),
                                  port=int(vs.group("port")))
            smap.ports.append(current)
            continue
        rs = _IPVS_RS.match(line)
        if rs and current is not None and rs.group("addr") != "RemoteAddress":
            current.endpoints.append(Endpoint(rs.group("addr").strip("[]"), int(rs.group("port"))))
    for p in smap.ports:
        p.no_endpoints = not p.endpoints
    if smap.ports:
        smap.mode = "ipvs"
        smap.modes = ("ipvs",)
    return smap


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


def _host(net: str) -> str:
    return net[:-3] if net.endswith("/32") else net[:-4] if net.endswith("/128") else net


def _in_any(addr: str, nets: Iterable[str]) -> bool:
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


def _same_table(rule_table: str, asked: str) -> bool:
    return rule_table == asked or rule_table.split(" ")[-1] == asked


# ---- collection (runs commands) --------------------------------------------------------------------------------

# argv -> stdout, or None when the program is not installed. Raises PodtraceError when it fails.
Runner = Callable[[Sequence[str]], Optional[str]]


def command_runner(netns: str | None = None, timeout: float = 60) -> Runner:
    """Run commands on this host, inside `ip netns exec NETNS` when a netns is given."""

    def run(argv: Sequence[str]) -> str | None:
        if shutil.which(argv[0]) is None:
            return None
        full = (["ip", "netns", "exec", netns] if netns else []) + list(argv)
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            return None
        except subprocess.TimeoutExpired as err:
            raise PodtraceError(f"`{shlex.join(full)}` did not finish in {timeout:g} s",
                                "is the node overloaded?") from err
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()
            raise PodtraceError(f"`{shlex.join(full)}` failed: {detail[-1]}",
                                "reading kube-proxy's rules needs root (CAP_NET_ADMIN)" if os.geteuid() else "")
        return proc.stdout

    return run


def collect(netns: str | None = None, runner: Runner | None = None) -> ServiceMap:
    """Read kube-proxy's rules from the node (or the named netns) in whichever modes are present.

    Runs `iptables-save` (and the other iptables variant's save, when installed), `ip6tables-save`,
    `nft -j list ruleset` and, when
    the IPVS module is loaded, `ipvsadm -Ln`. Raises PodtraceError when the netns does not exist, when neither
    iptables-save nor nft is installed, or when one of them fails.
    """
    if netns is not None and not os.path.exists(f"/run/netns/{netns}"):
        raise PodtraceError(f"network namespace {netns} does not exist", "see `ip netns list`")
    run = runner or command_runner(netns)
    maps: list[ServiceMap] = []
    seen_tables: list[str] = []
    found_any = False
    text = run(["iptables-save"])
    if text is not None:
        found_any = True
        variant = iptables_variant(text)
        other = {"nf_tables": "iptables-legacy-save", "legacy": "iptables-nft-save"}.get(variant)
        texts = [text]
        if other:
            extra = _optional(run, [other])
            if extra:
                texts.append(extra)
        for t in texts:
            maps.append(parse_iptables_save(t))
        if variant == "nf_tables":
            seen_tables = [f"ip {t}" for t in re.findall(r"^\*(\w+)", text, re.M)]
    # IPv6 Services (single-stack v6 and the v6 half of dual-stack) live in ip6tables.
    text6 = _optional(run, ["ip6tables-save"])
    if text6 and re.search(r"^-A ", text6, re.M):
        maps.append(parse_iptables_save(text6))
        if iptables_variant(text6) == "nf_tables":
            seen_tables += [f"ip6 {t}" for t in re.findall(r"^\*(\w+)", text6, re.M)]
    nft = run(["nft", "-j", "list", "ruleset"])
    if nft is not None:
        found_any = True
        if nft.strip():
            try:
                maps.append(parse_nft_json(nft, skip_tables=seen_tables))
            except (ValueError, KeyError, TypeError) as err:
                raise PodtraceError(f"cannot read `nft -j list ruleset` output: {err}",
                                    "is nft older than 0.9.0 (no JSON)?") from err
    if not found_any:
        raise PodtraceError("neither iptables-save nor nft is installed",
                            "install iptables or nftables to read kube-proxy's rules")
    if os.path.exists("/proc/net/ip_vs"):  # module loaded; never make ipvsadm load it
        ipvs = _optional(run, ["ipvsadm", "-Ln"])
        if ipvs:
            maps.append(parse_ipvsadm(ipvs))
    return merge(*maps)


def _optional(run: Runner, argv: Sequence[str]) -> str | None:
    """A command whose failure only means "nothing there" (the other iptables variant, ipvsadm)."""
    try:
        return run(argv)
    except PodtraceError:
        return None
