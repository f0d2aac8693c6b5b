"""Each event type's netns is read from its own layout: a verdict event keeps it after hook_ns (offset 32), not
where NAT and conntrack events keep theirs (24). Events here are built byte by byte at the offsets the C rules give
bpf/podtrace.h's structs (tests/support/c_layout.py), not through tracer/events/decode.py's formats."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.support.c_layout import c_struct, define
from tracer.events import decode as events
from tracer.recording.recorder import Recorder
from tracer.sources.replay import ReplaySource

STRUCTS = {"PT_EVENT_DROP": "pt_packet_event", "PT_EVENT_PATH": "pt_packet_event", "PT_EVENT_ICMP": "pt_packet_event",
           "PT_EVENT_NAT": "pt_nat_event", "PT_EVENT_CT": "pt_ct_event", "PT_EVENT_NF_VERDICT": "pt_nf_verdict_event"}
# One namespace per event type; every other 32-bit field holds a value that is not one of them (a reader at the
# wrong offset finds that value instead).
NETNS = {"PT_EVENT_DROP": 4026532101, "PT_EVENT_PATH": 4026532102, "PT_EVENT_ICMP": 4026532103,
         "PT_EVENT_NAT": 4026532104, "PT_EVENT_CT": 4026532105, "PT_EVENT_NF_VERDICT": 4026532106}
FILLER = 0x0BAD_F00D


def c_event(kind: str) -> bytes:
    """An event of type `kind` laid out as the C struct is: type, netns, ts_ns and skb at their C offsets, every
    other byte a filler pattern."""
    offsets, size = c_struct(STRUCTS[kind])
    raw = bytearray(struct.pack("<I", FILLER) * (size // 4))
    struct.pack_into("<I", raw, offsets["type"], define(kind))
    struct.pack_into("<QQ", raw, offsets["ts_ns"], 1_000_000, 0xFFFF888000001000)
    struct.pack_into("<I", raw, offsets["netns"], NETNS[kind])
    if "snap_len" in offsets:  # a packet event's snapshot length must fit its snapshot
        raw[offsets["snap_len"]] = 0
        raw[offsets["flags"]] = 0
    return bytes(raw)


def test_every_event_type_s_netns_offset_is_its_c_struct_s() -> None:
    for kind, name in STRUCTS.items():
        offsets, size = c_struct(name)
        assert events.EVENT_SIZES[define(kind)] == size, kind
        assert events.NETNS_OFFSETS[define(kind)] == offsets["netns"], kind
        assert events.netns_of(c_event(kind)) == NETNS[kind], kind
    assert events.nat_offsets() == {k: v for k, v in c_struct("pt_nat_event")[0].items()}
    assert events.netns_of(b"\x63" + bytes(300)) is None  # a type no layout is known for


def test_a_recording_names_the_namespace_of_every_event_type(tmp_path: Path) -> None:
    asked: list[int] = []

    def name(inode: int) -> str:
        asked.append(inode)
        return f"ns-{inode}"

    path = tmp_path / "kinds.ptrec"
    header = {"format_version": 1, "kernel_release": "6.18.0-test", "hostname": "unit",
              "clock": {"wall_ns": 2_000_000_000, "monotonic_ns": 1_000_000_000, "wall_offset_ns": 1_000_000_000},
              "drop_reasons": {}, "attached": [], "names": {"netns": {}, "lab": None}}
    recorder = Recorder(str(path), header, name, lambda address: "sym")
    recorder.add([c_event(kind) for kind in STRUCTS])
    recorder.close({}, 3_000_000_000)
    assert sorted(asked) == sorted(NETNS.values())  # the verdict's 4026532106, never its hook_ns bytes
    source = ReplaySource(str(path))
    read = list(source)
    source.close()
    assert len(read) == len(STRUCTS)
    assert {inode: source.names.netns[inode] for inode in NETNS.values()} == {
        inode: f"ns-{inode}" for inode in NETNS.values()}
    verdict = events.decode_verdict(read[-1])
    assert source.names.netns[verdict.netns] == f"ns-{NETNS['PT_EVENT_NF_VERDICT']}"
