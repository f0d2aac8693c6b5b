"""KernelSymbols on a small kallsyms text."""

from __future__ import annotations

from pathlib import Path

from tracer.kernel.ksyms import KernelSymbols
from tracer.node.names import Symbolizer

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81a00000 T nf_hook_slow
ffffffff81a00200 t nf_hook_entry_hookfn
ffffffff81a00400 W weak_function
ffffffff81b00000 T __udp4_lib_rcv
ffffffff82000000 D init_net
ffffffff82001000 b some_bss
ffffffffc0a01000 t vxlan_rcv\t[vxlan]
ffffffffc0a02000 t vxlan_xmit_one\t[vxlan]
0000000000000000 A fixed_percpu_data
short line
"""

ZEROED = "\n".join(f"0000000000000000 {line.split(' ', 1)[1]}" for line in KALLSYMS.splitlines()[:10])


def test_symbolize_inside_functions() -> None:
    symbols = KernelSymbols.parse(KALLSYMS)
    assert symbols.symbolize(0xFFFFFFFF81A0008A) == "nf_hook_slow+0x8a"
    assert symbols.symbolize(0xFFFFFFFF81A00000) == "nf_hook_slow+0x0"
    assert symbols.symbolize(0xFFFFFFFF81A00210) == "nf_hook_entry_hookfn+0x10"
    assert symbols.symbolize(0xFFFFFFFF81A00401) == "weak_function+0x1"
    assert symbols.symbolize(0xFFFFFFFF81B004BC) == "__udp4_lib_rcv+0x4bc"
    assert symbols.symbolize(0xFFFFFFFFC0A02010) == "vxlan_xmit_one+0x10"  # module symbols, suffix dropped
    assert symbols.function_of(0xFFFFFFFF81B004BC) == "__udp4_lib_rcv"


def test_symbolize_outside_text() -> None:
    symbols = KernelSymbols.parse(KALLSYMS)
    assert symbols.symbolize(0) == "0x0"
    assert symbols.symbolize(0xFFFFFFFF80000000) == "0xffffffff80000000"  # before the first function
    # Data symbols are not functions: an address in init_net is far past __udp4_lib_rcv's end.
    assert symbols.symbolize(0xFFFFFFFF82000010) == "0xffffffff82000010"
    assert symbols.symbolize(0xFFFFFFFFC0C00000) == "0xffffffffc0c00000"  # more than 1 MiB past the last one
    assert symbols.function_of(0x1234) == "0x1234"


def test_has() -> None:
    symbols = KernelSymbols.parse(KALLSYMS)
    for name in ("nf_hook_slow", "vxlan_xmit_one", "init_net", "some_bss", "fixed_percpu_data"):
        assert symbols.has(name), name
    assert not symbols.has("ip_vs_conn_new")
    assert not symbols.has("[vxlan]")
    assert not symbols.has("line")


def test_zeroed_addresses_kptr_restrict() -> None:
    symbols = KernelSymbols.parse(ZEROED)
    assert not symbols.addresses_visible
    assert symbols.has("nf_hook_slow") and symbols.has("vxlan_rcv")  # names still prove presence
    assert symbols.symbolize(0xFFFFFFFF81A0008A) == "0xffffffff81a0008a"
    assert KernelSymbols.parse(KALLSYMS).addresses_visible


def test_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text(KALLSYMS)
    assert KernelSymbols.load(str(path)).symbolize(0xFFFFFFFF81A00001) == "nf_hook_slow+0x1"


def test_symbolizer() -> None:
    symbolize = Symbolizer(KernelSymbols.parse(KALLSYMS))
    assert symbolize(0) == "-"
    assert symbolize(0xFFFFFFFF81A0008A) == "nf_hook_slow+0x8a"
