"""The hook a netfilter drop died in, from the kernel stack: the function that called nf_hook_slow.

The conntrack flows mode (bpf/nfct.c) has no program at every hook, so a drop inside one is told by who called
nf_hook_slow (seen on this kernel's stacks: ip_rcv for PREROUTING, ip_local_deliver INPUT, ip_forward FORWARD,
__ip_local_out OUTPUT, ip_output POSTROUTING, and br_nf_pre_routing for a bridged pod's PREROUTING; the NF_HOOK
calls in net/ipv4/ip_*.c and net/bridge/br_netfilter_hooks.c). The drop probe walks the
stack of NETFILTER_DROP drops only and compares return addresses with these functions' ranges from kallsyms.
"""

from __future__ import annotations

from tracer.kernel.ksyms import KernelSymbols

# function -> enum nf_inet_hooks; IPv4 only, as the netfilter links are (tracer/probes/nflink.py NFPROTO_IPV4)
CALLERS: tuple[tuple[str, int], ...] = (
    ("ip_rcv", 0),
    ("ip_sublist_rcv", 0),  # the list receive path: NF_HOOK_LIST -> nf_hook_slow_list -> nf_hook_slow
    ("ip_local_deliver", 1),
    ("ip_forward", 2),
    ("__ip_local_out", 3),
    ("ip_output", 4),
    ("ip_mc_output", 4),
    # bridged pod traffic with br_netfilter (bridge-nf-call-iptables=1): the bridge calls the IPv4 hooks itself
    ("br_nf_pre_routing", 0),
    ("br_nf_forward_ip", 2),  # br_nf_forward_ip.part.0 on this kernel
    ("br_nf_post_routing", 4),
)
MAX_RANGES = 16  # PT_NFC_*_0..15 in bpf/drops.c: functions and their clones (br_nf_forward_ip.part.0)


def caller_cflags(symbols: KernelSymbols) -> list[str]:
    """-DPT_NF_CALLERS=1 and one address range per caller found, or [] when kallsyms hides addresses."""
    found = [(low, high, hook) for name, hook in CALLERS for low, high in symbols.ranges_of(name)]
    flags: list[str] = []
    for slot, (low, high, hook) in enumerate(found[:MAX_RANGES]):
        flags += [f"-DPT_NFC_LO_{slot}={low:#x}ULL", f"-DPT_NFC_HI_{slot}={high:#x}ULL", f"-DPT_NFC_HOOK_{slot}={hook}"]
    return ["-DPT_NF_CALLERS=1", *flags] if flags else []
