"""Issue 2 on the real kernel: doctor tells the truth, BTF offsets read what the kernel's own tracepoint says,
and the Python mirror of the event struct matches what BCC compiles."""

from __future__ import annotations

import ctypes
import json
import os
import platform
import time

import pytest
from support.netns import netns_pair, send_udp
from support.podtrace import run

from bpf import BPF_DIR
from tracer import bccenv, events
from tracer.btf import Btf
from tracer.ksyms import KernelSymbols
from tracer.live import LiveSource
from tracer.pcapfilter import compile_filter
from tracer.probes import ProbeConfig

pytestmark = pytest.mark.root


def test_doctor_reports_what_the_kernel_really_allows() -> None:
    result = run("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    mechanisms = report["mechanisms"]
    kprobes_in_kernel = os.path.exists("/sys/kernel/tracing/kprobe_events") or os.path.isdir(
        "/sys/bus/event_source/devices/kprobe"
    )
    assert mechanisms["kprobe"]["available"] == kprobes_in_kernel
    if not kprobes_in_kernel:
        assert "not in this kernel" in mechanisms["kprobe"]["reason"]
    for always in ("raw_tracepoint", "tracepoint", "tc"):
        assert mechanisms[always]["available"], mechanisms[always]
    major, minor = (int(part) for part in platform.release().split(".")[:2])
    assert mechanisms["netfilter_link"]["available"] == ((major, minor) >= (6, 4))
    ipvs = next(hook for hook in report["hooks"] if hook["name"] == "ipvs")
    has_ipvs = KernelSymbols.load().has("ip_vs_conn_new")
    assert bool(ipvs["chosen"]) == (has_ipvs and kprobes_in_kernel)
    if not has_ipvs:
        assert any("IPVS" in rejected["reason"] for rejected in ipvs["rejected"])
        assert any(line.startswith("ipvs:") for line in report["cannot_see"])
    own_headers = os.path.isdir(f"/lib/modules/{platform.release()}/build")
    assert report["headers"]["kind"] == ("running" if own_headers else "fallback")
    assert report["core_ok"] is True
    assert report["btf"]["drop_reasons"] == len(Btf.load().enum("skb_drop_reason"))


def test_doctor_human_output_names_the_plan() -> None:
    result = run("doctor")
    assert result.returncode == 0, result.stderr
    assert "drops          raw_tracepoint: kfree_skb" in result.stdout
    assert "hook points" in result.stdout and "Traceback" not in result.stderr


TRACEPOINT_SIDE = r"""
#include "podtrace.h"
struct seen { u64 skb; u64 ts; u32 len; char name[16]; };
BPF_HASH(by_time, u64, struct seen, 65536);
TRACEPOINT_PROBE(net, netif_receive_skb)
{
    struct seen s = {};
    s.skb = (u64)args->skbaddr;
    s.ts = bpf_ktime_get_ns();
    s.len = args->len;
    TP_DATA_LOC_READ_CONST(s.name, name, 16);
    by_time.update(&s.ts, &s);
    return 0;
}
"""


def test_btf_offsets_read_the_same_skb_fields_as_the_kernels_own_tracepoint() -> None:
    """Path events read skb->len, the IPv4 header and dev->name through BTF offsets; the netif_receive_skb
    tracepoint records skb->len and the device name itself. Match them by skb address."""
    bcc = bccenv.bcc_module()
    with netns_pair() as pair:
        inode_b = pair.inode(pair.b)
        reference = bcc.BPF(text=TRACEPOINT_SIDE, cflags=[f"-I{BPF_DIR}"])
        source = LiveSource(ProbeConfig(path=True, drops=False, filter=compile_filter("udp port 5099"),
                                        netns_inode=inode_b))
        source.start(progress=False)
        try:
            send_udp(pair.a, pair.addr_b, 5099, 5, size=100, src_port=41099)
            time.sleep(0.3)
            received = [e for e in source.poll(200) if e.type == events.EVENT_PATH and e.reason == events.POINT_RX]
            # skb memory is reused, so match on the address and the nearest time: both programs run on the
            # same tracepoint hit, microseconds apart.
            seen = [value for _key, value in reference["by_time"].items()]
        finally:
            source.close()
            reference.cleanup()
    assert len(received) == 5
    for event in received:
        same_skb = [value for value in seen if value.skb == event.skb]
        assert same_skb, "the tracepoint saw the same skb"
        truth = min(same_skb, key=lambda value: abs(value.ts - event.ts_ns))
        assert abs(truth.ts - event.ts_ns) < 1_000_000
        assert event.len == truth.len == 100 + 8 + 20  # UDP payload + UDP header + IPv4 header
        assert event.ifname == ctypes.string_at(truth.name).decode() == "veth-b"
        assert (event.outer.src, event.outer.dst) == (pair.addr_a, pair.addr_b)
        assert (event.outer.sport, event.outer.dport, event.outer.proto) == (41099, 5099, 17)
        assert event.netns == inode_b


LAYOUT_PROGRAM = r"""
#include "podtrace.h"
BPF_ARRAY(layout, struct pt_packet_event, 1);
int unused(void *ctx) { return 0; }
"""


def test_python_event_mirror_matches_the_struct_bcc_compiles() -> None:
    bcc = bccenv.bcc_module()
    module = bcc.BPF(text=LAYOUT_PROGRAM, cflags=[f"-I{BPF_DIR}"])
    try:
        leaf = module["layout"].Leaf
        assert ctypes.sizeof(leaf) == events.EVENT_SIZE
        offsets = events.field_offsets()
        for name, _ctype in leaf._fields_:
            if name.startswith("__pad"):
                continue
            assert getattr(leaf, name).offset == offsets[name], name
        tuple_type = dict(leaf._fields_)["outer"]
        for name, _ctype in tuple_type._fields_:
            assert offsets["outer"] + getattr(tuple_type, name).offset == offsets[f"outer.{name}"], name
    finally:
        module.cleanup()


def test_pair_fixture_cleans_up() -> None:
    with netns_pair() as pair:
        names = (pair.a, pair.b)
        assert all(os.path.exists(f"/run/netns/{name}") for name in names)
    assert not any(os.path.exists(f"/run/netns/{name}") for name in names)


