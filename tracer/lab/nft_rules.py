"""kube-proxy's nftables-mode ruleset (pkg/proxy/nftables), generated as the `nft -f` commands it sends.

Table `ip kube-proxy` (and `ip6 kube-proxy` in a dual-stack lab); the `service-ips` verdict map sends each
ClusterIP . proto . port to a `service-<hash8>-<ns>/<name>/<proto>/<port>` chain, which picks an `endpoint-...`
chain with `numgen random`, and each ExternalIP and LoadBalancer IP (and NodePort) to the port's `external-...`
chain, which marks for masquerade and goes to the service chain (externalTrafficPolicy Cluster), as
TestOverallNFTablesRules' ns4/svc4 and ns5/svc5 show.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from tracer.lab.manifest import Endpoint, Manifest, Node, Service, ServicePort

TABLE = "ip kube-proxy"
TABLE6 = "ip6 kube-proxy"


@dataclass(frozen=True)
class _Family:
    """What differs between `table ip kube-proxy` and `table ip6 kube-proxy`."""

    table: str
    ip: str  # the nft payload keyword: ip / ip6
    addr_type: str
    cluster_cidr: str
    service_cidr: str
    number: int  # 4 or 6, as Manifest.endpoints takes it


CHAIN_NAME_MAX = 256


def _base(svc: Service, port: ServicePort, endpoint: str = "") -> str:
    """kube-proxy's hashAndTruncate("<ns>/<name>/<proto>/<port>[__<ip>/<port>]"): 8 base32 chars of its sha256."""
    name = f"{svc.namespace}/{svc.name}/{port.protocol.lower()}/{port.name}"
    if endpoint:
        # "ip/port", with an IPv6 address's colons as dots: "fd00.10.180..1/80" (kube-proxy's own chain names)
        ip, _, number = endpoint.rpartition(":")
        name += "__" + ip.replace(":", ".") + "/" + number
    name = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8] + "-" + name
    return name if len(name) <= CHAIN_NAME_MAX - 9 else name[:CHAIN_NAME_MAX - 12] + "..."


def service_chain(svc: Service, port: ServicePort) -> str:
    return "service-" + _base(svc, port)


def external_chain(svc: Service, port: ServicePort) -> str:
    return "external-" + _base(svc, port)


def endpoint_chain(svc: Service, port: ServicePort, ep: Endpoint) -> str:
    return "endpoint-" + _base(svc, port, f"{ep.ip}:{ep.port}")


def render(manifest: Manifest, node: Node, without_endpoints: frozenset[str] = frozenset()) -> str:
    """Every table, each replaced atomically: `add table` + `delete table` make the script work when it exists."""
    text = _render(manifest, node, without_endpoints, _Family(TABLE, "ip", "ipv4_addr", manifest.cluster_cidr,
                                                               manifest.service_cidr, 4))
    if manifest.dual_stack:
        text += _render(manifest, node, without_endpoints, _Family(
            TABLE6, "ip6", "ipv6_addr", manifest.cluster_cidr_v6, manifest.service_cidr_v6, 6))
    return text


def _render(manifest: Manifest, node: Node, without_endpoints: frozenset[str], fam: _Family) -> str:
    t, ip, addr = fam.table, fam.ip, fam.addr_type
    out = [
        f"add table {t}",
        f"delete table {t}",
        f'add table {t} {{ comment "rules for kube-proxy" ; }}',
        f'add set {t} cluster-ips {{ type {addr} ; comment "Active ClusterIPs" ; }}',
        f'add set {t} nodeport-ips {{ type {addr} ; comment "IPs that accept NodePort traffic" ; }}',
        f"add map {t} service-ips {{ type {addr} . inet_proto . inet_service : verdict ;"
        ' comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        f'add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}',
        f"add map {t} no-endpoint-services {{ type {addr} . inet_proto . inet_service : verdict ;"
        ' comment "vmap to drop or reject packets to services with no endpoints" ; }',
        f"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ;"
        ' comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }',
        f"add chain {t} filter-input {{ type filter hook input priority -110 ; }}",
        f"add chain {t} filter-forward {{ type filter hook forward priority -110 ; }}",
        f"add chain {t} filter-output {{ type filter hook output priority -110 ; }}",
        f"add chain {t} filter-output-post-dnat {{ type filter hook output priority -90 ; }}",
        f"add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}",
        f"add chain {t} nat-output {{ type nat hook output priority -100 ; }}",
        f"add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}",
        *(f"add chain {t} {c}" for c in ("mark-for-masquerade", "masquerading", "services",
                                          "service-endpoints-check", "nodeport-endpoints-check",
                                          "cluster-ips-check")),
        f'add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}',
        f"add rule {t} reject-chain reject",
        f"add rule {t} filter-input ct state new jump nodeport-endpoints-check",
        f"add rule {t} filter-input ct state new jump service-endpoints-check",
        f"add rule {t} filter-forward ct state new jump service-endpoints-check",
        f"add rule {t} filter-forward ct state new jump cluster-ips-check",
        f"add rule {t} filter-output ct state new jump service-endpoints-check",
        f"add rule {t} filter-output-post-dnat ct state new jump cluster-ips-check",
        f"add rule {t} nat-prerouting jump services",
        f"add rule {t} nat-output jump services",
        f"add rule {t} nat-postrouting jump masquerading",
        f"add rule {t} mark-for-masquerade mark set mark or 0x4000",
        f"add rule {t} masquerading mark and 0x4000 == 0 return",
        f"add rule {t} masquerading mark set mark xor 0x4000",
        f"add rule {t} masquerading masquerade fully-random",
        f"add rule {t} services {ip} daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {t} services {ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        f"add rule {t} service-endpoints-check {ip} daddr . meta l4proto . th dport vmap @no-endpoint-services",
        f"add rule {t} nodeport-endpoints-check {ip} daddr @nodeport-ips meta l4proto . th dport vmap"
        " @no-endpoint-nodeports",
        f'add rule {t} cluster-ips-check {ip} daddr @cluster-ips reject comment'
        ' "Reject traffic to invalid ports of ClusterIPs"',
        f'add rule {t} cluster-ips-check {ip} daddr {{ {fam.service_cidr} }} drop comment'
        ' "Drop traffic to unallocated ClusterIPs"',
    ]
    if fam.number == 4:  # the lab's nodes have no IPv6 address of their own: NodePorts are IPv4 only
        out.append(f"add element {t} nodeport-ips {{ {node.ip} }}")
    for svc in manifest.services:
        vip = svc.cluster_ip if fam.number == 4 else svc.cluster_ip6
        if not vip:
            continue
        # ExternalIPs and LoadBalancer IPs are IPv4 in the lab (manifest.py); NodePorts too.
        externals = (*svc.external_ips, *svc.lb_ips) if fam.number == 4 else ()
        out.append(f"add element {t} cluster-ips {{ {vip} }}")
        for port in svc.ports:
            proto = port.protocol.lower()
            name = svc.port_name(port)
            node_port = port.node_port if fam.number == 4 else None
            eps = manifest.endpoints(svc, port, without_endpoints, fam.number)
            if not eps:
                for dst in (vip, *externals):
                    out.append(f"add element {t} no-endpoint-services {{ {dst} . {proto} . {port.port}"
                               f' comment "{name}" : goto reject-chain }}')
                if node_port:
                    out.append(f"add element {t} no-endpoint-nodeports {{ {proto} . {node_port}"
                               f' comment "{name}" : goto reject-chain }}')
                continue
            sc = service_chain(svc, port)
            # Chains first: a vmap may only name chains that already exist.
            out.append(f"add chain {t} {sc}")
            out += [f"add chain {t} {endpoint_chain(svc, port, ep)}" for ep in eps]
            out.append(f"add rule {t} {sc} {ip} daddr {vip} {proto} dport {port.port} {ip} saddr !="
                       f" {fam.cluster_cidr} jump mark-for-masquerade")
            targets = ", ".join(f"{i} : goto {endpoint_chain(svc, port, ep)}" for i, ep in enumerate(eps))
            out.append(f"add rule {t} {sc} numgen random mod {len(eps)} vmap {{ {targets} }}")
            for ep in eps:
                ec = endpoint_chain(svc, port, ep)
                to = f"[{ep.ip}]:{ep.port}" if fam.number == 6 else f"{ep.ip}:{ep.port}"
                out.append(f"add rule {t} {ec} {ip} saddr {ep.ip} jump mark-for-masquerade")
                out.append(f"add rule {t} {ec} meta l4proto {proto} dnat to {to}")
            out.append(f"add element {t} service-ips {{ {vip} . {proto} . {port.port}"
                       f' comment "{name}" : goto {sc} }}')
            if node_port or externals:
                xc = external_chain(svc, port)
                out.append(f"add chain {t} {xc}")
                out.append(f"add rule {t} {xc} jump mark-for-masquerade")
                out.append(f"add rule {t} {xc} goto {sc}")
                out += [f"add element {t} service-ips {{ {dst} . {proto} . {port.port}"
                        f' comment "{name}" : goto {xc} }}' for dst in externals]
            if node_port:
                out.append(f"add element {t} service-nodeports {{ {proto} . {node_port}"
                           f' comment "{name}" : goto {xc} }}')
    return "\n".join(out) + "\n"
