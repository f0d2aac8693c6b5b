"""kube-proxy's iptables-mode ruleset, generated the way kube-proxy's proxier writes it (pkg/proxy/iptables).

Chain names use kube-proxy's hashes: base32(sha256(servicePortName + protocol [+ endpoint]))[:16], so a chain
in the lab has the name it would have on a real node for the same Service.
"""

from __future__ import annotations

import base64
import hashlib

from tracer.lab.manifest import Endpoint, Manifest, Node, Service, ServicePort

MASQ_MARK = "0x4000"


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(svc: Service, port: ServicePort) -> str:
    return "KUBE-SVC-" + _hash(svc.port_name(port) + port.protocol.lower())


def ext_chain(svc: Service, port: ServicePort) -> str:
    return "KUBE-EXT-" + _hash(svc.port_name(port) + port.protocol.lower())


def sep_chain(svc: Service, port: ServicePort, ep: Endpoint) -> str:
    return "KUBE-SEP-" + _hash(svc.port_name(port) + port.protocol.lower() + f"{ep.ip}:{ep.port}")


def probability(n: int) -> str:
    """The statistic match of the i-th of n remaining endpoints: kube-proxy formats 1/n with %0.10f."""
    return f"{1.0 / n:0.10f}"


# Jumps kube-proxy installs into the built-in chains (ensureRule), written once at `lab up`.
BASE_JUMPS = {
    "filter": [
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals"'
        " -j KUBE-EXTERNAL-SERVICES",
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals"'
        " -j KUBE-EXTERNAL-SERVICES",
        '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    ],
    "nat": [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    ],
}
BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}


def render(manifest: Manifest, node: Node, without_endpoints: frozenset[str] = frozenset(),
           initial: bool = True, stale: tuple[str, ...] = ()) -> str:
    """The iptables-restore input for one node.

    `initial` writes whole tables (built-in chains and kube-proxy's jumps into them); otherwise the text is for
    `iptables-restore --noflush`, replacing only KUBE-* chains and deleting `stale` ones, as a kube-proxy sync does.
    """
    filt_chains = ["KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL",
                   "KUBE-SERVICES"]
    filt: list[str] = []
    nat_chains = ["KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-SERVICES"]
    nat: list[str] = [
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
        " --random-fully",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]
    svc_rules: list[str] = []
    tail: list[str] = []
    for svc in manifest.services:
        for port in svc.ports:
            name = svc.port_name(port)
            proto = port.protocol.lower()
            eps = manifest.endpoints(svc, port, without_endpoints)
            match = f"-d {svc.cluster_ip}/32 -p {proto}"
            if not eps:
                filt.append(f'-A KUBE-SERVICES {match} -m comment --comment "{name} has no endpoints" -m {proto}'
                            f" --dport {port.port} -j REJECT --reject-with icmp-port-unreachable")
                if port.node_port:
                    filt.append(f'-A KUBE-EXTERNAL-SERVICES -m addrtype --dst-type LOCAL -p {proto} -m comment'
                                f' --comment "{name} has no endpoints" -m {proto} --dport {port.node_port}'
                                " -j REJECT --reject-with icmp-port-unreachable")
                continue
            svc_c = svc_chain(svc, port)
            nat_chains.append(svc_c)
            svc_rules.append(f'-A KUBE-SERVICES {match} -m comment --comment "{name} cluster IP" -m {proto}'
                             f" --dport {port.port} -j {svc_c}")
            tail.append(f'-A {svc_c} ! -s {manifest.cluster_cidr} {match} -m comment --comment "{name} cluster IP"'
                        f" -m {proto} --dport {port.port} -j KUBE-MARK-MASQ")
            if port.node_port:
                ext_c = ext_chain(svc, port)
                nat_chains.append(ext_c)
                svc_rules.append(f'-A KUBE-NODEPORTS -p {proto} -m comment --comment "{name}" -m {proto}'
                                 f" --dport {port.node_port} -j {ext_c}")
                tail.append(f'-A {ext_c} -m comment --comment "masquerade traffic for {name} external destinations"'
                            " -j KUBE-MARK-MASQ")
                tail.append(f"-A {ext_c} -j {svc_c}")
            for i, ep in enumerate(eps):
                sep_c = sep_chain(svc, port, ep)
                left = len(eps) - i
                stat = f" -m statistic --mode random --probability {probability(left)}" if left > 1 else ""
                tail.append(f'-A {svc_c} -m comment --comment "{name} -> {ep.ip}:{ep.port}"{stat} -j {sep_c}')
            for ep in eps:
                sep_c = sep_chain(svc, port, ep)
                nat_chains.append(sep_c)
                tail.append(f'-A {sep_c} -s {ep.ip}/32 -m comment --comment "{name}" -j KUBE-MARK-MASQ')
                tail.append(f'-A {sep_c} -p {proto} -m comment --comment "{name}" -m {proto} -j DNAT'
                            f" --to-destination {ep.ip}:{ep.port}")
    svc_rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the'
                     ' last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    filt += [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK}'
        " -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate'
        " RELATED,ESTABLISHED -j ACCEPT",
    ]
    out: list[str] = []
    for table, chains, rules in (("filter", filt_chains, filt), ("nat", nat_chains, nat + svc_rules + tail)):
        out.append(f"*{table}")
        if initial:
            out += [f":{c} ACCEPT [0:0]" for c in BUILTIN[table]]
        gone = [c for c in stale if c not in chains] if table == "nat" else []
        # Stale chains are declared (which flushes them) and then deleted: -X only removes empty chains.
        out += [f":{c} - [0:0]" for c in chains + gone]
        if initial:
            out += BASE_JUMPS[table]
        out += rules
        out += [f"-X {c}" for c in gone]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def kube_chains(iptables_save: str, table: str = "nat") -> list[str]:
    """KUBE-SVC/SEP/EXT chains present in `iptables-save` output, the candidates for deletion on a resync."""
    chains, current = [], ""
    for line in iptables_save.splitlines():
        if line.startswith("*"):
            current = line[1:]
        elif current == table and line.startswith(":KUBE-") and line.split()[0][1:].startswith(
                ("KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-")):
            chains.append(line.split()[0][1:])
    return chains
