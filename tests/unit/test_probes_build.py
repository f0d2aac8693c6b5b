"""tracer.probes.build.build() on this machine's BTF (/sys/kernel/btf/vmlinux is world-readable: no root needed)."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest

from bpf import BPF_DIR
from tracer.kernel.btf import Btf
from tracer.output.errors import KernelError, UsageError
from tracer.probes.build import (
    BTF_OFFSETS,
    RB_RECORD_MAX,
    RB_WAKE_MAX,
    ProbeConfig,
    btf_cflags,
    build,
    drop_reasons,
    rb_wake_every,
)
from tracer.probes.pcapfilter import compile_filter

VMLINUX = "/sys/kernel/btf/vmlinux"
FIXTURE_BTF = Path(__file__).parent / "fixtures" / "btf" / "fixture.btf"

pytestmark = pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason=f"{VMLINUX} is not readable here")


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.load(VMLINUX)


def defines(flags: list[str]) -> dict[str, str]:
    found = {}
    for flag in flags:
        match = re.fullmatch(r"-D(\w+)=(.+)", flag)
        if match:
            assert match.group(1) not in found, flag
            found[match.group(1)] = match.group(2)
    return found


def test_vmlinux_readable_without_root() -> None:
    assert os.stat(VMLINUX).st_mode & 0o004, "world-readable, so these tests hold for any user"


def test_btf_offsets_for_every_entry(btf: Btf) -> None:
    result = build(btf, ProbeConfig())
    flags = defines(result.cflags)
    assert result.cflags[0] == f"-I{BPF_DIR}"
    for macro, struct_name, member, size in BTF_OFFSETS:
        assert flags[macro] == str(btf.member_offset(struct_name, member)), macro
        assert btf.member_size(struct_name, member) == size
    # Facts about sk_buff that hold on every kernel podtrace supports.
    assert int(flags["PT_OFF_SK_BUFF_HEAD"]) < int(flags["PT_OFF_SK_BUFF_DATA"])
    assert int(flags["PT_OFF_SK_BUFF_DEV"]) < int(flags["PT_OFF_SK_BUFF_LEN"])
    assert len({int(flags[macro]) for macro, struct_name, *_ in BTF_OFFSETS if struct_name == "sk_buff"}) == 9
    assert flags["PT_PATH_RATE"] == "20000"
    assert "PT_FILTER_NETNS" not in flags and "PT_FILTER_IFNAME_LO" not in flags


def test_drop_reason_flags(btf: Btf) -> None:
    flags = defines(btf_cflags(btf))
    reasons = btf.enum("skb_drop_reason")  # 5.17+: this machine runs 6.x
    assert flags["PT_HAVE_DROP_REASON"] == "1"
    assert flags["PT_REASON_CONSUMED"] == f"{reasons['SKB_CONSUMED']}U"
    names = drop_reasons(btf)
    assert names[reasons["SKB_DROP_REASON_NO_SOCKET"]] == "NO_SOCKET"
    assert names[reasons["SKB_DROP_REASON_NETFILTER_DROP"]] == "NETFILTER_DROP"
    assert names[reasons["SKB_CONSUMED"]] == "CONSUMED"


def test_text_has_filter_and_drops_program(btf: Btf) -> None:
    config = ProbeConfig(filter=compile_filter("udp port 53"))
    result = build(btf, config)
    assert result.programs == ["drops"]
    text = result.text
    assert text.startswith('#include "podtrace.h"\n')
    assert "// filter: udp port 53" in text
    assert config.filter.c_source in text
    assert re.search(r"static __always_inline int pt_filter_match\(", text)
    assert "int pt_drop_btf(__u64 *ctx)" in text and "int pt_drop_raw_tp(" in text
    assert "BPF_RINGBUF_OUTPUT(events, 256);" in text
    assert (BPF_DIR / "skb.h").read_text() in text
    assert "TRACEPOINT_PROBE(net, netif_receive_skb)" not in text
    assert text.index("pt_filter_match(") < text.index("pt_emit(")  # defined before skb.h calls it
    assert result.dump().startswith("// podtrace probe source; compiled with:\n//   -I")


def test_path_only_when_asked(btf: Btf) -> None:
    result = build(btf, ProbeConfig(path=True, path_rate=500, ringbuf_pages=64))
    assert result.programs[:2] == ["drops", "path"]
    assert "TRACEPOINT_PROBE(net, netif_receive_skb)" in result.text
    assert "TRACEPOINT_PROBE(net, net_dev_queue)" in result.text
    assert "// filter: (none)" in result.text
    assert "BPF_RINGBUF_OUTPUT(events, 64);" in result.text
    assert defines(result.cflags)["PT_PATH_RATE"] == "500"
    only_path = build(btf, ProbeConfig(drops=False, path=True))
    assert only_path.programs == ["path"]
    assert "pt_drop_btf" not in only_path.text


def test_netns_and_ifname_words(btf: Btf) -> None:
    result = build(btf, ProbeConfig(netns_inode=4026531840, ifname="veth948fe603"))
    flags = defines(result.cflags)
    assert flags["PT_FILTER_NETNS"] == "4026531840U"
    low, high = struct.unpack("<QQ", b"veth948fe603".ljust(16, b"\0"))
    assert flags["PT_FILTER_IFNAME_LO"] == f"{low}ULL"
    assert flags["PT_FILTER_IFNAME_HI"] == f"{high}ULL"
    assert high == 0x33303665  # "e603": the bytes after the first 8, little-endian
    lo = defines(build(btf, ProbeConfig(ifname="lo")).cflags)
    assert (lo["PT_FILTER_IFNAME_LO"], lo["PT_FILTER_IFNAME_HI"]) == (f"{ord('l') | ord('o') << 8}ULL", "0ULL")
    longest = defines(build(btf, ProbeConfig(ifname="a" * 15)).cflags)
    assert longest["PT_FILTER_IFNAME_HI"] == f"{int.from_bytes(b'a' * 7, 'little')}ULL"


@pytest.mark.parametrize("name", ["a" * 16, "eth0 ", "eth/0", "eth:0", ".", "..", "a\tb", "é" * 8])
def test_bad_interface_names_raise(btf: Btf, name: str) -> None:
    with pytest.raises(UsageError, match="not a valid Linux interface name"):
        build(btf, ProbeConfig(ifname=name))


def test_empty_ifname_means_any(btf: Btf) -> None:
    assert "PT_FILTER_IFNAME_LO" not in defines(build(btf, ProbeConfig(ifname="")).cflags)


def test_btf_without_sk_buff_is_a_kernel_error() -> None:
    with pytest.raises(KernelError) as raised:
        build(Btf.load(str(FIXTURE_BTF)), ProbeConfig())
    assert "sk_buff" in raised.value.message
    assert drop_reasons(Btf.load(str(FIXTURE_BTF))) == {}


def test_conntrack_flows_mode_replaces_the_per_packet_links(btf: Btf) -> None:
    from tracer.probes.nf_points import CONNTRACK_POINTS

    per_packet = build(btf, ProbeConfig(netfilter=True))
    by_conntrack = build(btf, ProbeConfig(netfilter=True, netfilter_conntrack=True,
                                          nf_caller_cflags=("-DPT_NF_CALLERS=1",)))
    assert "netfilter" in per_packet.programs and "nfct" not in per_packet.programs
    assert "nfct" in by_conntrack.programs and "netfilter" not in by_conntrack.programs
    found = defines(by_conntrack.cflags)
    assert found["PT_NFCT"] == "1" and found["PT_CT"] == "1" and found["PT_NF_CALLERS"] == "1"
    assert "PT_NETFILTER" not in found and "nf_state, 65536" not in by_conntrack.text  # no per-skb map
    for point in CONNTRACK_POINTS:
        assert f"int {point.program}(struct pt_nf_ctx *ctx)" in by_conntrack.text
    assert not by_conntrack.nfct_refusal
    # the stack ranges are the conntrack mode's alone
    assert "PT_NF_CALLERS" not in defines(build(btf, ProbeConfig(netfilter=True, nf_caller_cflags=(
        "-DPT_NF_CALLERS=1",))).cflags)


@pytest.mark.parametrize("cpus", [1, 2, 8, 64, 256, 4096])
def test_unwoken_records_of_every_cpu_fit_in_half_the_ring(cpus: int) -> None:
    pages = 256
    every = rb_wake_every(pages, cpus)
    assert 1 <= every <= RB_WAKE_MAX
    if every > 1:  # one event per wakeup is the floor, whatever the ring holds
        assert cpus * every * RB_RECORD_MAX <= pages * 4096 // 2


def test_wake_count_reaches_the_probes(btf: Btf) -> None:
    flags = build(btf, ProbeConfig()).cflags
    assert f"-DPT_RB_WAKE_EVERY={rb_wake_every(256, os.cpu_count() or 1)}" in flags
