"""DropTable: grouping, counts, eviction, and the raw fast path agreeing with the decoded one."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from tracer.analysis.aggregate import DropTable
from tracer.events.decode import EVENT_DROP, EVENT_PATH, FLAG_PARSED, PacketEvent, Tuple, decode, encode

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "events"


def v4(addr: str) -> bytes:
    return socket.inet_aton(addr) + bytes(12)


def drop(
    *, src: str = "10.244.1.5", dst: str = "10.96.0.10", sport: int = 40000, dport: int = 53, proto: int = 17,
    reason: int = 3, location: int = 0xFFFFFFFF81000000, netns: int = 4026531840, ts_ns: int = 1_000,
    length: int = 60, ifname: str = "eth0", kind: int = EVENT_DROP,
) -> PacketEvent:
    outer = Tuple(v4(src), v4(dst), sport, dport, 4, proto, 0, 0, 0x4000, length)
    return PacketEvent(kind, 0, ts_ns, 0xFFFF888000000000, location, reason, netns, 2, length, 0, 0x0800,
                       FLAG_PARSED, 0, 0, ifname, outer, None, b"")


def rows(table: DropTable) -> list[tuple[tuple, int, int, int, int, int, str]]:
    return [(key, row.count, row.bytes, row.first_ns, row.last_ns, row.last_sport, row.ifname)
            for key, row in table.sorted_groups()]


def test_grouping_key_ignores_source_port() -> None:
    table = DropTable()
    table.add(drop(sport=1000, ts_ns=10, length=50))
    table.add(drop(sport=2000, ts_ns=20, length=70))
    table.add(drop(sport=3000, ts_ns=30, length=80))
    assert len(table) == 1
    assert table.total == 3
    ((key, row),) = table.sorted_groups()
    assert key == (3, 0xFFFFFFFF81000000, 4026531840, 4, 17, v4("10.244.1.5"), v4("10.96.0.10"), 53, "eth0")
    assert (row.count, row.bytes, row.first_ns, row.last_ns, row.last_sport) == (3, 200, 10, 30, 3000)
    assert row.last_event.ts_ns == 30


def test_every_key_part_splits_groups() -> None:
    base = drop()
    variants = [
        base, drop(reason=2), drop(location=0xFFFFFFFF81000010), drop(netns=1), drop(proto=6),
        drop(src="10.244.1.6"), drop(dst="10.96.0.11"), drop(dport=54), drop(ifname="flannel.1"),
    ]
    table = DropTable()
    table.add_all(variants)
    assert len(table) == len(variants)
    family6 = dataclasses.replace(base, outer=dataclasses.replace(base.outer, family=6))
    table.add(family6)
    assert len(table) == len(variants) + 1


def test_sorted_by_count_then_most_recent() -> None:
    table = DropTable()
    table.add(drop(dport=1, ts_ns=5))
    table.add(drop(dport=2, ts_ns=1))
    table.add(drop(dport=2, ts_ns=2))
    table.add(drop(dport=3, ts_ns=9))
    assert [key[7] for key, _ in table.sorted_groups()] == [2, 3, 1]


def test_a_drop_without_a_device_is_its_own_group() -> None:
    """Locally generated packets dropped before they had a device: not folded into a device's group."""
    table = DropTable()
    table.add(drop(ifname=""))
    table.add(drop(ifname="veth1"))
    table.add(drop(ifname=""))
    assert [(row.ifname, row.count) for _, row in table.sorted_groups()] == [("", 2), ("veth1", 1)]


def test_add_all_ignores_path_events() -> None:
    table = DropTable()
    table.add_all([drop(kind=EVENT_PATH), drop(), drop(kind=EVENT_PATH, dport=99)])
    assert table.total == 1
    assert len(table) == 1


def test_eviction_is_bounded_and_counted() -> None:
    table = DropTable(max_groups=3)
    for port in range(1, 8):
        table.add(drop(dport=port, ts_ns=port))
    assert len(table) == 3
    assert table.evicted == 4
    assert table.total == 7
    # The oldest inserted groups went first.
    assert sorted(key[7] for key, _ in table.sorted_groups()) == [5, 6, 7]
    # Adding to an existing group evicts nothing.
    table.add(drop(dport=7))
    assert (len(table), table.evicted) == (3, 4)


# -- the raw fast path (what `podtrace drops` uses) --


def test_add_raw_matches_add() -> None:
    events = [drop(sport=s, dport=d, ts_ns=t, length=40 + t) for t, (s, d) in
              enumerate([(1, 53), (2, 53), (3, 80), (4, 53), (5, 80), (6, 443)], start=1)]
    decoded, raw = DropTable(), DropTable()
    decoded.add_all(events)
    for event in events:
        raw.add_raw(encode(event))
    assert rows(raw) == rows(decoded)
    assert raw.total == decoded.total == 6
    assert [row.last_event for _, row in raw.sorted_groups()] == [row.last_event for _, row in decoded.sorted_groups()]


def test_the_device_is_part_of_the_group_raw_and_decoded() -> None:
    """A drop seen on flannel.1 and one on eth0 are two rows, each with its own device, and stay so: the column
    used to show whichever device the latest drop of the group had."""
    events = [drop(ifname="flannel.1", ts_ns=1), drop(ifname="eth0", ts_ns=2), drop(ifname="flannel.1", ts_ns=3)]
    decoded, raw = DropTable(), DropTable()
    decoded.add_all(events)
    for event in events:
        raw.add_raw(encode(event))
    for table in (decoded, raw):
        assert [(row.ifname, row.count) for _, row in table.sorted_groups()] == [("flannel.1", 2), ("eth0", 1)]
    assert rows(raw) == rows(decoded)


def test_add_raw_on_golden_bytes() -> None:
    table, reference = DropTable(), DropTable()
    for path in sorted(GOLDEN_DIR.glob("*.bin")):
        data = path.read_bytes()
        table.add_raw(data)
        reference.add_all([decode(data)])
    assert table.total == reference.total == 3  # path events skipped
    assert rows(table) == rows(reference)
    (_, v4_row), (_, v6_row) = table.sorted_groups()
    assert (v4_row.count, v4_row.last_event.outer.family, v6_row.count, v6_row.last_event.outer.family) == (2, 4, 1, 6)


def test_add_raw_eviction_and_mixing_with_add() -> None:
    table = DropTable(max_groups=2)
    table.add_raw(encode(drop(dport=1, ts_ns=1)))
    table.add_raw(encode(drop(dport=2, ts_ns=2)))
    table.add_raw(encode(drop(dport=3, ts_ns=3)))
    assert table.evicted == 1
    table.add(drop(dport=2, ts_ns=10, sport=7))  # folds with the raw group of the same key
    assert len(table) == 2
    found = {key[7]: (row.count, row.first_ns, row.last_ns, row.last_sport) for key, row in table.sorted_groups()}
    assert found == {2: (2, 2, 10, 7), 3: (1, 3, 3, 40000)}


def test_bound_holds_when_add_follows_add_raw() -> None:
    table = DropTable(max_groups=2)
    table.add_raw(encode(drop(dport=1, ts_ns=1)))
    table.add_raw(encode(drop(dport=2, ts_ns=2)))
    table.add(drop(dport=3, ts_ns=3))
    assert len(table) == 2
    assert table.evicted == 1
    assert sorted(key[7] for key, _ in table.sorted_groups()) == [2, 3]
