"""Which of a node's interfaces are the underlay, the overlay, pod bridges and pod veths (from `ip -d -j link`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tracer.check.model import NodeState

# Encapsulation overhead over an IPv4 underlay, bytes: outer headers each packet carries.
OVERHEAD = {
    "vxlan": 50,  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
    "geneve": 50,  # outer Ethernet 14 + IPv4 20 + UDP 8 + Geneve 8 (no options)
    "ipip": 20,  # outer IPv4
    "wireguard": 60,  # IPv4 20 + UDP 8 + WireGuard 32
}
IPV6_EXTRA = 20  # an IPv6 underlay's header is 20 bytes longer


def kind(link: dict[str, Any]) -> str:
    return str(link.get("linkinfo", {}).get("info_kind", ""))


@dataclass(frozen=True)
class Overlay:
    name: str
    kind: str
    mtu: int
    underlay: str  # the device the tunnel rides on ("" when unknown)
    overhead: int


@dataclass
class Topology:
    links: dict[str, dict[str, Any]]
    underlay: list[str] = field(default_factory=list)
    overlays: list[Overlay] = field(default_factory=list)
    pod_bridges: list[str] = field(default_factory=list)  # bridges with veths enslaved
    pod_veths: list[str] = field(default_factory=list)  # node-side veths of pods
    # (label, mtu) of the pod-side ends seen in the pods' namespaces: ("pt-client:eth0", 1450)
    pod_ends: list[tuple[str, int]] = field(default_factory=list)

    def mtu(self, name: str) -> int:
        return int(self.links[name].get("mtu", 0))

    @property
    def has_pods(self) -> bool:
        return bool(self.pod_veths)


def _is_v6(address: str) -> bool:
    return ":" in address


def analyse(state: NodeState) -> Topology:
    links = {link["ifname"]: link for link in state.links if "ifname" in link}
    topo = Topology(links)
    by_index = {link.get("ifindex"): name for name, link in links.items()}
    route_devs = [r["dev"] for r in state.default_routes if r.get("dev") in links]
    for name, link in links.items():
        k = kind(link)
        if k in OVERHEAD:
            data = link.get("linkinfo", {}).get("info_data", {})
            under = data.get("link") or by_index.get(link.get("link_index")) or ""
            if under not in links:
                under = route_devs[0] if route_devs else ""
            overhead = OVERHEAD[k] + (IPV6_EXTRA if _is_v6(str(data.get("local", data.get("remote", "")))) else 0)
            topo.overlays.append(Overlay(name, k, int(link.get("mtu", 0)), under, overhead))
    topo.underlay = sorted({o.underlay for o in topo.overlays if o.underlay} | set(route_devs))
    for name, link in links.items():
        if kind(link) != "veth" or name in topo.underlay:
            continue
        enslaved = link.get("linkinfo", {}).get("info_slave_kind") == "bridge"
        if enslaved or "link_netnsid" in link:
            topo.pod_veths.append(name)
            master = link.get("master")
            if enslaved and master and master not in topo.pod_bridges:
                topo.pod_bridges.append(master)
            peer = state.peer_links.get(int(link.get("link_netnsid", -1)))
            if peer is not None:
                ns_name, peer_links = peer
                for other in peer_links:
                    if other.get("ifindex") == link.get("link_index"):
                        topo.pod_ends.append((f"{ns_name}:{other.get('ifname')}", int(other.get("mtu", 0))))
    topo.pod_bridges.sort()
    return topo
