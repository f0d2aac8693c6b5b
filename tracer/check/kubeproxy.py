"""kube-proxy: which mode is in effect (iptables, nftables, IPVS), judged from the node's own rules and tables.

iptables mode: `KUBE-SERVICES` -> `KUBE-SVC-<hash>` -> `KUBE-SEP-<hash>`, one rule per Service port walked in
order by each new connection. nftables mode: table `ip kube-proxy` with the `service-ips` verdict map. IPVS mode:
the `kube-ipvs0` dummy, one IPVS virtual server per Service port, iptables/ipset only for masquerade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracer.check.model import Finding, NodeState
from tracer.node.kubeproxy import iptables as iptables_reader
from tracer.node.kubeproxy import nftables as nft_reader

AREA = "kube-proxy"
MANY_SERVICES = 1000  # Service ports in iptables mode where first-packet latency and sync time become visible
IPVS_MODULES = ("ip_vs", "nf_conntrack")
SCHEDULER_MODULES = {"rr": "ip_vs_rr", "wrr": "ip_vs_wrr", "sh": "ip_vs_sh", "lc": "ip_vs_lc", "wlc": "ip_vs_wlc",
                     "sed": "ip_vs_sed", "nq": "ip_vs_nq", "mh": "ip_vs_mh"}



@dataclass
class IptablesRules:
    rules: dict[str, int] = field(default_factory=dict)  # table -> rule count
    svc_chains: set[str] = field(default_factory=set)
    sep_chains: set[str] = field(default_factory=set)
    service_ports: set[str] = field(default_factory=set)  # "ns/name:port" ("ns/name" unnamed), tracer's reader
    no_endpoints: set[str] = field(default_factory=set)
    kube_services_rules: int = 0
    ipset_cluster_ip: bool = False  # IPVS mode's `--match-set KUBE-CLUSTER-IP`
    ipvs_masq_comment: bool = False
    portals: bool = False  # userspace mode's KUBE-PORTALS-* chains

    @property
    def total(self) -> int:
        return sum(self.rules.values())

    @property
    def kube_chains(self) -> bool:
        return bool(self.svc_chains or self.kube_services_rules or self.ipset_cluster_ip or self.portals)


def parse_iptables_save(text: str) -> IptablesRules:
    """Rule counts and mode markers; the Service ports come from the tracer's own reader (tracer.node.kubeproxy), so
    check and trace count the same Services."""
    out = IptablesRules()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            out.rules.setdefault(table, 0)
        elif line.startswith(":") or line.startswith("-N "):
            chain = line[1:].split()[0] if line.startswith(":") else line.split()[1]
            if chain.startswith("KUBE-SVC-"):
                out.svc_chains.add(chain)
            elif chain.startswith("KUBE-SEP-"):
                out.sep_chains.add(chain)
            elif chain.startswith("KUBE-PORTALS-"):
                out.portals = True
        elif line.startswith("-A "):
            out.rules[table] = out.rules.get(table, 0) + 1
            chain = line.split(None, 2)[1]
            if "--match-set KUBE-CLUSTER-IP" in line:
                out.ipset_cluster_ip = True
            if "cluster ip + port for masquerade purpose" in line:
                out.ipvs_masq_comment = True
            if chain == "KUBE-SERVICES":
                out.kube_services_rules += 1
    for port in iptables_reader.parse_iptables_save(text).ports:
        (out.no_endpoints if port.no_endpoints else out.service_ports).add(port.name)
    return out


@dataclass
class NftRules:
    table: bool = False
    chains: int = 0
    rules: int = 0
    service_ports: set[str] = field(default_factory=set)
    no_endpoints: set[str] = field(default_factory=set)


def parse_nft(ruleset: dict[str, Any]) -> NftRules:
    out = NftRules()
    for item in ruleset.get("nftables", []):
        for kind, body in item.items():
            if not isinstance(body, dict) or body.get("table", body.get("name")) != "kube-proxy":
                continue
            if kind == "table":
                out.table = True
            elif kind == "chain":
                out.chains += 1
            elif kind == "rule":
                out.rules += 1
    for port in nft_reader.parse_nft_json(ruleset).ports:
        (out.no_endpoints if port.no_endpoints else out.service_ports).add(port.name)
    return out


@dataclass
class IpvsTable:
    virtual: list[tuple[str, str, str]] = field(default_factory=list)  # (proto, vip:port, scheduler)
    real: int = 0


def parse_ipvsadm(text: str) -> IpvsTable:
    out = IpvsTable()
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("TCP", "UDP", "SCTP") and len(parts) >= 3:
            out.virtual.append((parts[0], parts[1], parts[2]))
        elif parts and parts[0] == "->" and len(parts) >= 2 and parts[1] != "RemoteAddress:Port":
            out.real += 1
    return out


def _services(ports: set[str]) -> int:
    return len({p.split(":", 1)[0] for p in ports})


def _has_kube_ipvs0(state: NodeState) -> bool:
    return any(link.get("ifname") == "kube-ipvs0" for link in state.links)


def mode(state: NodeState) -> tuple[str, IptablesRules | None, NftRules | None, IpvsTable | None]:
    """'iptables', 'nftables', 'ipvs', or 'none', with what each parser found."""
    saves = [t for t in (state.iptables_save, state.ip6tables_save) if t is not None]
    # One count over both families: a dual-stack Service port is one port with a v4 and a v6 ClusterIP.
    ipt = parse_iptables_save("\n".join(saves)) if saves else None
    nft = parse_nft(state.nft_ruleset) if state.nft_ruleset is not None else None
    ipvs = parse_ipvsadm(state.ipvsadm) if state.ipvsadm is not None else None
    if _has_kube_ipvs0(state) or (ipvs and ipvs.virtual) or (ipt and (ipt.ipset_cluster_ip or ipt.ipvs_masq_comment)):
        return "ipvs", ipt, nft, ipvs
    if nft and nft.table:
        return "nftables", ipt, nft, ipvs
    if ipt and (ipt.svc_chains or ipt.kube_services_rules):
        return "iptables", ipt, nft, ipvs
    if ipt and ipt.portals:
        return "userspace", ipt, nft, ipvs
    return "none", ipt, nft, ipvs


def has_kube_proxy(state: NodeState) -> bool:
    return mode(state)[0] != "none"


def _ipt_finding(ipt: IptablesRules) -> Finding:
    ports = len(ipt.service_ports | ipt.no_endpoints)
    value = (f"iptables: {_services(ipt.service_ports | ipt.no_endpoints)} Services, {ports} Service ports, "
             f"{len(ipt.sep_chains)} endpoints, {ipt.total} rules")
    if ports >= MANY_SERVICES:
        return Finding("warn", "mode", value, area=AREA,
                       why=f"iptables mode walks KUBE-SERVICES linearly: a new connection may test ~{ports} rules, "
                           f"and each sync rewrites {ipt.total} rules (seconds); established flows are unaffected",
                       fix="switch kube-proxy to nftables (or ipvs) mode: kubectl -n kube-system edit configmap "
                           "kube-proxy  # mode: nftables")
    return Finding("ok", "mode", value, area=AREA,
                   why=f"iptables mode is fine below ~{MANY_SERVICES} Service ports")


def _ipvs_findings(state: NodeState, ipt: IptablesRules | None, ipvs: IpvsTable | None) -> list[Finding]:
    out: list[Finding] = []
    if ipvs is None:
        out.append(Finding("fail", "mode", "ipvs: kube-ipvs0 or IPVS rules present, but IPVS is not loaded",
                           area=AREA, why="without the ip_vs module no virtual server exists: Service VIPs hang",
                           fix="modprobe ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh nf_conntrack"))
    else:
        value = f"ipvs: {len(ipvs.virtual)} virtual servers, {ipvs.real} real servers"
        if ipt is not None:
            value += f", {ipt.total} iptables rules"
        out.append(Finding("ok", "mode", value, area=AREA, why="IPVS lookups are hash tables: flat in Service count"))
    schedulers = sorted({s for _, _, s in (ipvs.virtual if ipvs else [])} or {"rr"})
    needed = list(IPVS_MODULES) + [SCHEDULER_MODULES.get(s, f"ip_vs_{s}") for s in schedulers]
    missing = [m for m in needed if m not in state.modules]
    if missing:
        out.append(Finding("fail", "ipvs modules", "missing: " + ", ".join(missing), area=AREA,
                           why="kube-proxy's IPVS mode needs these; schedulers in use: " + ", ".join(schedulers),
                           fix="modprobe " + " ".join(missing)))
    else:
        out.append(Finding("ok", "ipvs modules", ", ".join(needed), area=AREA))
    conf = state.ipv4_conf.get("all", {})
    ignore, announce = conf.get("arp_ignore", "?"), conf.get("arp_announce", "?")
    value = f"arp_ignore={ignore} arp_announce={announce}"
    if ignore != "1" or announce != "2":
        out.append(Finding("warn", "strictARP", value, area=AREA,
                           why="kube-ipvs0 holds every VIP: without strictARP the node answers ARP for them, which "
                               "breaks MetalLB-style load balancers",
                           fix="sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2  "
                               "# or strictARP: true in kube-proxy's config"))
    else:
        out.append(Finding("ok", "strictARP", value, area=AREA))
    return out


def check(state: NodeState) -> list[Finding]:
    found, ipt, nft, ipvs = mode(state)
    out: list[Finding] = []
    unreadable = [f"{what}: {state.errors[source].rsplit(': ', 1)[-1]}"
                  for source, what in (("iptables", "iptables-save"), ("nft", "nft")) if source in state.errors]
    if unreadable:
        out.append(Finding("warn", "rules readable", "; ".join(unreadable), area=AREA,
                           why="without the rules the proxy mode and Service counts may be wrong",
                           fix="run podtrace check as root, with iptables and nft installed"))
        if found == "none":
            return out  # no rules seen is not "no kube-proxy" when they could not be read
    if found == "iptables" and ipt is not None:
        out.append(_ipt_finding(ipt))
    elif found == "nftables" and nft is not None:
        ports = nft.service_ports | nft.no_endpoints
        out.append(Finding("ok", "mode", f"nftables: {_services(ports)} Services, {len(ports)} Service ports, "
                           f"{nft.chains} chains, {nft.rules} rules", area=AREA,
                           why="nftables mode uses verdict maps: lookup cost flat in Service count"))
    elif found == "ipvs":
        out += _ipvs_findings(state, ipt, ipvs)
    elif found == "userspace":
        out.append(Finding("warn", "mode", "userspace (KUBE-PORTALS-* chains)", area=AREA,
                           why="the userspace proxy copies every packet through kube-proxy; removed in Kubernetes "
                               "1.26, so these chains are stale or the node is very old",
                           fix="iptables-save | grep -c KUBE-PORTALS  # then upgrade kube-proxy / flush stale rules"))
    else:
        out.append(Finding("ok", "mode", "none: no kube-proxy rules", area=AREA,
                           why="not a Kubernetes node, kube-proxy not running, or replaced (e.g. Cilium eBPF)"))
    # Rules of a second mode left behind by a mode switch: kube-proxy only cleans up its own mode on start.
    if found in ("nftables", "ipvs") and ipt is not None and ipt.svc_chains:
        out.append(Finding("warn", "stale rules", f"{len(ipt.svc_chains)} KUBE-SVC-* iptables chains in {found} mode",
                           area=AREA, why="leftovers of iptables mode: they may still DNAT to old endpoints first",
                           fix="kube-proxy --cleanup  # then restart kube-proxy"))
    if found in ("iptables", "ipvs") and nft is not None and nft.table:
        out.append(Finding("warn", "stale rules", f"nft table kube-proxy ({nft.chains} chains) in {found} mode",
                           area=AREA, why="leftovers of nftables mode: they run before iptables' nat chains",
                           fix="nft delete table ip kube-proxy; nft delete table ip6 kube-proxy"))
    return out
