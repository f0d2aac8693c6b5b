"""Event decoding: golden bytes from the kernel (fixtures/events, see its README) and the struct layout."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from tracer.events import decode as events
from tracer.events.decode import EVENT_SIZE, FLAG_INNER, FLAG_PARSED, PacketEvent, Tuple, decode, encode, field_offsets

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(__file__).parent / "fixtures" / "events"
GOLDEN = json.loads((GOLDEN_DIR / "golden.json").read_text())
GOLDEN_IDS = [entry["file"] for entry in GOLDEN["events"]]
SNAP_AT = 168  # offset of snap, derived below


def golden_bytes(name: str) -> bytes:
    return (GOLDEN_DIR / name).read_bytes()


def tuple_from_json(data: dict[str, Any] | None) -> Tuple | None:
    if data is None:
        return None
    fields = {k: v for k, v in data.items() if k != "describe"}
    return Tuple(saddr=bytes.fromhex(fields.pop("saddr")), daddr=bytes.fromhex(fields.pop("daddr")), **fields)


def event_from_json(data: dict[str, Any]) -> PacketEvent:
    fields = dict(data)
    outer = tuple_from_json(fields.pop("outer"))
    assert outer is not None
    return PacketEvent(**{**fields, "outer": outer, "inner": tuple_from_json(fields.pop("inner")),
                          "snap": bytes.fromhex(fields.pop("snap"))})


# -- golden bytes --


def test_golden_set_is_what_the_readme_says() -> None:
    assert GOLDEN["filter"] == "udp port 9 or icmp"
    kinds = [(e["type"], e["outer"]["family"], e["outer"]["proto"]) for e in (g["event"] for g in GOLDEN["events"])]
    assert kinds.count((events.EVENT_DROP, 4, 17)) == 2
    assert kinds.count((events.EVENT_DROP, 6, 17)) == 1
    assert (events.EVENT_PATH, 4, 1) in kinds
    assert GOLDEN["counters"]["lost"] == 0


@pytest.mark.parametrize("name", GOLDEN_IDS)
def test_golden_decode(name: str) -> None:
    entry = next(e for e in GOLDEN["events"] if e["file"] == name)
    raw = golden_bytes(name)
    assert len(raw) == EVENT_SIZE
    event = decode(raw)
    assert event == event_from_json(entry["event"])
    assert event.outer.describe() == entry["event"]["outer"]["describe"]
    # Facts that hold whatever the recording: loopback, parsed, no VXLAN, the snapshot is the IP packet.
    assert event.ifname == "lo" and event.ifindex == 1
    assert event.flags & FLAG_PARSED and event.inner is None and event.vni == 0
    assert event.snap_len == len(event.snap) == event.outer.ip_len
    assert event.snap[0] >> 4 == event.outer.family
    if event.outer.family == 4:
        assert event.l3_proto == 0x0800
        assert event.snap[12:16] == event.outer.saddr[:4] and event.outer.saddr[4:] == bytes(12)
    else:
        assert event.l3_proto == 0x86DD
        assert event.snap[8:24] == event.outer.saddr
    if event.outer.proto == 17:
        assert event.outer.dport == 9
    if event.is_drop:
        assert event.reason == 3  # NO_SOCKET on the recording kernel
        assert event.location != 0
        assert event.outer.proto == 17
    else:
        assert event.reason in events.POINT_NAMES and event.location == 0


@pytest.mark.parametrize("name", GOLDEN_IDS)
def test_golden_encode_round_trip(name: str) -> None:
    raw = golden_bytes(name)
    event = decode(raw)
    # Bytes past snap_len are scratch leftovers, not packet data (README): encode writes zeros there.
    canonical = raw[: SNAP_AT + event.snap_len] + bytes(EVENT_SIZE - SNAP_AT - event.snap_len)
    assert encode(event) == canonical
    assert decode(encode(event)) == event
    assert encode(decode(canonical)) == canonical


def test_golden_udp_matches_scapy_dissection() -> None:
    event = decode(golden_bytes(next(n for n in GOLDEN_IDS if "drop-ipv4-udp" in n)))
    packet = IP(event.snap)
    assert packet[IP].src == event.outer.src == "127.0.0.1"
    assert packet[IP].len == event.outer.ip_len
    assert packet[IP].flags.DF and event.outer.dont_fragment
    assert packet[UDP].sport == event.outer.sport and packet[UDP].dport == 9
    assert bytes(packet[UDP].payload).startswith(b"podtrace-golden-")
    event6 = decode(golden_bytes(next(n for n in GOLDEN_IDS if "drop-ipv6-udp" in n)))
    packet6 = IPv6(event6.snap)
    assert packet6.src == event6.outer.src == "::1"
    assert packet6[UDP].sport == event6.outer.sport
    assert not event6.outer.dont_fragment


# -- layout: bpf/podtrace.h with the C alignment rules --

# The members as declared in bpf/podtrace.h: (name, size of one element, element count). Scalars align to their
# size; arrays to their element; a struct to its widest member, and its size is rounded up to that alignment.
C_TUPLE = (
    ("saddr", 1, 16), ("daddr", 1, 16), ("sport", 2, 1), ("dport", 2, 1), ("family", 1, 1), ("proto", 1, 1),
    ("icmp_type", 1, 1), ("icmp_code", 1, 1), ("frag", 2, 1), ("ip_len", 2, 1),
)
C_EVENT_HEAD = (
    ("type", 4, 1), ("cpu", 4, 1), ("ts_ns", 8, 1), ("skb", 8, 1), ("location", 8, 1), ("reason", 4, 1),
    ("netns", 4, 1), ("ifindex", 4, 1), ("len", 4, 1), ("mark", 4, 1), ("l3_proto", 2, 1), ("flags", 1, 1),
    ("snap_len", 1, 1), ("vni", 4, 1), ("nf_point", 4, 1), ("ifname", 1, 16),
)


def _align(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) // alignment * alignment


def c_layout() -> tuple[dict[str, int], int, int]:
    """(offsets, sizeof(struct pt_packet_event), sizeof(struct pt_tuple)) by the C rules."""
    tuple_offsets, position = {}, 0
    for name, size, count in C_TUPLE:
        position = _align(position, size)
        tuple_offsets[name] = position
        position += size * count
    tuple_align = max(size for _, size, _ in C_TUPLE)
    tuple_size = _align(position, tuple_align)
    offsets, position = {}, 0
    for name, size, count in C_EVENT_HEAD:
        position = _align(position, size)
        offsets[name] = position
        position += size * count
    for member in ("outer", "inner"):
        position = _align(position, tuple_align)
        offsets[member] = position
        for name, at in tuple_offsets.items():
            offsets[f"{member}.{name}"] = position + at
        position += tuple_size
    offsets["snap"] = position  # __u8 snap[PT_EVENT_SNAP]
    position += 128
    event_align = max(size for _, size, _ in C_EVENT_HEAD)
    return offsets, _align(position, event_align), tuple_size


def test_c_transcription_matches_the_header() -> None:
    """The member lists above are the header's, in order (a header change must update this test)."""
    header = (ROOT / "bpf" / "podtrace.h").read_text()
    sizes = {"__u8": 1, "char": 1, "__u16": 2, "__u32": 4, "__u64": 8}
    consts = {"PT_IFNAMSIZ": 16, "PT_EVENT_SNAP": 128}

    def members(struct_name: str) -> list[tuple[str, int, int]]:
        body = re.search(rf"struct {struct_name} \{{(.*?)\n\}};", header, re.S)
        assert body, struct_name
        found = []
        for match in re.finditer(r"^\s*(__u8|__u16|__u32|__u64|char|struct pt_tuple)\s+(\w+)(?:\[(\w+)\])?;",
                                 body.group(1), re.M):
            kind, name, count = match.groups()
            if kind == "struct pt_tuple":
                continue
            found.append((name, sizes[kind], int(consts.get(count, count or 1))))
        return found

    assert members("pt_tuple") == list(C_TUPLE)
    assert members("pt_packet_event") == [*C_EVENT_HEAD, ("snap", 1, 128)]
    assert re.search(r"struct pt_tuple outer;\s*\n\s*struct pt_tuple inner;", header)
    assert "#define PT_EVENT_SNAP 128" in header and "#define PT_IFNAMSIZ 16" in header


def test_field_offsets_match_c_layout() -> None:
    offsets, event_size, tuple_size = c_layout()
    # Spelled out, so a mistake in c_layout() cannot hide one in events.py.
    assert offsets["ts_ns"] == 8 and offsets["location"] == 24 and offsets["netns"] == 36
    assert offsets["l3_proto"] == 52 and offsets["flags"] == 54 and offsets["snap_len"] == 55
    assert offsets["vni"] == 56 and offsets["nf_point"] == 60 and offsets["ifname"] == 64
    assert offsets["outer"] == 80 and offsets["outer.dport"] == 114 and offsets["outer.family"] == 116
    assert offsets["inner"] == 124 and offsets["inner.ip_len"] == 166 and offsets["snap"] == SNAP_AT == 168
    assert (event_size, tuple_size) == (296, 44)
    assert field_offsets() == offsets
    assert event_size == events.EVENT_SIZE
    assert tuple_size == events.TUPLE_SIZE


def test_decode_reads_each_field_at_its_offset() -> None:
    """Distinct bytes at every C offset land in the right decoded field."""
    offsets, size, _ = c_layout()
    raw = bytearray(size)
    raw[offsets["type"]] = 7
    raw[offsets["cpu"]] = 3
    raw[offsets["ts_ns"] + 7] = 0x11
    raw[offsets["skb"]] = 0x22
    raw[offsets["location"] + 1] = 0x33
    raw[offsets["reason"]] = 0x44
    raw[offsets["netns"]] = 0x55
    raw[offsets["ifindex"]] = 0x66
    raw[offsets["len"]] = 0x77
    raw[offsets["mark"]] = 0x88
    raw[offsets["l3_proto"] + 1] = 0x08
    raw[offsets["flags"]] = FLAG_INNER
    raw[offsets["snap_len"]] = 3
    raw[offsets["vni"]] = 0x99
    raw[offsets["nf_point"]] = 0x5A
    raw[offsets["ifname"]:offsets["ifname"] + 4] = b"eth0"
    raw[offsets["outer.sport"]] = 0xAA
    raw[offsets["outer.ip_len"]] = 0xBB
    raw[offsets["inner.dport"]] = 0xCC
    raw[offsets["inner.family"]] = 6
    raw[offsets["inner.frag"]] = 0xDD
    raw[offsets["snap"]:offsets["snap"] + 4] = b"\x45abc"
    event = decode(bytes(raw))
    assert (event.type, event.cpu, event.ts_ns, event.skb, event.location) == (7, 3, 0x11 << 56, 0x22, 0x3300)
    assert (event.reason, event.netns, event.ifindex, event.len, event.mark) == (0x44, 0x55, 0x66, 0x77, 0x88)
    assert (event.l3_proto, event.flags, event.snap_len, event.vni) == (0x0800, FLAG_INNER, 3, 0x99)
    assert (event.ifname, event.nf_point) == ("eth0", 0x5A)
    assert (event.outer.sport, event.outer.ip_len) == (0xAA, 0xBB)
    assert event.inner is not None
    assert (event.inner.dport, event.inner.family, event.inner.frag) == (0xCC, 6, 0xDD)
    assert event.snap == b"\x45ab"


# -- buffers --


@pytest.mark.parametrize("length", [0, 1, EVENT_SIZE - 1])
def test_short_buffers_raise(length: int) -> None:
    with pytest.raises(ValueError, match=f"event is {length} bytes, expected {EVENT_SIZE}"):
        decode(bytes(length))


def test_buffer_types_and_longer_buffers() -> None:
    raw = golden_bytes(GOLDEN_IDS[0])
    event = decode(raw)
    assert decode(bytearray(raw)) == event
    assert decode(memoryview(raw)) == event
    assert decode(raw + b"\xff" * 8) == event  # ring buffer records may be padded


# -- VXLAN: a hand-built event, the snapshot built with scapy --


def _tuple_of(ip: IP, l4: TCP | UDP) -> Tuple:
    return Tuple(
        saddr=socket.inet_aton(ip.src).ljust(16, b"\0"), daddr=socket.inet_aton(ip.dst).ljust(16, b"\0"),
        sport=l4.sport, dport=l4.dport, family=4, proto=ip.proto, icmp_type=0, icmp_code=0,
        frag=int(ip.flags) << 13 | ip.frag, ip_len=ip.len,
    )


def vxlan_event(flags: int) -> PacketEvent:
    inner_packet = IP(src="10.244.1.5", dst="10.244.2.7", flags="DF") / TCP(sport=40000, dport=8080, flags="S")
    packet = IP(bytes(
        IP(src="192.168.56.11", dst="192.168.56.12") / UDP(sport=51234, dport=8472)
        / VXLAN(vni=4096, flags="Instance") / Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / inner_packet
    ))
    raw = bytes(packet)
    inner = IP(bytes(packet[VXLAN].payload)[14:])
    snap = raw[:128]
    return PacketEvent(
        type=events.EVENT_PATH, cpu=1, ts_ns=123_456_789, skb=0xFFFF8881_00000000, location=0,
        reason=events.POINT_XMIT, netns=4026531840, ifindex=2, len=len(raw), mark=0, l3_proto=0x0800,
        flags=flags, snap_len=len(snap), vni=packet[VXLAN].vni, ifname="eth0",
        outer=_tuple_of(packet[IP], packet[UDP]), inner=_tuple_of(inner, inner[TCP]), snap=snap,
    )


def test_vxlan_inner_tuple() -> None:
    built = vxlan_event(FLAG_PARSED | FLAG_INNER)
    raw = encode(built)
    assert len(raw) == EVENT_SIZE
    event = decode(raw)
    assert event == built
    assert event.vni == 4096
    assert event.outer.describe() == "udp 192.168.56.11:51234 > 192.168.56.12:8472"
    assert event.inner is not None
    assert event.inner.describe() == "tcp 10.244.1.5:40000 > 10.244.2.7:8080"
    assert event.inner.dont_fragment and not event.outer.dont_fragment
    offsets = field_offsets()
    assert raw[offsets["inner.saddr"]:offsets["inner.saddr"] + 4] == bytes([10, 244, 1, 5])
    assert int.from_bytes(raw[offsets["inner.dport"]:offsets["inner.dport"] + 2], "little") == 8080
    assert int.from_bytes(raw[offsets["vni"]:offsets["vni"] + 4], "little") == 4096


def test_inner_tuple_ignored_without_the_flag() -> None:
    built = vxlan_event(FLAG_PARSED | FLAG_INNER)
    raw = bytearray(encode(built))
    raw[field_offsets()["flags"]] = FLAG_PARSED
    event = decode(bytes(raw))
    assert event.inner is None
    assert event.flags == FLAG_PARSED
    # Without an inner tuple encode writes zeros where it was.
    assert encode(event)[field_offsets()["inner"]:SNAP_AT] == bytes(44)
    assert decode(encode(dataclasses.replace(built, flags=FLAG_PARSED, inner=None))) == event


# -- tuples --


def test_tuple_describe_and_names() -> None:
    icmp6 = Tuple(bytes(15) + b"\x01", bytes(15) + b"\x02", 7, 0, 6, 58, 128, 0, 0, 64)
    assert icmp6.describe() == "icmp6 ::1 > ::2 type 128 code 0"
    assert icmp6.proto_name == "icmp6"
    other = Tuple(bytes(16), bytes(16), 0, 0, 4, 47, 0, 0, 0x2000, 100)
    assert other.proto_name == "47"
    assert other.describe() == "47 0.0.0.0:0 > 0.0.0.0:0"
    assert not other.dont_fragment
    non_ip = Tuple(bytes(16), bytes(16), 0, 0, 0, 0, 0, 0, 0, 0)
    assert non_ip.describe() == "non-IP"
    assert (non_ip.src, non_ip.dst, non_ip.proto_name) == ("-", "-", "-")
    assert events.format_addr(4, bytes([10, 0, 0, 1]) + bytes(12)) == "10.0.0.1"


def test_a_drop_record_splits_into_its_conntrack_event_then_its_drop() -> None:
    """struct pt_drop_record is { struct pt_ct_event ct; struct pt_packet_event drop; } (bpf/podtrace.h)."""
    from tracer.events.decode import CT_SIZE, DROP_RECORD_SIZE, EVENT_CT, EVENT_SIZE, split_records

    header = (ROOT / "bpf" / "podtrace.h").read_text()
    assert re.search(r"struct pt_drop_record \{\s*struct pt_ct_event ct;\s*struct pt_packet_event drop;\s*\};", header)
    assert DROP_RECORD_SIZE == CT_SIZE + EVENT_SIZE and CT_SIZE % 8 == 0  # the drop stays 8-byte aligned
    drop = golden_bytes(next(n for n in GOLDEN_IDS if "drop-ipv4-udp" in n))
    ct = bytes([EVENT_CT]) + bytes(CT_SIZE - 1)
    path = golden_bytes(GOLDEN_IDS[0])
    assert split_records([path, ct + drop, path]) == [path, ct, drop, path]
    assert split_records([ct, drop]) == [ct, drop]  # separate records (an older probe) pass as they are
    assert decode(split_records([ct + drop])[1]) == decode(drop)


@pytest.mark.parametrize("name", GOLDEN_IDS)
def test_packet_views_read_what_decode_reads(name: str) -> None:
    """The partial views the fast paths use (aggregation, the report's pre-filter) are built from the field
    declarations; on the kernel's own events they read what a full decode reads."""
    raw = golden_bytes(name)
    event = decode(raw)
    view, at = events.packet_view("ts_ns", ("location", "netns"), "len", "ifname", "outer.sport", "outer.proto")
    ts_ns, head, length, ifname, sport, proto = view.unpack_from(raw, at)
    assert (ts_ns, length, sport, proto) == (event.ts_ns, event.len, event.outer.sport, event.outer.proto)
    assert head == struct.pack("<QII", event.location, event.reason, event.netns)
    assert ifname.rstrip(b"\0").decode() == event.ifname
    assert at == field_offsets()["ts_ns"] and view.size == field_offsets()["outer.icmp_type"] - at


def test_packet_view_refuses_fields_out_of_layout_order() -> None:
    with pytest.raises(ValueError, match="out of layout order"):
        events.packet_view("len", "ts_ns")
