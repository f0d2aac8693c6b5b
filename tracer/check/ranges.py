"""The node's pod and Service address ranges, as the node itself shows them (for the rules and routes audits).

Pods: flannel's FLANNEL_NETWORK, the subnets routed to the node's bridge and overlay devices (cni0, flannel.1),
and every endpoint kube-proxy DNATs to. Services: every VIP, and the ClusterIP range they suggest (tracer/flows).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass, field

from tracer.analysis.flows import cluster_range
from tracer.check.model import NodeState
from tracer.node.flannel import parse_subnet_env
from tracer.node.kubeproxy.iptables import iptables_variant, parse_iptables_save
from tracer.node.kubeproxy.model import ServiceMap, merge
from tracer.node.kubeproxy.nftables import parse_nft_json

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
POD_DEVICE_KINDS = ("bridge", "vxlan", "geneve", "ipip", "wireguard")


@dataclass
class Ranges:
    pods: list[tuple[Network, str]] = field(default_factory=list)  # (network, where it comes from)
    services: list[tuple[Network, str]] = field(default_factory=list)

    def hit(self, nets: tuple[str, ...]) -> str:
        """What of the pod/Service ranges one of `nets` overlaps ("pod 10.244.1.2 (endpoint of default/web:http)"),
        or ""."""
        for text in nets:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue
            for kind, known in (("pods", self.pods), ("Services", self.services)):
                for other, source in known:
                    if net.version == other.version and net.overlaps(other):
                        return f"{kind} {other} ({source})"
        return ""


def service_map(state: NodeState) -> ServiceMap:
    """kube-proxy's rules and every other rule of the node, from the saved iptables and nft output."""
    maps = []
    seen: list[str] = []  # iptables-nft's tables: read from iptables-save, not twice from nft
    if state.iptables_save:
        maps.append(parse_iptables_save(state.iptables_save))
        if iptables_variant(state.iptables_save) == "nf_tables":
            seen = [f"ip {t}" for t in re.findall(r"^\*(\w+)", state.iptables_save, re.M)]
    if state.nft_ruleset:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # the kube-proxy family says it is unreadable
            maps.append(parse_nft_json(state.nft_ruleset, skip_tables=seen))
    return merge(*maps) if maps else ServiceMap()


def node_ranges(state: NodeState, services: ServiceMap) -> Ranges:
    out = Ranges()
    kinds = {link.get("ifname"): link.get("linkinfo", {}).get("info_kind", "") for link in state.links}
    network = parse_subnet_env(state.flannel_env).get("FLANNEL_NETWORK") if state.flannel_env else None
    if network:
        out.pods.append((ipaddress.ip_network(network, strict=False), "FLANNEL_NETWORK"))
    for route in state.routes:
        dev, dst = route.get("dev"), str(route.get("dst", ""))
        if kinds.get(dev) in POD_DEVICE_KINDS and dst not in ("default", "") and not route.get("type"):
            try:
                out.pods.append((ipaddress.ip_network(dst, strict=False), f"routed to {dev}"))
            except ValueError:
                continue
    for port in services.ports:
        for endpoint in port.endpoints:
            out.pods.append((ipaddress.ip_network(endpoint.ip), f"endpoint of {port.name}"))
        if port.vip:
            out.services.append((ipaddress.ip_network(port.vip), f"VIP of {port.name}"))
    guessed = cluster_range(services)
    if guessed is not None:
        out.services.append((guessed, "ClusterIP range guessed from the VIPs"))
    return out
