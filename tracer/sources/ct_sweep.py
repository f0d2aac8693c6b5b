"""Retire the conntrack mode's idle per-connection entries (bpf/nfct.c ct_flows) so a long session keeps counting.

The kernel program adds one ct_flows entry per (conntrack entry, direction) and frees one only when its nf_conn
address is reused; a connection that ended without its address being reused keeps its entry, and once the map is
full every new connection is counted as lost. The reader reads every entry on each refresh anyway: an entry whose
counts have not moved for `idle_s` is taken out of the map (looked up and deleted in one bpf(2) call, so nothing
counted between the read and the delete is dropped) and its counts kept here, summed per translation. A
connection that was only idle, not gone, starts a fresh entry on its next packet (its tuples read once more), and
both parts sum to the same translation.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tracer.probes.nflink import SYS_BPF, _libc

BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21  # enum bpf_cmd; hash maps since 5.14
IDLE_S = 30.0  # long enough that a connection between two packets is not retired on every refresh


class _MapElem(ctypes.Structure):
    # union bpf_attr, the BPF_MAP_*_ELEM member (include/uapi/linux/bpf.h)
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def take(table: Any, key: Any) -> Any | None:
    """Look up and delete `key` of a BCC hash table in one call: its value, or None when it is gone."""
    value = table.Leaf()
    attr = _MapElem(map_fd=table.map_fd, key=ctypes.addressof(key), value=ctypes.addressof(value))
    number = SYS_BPF.get(platform.machine())
    if number is None:
        return None
    done = int(_libc.syscall(number, BPF_MAP_LOOKUP_AND_DELETE_ELEM, ctypes.byref(attr), ctypes.sizeof(attr)))
    return value if done == 0 else None


@dataclass
class Retired:
    """Counts of one translation whose entries were retired (the fields nfct_records sums)."""

    packets: int = 0
    bytes: int = 0
    first_ns: int = 0
    last_ns: int = 0


@dataclass
class CtSweeper:
    """Which live entries are idle, judged from one read of the map to the next (no clock read in the kernel)."""

    idle_s: float = IDLE_S
    retired: dict[bytes, Retired] = field(default_factory=dict)  # struct pt_nat_key bytes -> counts
    retired_entries: int = 0
    _last: dict[bytes, tuple[int, int, float]] = field(default_factory=dict)  # ct key -> (packets, bytes, since)

    def idle(self, items: Iterable[tuple[Any, Any]], now: float) -> list[Any]:
        """Keys (ct_flows) whose counts did not change for idle_s; every entry read is remembered."""
        seen: dict[bytes, tuple[int, int, float]] = {}
        idle = []
        for key, flow in items:
            raw = bytes(key)
            before = self._last.get(raw)
            since = before[2] if before and before[:2] == (flow.packets, flow.bytes) else now
            seen[raw] = (flow.packets, flow.bytes, since)
            if now - since >= self.idle_s:
                idle.append(key)
        self._last = seen
        return idle

    def retire(self, keys: Iterable[Any], taker: Callable[[Any], Any | None]) -> int:
        """Take each key out of the map and keep its counts; returns how many were taken."""
        taken = 0
        for key in keys:
            flow = taker(key)
            self._last.pop(bytes(key), None)
            if flow is None:  # gone since the read: the kernel folded it into nat_flows
                continue
            taken += 1
            if not flow.wanted:
                continue
            counts = self.retired.setdefault(bytes(flow.key), Retired(first_ns=flow.first_ns, last_ns=flow.first_ns))
            counts.packets += flow.packets
            counts.bytes += flow.bytes
            counts.first_ns = min(counts.first_ns, flow.first_ns)
            counts.last_ns = max(counts.last_ns, flow.first_ns)
        self.retired_entries += taken
        return taken
