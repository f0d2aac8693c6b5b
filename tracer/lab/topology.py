"""Build and remove the lab's namespaces and links: nodes, underlay, flannel VXLAN, cni0, pods.

Every link is created directly inside a lab namespace (`ip -n NS link add ... peer ... netns OTHER`), so nothing
ever appears in the root namespace, and no lab link has a peer outside the lab.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from tracer.lab import sh
from tracer.lab.manifest import Manifest, Node, Pod
from tracer.output.errors import LabError

UNDERLAY_DEV = "eth0"
BRIDGE = "cni0"
# A default gateway that never answers: a real node has a default route, so unknown VIPs fail like on a node
# (no DNAT, no neighbour) instead of with "no route", and still nothing leaves the lab.
DEAD_GATEWAY_HOST = 254
DEAD_GATEWAY6 = "fe80::fe"  # link-local on the underlay veth, which no lab namespace has

Progress = Callable[[str], None]


def netns_names(manifest: Manifest) -> list[str]:
    """Every namespace the lab creates, pods first (removal order)."""
    return [p.netns for p in manifest.pods] + [n.netns for n in manifest.nodes]


def build(manifest: Manifest, progress: Progress) -> None:
    for name in netns_names(manifest):
        if sh.netns_exists(name):
            raise LabError(f"network namespace {name} already exists", "run `podtrace lab down` first")
    n1, n2 = manifest.nodes
    for node in manifest.nodes:
        progress(f"node {node.name}: netns {node.netns}")
        _add_netns(node.netns)
        # What kubeadm's preflight and flannel require of a node.
        sh.sysctl(node.netns, "net.ipv4.ip_forward", 1)
        sh.sysctl(node.netns, "net.bridge.bridge-nf-call-iptables", 1)
        for conf in ("all", "default"):
            sh.sysctl(node.netns, f"net.ipv4.conf.{conf}.rp_filter", 0)
        if manifest.dual_stack:
            _ipv6_on(node.netns, forwarding=True)
    progress(f"underlay: {n1.netns}/{UNDERLAY_DEV} <-> {n2.netns}/{UNDERLAY_DEV} (MTU {manifest.underlay_mtu})")
    sh.ip("link", "add", UNDERLAY_DEV, "mtu", str(manifest.underlay_mtu), "type", "veth", "peer", "name",
          UNDERLAY_DEV, "mtu", str(manifest.underlay_mtu), "netns", n2.netns, netns=n1.netns)
    prefix = ipaddress.ip_network(manifest.underlay_cidr).prefixlen
    gateway = str(ipaddress.ip_network(manifest.underlay_cidr)[DEAD_GATEWAY_HOST])
    for node in manifest.nodes:
        sh.ip("addr", "add", f"{node.ip}/{prefix}", "dev", UNDERLAY_DEV, netns=node.netns)
        sh.ip("link", "set", UNDERLAY_DEV, "up", netns=node.netns)
        sh.ip("route", "add", "default", "via", gateway, "dev", UNDERLAY_DEV, netns=node.netns)
        if manifest.dual_stack:
            # The same for IPv6: without a default route an IPv6 VIP with no endpoints dies in the route lookup
            # (ip6_rcv_finish, before FORWARD) instead of at kube-proxy's reject, as it would on a node.
            sh.ip("-6", "route", "add", "default", "via", DEAD_GATEWAY6, "dev", UNDERLAY_DEV, netns=node.netns)
        _vxlan(manifest, node)
        _bridge(manifest, node)
    for node in manifest.nodes:
        for peer in manifest.nodes:
            if peer is not node:
                _flannel_peer(manifest, node, peer)
    for pod in manifest.pods:
        progress(f"pod {pod.name}: netns {pod.netns}, {pod.ip} on {pod.node}")
        _pod(manifest, manifest.node(pod.node), pod)


def _add_netns(name: str) -> None:
    sh.run(["ip", "netns", "add", name])
    sh.ip("link", "set", "lo", "up", netns=name)


def _ipv6_on(netns: str, forwarding: bool) -> None:
    """IPv6 as a dual-stack node or pod has it, set before its links exist so they inherit `default`: enabled,
    no duplicate address detection (addresses usable at once; the lab's are unique by construction), and on a
    node forwarding plus bridged IPv6 through ip6tables/nft (kube-proxy's rules for pods on one bridge)."""
    for conf in ("all", "default"):
        sh.sysctl(netns, f"net.ipv6.conf.{conf}.disable_ipv6", 0)
        sh.sysctl(netns, f"net.ipv6.conf.{conf}.accept_dad", 0)
        if forwarding:
            sh.sysctl(netns, f"net.ipv6.conf.{conf}.forwarding", 1)
    if forwarding:
        sh.sysctl(netns, "net.bridge.bridge-nf-call-ip6tables", 1)


def _vxlan(m: Manifest, node: Node) -> None:
    dev = m.overlay_device
    sh.ip("link", "add", dev, "address", node.vtep_mac, "mtu", str(m.overlay_mtu), "type", "vxlan", "id",
          str(m.vni), "local", node.ip, "dev", UNDERLAY_DEV, "dstport", str(m.vxlan_port), "nolearning",
          netns=node.netns)
    sh.ip("addr", "add", f"{node.vtep_ip}/32", "dev", dev, netns=node.netns)
    if node.vtep_ip6:
        # flannel carries IPv6 on flannel-v6.1 over an IPv6 underlay; the lab's underlay is IPv4 only, so its
        # IPv6 pod subnets ride the same VXLAN device (the inner packet's family is VXLAN's payload, not its own).
        sh.ip("-6", "addr", "add", f"{node.vtep_ip6}/128", "dev", dev, "nodad", netns=node.netns)
    sh.ip("link", "set", dev, "up", netns=node.netns)


def _flannel_peer(m: Manifest, node: Node, peer: Node) -> None:
    """The three entries flannel's vxlan backend writes for each remote subnet lease."""
    dev = m.overlay_device
    sh.ip("route", "add", peer.pod_cidr, "via", peer.vtep_ip, "dev", dev, "onlink", netns=node.netns)
    sh.ip("neigh", "replace", peer.vtep_ip, "lladdr", peer.vtep_mac, "dev", dev, "nud", "permanent",
          netns=node.netns)
    sh.run(["bridge", "fdb", "append", peer.vtep_mac, "dev", dev, "dst", peer.ip, "self", "permanent"],
           netns=node.netns)
    if peer.pod_cidr_v6:
        sh.ip("-6", "route", "add", peer.pod_cidr_v6, "via", peer.vtep_ip6, "dev", dev, "onlink", netns=node.netns)
        sh.ip("-6", "neigh", "replace", peer.vtep_ip6, "lladdr", peer.vtep_mac, "dev", dev, "nud", "permanent",
              netns=node.netns)


def _bridge(m: Manifest, node: Node) -> None:
    prefix = ipaddress.ip_network(node.pod_cidr).prefixlen
    sh.ip("link", "add", BRIDGE, "mtu", str(m.overlay_mtu), "type", "bridge", netns=node.netns)
    sh.ip("addr", "add", f"{node.gateway}/{prefix}", "dev", BRIDGE, netns=node.netns)
    if node.gateway6:
        prefix6 = ipaddress.ip_network(node.pod_cidr_v6).prefixlen
        sh.ip("-6", "addr", "add", f"{node.gateway6}/{prefix6}", "dev", BRIDGE, "nodad", netns=node.netns)
    sh.ip("link", "set", BRIDGE, "up", netns=node.netns)


def add_pod(m: Manifest, node: Node, pod: Pod) -> None:
    _pod(m, node, pod)


def _pod(m: Manifest, node: Node, pod: Pod) -> None:
    mtu = str(m.overlay_mtu)
    prefix = ipaddress.ip_network(node.pod_cidr).prefixlen
    _add_netns(pod.netns)
    if pod.ip6:
        _ipv6_on(pod.netns, forwarding=False)
    sh.ip("link", "add", pod.host_veth, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu", mtu, "netns",
          pod.netns, netns=node.netns)
    sh.ip("link", "set", pod.host_veth, "master", BRIDGE, netns=node.netns)
    # The bridge CNI plugin flannel delegates to sets hairpin mode, so a pod can reach itself via its Service.
    sh.run(["bridge", "link", "set", "dev", pod.host_veth, "hairpin", "on"], netns=node.netns)
    sh.ip("link", "set", pod.host_veth, "up", netns=node.netns)
    sh.ip("addr", "add", f"{pod.ip}/{prefix}", "dev", "eth0", netns=pod.netns)
    sh.ip("link", "set", "eth0", "up", netns=pod.netns)
    sh.ip("route", "add", "default", "via", node.gateway, "dev", "eth0", netns=pod.netns)
    if pod.ip6:
        prefix6 = ipaddress.ip_network(node.pod_cidr_v6).prefixlen
        sh.ip("-6", "addr", "add", f"{pod.ip6}/{prefix6}", "dev", "eth0", "nodad", netns=pod.netns)
        sh.ip("-6", "route", "add", "default", "via", node.gateway6, "dev", "eth0", netns=pod.netns)


def destroy(names: list[str], progress: Progress) -> None:
    """Delete the given namespaces (their links go with them); missing ones are fine."""
    for name in names:
        if sh.netns_exists(name):
            progress(f"removing netns {name}")
            sh.run(["ip", "netns", "delete", name])
