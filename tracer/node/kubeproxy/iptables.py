"""kube-proxy's iptables mode read from `iptables-save` / `ip6tables-save` text (iptables-nft and iptables-legacy
print the same format), or from `iptables -S` (no table headers). Names come from the rule comments kube-proxy
writes, current and old (`"default/web:http cluster IP"`, `"kube-system/heapster: cluster IP"` for an unnamed port in
kube-proxy 1.2, `"default/web:http -> 10.244.0.3:8080"`, `"... has no endpoints"`, `"... has no local endpoints"`);
endpoints from the DNAT in each KUBE-SEP-* chain, local ones from KUBE-SVL-* / KUBE-XLB-* (pkg/proxy/iptables)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tracer.node.kubeproxy.model import Criteria, Endpoint, Rule, ServiceMap, ServicePort, add_once
from tracer.node.kubeproxy.names import service_name_from_comment

_AFFINITY = re.compile(r"--rcheck --seconds (\d+)")


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
    # `iptables -S; iptables -t nat -S` pasted together: each table's dump opens with its -P lines, so a -P after
    # rules starts another table (unnamed), whose chains (KUBE-SERVICES is in filter and nat) count from 1 again.
    section, in_rules = 0, False
    positions: dict[tuple[str, int, str], int] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table, in_rules = line[1:], False
        elif line.startswith("-P ") and not table:
            if in_rules:
                section, in_rules = section + 1, False
        elif line.startswith("-A "):
            args = _split(line)
            if len(args) < 2:
                continue
            in_rules = True
            key = (table, section, args[1])
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
            add_once(port_for(name, proto).external_ips, _host(crit.dst[0]))
        elif comment.endswith(" loadbalancer IP") and crit.dst:
            add_once(port_for(name, proto).lb_ips, _host(crit.dst[0]))
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
            add_once(p.source_ranges, net)
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


# iptables-save's quoting (libxtables' xtables_save_string): a word is a run of non-blanks, or a "..." string with
# each ", \ and ' inside escaped by a backslash.
_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_ESCAPE = re.compile(r"\\(.)")


def _split(line: str) -> list[str]:
    r"""The words of one rule line, with iptables-save's escapes undone. Not shlex: it costs 2.5 of 3.5 s profiled on
    15,054 rules, and keeps the backslash of `\'` inside double quotes (a comment "else's" read as `else\'s`)."""
    return [_ESCAPE.sub(r"\1", m.group(1)) if m.group(1) is not None else m.group(2) for m in _WORD.finditer(line)]


def iptables_variant(text: str) -> str:
    """"nf_tables" or "legacy" from iptables-save's header comment; "" when it does not say."""
    m = re.search(r"# Generated by ip6?tables-save v[\d.]+ \((\w+)\)", text)
    return m.group(1) if m else ""


def _host(net: str) -> str:
    return net[:-3] if net.endswith("/32") else net[:-4] if net.endswith("/128") else net
