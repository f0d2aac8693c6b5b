"""kube-proxy's IPVS mode: VIPs on a `kube-ipvs0` dummy device, one virtual server per Service port.

Only reached where the kernel has IPVS (proxy.check_mode refuses otherwise); the VM tier exercises it.
"""

from __future__ import annotations

from tracer.lab import iptables_rules, sh
from tracer.lab.manifest import Manifest, Node

DUMMY = "kube-ipvs0"


def apply(manifest: Manifest, node: Node, without_endpoints: frozenset[str], initial: bool = True) -> None:
    ns = node.netns
    if initial:
        sh.ip("link", "add", DUMMY, "type", "dummy", netns=ns)
        # kube-proxy keeps kube-ipvs0 down: the VIPs only need to be local addresses for IPVS to see them.
        for svc in manifest.services:
            sh.ip("addr", "add", f"{svc.cluster_ip}/32", "dev", DUMMY, netns=ns)
        sh.run(["iptables-restore", "-w", "5"], netns=ns, stdin=_masquerade(manifest))
    sh.run(["ipvsadm", "-C"], netns=ns)
    if initial:
        # kube-proxy sets it: without it IPVS bypasses conntrack, and masquerade never applies to its packets.
        sh.sysctl(ns, "net.ipv4.vs.conntrack", 1)
    lines = []
    for svc in manifest.services:
        for port in svc.ports:
            flag = "-t" if port.protocol == "TCP" else "-u"
            vips = [f"{svc.cluster_ip}:{port.port}"] + ([f"{node.ip}:{port.node_port}"] if port.node_port else [])
            for vip in vips:
                lines.append(f"-A {flag} {vip} -s rr")
                for ep in manifest.endpoints(svc, port, without_endpoints):
                    lines.append(f"-a {flag} {vip} -r {ep.ip}:{ep.port} -m -w 1")
    sh.run(["ipvsadm", "-R"], netns=ns, stdin="\n".join(lines) + "\n")


def _masquerade(manifest: Manifest) -> str:
    """IPVS mode still uses iptables for masquerade: KUBE-MARK-MASQ for traffic from outside the cluster CIDR,
    and for every NodePort connection (its endpoint may be on another node: the reply must come back through
    this one to be un-NATed). kube-proxy matches NodePorts with the ipset KUBE-NODE-PORT-TCP/UDP; the lab lists
    the ports in the rule instead."""
    mark = iptables_rules.MASQ_MARK
    node_ports: dict[str, list[str]] = {"tcp": [], "udp": []}
    for svc in manifest.services:
        for port in svc.ports:
            if port.node_port and port.protocol.lower() in node_ports:
                node_ports[port.protocol.lower()].append(str(port.node_port))
    nodeport_rules = [
        f"-A KUBE-NODE-PORT -p {proto} -m multiport --dports {','.join(ports)} -m comment --comment"
        f' "Kubernetes nodeport {proto.upper()} port for masquerade purpose" -j KUBE-MARK-MASQ'
        for proto, ports in node_ports.items() if ports
    ]
    return "\n".join([
        "*nat",
        ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
        ":KUBE-SERVICES - [0:0]", ":KUBE-MARK-MASQ - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":KUBE-NODE-PORT - [0:0]",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f'-A KUBE-SERVICES ! -s {manifest.cluster_cidr} -d {manifest.service_cidr} -m comment --comment'
        ' "Kubernetes service cluster ip + port for masquerade purpose" -j KUBE-MARK-MASQ',
        '-A KUBE-SERVICES -m addrtype --dst-type LOCAL -m comment --comment "kubernetes service nodeports; NOTE:'
        ' this must be the last rule in this chain" -j KUBE-NODE-PORT',
        *nodeport_rules,
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
        " --random-fully",
        "COMMIT",
    ]) + "\n"
