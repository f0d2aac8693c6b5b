"""The kprobe side of the ladder without a kernel: the verdict event's layout and decoding, drop attribution to
the netfilter table and chain, which concerns get kprobes on which kernel, and module BTF offsets."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from tests.support.c_layout import c_struct
from tracer.analysis.aggregate import DropTable
from tracer.analysis.nfverdict import MATCH_WINDOW_NS, NfAttribution, hook_label, kprobe_hook
from tracer.events import decode as events
from tracer.events.decode import (
    EVENT_DROP,
    EVENT_NF_VERDICT,
    NFK_IPTABLES,
    NFK_NFTABLES,
    VERDICT_SIZE,
    PacketEvent,
    Tuple,
    decode_verdict,
    encode,
)
from tracer.kernel.btf import Btf
from tracer.kernel.ksyms import KernelSymbols
from tracer.kernel.modbtf import IPT_OFFSETS, ModuleBtf, merge_split
from tracer.output.report import Resolver, drop_rows
from tracer.probes.kprobes import KPROBES, attach_list, choose
from tracer.probes.registry import KPROBE_PROGRAMS
from tracer.probes.registry import program as registered

ROOT = Path(__file__).resolve().parents[2]
HEADER = (ROOT / "bpf" / "podtrace.h").read_text()


def define(name: str) -> int:
    match = re.search(rf"#define {name} (0x[0-9a-fA-F]+|\d+)", HEADER)
    assert match, name
    return int(match.group(1), 0)


# -- the event struct ---------------------------------------------------------------------------------------


def test_constants_match_the_header() -> None:
    assert define("PT_EVENT_NF_VERDICT") == EVENT_NF_VERDICT
    assert EVENT_NF_VERDICT not in (define("PT_EVENT_DROP"), define("PT_EVENT_PATH"), define("PT_EVENT_NAT"))
    assert (define("PT_NFK_IPTABLES"), define("PT_NFK_NFTABLES")) == (NFK_IPTABLES, NFK_NFTABLES)
    assert define("PT_NFK_NAME") == events.NFK_NAME
    assert define("PT_NFK_POINT_FLAG") == 0x100
    for name, value in (("PT_POINT_VXLAN_RCV", events.POINT_VXLAN_RCV), ("PT_POINT_VXLAN_XMIT",
                        events.POINT_VXLAN_XMIT), ("PT_POINT_FRAGMENT", events.POINT_FRAGMENT)):
        assert define(name) == value
    points = [int(v) for v in re.findall(r"#define PT_POINT_\w+ (\d+)", HEADER)]
    assert len(points) == len(set(points)), "point codes are unique"
    kinds = [int(v) for v in re.findall(r"#define PT_EVENT_\w+ (\d+)", HEADER)]
    assert len(kinds) == len(set(kinds)), "event types are unique"


def test_verdict_layout_follows_the_c_rules() -> None:
    offsets, size = c_struct("pt_nf_verdict_event")
    assert size == VERDICT_SIZE == 160
    mirror = events.verdict_offsets()
    for name in ("type", "ts_ns", "skb", "hook_ns", "netns", "verdict", "hook", "pf", "source", "len", "table",
                 "chain", "tuple"):
        assert mirror[name] == offsets[name], name


def verdict_bytes(skb: int, ts_ns: int, table: bytes, chain: bytes = b"", hook: int = 1, source: int = NFK_IPTABLES,
                  hook_ns: int = 4321) -> bytes:
    """A verdict event built byte by byte at the C offsets (not through the mirror's struct format)."""
    raw = bytearray(VERDICT_SIZE)
    struct.pack_into("<IIQQQII", raw, 0, EVENT_NF_VERDICT, 1, ts_ns, skb, hook_ns, 4026531840, 0)
    raw[40:44] = bytes([hook, 2, source, 0])
    struct.pack_into("<I", raw, 44, 60)
    raw[48:48 + len(table)] = table
    raw[80:80 + len(chain)] = chain
    raw[112:116] = bytes([198, 18, 1, 1])
    raw[128:132] = bytes([198, 18, 1, 2])
    struct.pack_into("<HHBB", raw, 144, 40001, 6001, 4, 17)
    return bytes(raw)


def test_decode_verdict() -> None:
    verdict = decode_verdict(verdict_bytes(0xFFFF8880_12345600, 5_000, b"filter"))
    assert (verdict.table, verdict.chain, verdict.hook, verdict.pf, verdict.source) == ("filter", "", 1, 2, 1)
    assert (verdict.verdict, verdict.hook_ns, verdict.len, verdict.netns) == (0, 4321, 60, 4026531840)
    assert verdict.tuple.describe() == "udp 198.18.1.1:40001 > 198.18.1.2:6001"
    assert events.decode_any(verdict_bytes(1, 1, b"nat")).table == "nat"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="expected 160"):
        decode_verdict(b"\x05" * 100)


# -- attribution --------------------------------------------------------------------------------------------


def drop_event(skb: int, ts_ns: int, nf_point: int, dport: int = 6001) -> PacketEvent:
    outer = Tuple(bytes([198, 18, 1, 1]) + bytes(12), bytes([198, 18, 1, 2]) + bytes(12), 40001, dport, 4, 17,
                  0, 0, 0, 60)
    return PacketEvent(EVENT_DROP, 0, ts_ns, skb, 0xFFFFFFFF81000000, 3, 4026531840, 2, 60, 0, 0x800,
                       events.FLAG_PARSED, 0, 0, "veth-b", outer, None, b"", nf_point)


def test_hook_labels() -> None:
    assert kprobe_hook(0x100 | (2 << 4) | 1) == (2, 1)
    assert hook_label(0x100 | (2 << 4) | 1) == "INPUT"
    assert hook_label(0x100 | (10 << 4) | 4) == "POSTROUTING (ipv6)"
    assert hook_label(0) == "-"
    assert hook_label(3) == "INPUT first", "netfilter link points keep their labels"
    assert kprobe_hook(3) is None


def test_a_drop_gets_the_verdict_just_before_it_on_the_same_skb() -> None:
    attribution = NfAttribution()
    table = DropTable()
    in_input = 0x100 | (2 << 4) | 1
    stream = [
        verdict_bytes(0xA0, 1_000, b"filter"),  # iptables: chain is the hook's built-in one
        encode(drop_event(0xA0, 1_500, in_input)),
        verdict_bytes(0xB0, 2_000, b"pt_kp", b"input", source=NFK_NFTABLES),
        encode(drop_event(0xB0, 2_100, in_input, dport=6002)),
        encode(drop_event(0xC0, 2_200, in_input, dport=6003)),  # no verdict: conntrack, say
        verdict_bytes(0xD0, 3_000, b"filter"),
        encode(drop_event(0xD0, 3_000 + MATCH_WINDOW_NS + 1, in_input, dport=6004)),  # too late: another packet
    ]
    for raw in stream:
        table.add_raw(raw)
        attribution.add_raw(raw)
    rows = {row["dport"]: row for row in drop_rows(table, Resolver({3: "NETFILTER_DROP"}, str, hex), attribution)}
    assert (rows[6001]["hook"], rows[6001]["nf_source"], rows[6001]["table"], rows[6001]["chain"]) == (
        "INPUT", "iptables", "filter", "INPUT")
    assert rows[6001]["verdict"] == "DROP" and rows[6001]["nf_hook_us"] == 4.321
    assert (rows[6002]["nf_source"], rows[6002]["table"], rows[6002]["chain"]) == ("nftables", "pt_kp", "input")
    for unexplained in (6003, 6004):
        assert rows[unexplained]["hook"] == "INPUT" and "table" not in rows[unexplained]
    assert attribution.total == 3


def test_rows_without_kprobes_are_unchanged() -> None:
    table = DropTable()
    table.add_raw(encode(drop_event(0xA0, 1_500, 0)))
    (row,) = drop_rows(table, Resolver({}, str, hex))
    assert row["hook"] == "-" and not {"table", "chain", "verdict"} & row.keys()


# -- which concerns get kprobes -------------------------------------------------------------------------------

ALL = ("nf_hook_slow", "ipt_do_table", "nft_do_chain", "vxlan_rcv", "vxlan_xmit_one", "ip_do_fragment")


def symbols(*names: str) -> KernelSymbols:
    return KernelSymbols.parse("".join(f"ffffffff8100{i:04x} T {name}\n" for i, name in enumerate(names)))


@pytest.mark.parametrize(
    ("release", "have", "names", "expected"),
    [
        ("6.1.0-56-amd64", True, ALL, ("netfilter", "vxlan", "fragmentation")),  # the VM tier
        ("6.18.0", False, ALL, ()),  # the CI host: no kprobes, netfilter links
        ("6.8.0", True, ALL, ("netfilter", "vxlan", "fragmentation")),  # kprobes before links in the ladder
        # 6.1 without nf_tables loaded: the ladder's kprobe candidate fails, no links either: hooks + iptables.
        ("6.1.0", True, ("nf_hook_slow", "ipt_do_table", "ip_do_fragment"), ("netfilter", "fragmentation")),
        # 6.8 without nf_tables: netfilter links win, as the ladder says.
        ("6.8.0", True, ("nf_hook_slow", "ipt_do_table"), ()),
    ],
)
def test_choose(release: str, have: bool, names: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert choose(("netfilter", "vxlan", "fragmentation"), symbols(*names), have, release) == expected


def test_attach_list_needs_the_compiled_program_and_the_function() -> None:
    flags = ["-DPT_NFKPROBE=1", "-DPT_HAVE_XT_TABLE=1"]
    probes = attach_list(("netfilter",), flags, symbols("nf_hook_slow", "ipt_do_table", "nft_do_chain"))
    assert [(p.function, p.program, p.ret) for p in probes] == [
        ("nf_hook_slow", "pt_nfk_hook_entry", False), ("nf_hook_slow", "pt_nfk_hook_return", True),
        ("ipt_do_table", "pt_nfk_ipt_entry", False), ("ipt_do_table", "pt_nfk_table_return", True),
    ]
    assert attach_list(("vxlan",), [], symbols("vxlan_rcv")) == [KPROBES["vxlan"][0]]


def test_every_program_is_defined_in_its_c_file() -> None:
    for concern in ("netfilter", "vxlan", "fragmentation"):
        text = (ROOT / "bpf" / registered(KPROBE_PROGRAMS[concern]).source).read_text()
        for probe in KPROBES[concern]:
            assert f"int {probe.program}(struct pt_regs *ctx)" in text, probe
            if probe.needs and not probe.ret:  # entry programs exist only with the offsets they read
                guarded = text.split(f"#ifdef {probe.needs}\n")[1].split("#endif")[0]
                assert f"int {probe.program}(" in guarded, probe


# -- module BTF -----------------------------------------------------------------------------------------------


def btf_blob(types: bytes, strings: bytes) -> bytes:
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) + types + strings


def btf_type(name_off: int, kind: int, vlen: int, size_or_type: int) -> bytes:
    return struct.pack("<III", name_off, (kind << 24) | vlen, size_or_type)


def base_and_module() -> tuple[bytes, bytes]:
    """vmlinux: type 1 = int. Module (split): 2 = int[8], 3 = struct xt_table { int valid_hooks; int[8] name@8 }."""
    base_strings = b"\0int\0"
    base = btf_blob(btf_type(1, 1, 0, 4) + struct.pack("<I", 32), base_strings)
    at = len(base_strings)
    module_strings = b"\0xt_table\0valid_hooks\0name\0"
    xt_table, valid_hooks, name = at + 1, at + 10, at + 22
    types = btf_type(0, 3, 0, 0) + struct.pack("<III", 1, 1, 8)  # ARRAY of type 1 (int), 8 elements
    types += btf_type(xt_table, 4, 2, 40) + struct.pack("<III", valid_hooks, 1, 0) + struct.pack("<III", name, 2, 64)
    return base, btf_blob(types, module_strings)


def test_split_btf_merged_onto_vmlinux_reads_module_structs(tmp_path: Path) -> None:
    base, module = base_and_module()
    merged = Btf.from_bytes(merge_split(base, module))
    assert merged.member_offset("xt_table", "name") == 8
    assert merged.member_size("xt_table", "name") == 32
    (tmp_path / "vmlinux").write_bytes(base)
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "ip_tables").write_bytes(module)
    mods = ModuleBtf(Btf.from_bytes(base), str(tmp_path / "vmlinux"), str(tmp_path / "modules"))
    assert mods.cflags(IPT_OFFSETS, "PT_HAVE_XT_TABLE") == ["-DPT_OFF_XT_TABLE_NAME=8", "-DPT_HAVE_XT_TABLE=1"]
    (tmp_path / "modules" / "ip_tables").unlink()
    fresh = ModuleBtf(Btf.from_bytes(base), str(tmp_path / "vmlinux"), str(tmp_path / "modules"))
    assert fresh.cflags(IPT_OFFSETS, "PT_HAVE_XT_TABLE") == [], "module not loaded: no table names, no error"
