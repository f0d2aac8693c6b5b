"""The hook points podtrace wants and, for each, its candidate attach mechanisms in order of preference.

Pure data: tracer/kernel/capabilities.py tries candidates on the running kernel, tracer/kernel/ladder.py picks
from the results.
Every candidate names the bpf/ program that implements it: a mechanism podtrace has no program for (fentry,
today) is not a candidate, so doctor never reports a choice that no session could load.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tracer.probes import registry


class Mechanism(str, Enum):
    FENTRY = "fentry"
    TP_BTF = "tp_btf"  # BTF-typed raw tracepoint (BPF_TRACE_RAW_TP), loaded by tracer/probes/tpbtf.py
    KPROBE = "kprobe"
    RAW_TRACEPOINT = "raw_tracepoint"
    TRACEPOINT = "tracepoint"
    NETFILTER_LINK = "netfilter_link"
    TC = "tc"


@dataclass(frozen=True)
class Candidate:
    mechanism: Mechanism
    targets: tuple[str, ...]  # functions, tracepoints ("net:netif_receive_skb"), hooks; all must attach
    program: str  # the registered bpf/ source that attaches there (tests check it declares each target)
    gives: str = ""  # what this mechanism shows, or loses compared with the preferred one

    def __post_init__(self) -> None:
        if self.program not in registry.SOURCES:
            raise ValueError(f"candidate {self.label()}: bpf/{self.program} is no registered program "
                             "(tracer/probes/registry.py)")

    @property
    def keys(self) -> tuple[str, ...]:
        """Trial keys, one per target: "kprobe:nf_hook_slow"."""
        return tuple(f"{self.mechanism.value}:{target}" for target in self.targets)

    def label(self) -> str:
        return f"{self.mechanism.value} {', '.join(self.targets)}"


@dataclass(frozen=True)
class HookPoint:
    name: str
    concern: str
    core: bool  # podtrace is useless without it: doctor exits 1 when a core hook point cannot attach
    candidates: tuple[Candidate, ...]
    unseen: str  # what the user cannot see when no candidate attaches
    subsystem: str = ""  # e.g. "IPVS": named when the kernel lacks it entirely
    requires_symbols: tuple[str, ...] = ()  # kernel symbols proving the subsystem is present


def _c(mechanism: Mechanism, *targets: str, program: str, gives: str = "") -> Candidate:
    return Candidate(mechanism, tuple(targets), program, gives)


M = Mechanism
NF_PROBE = "netfilter:ipv4"  # a netfilter link target: family, hooks chosen by the probe

HOOK_POINTS: tuple[HookPoint, ...] = (
    HookPoint(
        "drops",
        "packet drops with the kernel's reason and location",
        core=True,
        candidates=(
            # The same drops either way; tp_btf's typed arguments make each one cheaper (direct loads).
            _c(M.TP_BTF, "kfree_skb", program="drops.c", gives="reason and location (5.17+)"),
            _c(M.RAW_TRACEPOINT, "kfree_skb", program="drops.c", gives="reason and location (5.17+)"),
        ),
        unseen="no drop events at all",
    ),
    HookPoint(
        "path",
        "packet path of traced packets (receive, queue, transmit)",
        core=True,
        candidates=(
            _c(
                M.TRACEPOINT,
                "net:netif_receive_skb",
                "net:net_dev_queue",
                program="path.c",
                gives="device receive, transmit queue and driver transmit",
            ),
            _c(M.TC, "clsact", program="tc.c", gives="ingress and egress on chosen interfaces only"),
        ),
        unseen="no per-packet path for traced packets",
    ),
    HookPoint(
        "netfilter",
        "netfilter hooks: time in iptables/nftables, last hook before a drop",
        core=False,
        candidates=(
            _c(M.KPROBE, "nf_hook_slow", "ipt_do_table", "nft_do_chain", program="nfkprobe.c",
               gives="verdicts with table and chain"),
            _c(
                M.NETFILTER_LINK,
                NF_PROBE,
                program="netfilter.c",
                gives="hook and priority of the last step passed, time per hook; no table/chain attribution",
            ),
        ),
        unseen="no netfilter hook attribution or time spent in rules",
    ),
    HookPoint(
        "nat",
        "Service NAT: tuples before and after kube-proxy's DNAT/SNAT",
        core=False,
        candidates=(
            _c(M.NETFILTER_LINK, NF_PROBE, program="netfilter.c", gives="tuples before/after NAT at each hook"),
        ),
        unseen="Service flows fall back to conntrack tables only (no per-packet NAT)",
    ),
    HookPoint(
        "ipvs",
        "kube-proxy IPVS mode: scheduler choices and NAT transmit",
        core=False,
        candidates=(
            # bpf/ipvs.c also probes handle_response (replies) where the kernel has that symbol.
            _c(M.KPROBE, "ip_vs_conn_new", "ip_vs_nat_xmit", program="ipvs.c"),
        ),
        unseen="IPVS Service flows (iptables and nftables modes are unaffected)",
        subsystem="IPVS",
        requires_symbols=("ip_vs_conn_new",),
    ),
    HookPoint(
        "vxlan",
        "VXLAN encapsulation and decapsulation",
        core=False,
        candidates=(
            _c(M.KPROBE, "vxlan_rcv", "vxlan_xmit_one", program="overlay.c",
               gives="encap/decap with VNI from the driver"),
            _c(
                M.TRACEPOINT,
                "net:netif_receive_skb",
                "net:net_dev_queue",
                program="path.c",
                gives="device- and UDP-port-based (8472/4789) on vxlan devices and the underlay",
            ),
        ),
        unseen="overlay tunnels and inner/outer correlation",
        subsystem="VXLAN",
        requires_symbols=("vxlan_xmit_one",),
    ),
    HookPoint(
        "fragmentation",
        "IP fragmentation the node does itself",
        core=False,
        candidates=(
            _c(M.KPROBE, "ip_do_fragment", program="overlay.c", gives="every local fragmentation"),
            # Without the kprobe: fragments are seen as they are queued on devices (MF/offset of path events).
            _c(M.TRACEPOINT, "net:net_dev_queue", program="path.c", gives="fragments seen on transmit only"),
        ),
        unseen="fragmentation; MTU drops still show as drop reasons",
    ),
    HookPoint(
        "icmp",
        "ICMP frag-needed / packet-too-big and reassembly errors the node sends",
        core=False,
        candidates=(
            # bpf/icmp.c: each error sent, with the offending packet and the MTU it quotes.
            _c(M.TRACEPOINT, "icmp:icmp_send", program="icmp.c", gives="ICMP errors sent, with the packet"),
        ),
        unseen="frag-needed only as ICMP packets on the path, without the offending packet",
    ),
    HookPoint(
        "softirq",
        "NET_RX/NET_TX softirq wait and run time, NAPI polls",
        core=False,
        candidates=(
            _c(
                M.TRACEPOINT,
                "irq:softirq_raise",
                "irq:softirq_entry",
                "irq:softirq_exit",
                "napi:napi_poll",
                program="softirq.c",
                gives="per-CPU histograms and NAPI budget use",
            ),
        ),
        unseen="softirq latency (only /proc/net/softnet_stat deltas remain)",
    ),
)


def hook_point(name: str) -> HookPoint:
    for point in HOOK_POINTS:
        if point.name == name:
            return point
    raise KeyError(name)
