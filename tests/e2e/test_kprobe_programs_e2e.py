"""The kprobe programs (bpf/nfkprobe.c, bpf/overlay.c) on the host kernel, which cannot attach kprobes: they
compile against this kernel's BTF offsets and pass its verifier, the verdict event's Python mirror matches
what BCC compiles, and a normal session here keeps using netfilter links and tracepoints.
(The VM tier attaches them for real: tests/vm/inner/test_kprobes.py.)"""

from __future__ import annotations

import ctypes

import pytest

from bpf import BPF_DIR
from tracer.events import decode as events
from tracer.kernel import bccenv
from tracer.kernel import capabilities as kernel
from tracer.kernel.btf import Btf
from tracer.probes.build import ProbeConfig, build
from tracer.probes.kprobes import KPROBES

pytestmark = pytest.mark.root

CONCERNS = ("netfilter", "vxlan", "fragmentation")


def test_programs_compile_and_pass_the_verifier() -> None:
    bcc = bccenv.bcc_module()
    result = build(Btf.load(), ProbeConfig(kprobes=CONCERNS))
    assert {"nf_kprobe", "overlay_kprobe"} <= set(result.programs)
    flags = set(result.cflags)
    # The host builds netfilter, x_tables, nf_tables and vxlan in: every offset comes from vmlinux BTF.
    for have in ("PT_HAVE_NF_STATE", "PT_HAVE_XT_TABLE", "PT_HAVE_NFT_CHAIN", "PT_HAVE_VXLAN_RDST",
                 "PT_HAVE_DEV_MTU"):
        assert f"-D{have}=1" in flags, have
    with bccenv.captured_stderr() as errors:
        module = bcc.BPF(text=result.text, cflags=result.cflags)
    try:
        for concern in CONCERNS:
            for probe in KPROBES[concern]:
                function = module.load_func(probe.program, bcc.BPF.KPROBE)  # the verifier runs here
                assert function.fd > 0, (probe, errors)
    finally:
        module.cleanup()


LAYOUT_PROGRAM = r"""
#include "podtrace.h"
BPF_ARRAY(layout, struct pt_nf_verdict_event, 1);
int unused(void *ctx) { return 0; }
"""


def test_verdict_mirror_matches_the_struct_bcc_compiles() -> None:
    bcc = bccenv.bcc_module()
    module = bcc.BPF(text=LAYOUT_PROGRAM, cflags=[f"-I{BPF_DIR}"])
    try:
        leaf = module["layout"].Leaf
        assert ctypes.sizeof(leaf) == events.VERDICT_SIZE
        offsets = events.verdict_offsets()
        for name, _ctype in leaf._fields_:
            if name.startswith("__pad") or name == "pad2":
                continue
            assert getattr(leaf, name).offset == offsets[name], name
    finally:
        module.cleanup()


def test_host_sessions_keep_links_and_take_no_kprobes() -> None:
    import argparse

    from tracer.sources.session import probe_config

    assert not kernel.kprobes_available(), "this test describes the CI host (CONFIG_KPROBES off)"
    args = argparse.Namespace(filter=[], ringbuf_pages=256, duration=None, netns=None, ifname=None, tc=[],
                              node=None)
    config = probe_config(args, path=True, netfilter=True)
    assert (config.netfilter, config.kprobes) == (True, ())
