"""The hook of a netfilter drop from its stack: nf_hook_slow's callers' address ranges from a kallsyms text."""

from __future__ import annotations

from tracer.kernel.ksyms import KernelSymbols
from tracer.probes.nf_callers import caller_cflags

KALLSYMS = """\
ffffffff81a00000 T nf_hook_slow
ffffffff81a00400 T nf_hook_slow_list
ffffffff81c00000 T ip_rcv
ffffffff81c00180 t ip_rcv_core
ffffffff81c01000 T ip_local_deliver
ffffffff81c01100 T ip_local_deliver_finish
ffffffff81c02000 t ip_forward
ffffffff81c02000 t ip_forward_alias
ffffffff81c03000 t dup_static
ffffffff81c03100 t dup_static
ffffffff81c04000 t br_nf_forward_ip.part.0
ffffffff81c04400 t br_nf_pre_routing
ffffffff81c04800 t br_nf_dev_queue_xmit
ffffffff812465ed t br_nf_pre_routing.cold
ffffffff81246700 t other_cold_neighbour
"""


def test_ranges_run_to_the_next_symbol() -> None:
    symbols = KernelSymbols.parse(KALLSYMS)
    assert symbols.ranges_of("ip_rcv") == [(0xFFFFFFFF81C00000, 0xFFFFFFFF81C00180)]
    assert symbols.ranges_of("dup_static") == []  # two functions of one name: which one is unknown
    assert symbols.ranges_of("absent") == []
    # GCC's clones and cold parts belong to the function: both ranges
    assert symbols.ranges_of("br_nf_forward_ip") == [(0xFFFFFFFF81C04000, 0xFFFFFFFF81C04400)]
    assert sorted(symbols.ranges_of("br_nf_pre_routing")) == [(0xFFFFFFFF812465ED, 0xFFFFFFFF81246700),
                                                               (0xFFFFFFFF81C04400, 0xFFFFFFFF81C04800)]


def test_flags_name_each_caller_found_with_its_hook() -> None:
    flags = caller_cflags(KernelSymbols.parse(KALLSYMS))
    assert flags[0] == "-DPT_NF_CALLERS=1"
    assert "-DPT_NFC_LO_0=0xffffffff81c00000ULL" in flags and "-DPT_NFC_HI_0=0xffffffff81c00180ULL" in flags
    assert "-DPT_NFC_HOOK_0=0" in flags and "-DPT_NFC_HOOK_1=1" in flags  # ip_rcv PREROUTING, ip_local_deliver INPUT
    # ip_forward's alias at the same address does not end it: the range runs to the next address
    assert "-DPT_NFC_LO_2=0xffffffff81c02000ULL" in flags and "-DPT_NFC_HI_2=0xffffffff81c03000ULL" in flags
    assert "-DPT_NFC_HOOK_2=2" in flags


def test_hidden_addresses_give_no_flags() -> None:
    hidden = "\n".join(f"0000000000000000 {line.split(' ', 1)[1]}" for line in KALLSYMS.splitlines())
    assert caller_cflags(KernelSymbols.parse(hidden)) == []
