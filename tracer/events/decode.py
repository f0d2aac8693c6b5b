"""Decoded events: an explicit, field-by-field mirror of bpf/podtrace.h.

    struct pt_tuple {                      struct pt_packet_event {
        __u8 saddr[16];                        __u32 type; __u32 cpu; __u64 ts_ns; __u64 skb;
        __u8 daddr[16];                        __u64 location; __u32 reason; __u32 netns;
        __u16 sport; __u16 dport;              __u32 ifindex; __u32 len; __u32 mark;
        __u8 family; __u8 proto;               __u16 l3_proto; __u8 flags; __u8 snap_len;
        __u8 icmp_type; __u8 icmp_code;        __u32 vni; __u32 nf_point; char ifname[16];
        __u16 frag; __u16 ip_len;              struct pt_tuple outer; struct pt_tuple inner;
    };  /* 44 bytes */                         __u8 snap[128];
                                           };  /* 296 bytes */
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

EVENT_DROP = 1
EVENT_PATH = 2
EVENT_ICMP = 4  # an ICMP error the node sent: the offending packet; reason = type << 8 | code, location = MTU

POINT_RX = 1
POINT_QUEUE = 2
POINT_XMIT = 3
POINT_TC_INGRESS = 4
POINT_TC_EGRESS = 5
POINT_NAMES = {POINT_RX: "rx", POINT_QUEUE: "queue", POINT_XMIT: "xmit", POINT_TC_INGRESS: "tc-in",
               POINT_TC_EGRESS: "tc-out"}

FLAG_INNER = 0x01
FLAG_SNAP_SKB = 0x02
FLAG_PARSED = 0x04

# Counter indexes (PT_CNT_*).
COUNTERS = ("seen", "filtered", "events", "lost", "sampled", "read_fail")
CNT_MAX = 8  # PT_CNT_MAX: counters per probe in the counters array
# The counters array holds CNT_MAX counters per probe slot (tracer/probes/registry.py COUNTER_SLOTS, PT_PROBE_*).

SNAP_LEN = 256
EVENT_SNAP = 128
IFNAMSIZ = 16

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp"}

# (name, struct format) in declaration order: the single source of the layout on the Python side.
TUPLE_FIELDS = (
    ("saddr", "16s"),
    ("daddr", "16s"),
    ("sport", "H"),
    ("dport", "H"),
    ("family", "B"),
    ("proto", "B"),
    ("icmp_type", "B"),
    ("icmp_code", "B"),
    ("frag", "H"),
    ("ip_len", "H"),
)
EVENT_HEAD_FIELDS = (
    ("type", "I"),
    ("cpu", "I"),
    ("ts_ns", "Q"),
    ("skb", "Q"),
    ("location", "Q"),
    ("reason", "I"),
    ("netns", "I"),
    ("ifindex", "I"),
    ("len", "I"),
    ("mark", "I"),
    ("l3_proto", "H"),
    ("flags", "B"),
    ("snap_len", "B"),
    ("vni", "I"),
    ("nf_point", "I"),
    ("ifname", "16s"),
)
TUPLE_FORMAT = "".join(fmt for _, fmt in TUPLE_FIELDS)
EVENT_FORMAT = "<" + "".join(fmt for _, fmt in EVENT_HEAD_FIELDS) + TUPLE_FORMAT * 2 + f"{EVENT_SNAP}s"
EVENT_STRUCT = struct.Struct(EVENT_FORMAT)
EVENT_SIZE = EVENT_STRUCT.size  # 296
TUPLE_SIZE = struct.calcsize("<" + TUPLE_FORMAT)  # 44


def _offsets(fields: Iterable[tuple[str, str]]) -> tuple[dict[str, int], int]:
    """Each named field's byte offset in a packed little-endian layout, and where the fields end."""
    offsets: dict[str, int] = {}
    position = 0
    for name, fmt in fields:
        offsets[name] = position
        position += struct.calcsize("<" + fmt)
    return offsets, position


def field_offsets() -> dict[str, int]:
    """Byte offset of every field, "outer.sport" style for tuple members (for the layout cross-check)."""
    offsets, position = _offsets(EVENT_HEAD_FIELDS)
    for tuple_name in ("outer", "inner"):
        offsets[tuple_name] = position
        for name, fmt in TUPLE_FIELDS:
            offsets[f"{tuple_name}.{name}"] = position
            position += struct.calcsize("<" + fmt)
    offsets["snap"] = position
    return offsets


def _field_formats() -> dict[str, str]:
    """Each packet-event field's struct format, "outer.sport" style for tuple members."""
    formats = dict(EVENT_HEAD_FIELDS)
    for tuple_name in ("outer", "inner"):
        formats.update({f"{tuple_name}.{name}": fmt for name, fmt in TUPLE_FIELDS})
    formats["snap"] = f"{EVENT_SNAP}s"
    return formats


def packet_view(*items: str | tuple[str, str]) -> tuple[struct.Struct, int]:
    """A struct that unpacks only some fields of a packet event, and the offset to unpack it at, built from the
    field declarations above (never from hand-counted offsets). An item is a field name, unpacked with its own
    format, or (first, last): the bytes from first's start to last's end as one value (a group key). Gaps become
    pad bytes; items must be in layout order."""
    offsets, formats = field_offsets(), _field_formats()
    start = offsets[items[0] if isinstance(items[0], str) else items[0][0]]
    parts, position = ["<"], start
    for item in items:
        first, last = (item, item) if isinstance(item, str) else item
        if offsets[first] < position:
            raise ValueError(f"packet_view: {first} is out of layout order")
        if offsets[first] > position:
            parts.append(f"{offsets[first] - position}x")
        end = offsets[last] + struct.calcsize("<" + formats[last])
        parts.append(formats[first] if first == last else f"{end - offsets[first]}s")
        position = end
    return struct.Struct("".join(parts)), start


# Events are values: never changed once decoded, and hashable. They are not `frozen`: a frozen dataclass builds
# itself with one object.__setattr__ per field, ten times slower, and every event of a drop storm is built here.
@dataclass(slots=True, unsafe_hash=True)
class Tuple:
    saddr: bytes
    daddr: bytes
    sport: int
    dport: int
    family: int
    proto: int
    icmp_type: int
    icmp_code: int
    frag: int
    ip_len: int

    @property
    def src(self) -> str:
        return format_addr(self.family, self.saddr)

    @property
    def dst(self) -> str:
        return format_addr(self.family, self.daddr)

    @property
    def proto_name(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto)) if self.family else "-"

    @property
    def dont_fragment(self) -> bool:
        return self.family == 4 and bool(self.frag & 0x4000)

    def describe(self) -> str:
        if not self.family:
            return "non-IP"
        if self.proto in (1, 58):
            return f"{self.proto_name} {self.src} > {self.dst} type {self.icmp_type} code {self.icmp_code}"
        return f"{self.proto_name} {self.src}:{self.sport} > {self.dst}:{self.dport}"


# What a driver's ndo_start_xmit returned (include/linux/netdevice.h: NETDEV_TX_OK, NET_XMIT_DROP, NET_XMIT_CN,
# NETDEV_TX_BUSY).
XMIT_RESULTS = {0: "ok", 1: "dropped", 2: "congested", 0x10: "busy"}


@dataclass(slots=True, unsafe_hash=True)
class PacketEvent:
    type: int
    cpu: int
    ts_ns: int
    skb: int
    location: int
    reason: int  # drops: enum skb_drop_reason value; path: POINT_*
    netns: int
    ifindex: int
    len: int
    mark: int
    l3_proto: int
    flags: int
    snap_len: int
    vni: int
    ifname: str
    outer: Tuple
    inner: Tuple | None
    snap: bytes
    nf_point: int = 0  # drops: last netfilter point passed + 1 (PT_NF_*), 0 when none

    @property
    def ip_id(self) -> int | None:
        """The IPv4 identification field from the snapshot (it starts at the network header); None for IPv6."""
        if self.outer.family != 4 or len(self.snap) < 6:
            return None
        return int.from_bytes(self.snap[4:6], "big")

    @property
    def is_drop(self) -> bool:
        return self.type == EVENT_DROP

    @property
    def is_xmit(self) -> bool:
        return self.type == EVENT_PATH and self.reason == POINT_XMIT

    @property
    def queued_ns(self) -> int:
        """xmit events: nanoseconds from net_dev_queue to the driver (time in the qdisc); PT_XMIT_LOCATION."""
        return self.location & 0xFFFF_FFFF_FFFF

    @property
    def xmit_rc(self) -> int:
        """xmit events: the driver's return code (XMIT_RESULTS)."""
        return self.location >> 48

    @property
    def xmit_result(self) -> str:
        return XMIT_RESULTS.get(self.xmit_rc, f"rc {self.xmit_rc}")


def format_addr(family: int, raw: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == 6:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return "-"


def decode(data: bytes | bytearray | memoryview) -> PacketEvent:
    """One event from its raw bytes; raises ValueError when the buffer is shorter than the struct."""
    if len(data) < EVENT_SIZE:
        raise ValueError(f"event is {len(data)} bytes, expected {EVENT_SIZE}")
    f = EVENT_STRUCT.unpack_from(data)
    outer = Tuple(*f[16:26])
    flags = f[11]
    inner = Tuple(*f[26:36]) if flags & FLAG_INNER else None
    snap_len = f[12]
    return PacketEvent(
        f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], flags, snap_len, f[13],
        f[15].split(b"\0", 1)[0].decode(errors="replace"), outer, inner, f[36][:snap_len], f[14],
    )


def encode(event: PacketEvent) -> bytes:
    """The raw bytes of an event (recordings and golden fixtures)."""

    def tuple_fields(t: Tuple | None) -> tuple[object, ...]:
        if t is None:
            return (b"", b"", 0, 0, 0, 0, 0, 0, 0, 0)
        return (t.saddr, t.daddr, t.sport, t.dport, t.family, t.proto, t.icmp_type, t.icmp_code, t.frag, t.ip_len)

    return EVENT_STRUCT.pack(
        event.type, event.cpu, event.ts_ns, event.skb, event.location, event.reason, event.netns,
        event.ifindex, event.len, event.mark, event.l3_proto, event.flags, event.snap_len, event.vni,
        event.nf_point,
        event.ifname.encode(), *tuple_fields(event.outer), *tuple_fields(event.inner), event.snap,
    )


EVENT_NAT = 3
NAT_FIELDS = (
    ("type", "I"),
    ("cpu", "I"),
    ("ts_ns", "Q"),
    ("skb", "Q"),
    ("netns", "I"),
    ("point", "I"),
    ("hook_ns", "Q"),
)
NAT_HEAD = struct.Struct("<" + "".join(fmt for _, fmt in NAT_FIELDS))
NAT_FORMAT = NAT_HEAD.format + TUPLE_FORMAT * 2
NAT_STRUCT = struct.Struct(NAT_FORMAT)
NAT_SIZE = NAT_STRUCT.size  # 128


def nat_offsets() -> dict[str, int]:
    """Byte offset of every field of struct pt_nat_event (for the layout cross-check)."""
    offsets, position = _offsets(NAT_FIELDS)
    offsets["before"] = position
    offsets["after"] = position + TUPLE_SIZE
    return offsets


@dataclass(slots=True, unsafe_hash=True)
class NatEvent:
    """struct pt_nat_event: a tuple rewritten between two netfilter points of one hook."""

    type: int
    cpu: int
    ts_ns: int
    skb: int
    netns: int
    point: int  # PT_NF_*
    hook_ns: int
    before: Tuple
    after: Tuple

    is_drop = False


def decode_nat(data: bytes | bytearray | memoryview) -> NatEvent:
    if len(data) < NAT_SIZE:
        raise ValueError(f"NAT event is {len(data)} bytes, expected {NAT_SIZE}")
    f = NAT_STRUCT.unpack_from(data)
    return NatEvent(f[0], f[1], f[2], f[3], f[4], f[5], f[6], Tuple(*f[7:17]), Tuple(*f[17:27]))


def decode_any(data: bytes) -> PacketEvent | NatEvent | NfVerdictEvent | CtEvent:
    """Dispatch on the leading type field (every event struct starts with __u32 type)."""
    if data[0] == EVENT_CT:
        return decode_ct(data)
    if data[0] == EVENT_NAT:
        return decode_nat(data)
    if data[0] == EVENT_NF_VERDICT:
        return decode_verdict(data)
    return decode(data)


# -- netfilter verdicts from kprobes (bpf/nfkprobe.c) --------------------------------------------------------
#
#   struct pt_nf_verdict_event {
#       __u32 type; __u32 cpu; __u64 ts_ns; __u64 skb; __u64 hook_ns; __u32 netns; __u32 verdict;
#       __u8 hook; __u8 pf; __u8 source; __u8 pad; __u32 len; char table[32]; char chain[32];
#       struct pt_tuple tuple; __u32 pad2;
#   };  /* 160 bytes */

EVENT_NF_VERDICT = 5
NFK_IPTABLES = 1
NFK_NFTABLES = 2
NFK_HOOK = 3
NFK_NAME = 32
VERDICT_FIELDS = (
    ("type", "I"),
    ("cpu", "I"),
    ("ts_ns", "Q"),
    ("skb", "Q"),
    ("hook_ns", "Q"),
    ("netns", "I"),
    ("verdict", "I"),
    ("hook", "B"),
    ("pf", "B"),
    ("source", "B"),
    ("pad", "B"),
    ("len", "I"),
    ("table", f"{NFK_NAME}s"),
    ("chain", f"{NFK_NAME}s"),
)
VERDICT_FORMAT = "<" + "".join(fmt for _, fmt in VERDICT_FIELDS) + TUPLE_FORMAT + "I"
VERDICT_STRUCT = struct.Struct(VERDICT_FORMAT)
VERDICT_SIZE = VERDICT_STRUCT.size  # 160

# Kprobe path points (PT_POINT_* in bpf/podtrace.h, bpf/overlay.c).
POINT_VXLAN_RCV = 6
POINT_VXLAN_XMIT = 7
POINT_FRAGMENT = 8
POINT_NAMES.update({POINT_VXLAN_RCV: "vxlan-rcv", POINT_VXLAN_XMIT: "vxlan-xmit", POINT_FRAGMENT: "fragment"})


def verdict_offsets() -> dict[str, int]:
    """Byte offset of every field of struct pt_nf_verdict_event (for the layout cross-check)."""
    offsets, position = _offsets(VERDICT_FIELDS)
    offsets["tuple"] = position
    return offsets


@dataclass(slots=True, unsafe_hash=True)
class NfVerdictEvent:
    """struct pt_nf_verdict_event: the verdict a netfilter table, chain or hook gave a packet."""

    type: int
    cpu: int
    ts_ns: int
    skb: int
    hook_ns: int
    netns: int
    verdict: int  # NF_DROP 0, NF_ACCEPT 1, ...
    hook: int  # NF_INET_*
    pf: int  # NFPROTO_*
    source: int  # NFK_*
    len: int
    table: str
    chain: str
    tuple: Tuple

    is_drop = False


def decode_verdict(data: bytes | bytearray | memoryview) -> NfVerdictEvent:
    if len(data) < VERDICT_SIZE:
        raise ValueError(f"verdict event is {len(data)} bytes, expected {VERDICT_SIZE}")
    f = VERDICT_STRUCT.unpack_from(data)

    def text(raw: bytes) -> str:
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    return NfVerdictEvent(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[11], text(f[12]),
                          text(f[13]), Tuple(*f[14:24]))


# -- conntrack of a dropped packet (bpf/skb.h pt_ct_emit_in) -----------------------------------------------
#
#   struct pt_ct_event {
#       __u32 type; __u32 cpu; __u64 ts_ns; __u64 skb; __u32 netns; __u8 state; __u8 ctinfo; __u16 pad;
#       __u64 ct; __u32 status; __u32 pad2; struct pt_tuple orig; struct pt_tuple reply;
#   };  /* 136 bytes */

EVENT_CT = 6
CT_NONE = 0  # skb->_nfct empty: dropped before conntrack saw it, or conntrack not in use
CT_UNTRACKED = 1  # a NOTRACK rule exempted the packet
CT_ENTRY = 2  # orig and reply read from the packet's nf_conn
CT_STATES = {CT_NONE: "none", CT_UNTRACKED: "untracked", CT_ENTRY: "entry"}
CT_INFO_IS_REPLY = 3  # enum ip_conntrack_info: IP_CT_IS_REPLY and above are reply-direction packets
IPS_CONFIRMED = 0x08
IPS_SRC_NAT = 0x10
IPS_DST_NAT = 0x20
CT_FIELDS = (
    ("type", "I"),
    ("cpu", "I"),
    ("ts_ns", "Q"),
    ("skb", "Q"),
    ("netns", "I"),
    ("state", "B"),
    ("ctinfo", "B"),
    ("pad", "H"),
    ("ct", "Q"),
    ("status", "I"),
    ("pad2", "I"),
)
CT_FORMAT = "<" + "".join(fmt for _, fmt in CT_FIELDS) + TUPLE_FORMAT * 2
CT_STRUCT = struct.Struct(CT_FORMAT)
CT_SIZE = CT_STRUCT.size  # 136


def ct_offsets() -> dict[str, int]:
    """Byte offset of every field of struct pt_ct_event (for the layout cross-check)."""
    offsets, position = _offsets(CT_FIELDS)
    offsets["orig"] = position
    offsets["reply"] = position + TUPLE_SIZE
    return offsets


@dataclass(slots=True, unsafe_hash=True)
class CtEvent:
    """struct pt_ct_event: the conntrack entry of the packet whose drop event follows (same skb and CPU)."""

    type: int
    cpu: int
    ts_ns: int
    skb: int
    netns: int
    state: int  # CT_*
    ctinfo: int  # enum ip_conntrack_info
    ct: int  # nf_conn address
    status: int  # IPS_* bits
    orig: Tuple  # the client's tuple: client -> the address it dialled
    reply: Tuple  # the reply's tuple: the backend chosen -> where replies go

    is_drop = False

    @property
    def reply_direction(self) -> bool:
        return self.state == CT_ENTRY and self.ctinfo >= CT_INFO_IS_REPLY

    @property
    def state_name(self) -> str:
        return CT_STATES.get(self.state, str(self.state))


def decode_ct(data: bytes | bytearray | memoryview) -> CtEvent:
    if len(data) < CT_SIZE:
        raise ValueError(f"conntrack event is {len(data)} bytes, expected {CT_SIZE}")
    f = CT_STRUCT.unpack_from(data)
    return CtEvent(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[8], f[9], Tuple(*f[11:21]), Tuple(*f[21:31]))


def encode_ct(event: CtEvent) -> bytes:
    """The raw bytes of a conntrack event (fixtures and tests of recordings)."""
    def fields(t: Tuple) -> tuple[object, ...]:
        return (t.saddr, t.daddr, t.sport, t.dport, t.family, t.proto, t.icmp_type, t.icmp_code, t.frag, t.ip_len)

    return CT_STRUCT.pack(event.type, event.cpu, event.ts_ns, event.skb, event.netns, event.state, event.ctinfo, 0,
                          event.ct, event.status, 0, *fields(event.orig), *fields(event.reply))


def counted_events(raws: Iterable[bytes]) -> int:
    """Events as the counters count them: a drop's conntrack event (type 6) is part of that drop, not one more."""
    return sum(1 for raw in raws if raw[0] != EVENT_CT)


# Each event type's struct size: the ring-buffer reader checks records against it.
# struct pt_drop_record (bpf/podtrace.h): a drop's conntrack event and the drop event in one ring buffer record.
DROP_RECORD_SIZE = CT_SIZE + EVENT_SIZE


def split_records(batch: list[bytes]) -> list[bytes]:
    """Ring buffer records as events: each pt_drop_record as its conntrack event then its drop event."""
    if not any(len(raw) == DROP_RECORD_SIZE and raw[0] == EVENT_CT for raw in batch):
        return batch
    out: list[bytes] = []
    for raw in batch:
        if len(raw) == DROP_RECORD_SIZE and raw[0] == EVENT_CT:
            out += (raw[:CT_SIZE], raw[CT_SIZE:])
        else:
            out.append(raw)
    return out


EVENT_SIZES = {EVENT_DROP: EVENT_SIZE, EVENT_PATH: EVENT_SIZE, EVENT_NAT: NAT_SIZE, EVENT_ICMP: EVENT_SIZE,
               EVENT_NF_VERDICT: VERDICT_SIZE, EVENT_CT: CT_SIZE}

# Where each event type keeps its netns inode, from its own layout (the structs differ: a verdict's is after hook_ns).
NETNS_OFFSETS = {
    EVENT_DROP: field_offsets()["netns"], EVENT_PATH: field_offsets()["netns"], EVENT_ICMP: field_offsets()["netns"],
    EVENT_NAT: nat_offsets()["netns"], EVENT_CT: ct_offsets()["netns"], EVENT_NF_VERDICT: verdict_offsets()["netns"],
}
_NETNS = struct.Struct("<I")


def netns_of(raw: bytes | bytearray | memoryview) -> int | None:
    """The netns inode of a raw event of any known type, read at its type's offset; None for an unknown type or a
    buffer too short to hold it."""
    offset = NETNS_OFFSETS.get(raw[0]) if raw else None
    if offset is None or len(raw) < offset + _NETNS.size:
        return None
    return int(_NETNS.unpack_from(raw, offset)[0])
