"""pcapng export: one Interface Description Block per (netns, interface) seen, and an Enhanced Packet Block per
packet (tracer/pcapng_packets folds its hops into one frame) or, with --per-hop, per event, with its snapshot bytes
and a comment that Wireshark and tshark show.

Block layouts from the pcapng specification (draft-ietf-opsawg-pcapng): SHB 0x0A0D0D0A, IDB 1, EPB 6, options as
(u16 code, u16 length, value padded to 32 bits), ending with opt_endofopt.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO

from tracer import __version__
from tracer.events.decode import FLAG_SNAP_SKB, POINT_NAMES, PacketEvent
from tracer.output.report import describe_point
from tracer.recording.pcapng_packets import Packet
from tracer.sources.replay import RecordedNames

# Snapshots start at the network header: raw IPv4/IPv6, no link layer.
LINKTYPE_RAW = 101
LINKTYPE_ETHERNET = 1

OPT_END = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9

_ETH_IP_TYPES = (b"\x08\x00", b"\x86\xdd")


def _option(code: int, value: bytes) -> bytes:
    padding = -len(value) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * padding


def _options(options: list[tuple[int, bytes]]) -> bytes:
    if not options:
        return b""
    return b"".join(_option(code, value) for code, value in options) + struct.pack("<HH", OPT_END, 0)


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def section_header(os_name: str = "", hardware: str = "") -> bytes:
    options = [(SHB_USERAPPL, f"podtrace {__version__}".encode())]
    if os_name:
        options.append((SHB_OS, os_name.encode()))
    if hardware:
        options.append((SHB_HARDWARE, hardware.encode()))
    # byte-order magic, version 1.0, section length unknown (-1)
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _options(options))


def interface_description(name: str, description: str, linktype: int = LINKTYPE_RAW, snaplen: int = 0) -> bytes:
    options = [(IF_NAME, name.encode()), (IF_DESCRIPTION, description.encode()), (IF_TSRESOL, bytes([9]))]
    return _block(1, struct.pack("<HHI", linktype, 0, snaplen) + _options(options))


def enhanced_packet(interface: int, ts_ns: int, data: bytes, original_len: int, comment: str) -> bytes:
    padded = data + b"\0" * (-len(data) % 4)
    body = struct.pack("<IIIII", interface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), max(original_len, len(data)))
    return _block(6, body + padded + _options([(OPT_COMMENT, comment.encode())]))


def network_bytes(event: PacketEvent) -> bytes:
    """The snapshot from the IP header on. A snapshot read from skb->data (FLAG_SNAP_SKB) may still carry an
    Ethernet header; it is stripped when one is plainly there so the raw-IP link type stays right."""
    snap = event.snap
    if (event.flags & FLAG_SNAP_SKB and len(snap) > 14 and snap[0] >> 4 not in (4, 6)
            and snap[12:14] in _ETH_IP_TYPES and snap[14] >> 4 in (4, 6)):
        return snap[14:]
    return snap


def original_length(event: PacketEvent) -> int:
    """The IP packet's length: its header's total length when parsed (skb->len at a drop point has often been
    pulled past the IP header already), else skb->len."""
    return event.outer.ip_len if event.outer.family and event.outer.ip_len else event.len


class PcapngWriter:
    """Writes a section header, then interfaces as they appear and packets."""

    def __init__(self, out: BinaryIO, os_name: str = "", hardware: str = "") -> None:
        self._out = out
        self._interfaces: dict[tuple[int, int, str, str], int] = {}
        self.packets = 0
        out.write(section_header(os_name, hardware))

    def interface(self, netns: int, ifindex: int, ifname: str, netns_name: str, point: str = "") -> int:
        """`point` (per-hop frames): one interface per hop point, "pt-node1/eth0 rx", so the hops of one packet
        are told apart by interface (Wireshark 4.2+ can keep TCP conversations apart by it)."""
        key = (netns, ifindex, ifname, point)
        index = self._interfaces.get(key)
        if index is None:
            index = self._interfaces[key] = len(self._interfaces)
            name = f"{netns_name}/{ifname or f'if{ifindex}'}" + (f" {point}" if point else "")
            self._out.write(interface_description(name, f"netns {netns} ifindex {ifindex}"))
        return index

    @property
    def interfaces(self) -> int:
        return len(self._interfaces)

    def packet(self, interface: int, wall_ns: int, data: bytes, original_len: int, comment: str) -> None:
        self._out.write(enhanced_packet(interface, wall_ns, data, original_len, comment))
        self.packets += 1

    def event(self, event: PacketEvent, names: RecordedNames, per_hop: bool = False) -> None:
        point = ("drop" if event.is_drop else POINT_NAMES.get(event.reason, str(event.reason))) if per_hop else ""
        interface = self.interface(event.netns, event.ifindex, event.ifname, names.netns_name(event.netns), point)
        self.packet(interface, event.ts_ns + names.wall_offset_ns, network_bytes(event), original_length(event),
                    packet_comment(event, names))

    def folded(self, packet: Packet, names: RecordedNames, comment: str) -> None:
        """One frame for all of a packet's hops: the bytes and interface of its first hop."""
        first = min(packet.events, key=lambda event: event.ts_ns)
        interface = self.interface(first.netns, first.ifindex, first.ifname, names.netns_name(first.netns))
        self.packet(interface, first.ts_ns + names.wall_offset_ns, network_bytes(first), original_length(first),
                    comment)


def export_events(events: Iterable[PacketEvent], out: BinaryIO, names: RecordedNames, os_name: str = "",
                  hardware: str = "") -> PcapngWriter:
    """Every packet event as an EPB; raises what the iterable raises, after writing the packets before it."""
    writer = PcapngWriter(out, os_name, hardware)
    for event in events:
        writer.event(event, names)
    return writer


def packet_comment(event: PacketEvent, names: RecordedNames) -> str:
    """ "drop NO_SOCKET at __udp4_lib_rcv+0x2a3; netns pt-b; if veth-b; dst pod default/web-1" """
    if event.is_drop:
        reason = names.reasons.get(event.reason, f"reason {event.reason}")
        parts = [f"drop {reason} at {names.symbol(event.location)}"]
    else:
        parts = [f"path {describe_point(event)}"]
    parts += [f"netns {names.netns_name(event.netns)}", f"if {event.ifname or event.ifindex}"]
    outer = event.outer
    if outer.family:
        for side, ip in (("src", outer.src), ("dst", outer.dst)):
            pod = names.pod_of_ip(ip)
            if pod:
                parts.append(f"{side} pod {pod}")
        service = names.service_of(outer.dst, outer.dport)
        if service:
            parts.append(f"service {service}")
    if event.inner:
        parts.append(f"vxlan {event.vni}: {event.inner.describe()}")
    return "; ".join(parts)
