"""The kprobe side of the attach ladder: which concerns get kprobe programs (bpf/nfkprobe.c, bpf/overlay.c) on
this kernel, and which functions each program attaches to.

Choosing runs the ladder (tracer/kernel/ladder.py) on cheap trials: kprobes present and the function in kallsyms.
The real attach in tracer/sources/live.py is the proof; doctor still runs the full trials.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.kernel import capabilities as kernel
from tracer.kernel.hookpoints import hook_point
from tracer.kernel.ksyms import KernelSymbols
from tracer.kernel.ladder import Trial, plan_hook

CONCERNS = ("netfilter", "vxlan", "fragmentation")


@dataclass(frozen=True)
class Kprobe:
    function: str  # kernel function
    program: str  # C function in bpf/nfkprobe.c or bpf/overlay.c
    ret: bool = False  # kretprobe
    needs: str = ""  # -D macro the program is compiled under ("" = always compiled with its concern)


KPROBES: dict[str, tuple[Kprobe, ...]] = {
    "netfilter": (
        Kprobe("nf_hook_slow", "pt_nfk_hook_entry"),
        Kprobe("nf_hook_slow", "pt_nfk_hook_return", ret=True),
        Kprobe("ipt_do_table", "pt_nfk_ipt_entry", needs="PT_HAVE_XT_TABLE"),
        Kprobe("ipt_do_table", "pt_nfk_table_return", ret=True, needs="PT_HAVE_XT_TABLE"),
        Kprobe("nft_do_chain", "pt_nfk_nft_entry", needs="PT_HAVE_NFT_CHAIN"),
        Kprobe("nft_do_chain", "pt_nfk_table_return", ret=True, needs="PT_HAVE_NFT_CHAIN"),
    ),
    "vxlan": (
        Kprobe("vxlan_rcv", "pt_kp_vxlan_rcv"),
        Kprobe("vxlan_xmit_one", "pt_kp_vxlan_xmit"),
    ),
    "fragmentation": (Kprobe("ip_do_fragment", "pt_kp_fragment"),),
    # bpf/ipvs.c; handle_response is static in ip_vs_core.c but not inlined on 6.1 (its own symbol in ip_vs.ko)
    "ipvs": (
        Kprobe("ip_vs_conn_new", "pt_ipvs_conn_new", ret=True, needs="PT_HAVE_IPVS_CONN"),
        Kprobe("ip_vs_nat_xmit", "pt_ipvs_nat_xmit", needs="PT_HAVE_IPVS_CONN"),
        Kprobe("handle_response", "pt_ipvs_response", needs="PT_HAVE_IPVS_CONN"),
    ),
}


def cheap_trials(concern: str, symbols: KernelSymbols, have_kprobes: bool, release: str) -> dict[str, Trial]:
    """Trials for one hook point's candidates without loading anything (see the module docstring)."""
    point = hook_point(concern)
    trials: dict[str, Trial] = {}
    for symbol in point.requires_symbols:
        trials[f"symbol:{symbol}"] = Trial(symbols.has(symbol), "not in this kernel")
    for candidate in point.candidates:
        for key, target in zip(candidate.keys, candidate.targets):
            mechanism = candidate.mechanism.value
            if mechanism == "kprobe":
                ok = have_kprobes and symbols.has(target)
                trials[key] = Trial(ok, "" if ok else "kprobes missing or function not in this kernel")
            elif mechanism == "netfilter_link":
                ok = kernel.kernel_version(release) >= (6, 4)
                trials[key] = Trial(ok, "" if ok else "netfilter links need kernel 6.4")
            else:  # tracepoints and tc: the device-based fallbacks every supported kernel has
                trials[key] = Trial(True)
    return trials


def choose(concerns: tuple[str, ...], symbols: KernelSymbols, have_kprobes: bool, release: str) -> tuple[str, ...]:
    """The concerns whose ladder picks kprobe. Netfilter also takes kprobes when nothing else can attach and
    nf_hook_slow can be probed (e.g. 6.1 without nf_tables loaded: hooks and iptables tables, no nft names)."""
    chosen = []
    for concern in concerns:
        trials = cheap_trials(concern, symbols, have_kprobes, release)
        plan = plan_hook(hook_point(concern), trials)
        fallback = concern == "netfilter" and plan.chosen is None and trials["kprobe:nf_hook_slow"].ok
        if plan.chosen == "kprobe" or fallback:
            chosen.append(concern)
    return tuple(chosen)


def choose_live(concerns: tuple[str, ...]) -> tuple[str, ...]:
    """choose() on the running kernel."""
    import platform

    have = kernel.kprobes_available()
    if not have:
        return ()
    return choose(concerns, KernelSymbols.load(), have, platform.release())


def netfilter_links_possible(release: str | None = None) -> bool:
    return kernel.kernel_version(release) >= (6, 4)


def attach_list(concerns: tuple[str, ...], cflags: list[str], symbols: KernelSymbols) -> list[Kprobe]:
    """The kprobes to attach: compiled in (their -D macro present) and their function in this kernel."""
    defined = {flag[2:].split("=", 1)[0] for flag in cflags if flag.startswith("-D")}
    wanted = []
    for concern in concerns:
        for probe in KPROBES[concern]:
            if (not probe.needs or probe.needs in defined) and symbols.has(probe.function):
                wanted.append(probe)
    return wanted
