"""kube-proxy's IPVS mode read back from a node: virtual servers -> Services, for `podtrace flows`.

IPVS keeps no names: a virtual server is an address, a port and real servers. kube-proxy puts every ClusterIP
(and external IP) on the `kube-ipvs0` dummy device and adds one more virtual server per node address for each
NodePort, so a virtual server whose address is not on kube-ipvs0 is a NodePort. Names come from whatever knows
them: Service ports already named by another source (rules of another proxy mode, the lab's manifest).

`name_virtual_servers` is pure; `service_map` reads `ipvsadm -Ln` and kube-ipvs0 in each node's namespace.
pyroute2 (0.9) speaks IPVS's generic netlink too, but `ipvsadm -Ln` is what kube-proxy's users read and
tracer/node/kubeproxy/ipvsadm.py already parses it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tracer.node import declared_names
from tracer.node.kubeproxy.collect import Runner, command_runner
from tracer.node.kubeproxy.ipvsadm import parse_ipvsadm
from tracer.node.kubeproxy.model import Endpoint, ServiceMap, ServicePort
from tracer.output.errors import PodtraceError

DUMMY = "kube-ipvs0"


@dataclass(frozen=True)
class KnownService:
    """A Service port from a source that has names (the lab's manifest, the Kubernetes API)."""

    name: str  # namespace/name:port
    proto: str  # lower case
    vip: str
    port: int
    node_port: int = 0


@dataclass(frozen=True)
class NodeIpvs:
    """One node's IPVS table and the addresses on its kube-ipvs0."""

    node: str | None
    table: ServiceMap
    local_vips: frozenset[str]


def name_virtual_servers(nodes: Iterable[NodeIpvs], known: Sequence[KnownService] = (),
                         named: Sequence[ServicePort] = ()) -> ServiceMap:
    """One Service map from every node's virtual servers: ClusterIP virtual servers named by VIP:port, NodePort
    ones (address not on kube-ipvs0) folded into their Service's port with the node address in `node_ips`."""
    out = ServiceMap(mode="ipvs", modes=("ipvs",))
    by_vip: dict[tuple[str, int, str], ServicePort] = {}
    by_node_port: dict[tuple[int, str], ServicePort] = {}

    def name_of(vip: str, port: int, proto: str) -> KnownService | None:
        return next((k for k in known if (k.vip, k.port, k.proto) == (vip, port, proto)), None)

    def add_endpoints(target: ServicePort, endpoints: Iterable[Endpoint]) -> None:
        for ep in endpoints:
            if target.endpoint(ep.ip, ep.port) is None:
                target.endpoints.append(ep)
        target.no_endpoints = not target.endpoints

    node_port_servers = []
    for node in nodes:
        for vs in node.table.ports:
            if vs.vip not in node.local_vips and (node.local_vips or _known_node_port(known, vs)):
                node_port_servers.append(vs)
                continue
            key = (vs.vip, vs.port, vs.proto)
            if key not in by_vip:
                found = name_of(*key)
                other = next((p for p in named if (p.vip, p.port, p.proto) == key and p.name), None)
                name = found.name if found else other.name if other else ""
                by_vip[key] = ServicePort(name, vs.proto, vip=vs.vip, port=vs.port,
                                          node_port=found.node_port if found else 0)
                out.ports.append(by_vip[key])
            add_endpoints(by_vip[key], vs.endpoints)
    for vs in node_port_servers:
        if vs.vip not in out.node_ips:
            out.node_ips.append(vs.vip)
        owner = by_node_port.get((vs.port, vs.proto))
        if owner is None:
            found = next((k for k in known if (k.node_port, k.proto) == (vs.port, vs.proto)), None)
            owner = by_vip.get((found.vip, found.port, found.proto)) if found else None
            if owner is None:  # no ClusterIP virtual server to fold it into: a NodePort-only entry
                owner = ServicePort(found.name if found else "", vs.proto, node_port=vs.port)
                out.ports.append(owner)
            owner.node_port = vs.port
            by_node_port[(vs.port, vs.proto)] = owner
        add_endpoints(owner, vs.endpoints)
    return out


def _known_node_port(known: Sequence[KnownService], vs: ServicePort) -> bool:
    """Without kube-ipvs0 to tell, a virtual server on a known NodePort that is no known VIP is a NodePort."""
    return any(k.node_port == vs.port and k.proto == vs.proto for k in known) and \
        not any(k.vip == vs.vip for k in known)


def parse_dummy_addresses(text: str) -> frozenset[str]:
    """Addresses in `ip -j addr show dev kube-ipvs0` output."""
    try:
        links = json.loads(text or "[]")
    except ValueError:
        return frozenset()
    return frozenset(info["local"] for link in links for info in link.get("addr_info", []) if "local" in info)


def read_node(node: str | None, runner: Runner | None = None) -> NodeIpvs | None:
    """The node's IPVS table (None when IPVS is not in use there)."""
    run = runner or command_runner(node)
    try:
        table = run(["ipvsadm", "-Ln"])
    except PodtraceError:
        return None
    if not table:
        return None
    try:
        dummy = run(["ip", "-j", "addr", "show", "dev", DUMMY])
    except PodtraceError:  # no kube-ipvs0: not kube-proxy's table, every virtual server counts as a VIP
        dummy = ""
    return NodeIpvs(node, parse_ipvsadm(table), parse_dummy_addresses(dummy or ""))


def declared_services() -> list[KnownService]:
    """The Service ports the environment declares (the lab's manifest, when it is up), else []."""
    found = declared_names.declared(include_dummies=True)
    if found is None:
        return []
    return [KnownService(name, s.proto.lower(), s.vip, s.port, s.node_port or 0) for name, s in found.services.items()]


def service_map(services: ServiceMap, nodes: Sequence[str | None]) -> ServiceMap:
    """`services` (kube-proxy's rules as collected) with its IPVS virtual servers replaced by named Service ports
    read from every node; unchanged when no node has IPVS virtual servers."""
    if not os.path.exists("/proc/net/ip_vs"):  # ip_vs not loaded: never let ipvsadm load it
        return services
    tables = [table for table in (read_node(node) for node in nodes) if table is not None and table.table.ports]
    if not tables:
        return services
    named = [p for p in services.ports if p.name]
    ipvs = name_virtual_servers(tables, declared_services(), named)
    out = ServiceMap(mode="ipvs", ports=named + [p for p in ipvs.ports if not any(
        (n.vip, n.port, n.proto) == (p.vip, p.port, p.proto) for n in named)], rules=services.rules,
        node_ips=list(dict.fromkeys(services.node_ips + ipvs.node_ips)),
        modes=tuple(dict.fromkeys(("ipvs", *services.modes))))
    return out
