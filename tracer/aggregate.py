"""Drop aggregation: pure code over decoded events, identical live and on a replayed recording."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tracer.events import PacketEvent

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
    last_event: PacketEvent


class DropTable:
    """Drops grouped by (reason, location, netns, proto, src, dst, dport), bounded in size.

    When full, the group seen least recently... is approximated by the oldest inserted one, which is evicted
    and counted in `evicted`: memory stays bounded whatever the traffic, and nothing is dropped silently.
    """

    def __init__(self, max_groups: int = 100_000) -> None:
        self.max_groups = max_groups
        self.groups: dict[DropKey, DropRow] = {}
        self.evicted = 0
        self.total = 0

    def add(self, event: PacketEvent) -> None:
        outer = event.outer
        key = (event.reason, event.location, event.netns, outer.family, outer.proto, outer.saddr,
               outer.daddr, outer.dport)
        self.total += 1
        row = self.groups.get(key)
        if row is not None:
            row.count += 1
            row.bytes += event.len
            row.last_ns = event.ts_ns
            row.last_sport = outer.sport
            row.last_event = event
            if event.ifname:
                row.ifname = event.ifname
            return
        if len(self.groups) >= self.max_groups:
            del self.groups[next(iter(self.groups))]
            self.evicted += 1
        self.groups[key] = DropRow(1, event.len, event.ts_ns, event.ts_ns, outer.sport, event.ifname, event)

    def add_all(self, events: Iterable[PacketEvent]) -> None:
        for event in events:
            if event.is_drop:
                self.add(event)

    def __len__(self) -> int:
        return len(self.groups)

    def sorted_groups(self) -> list[tuple[DropKey, DropRow]]:
        """Most frequent first; ties by most recent."""
        return sorted(self.groups.items(), key=lambda item: (-item[1].count, -item[1].last_ns))
