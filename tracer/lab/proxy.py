"""Install kube-proxy's rules in the node namespaces, in the proxy mode the lab was started with."""

from __future__ import annotations

import os

from tracer.lab import iptables_rules, nft_rules, sh
from tracer.lab.manifest import Manifest
from tracer.output.errors import LabError

MODES = ("iptables", "nftables", "ipvs")


def check_mode(mode: str) -> None:
    """Refuse a mode this kernel cannot do, before anything is built."""
    if mode not in MODES:
        raise LabError(f"unknown proxy mode {mode!r}", "use iptables, nftables or ipvs")
    if mode == "ipvs" and not ipvs_available():
        raise LabError("IPVS is not in this kernel (no /proc/sys/net/ipv4/vs and no ip_vs module loaded)",
                       "use --proxy-mode iptables or nftables, or a kernel with CONFIG_IP_VS")


def check_manifest(mode: str, manifest: Manifest) -> None:
    """Refuse Services the mode's rule writer does not write, before anything is built."""
    needs = [s.key for s in manifest.services if s.needs_nftables]
    if needs and mode != "nftables":
        raise LabError(f"{', '.join(needs[:3])}: IPv6 ClusterIPs, ExternalIPs and LoadBalancer IPs are written in "
                       f"the lab's nftables mode only, not {mode}", "use --proxy-mode nftables")


def ipvs_available() -> bool:
    return os.path.isdir("/proc/sys/net/ipv4/vs") or os.path.isdir("/proc/net/ip_vs") or _module_loadable()


def _module_loadable() -> bool:
    release = os.uname().release
    return any(os.path.exists(f"/lib/modules/{release}/kernel/net/netfilter/ipvs/ip_vs.ko{ext}")
               for ext in ("", ".xz", ".zst", ".gz"))


def apply(manifest: Manifest, mode: str, without_endpoints: frozenset[str] = frozenset(),
          initial: bool = True) -> None:
    for node in manifest.nodes:
        if mode == "iptables":
            stale: tuple[str, ...] = ()
            if not initial:
                stale = tuple(iptables_rules.kube_chains(sh.run(["iptables-save", "-t", "nat"], netns=node.netns)))
            text = iptables_rules.render(manifest, node, without_endpoints, initial=initial, stale=stale)
            sh.run(["iptables-restore", "-w", "5"] + ([] if initial else ["--noflush"]), netns=node.netns,
                   stdin=text)
        elif mode == "nftables":
            sh.run(["nft", "-f", "-"], netns=node.netns, stdin=nft_rules.render(manifest, node, without_endpoints))
        else:
            from tracer.lab import ipvs

            ipvs.apply(manifest, node, without_endpoints, initial=initial)
