"""kube-proxy's nftables mode read from `nft -j list ruleset`, tables `ip kube-proxy` and `ip6 kube-proxy`
(pkg/proxy/nftables): the `service-ips` map (ClusterIP -> service-* chain, ExternalIP and LoadBalancer IP ->
external-* chain), `service-nodeports`, `firewall-ips` (source ranges), the `service-*` chains picking `endpoint-*`
chains with `numgen random`, `dnat to` in each endpoint chain, and `no-endpoint-services` / `no-endpoint-nodeports`
elements (goto reject-chain: no endpoints; drop: Local policy without a local endpoint). Every rule of every other
table is read too, for the drop lookup."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from tracer.node.kubeproxy.model import NFT_TABLE, Criteria, Endpoint, Rule, ServiceMap, ServicePort, add_once, in_any
from tracer.node.kubeproxy.names import NFT_CHAIN, name_from_chain
from tracer.node.kubeproxy.nft_text import nft_text

PROTOS = ("tcp", "udp", "sctp")


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
            text = nft_text(rule.get("expr", []))
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
        return ip == p.vip or (not p.vip and in_any(ip, service_cidrs))

    externals: list[tuple[ServicePort, str]] = []
    for key, verdict_obj, comment in _map_elems(maps.get((*t, "service-ips"))):
        if len(key) != 3:
            continue
        chain = _goto_target(verdict_obj)
        # The chain name carries ns/name/proto/port as kube-proxy built it; element comments are free text.
        name = name_from_chain(chain) or comment
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
        p = port_for(name_from_chain(chain) or comment, str(key[0]))
        p.node_port = int(key[1])
        _nft_external(chains, family, chain, p)
    lb: set[str] = set()
    for key, verdict_obj, comment in _map_elems(maps.get((*t, "firewall-ips"))):
        if len(key) != 3:
            continue
        chain = _goto_target(verdict_obj)
        p = port_for(name_from_chain(chain) or comment, str(key[1]))
        # Only LoadBalancer IPs have source ranges: this one is an LB IP, not an ExternalIP.
        lb.add(str(key[0]))
        add_once(p.lb_ips, str(key[0]))
        for rule in chains.get((*t, chain), []):
            crit, verdict, _ = _nft_criteria(rule.get("expr", []), sets, family, NFT_TABLE)
            if verdict == "DROP" and crit.src and crit.src_neg:
                for net in crit.src:
                    add_once(p.source_ranges, net)
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
            add_once(p.external_ips, ip)
    for (fam, table, name), body in set_meta.items():
        m = NFT_CHAIN.match(name.replace("affinity-", "endpoint-", 1)) if name.startswith("affinity-") else None
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

