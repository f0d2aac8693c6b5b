"""Recordings for the merge tests, written with the real Recorder from packets built with scapy."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from tracer.events.decode import CT_STRUCT, EVENT_CT, FLAG_INNER, PacketEvent, Tuple, encode
from tracer.recording.recorder import Recorder

HOST = 4026531840  # every host's own network namespace has this inode


def _tuple(ip: IP, l4: TCP | UDP) -> Tuple:
    return Tuple(socket.inet_aton(ip.src).ljust(16, b"\0"), socket.inet_aton(ip.dst).ljust(16, b"\0"), l4.sport,
                 l4.dport, 4, ip.proto, 0, 0, 0, ip.len)


def event(packet: IP, ts_ns: int, kind: int, reason: int, location: int = 0, vxlan: bool = False,
          skb: int = 0xFFFF888000001000, netns: int = HOST) -> bytes:
    """A packet event (a VXLAN datagram's when `vxlan`: the packet is its inner one) of a packet built with scapy."""
    inner = IP(bytes(packet))
    raw = bytes(IP(src="192.168.77.1", dst="192.168.77.2") / UDP(sport=40000, dport=8472) / VXLAN(vni=1)
                / Ether() / inner) if vxlan else bytes(inner)
    outer = IP(raw)
    l4 = outer[UDP] if vxlan else outer[TCP] if TCP in outer else outer[UDP]
    inner_tuple = _tuple(inner, inner[TCP] if TCP in inner else inner[UDP]) if vxlan else None
    return encode(PacketEvent(kind, 0, ts_ns, skb, location, reason, netns, 2, len(raw), 0, 0x0800,
                              FLAG_INNER if vxlan else 0,
                              min(len(raw), 128), 1 if vxlan else 0, "eth0" if vxlan else "cni0", _tuple(outer, l4),
                              inner_tuple, raw[:128]))


def conntrack(ts_ns: int, skb: int) -> bytes:
    """A drop's conntrack event that found no entry."""
    empty = (bytes(16), bytes(16), 0, 0, 0, 0, 0, 0, 0, 0)
    return CT_STRUCT.pack(EVENT_CT, 0, ts_ns, skb, HOST, 0, 0, 0, 0, 0, 0, *empty, *empty)


def header(host: str, offset: int, reasons: dict[str, str], pods: dict[str, str]) -> dict[str, Any]:
    """A recording header of machine `host`, booted `offset` ns before the wall clock's epoch."""
    return {"format_version": 1, "kernel_release": f"6.1.0-{host}", "hostname": host,
            "clock": {"wall_ns": 9_000_000_000, "monotonic_ns": 9_000_000_000 - offset, "wall_offset_ns": offset},
            "drop_reasons": reasons, "attached": ["raw tracepoint kfree_skb"],
            "filter": {"expression": "tcp", "netns": None},
            "names": {"netns": {}, "lab": None, "pods": pods},
            "conntrack": {"nodes": [{"netns": None, "error": "not read in this test"}]}}


def write(path: Path, header: dict[str, Any], events: list[bytes], symbol: str, end_wall: int) -> None:
    """A recording written by the real Recorder: every namespace is named \"host\", every symbol `symbol`."""
    recorder = Recorder(str(path), header, lambda inode: "host", lambda address: symbol)
    recorder.add(events)
    recorder.close({"lost": 1, "events": len(events)}, end_wall)
