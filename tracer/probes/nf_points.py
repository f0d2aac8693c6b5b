"""The netfilter points podtrace's BPF netfilter links sit at (PT_NF_* in bpf/podtrace.h): hook, priority and the
label a user reads. Pure data, shared by the attach code (tracer/probes/netfilter.py) and everything that names a
point."""

from __future__ import annotations

from dataclasses import dataclass

INT_MIN_PLUS_1 = -(2**31) + 1  # NF_IP_PRI_FIRST itself is reserved
INT_MAX_MINUS_1 = 2**31 - 2


@dataclass(frozen=True)
class NfPoint:
    index: int  # PT_NF_* in bpf/podtrace.h
    program: str  # function in bpf/netfilter.c
    hook: str
    priority: int
    label: str  # what a user reads


# Priorities around the kernel's own (include/uapi/linux/netfilter_ipv4.h): conntrack -200, DNAT -100,
# filter 0, SNAT 100.
POINTS: tuple[NfPoint, ...] = (
    NfPoint(0, "pt_nf_pre_first", "PREROUTING", INT_MIN_PLUS_1, "PREROUTING before conntrack"),
    NfPoint(1, "pt_nf_pre_after_dnat", "PREROUTING", -99, "PREROUTING after DNAT"),
    NfPoint(2, "pt_nf_in_first", "INPUT", INT_MIN_PLUS_1, "INPUT first"),
    NfPoint(3, "pt_nf_in_last", "INPUT", INT_MAX_MINUS_1, "INPUT last"),
    NfPoint(4, "pt_nf_fwd_first", "FORWARD", INT_MIN_PLUS_1, "FORWARD first"),
    NfPoint(5, "pt_nf_fwd_last", "FORWARD", INT_MAX_MINUS_1, "FORWARD last"),
    NfPoint(6, "pt_nf_out_first", "OUTPUT", INT_MIN_PLUS_1, "OUTPUT before conntrack"),
    NfPoint(7, "pt_nf_out_after_dnat", "OUTPUT", -99, "OUTPUT after DNAT"),
    NfPoint(8, "pt_nf_out_last", "OUTPUT", INT_MAX_MINUS_1, "OUTPUT last"),
    NfPoint(9, "pt_nf_post_before_snat", "POSTROUTING", 99, "POSTROUTING before SNAT"),
    NfPoint(10, "pt_nf_post_last", "POSTROUTING", INT_MAX_MINUS_1, "POSTROUTING after SNAT"),
)
# The conntrack mode (bpf/nfct.c, `podtrace flows` by default): two of those points, where NAT'd packets are counted
# per conntrack entry; the hook a netfilter drop died in comes from its stack (tracer/probes/nf_callers.py).
CONNTRACK_POINTS: tuple[NfPoint, ...] = (
    NfPoint(1, "pt_nfct_pre", "PREROUTING", -99, POINTS[1].label),
    NfPoint(7, "pt_nfct_out", "OUTPUT", -99, POINTS[7].label),
)
HIST_SLOTS = 32


def point_label(index: int) -> str:
    return POINTS[index].label if 0 <= index < len(POINTS) else f"point {index}"


def last_point_label(nf_point: int) -> str:
    """A drop event's nf_point (index + 1, 0 for none) as text."""
    return point_label(nf_point - 1) if nf_point else "-"
