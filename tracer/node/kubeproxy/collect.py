"""Reading kube-proxy's rules off a node: runs iptables-save, ip6tables-save, nft and ipvsadm (in a named netns
when asked) and hands their output to the parsers."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import Optional

from tracer.node.kubeproxy.iptables import iptables_variant, parse_iptables_save
from tracer.node.kubeproxy.ipvsadm import parse_ipvsadm
from tracer.node.kubeproxy.model import ServiceMap, merge
from tracer.node.kubeproxy.nftables import parse_nft_json
from tracer.output.errors import PodtraceError

# argv -> stdout, or None when the program is not installed. Raises PodtraceError when it fails.
Runner = Callable[[Sequence[str]], Optional[str]]


def command_runner(netns: str | None = None, timeout: float = 60) -> Runner:
    """Run commands on this host, inside `ip netns exec NETNS` when a netns is given."""

    def run(argv: Sequence[str]) -> str | None:
        if shutil.which(argv[0]) is None:
            return None
        full = (["ip", "netns", "exec", netns] if netns else []) + list(argv)
        try:
            proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            return None
        except subprocess.TimeoutExpired as err:
            raise PodtraceError(f"`{shlex.join(full)}` did not finish in {timeout:g} s",
                                "is the node overloaded?") from err
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()
            raise PodtraceError(f"`{shlex.join(full)}` failed: {detail[-1]}",
                                "reading kube-proxy's rules needs root (CAP_NET_ADMIN)" if os.geteuid() else "")
        return proc.stdout

    return run


def collect(netns: str | None = None, runner: Runner | None = None) -> ServiceMap:
    """Read kube-proxy's rules from the node (or the named netns) in whichever modes are present.

    Runs `iptables-save` (and the other iptables variant's save, when installed), `ip6tables-save`,
    `nft -j list ruleset` and, when
    the IPVS module is loaded, `ipvsadm -Ln`. Raises PodtraceError when the netns does not exist, when neither
    iptables-save nor nft is installed, or when one of them fails.
    """
    if netns is not None and not os.path.exists(f"/run/netns/{netns}"):
        raise PodtraceError(f"network namespace {netns} does not exist", "see `ip netns list`")
    run = runner or command_runner(netns)
    maps: list[ServiceMap] = []
    seen_tables: list[str] = []
    found_any = False
    text = run(["iptables-save"])
    if text is not None:
        found_any = True
        variant = iptables_variant(text)
        other = {"nf_tables": "iptables-legacy-save", "legacy": "iptables-nft-save"}.get(variant)
        texts = [text]
        if other:
            extra = _optional(run, [other])
            if extra:
                texts.append(extra)
        for t in texts:
            maps.append(parse_iptables_save(t))
        if variant == "nf_tables":
            seen_tables = [f"ip {t}" for t in re.findall(r"^\*(\w+)", text, re.M)]
    # IPv6 Services (single-stack v6 and the v6 half of dual-stack) live in ip6tables.
    text6 = _optional(run, ["ip6tables-save"])
    if text6 and re.search(r"^-A ", text6, re.M):
        maps.append(parse_iptables_save(text6))
        if iptables_variant(text6) == "nf_tables":
            seen_tables += [f"ip6 {t}" for t in re.findall(r"^\*(\w+)", text6, re.M)]
    nft = run(["nft", "-j", "list", "ruleset"])
    if nft is not None:
        found_any = True
        if nft.strip():
            try:
                maps.append(parse_nft_json(nft, skip_tables=seen_tables))
            except (ValueError, KeyError, TypeError) as err:
                raise PodtraceError(f"cannot read `nft -j list ruleset` output: {err}",
                                    "is nft older than 0.9.0 (no JSON)?") from err
    if not found_any:
        raise PodtraceError("neither iptables-save nor nft is installed",
                            "install iptables or nftables to read kube-proxy's rules")
    if os.path.exists("/proc/net/ip_vs"):  # module loaded; never make ipvsadm load it
        ipvs = _optional(run, ["ipvsadm", "-Ln"])
        if ipvs:
            maps.append(parse_ipvsadm(ipvs))
    return merge(*maps)


def _optional(run: Runner, argv: Sequence[str]) -> str | None:
    """A command whose failure only means "nothing there" (the other iptables variant, ipvsadm)."""
    try:
        return run(argv)
    except PodtraceError:
        return None
