"""Drop aggregation: pure code over decoded events, identical live and on a replayed recording."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tracer.events.decode import EVENT_DROP, PacketEvent, decode, packet_view

# One unpack for the hot path: ts_ns, location..netns as one key, len, ifname, outer saddr+daddr as one key, outer
# dport+family+proto as one key.
_HOT, _HOT_AT = packet_view("ts_ns", ("location", "netns"), "len", "ifname", ("outer.saddr", "outer.daddr"),
                            ("outer.dport", "outer.proto"))
# From location to outer.proto: the group key, the last source port and the device, without building the
# dataclasses a full decode does (most of its cost).
_FOLD, _FOLD_AT = packet_view("location", "reason", "netns", "ifname", "outer.saddr", "outer.daddr", "outer.sport",
                              "outer.dport", "outer.family", "outer.proto")
RawEvent = bytes  # DropRow has a field named `bytes`: this alias keeps the type readable inside it

# (reason, location, netns, family, proto, saddr, daddr, dport, ifname): the device is part of the group, or a
# group's interface column would flip between the devices its drops were seen on (flannel.1 and eth0).
DropKey = tuple[int, int, int, int, int, bytes, bytes, int, str]


def drop_key(event: PacketEvent) -> DropKey:
    outer = event.outer
    return (event.reason, event.location, event.netns, outer.family, outer.proto, outer.saddr, outer.daddr,
            outer.dport, event.ifname)


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
    """Drops grouped by (reason, location, netns, proto, src, dst, dport, device), bounded in size.

    When full, the group seen least recently... is approximated by the oldest inserted one, which is evicted
    and counted in `evicted`: memory stays bounded whatever the traffic, and nothing is dropped silently.
    """

    def __init__(self, max_groups: int = 100_000) -> None:
        self.max_groups = max_groups
        self.groups: dict[DropKey, DropRow] = {}
        # raw key bytes -> (count, bytes, first_ns, last_ns, last raw event). A tuple, replaced on every event:
        # as cheap as updating a list in place, and the cyclic GC stops tracking tuples of ints and bytes, so its
        # full passes do not walk 100k groups.
        self.raw_groups: dict[bytes, tuple[int, int, int, int, bytes]] = {}
        self._ifnames: dict[bytes, str] = {}  # raw ifname[16] -> str: a node has few devices, decode each once
        self.evicted = 0
        self.total = 0

    def add(self, event: PacketEvent) -> None:
        outer = event.outer
        key = drop_key(event)
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
            return
        if len(self.groups) >= self.max_groups:
            del self.groups[next(iter(self.groups))]
            self.evicted += 1
        self.groups[key] = DropRow(1, event.len, event.ts_ns, event.ts_ns, outer.sport, event.ifname, None, event)

    def add_raw(self, data: bytes) -> None:
        """The fast path for raw ring-buffer bytes: group on the key's bytes, decode only when rows are read.

        The key is location..netns, ifname, outer saddr+daddr and outer dport+family+proto (see _HOT).
        """
        if data[0] != EVENT_DROP:
            return
        ts_ns, head, length, ifname, addrs, port_proto = _HOT.unpack_from(data, _HOT_AT)
        raw_key = head + ifname + addrs + port_proto
        self.total += 1
        raw_groups = self.raw_groups
        row = raw_groups.get(raw_key)
        if row is not None:
            raw_groups[raw_key] = (row[0] + 1, row[1] + length, row[2], ts_ns, data)
            return
        if len(raw_groups) + len(self.groups) >= self.max_groups:
            if raw_groups:
                del raw_groups[next(iter(raw_groups))]
            else:
                del self.groups[next(iter(self.groups))]
            self.evicted += 1
        raw_groups[raw_key] = (1, length, ts_ns, ts_ns, data)

    def _ifname(self, raw: bytes) -> str:
        name = self._ifnames.get(raw)
        if name is None:
            name = raw.split(b"\0", 1)[0].decode(errors="replace")
            if len(self._ifnames) < 4096:  # bounded, whatever the bytes after the NUL hold
                self._ifnames[raw] = name
        return name

    def _fold_raw(self) -> None:
        """Move raw groups into decoded rows (at read time, so the hot path stays cheap)."""
        raw_groups = self.raw_groups
        if not raw_groups:
            return
        unpack = _FOLD.unpack_from
        groups = self.groups
        names = self._ifnames
        for count, length, first_ns, last_ns, data in raw_groups.values():
            location, reason, netns, ifname_raw, saddr, daddr, sport, dport, family, proto = unpack(data, _FOLD_AT)
            ifname = names.get(ifname_raw)
            if ifname is None:
                ifname = self._ifname(ifname_raw)
            # keyed on the decoded name: bytes after its NUL (a renamed device's leftovers) split no group
            key = (reason, location, netns, family, proto, saddr, daddr, dport, ifname)
            row = groups.get(key)
            if row is None:
                groups[key] = DropRow(count, length, first_ns, last_ns, sport, ifname, data)
            else:
                row.count += count
                row.bytes += length
                row.first_ns = min(row.first_ns, first_ns)
                if last_ns >= row.last_ns:
                    row.last_ns, row.last_sport = last_ns, sport
                    row.set_last(None, data)
        raw_groups.clear()

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
