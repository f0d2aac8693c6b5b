"""Drop aggregation: pure code over decoded events, identical live and on a replayed recording."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from tracer.events import EVENT_DROP, PacketEvent, decode

_TS = struct.Struct("<Q")
_LEN = struct.Struct("<I")
# From location (offset 24) to outer.proto (117), per tracer/events.field_offsets(): the group key, the last
# source port and the device, without building the dataclasses a full decode does (most of its cost).
_FOLD = struct.Struct("<QII24x16s16s16sHHBB")
_FOLD_AT = 24
RawEvent = bytes  # DropRow has a field named `bytes`: this alias keeps the type readable inside it

# (reason, location, netns, family, proto, saddr, daddr, dport)
DropKey = tuple[int, int, int, int, int, bytes, bytes, int]


@dataclass(slots=True)
class DropRow:
    count: int
    bytes: int
    first_ns: int
    last_ns: int
    last_sport: int
    ifname: str
    last_raw: RawEvent | None  # the most recent event, decoded only when someone reads last_event
    decoded: PacketEvent | None = None

    @property
    def last_event(self) -> PacketEvent:
        if self.decoded is None:
            assert self.last_raw is not None
            self.decoded = decode(self.last_raw)
        return self.decoded

    def set_last(self, event: PacketEvent | None, raw: RawEvent | None) -> None:
        self.decoded, self.last_raw = event, raw


class DropTable:
    """Drops grouped by (reason, location, netns, proto, src, dst, dport), bounded in size.

    When full, the group seen least recently... is approximated by the oldest inserted one, which is evicted
    and counted in `evicted`: memory stays bounded whatever the traffic, and nothing is dropped silently.
    """

    def __init__(self, max_groups: int = 100_000) -> None:
        self.max_groups = max_groups
        self.groups: dict[DropKey, DropRow] = {}
        # raw key bytes -> [count, bytes, first_ns, last_ns, last raw event]
        self.raw_groups: dict[bytes, list] = {}
        self.evicted = 0
        self.total = 0

    def add(self, event: PacketEvent) -> None:
        outer = event.outer
        key = (event.reason, event.location, event.netns, outer.family, outer.proto, outer.saddr,
               outer.daddr, outer.dport)
        self.total += 1
        if self.raw_groups:  # one bound over both kinds of groups, and raw groups of this key merge here
            self._fold_raw()
        row = self.groups.get(key)
        if row is not None:
            row.count += 1
            row.bytes += event.len
            row.last_ns = event.ts_ns
            row.last_sport = outer.sport
            row.set_last(event, None)
            if event.ifname:
                row.ifname = event.ifname
            return
        if len(self.groups) >= self.max_groups:
            del self.groups[next(iter(self.groups))]
            self.evicted += 1
        self.groups[key] = DropRow(1, event.len, event.ts_ns, event.ts_ns, outer.sport, event.ifname, None, event)

    def add_raw(self, data: bytes) -> None:
        """The fast path for raw ring-buffer bytes: group on byte slices, decode only when rows are read.

        Slices follow tracer/events.field_offsets(): location..netns is [24:40], outer saddr+daddr [80:112],
        outer dport+family+proto [114:118].
        """
        if data[0] != EVENT_DROP:
            return
        raw_key = data[24:40] + data[80:112] + data[114:118]
        self.total += 1
        row = self.raw_groups.get(raw_key)
        ts_ns, = _TS.unpack_from(data, 8)
        length, = _LEN.unpack_from(data, 44)
        if row is not None:
            row[0] += 1
            row[1] += length
            row[3] = ts_ns
            row[4] = data
            return
        if len(self.raw_groups) + len(self.groups) >= self.max_groups:
            if self.raw_groups:
                del self.raw_groups[next(iter(self.raw_groups))]
            else:
                del self.groups[next(iter(self.groups))]
            self.evicted += 1
        self.raw_groups[raw_key] = [1, length, ts_ns, ts_ns, data]

    def _fold_raw(self) -> None:
        """Move raw groups into decoded rows (at read time, so the hot path stays cheap)."""
        unpack = _FOLD.unpack_from
        for count, length, first_ns, last_ns, data in self.raw_groups.values():
            location, reason, netns, ifname_raw, saddr, daddr, sport, dport, family, proto = unpack(data, _FOLD_AT)
            key = (reason, location, netns, family, proto, saddr, daddr, dport)
            ifname = ifname_raw.split(b"\0", 1)[0].decode(errors="replace")
            row = self.groups.get(key)
            if row is None:
                self.groups[key] = DropRow(count, length, first_ns, last_ns, sport, ifname, data)
            else:
                row.count += count
                row.bytes += length
                row.first_ns = min(row.first_ns, first_ns)
                if last_ns >= row.last_ns:
                    row.last_ns, row.last_sport = last_ns, sport
                    row.set_last(None, data)
                    row.ifname = ifname or row.ifname
        self.raw_groups.clear()

    def add_all(self, events: Iterable[PacketEvent]) -> None:
        for event in events:
            if event.is_drop:
                self.add(event)

    def __len__(self) -> int:
        self._fold_raw()
        return len(self.groups)

    def sorted_groups(self) -> list[tuple[DropKey, DropRow]]:
        """Most frequent first; ties by most recent."""
        self._fold_raw()
        return sorted(self.groups.items(), key=lambda item: (-item[1].count, -item[1].last_ns))
