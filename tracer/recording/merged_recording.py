"""The merged recording `podtrace merge A B [C ...] -o ALL` writes: one recording holding every node's events on the
first one's clock, each event still attributable to its node, with the journeys and the clock alignment they were
read with (docs/recording-format.md, header `merged`, format minor 5).

Nodes' recordings cannot simply be concatenated: their monotonic clocks differ, their namespaces may share inode
numbers (every host's own namespace is inode 4026531840), their kernels may number drop reasons differently and
KASLR puts symbols at other addresses. So every node's events but the first's are rewritten: timestamps shifted by
the estimated clock offset, netns inodes an earlier machine also uses moved to free values, drop reasons renumbered
by name into the first's table, and symbol addresses an earlier node names differently moved. A namespace name two
machines use (each host's "host") is qualified by its machine. Each node's netns inodes are listed in
`merged.nodes`: that is how an event's node is known. Recordings made on one machine share its namespaces: nothing
is moved or renamed among them, and an event two of them recorded (the same bytes, in a namespace both traced) is
written once.
The file is written to a temporary name and linked into place whole, never half-written.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import os
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracer.events.decode import EVENT_CT, EVENT_DROP, EVENT_PATH, EVENT_SIZE, NETNS_OFFSETS, field_offsets, netns_of
from tracer.output.errors import PodtraceError, RecordingError
from tracer.recording.fileformat import (
    FORMAT_MINOR,
    FORMAT_VERSION,
    KIND_HEADER,
    KIND_TRAILER,
    RecordWriter,
    WriteFailed,
)
from tracer.recording.records_json import nat_to_json
from tracer.sources.replay import ReplaySource

BATCH = 1024  # events per EVENTS record, as `record` writes them
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
TS_OFFSET = field_offsets()["ts_ns"]  # the same in every event type
LOCATION_OFFSET = field_offsets()["location"]  # packet events: the drop's kernel location
REASON_OFFSET = field_offsets()["reason"]  # packet events: the drop reason (path events: the point; ICMP: type, code)
SYMBOL_BASE = 1 << 32  # moved symbol addresses: far below any kernel address (0xffff...)


@dataclass
class NodeFile:
    """One node's recording as read once through: what the merged file needs of it besides its events."""

    path: str
    label: str  # "hostname/netns", as the journeys name the node
    header: dict[str, Any]
    netns: dict[int, str]  # every name the recording carries (its last NAMES record included)
    symbols: dict[int, str]
    reasons: dict[int, str]
    pods: dict[str, str]
    counters: dict[str, int]  # over the recorded span
    probe_counters: dict[str, dict[str, int]]
    trailer: dict[str, Any] | None
    nat: list[dict[str, Any]]
    inodes: set[int] = field(default_factory=set)  # netns inodes its events use
    events: int = 0
    truncated: bool = False

    @property
    def wall_offset_ns(self) -> int:
        return int(self.header.get("clock", {}).get("wall_offset_ns", 0))

    def used_inodes(self) -> set[int]:
        """Namespaces this node's events, links and NAT flows refer to (its name map also lists every other named
        namespace of its host, which the merged file does not need)."""
        used = set(self.inodes)
        for node in (self.header.get("links") or {}).get("nodes", []):
            used.add(int(node.get("inode") or 0))
            used.update(int((link.get("peer") or {}).get("inode") or 0) for link in node.get("links", []))
        used.update(int(item.get("netns", 0)) for item in self.nat)
        netns_inode = (self.header.get("filter") or {}).get("netns_inode")
        if netns_inode:
            used.add(int(netns_inode))
        used.discard(0)
        return used

    def used_names(self) -> set[str]:
        names = {self.netns[inode] for inode in self.used_inodes() if inode in self.netns}
        for key in ("links", "conntrack", "services"):
            names.update(node.get("netns") or "host" for node in (self.header.get(key) or {}).get("nodes", []))
        return names


def read_node(path: str, label: str, on_raw: Callable[[bytes], None]) -> NodeFile:
    """Read a recording through once, passing each raw event to `on_raw` (RecordingError as its reader raises)."""
    source = ReplaySource(path)
    inodes: set[int] = set()
    count = 0
    try:
        for raw in source:
            count += 1
            inode = netns_of(raw)
            if inode:
                inodes.add(inode)
            on_raw(raw)
    finally:
        source.close()
    names = source.names
    return NodeFile(path, label, source.header, dict(names.netns), dict(names.symbols), dict(names.reasons),
                    dict(names.pods), source.counters(), source.probe_counters(),
                    source.trailer if source.trailer and not source.trailer.get("next") else None,
                    [nat_to_json(record) for record in source.nat_records()], inodes, count, source.truncated)


@dataclass
class Remap:
    """How one node's events and names are rewritten into the merged file."""

    shift_ns: int = 0  # added to every event timestamp
    inodes: dict[int, int] = field(default_factory=dict)
    reasons: dict[int, int] = field(default_factory=dict)
    symbols: dict[int, int] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # netns name -> the merged file's name for it

    def name(self, name: str | None) -> str | None:
        """A node's netns name in links/conntrack/services entries (None: the recorder's own, "host")."""
        renamed = self.names.get(name or "host")
        return renamed if renamed is not None else name

    def inode(self, inode: int) -> int:
        return self.inodes.get(inode, inode)

    def event(self, raw: bytes) -> bytes:
        kind = raw[0]
        out = bytearray(raw)
        ts, = _U64.unpack_from(out, TS_OFFSET)
        shifted = ts + self.shift_ns
        if not 0 <= shifted < 1 << 64:
            raise PodtraceError("a recording's events fall outside the first's clock once aligned "
                                f"(shift {self.shift_ns} ns): these recordings were not made at the same time",
                                "record both nodes at the same time")
        _U64.pack_into(out, TS_OFFSET, shifted)
        offset = NETNS_OFFSETS.get(kind)
        if offset is not None and len(out) >= offset + 4:
            inode, = _U32.unpack_from(out, offset)
            if inode in self.inodes:
                _U32.pack_into(out, offset, self.inodes[inode])
        if len(out) == EVENT_SIZE and kind in (EVENT_DROP, EVENT_PATH):
            location, = _U64.unpack_from(out, LOCATION_OFFSET)
            if location in self.symbols:
                _U64.pack_into(out, LOCATION_OFFSET, self.symbols[location])
            if kind == EVENT_DROP:
                reason, = _U32.unpack_from(out, REASON_OFFSET)
                if reason in self.reasons:
                    _U32.pack_into(out, REASON_OFFSET, self.reasons[reason])
        return bytes(out)


def same_machine(one: NodeFile, other: NodeFile) -> bool:
    """One boot of one machine: the same boot id when both headers carry one; older recordings, one hostname and
    wall minus monotonic clock within a second (NTP slews it by far less)."""
    ids = one.header.get("boot_id"), other.header.get("boot_id")
    if all(ids):
        return ids[0] == ids[1]
    return (one.header.get("hostname") == other.header.get("hostname")
            and abs(one.wall_offset_ns - other.wall_offset_ns) < 1_000_000_000)


def machines(nodes: list[NodeFile]) -> list[int]:
    """Per node, the first node recorded on the same machine (same_machine): an inode is then one namespace in both,
    its name the same."""
    out: list[int] = []
    for index, node in enumerate(nodes):
        out.append(next((first for first in sorted(set(out)) if same_machine(nodes[first], node)), index))
    return out


def _qualifiers(nodes: list[NodeFile], firsts: list[int]) -> dict[int, str]:
    """Each machine's qualifier for the names it shares with another: its hostname, or its first file's name when
    two machines have one hostname."""
    groups = sorted(set(firsts))
    hosts = {group: str(nodes[group].header.get("hostname") or "?") for group in groups}
    if len(set(hosts.values())) == len(groups):
        return hosts
    return {group: os.path.basename(nodes[group].path).split(".ptrec")[0] or f"node{group + 1}" for group in groups}


def plan(nodes: list[NodeFile], offsets_ns: list[int]
         ) -> tuple[list[Remap], dict[int, str], dict[int, str], dict[int, str]]:
    """Each node's rewrite and the merged netns, symbol and reason maps. `offsets_ns`: per node, added to its wall
    clock to put it on the first's (tracer.analysis.journey.ClockAlignment.offsets). Nodes of one machine share its
    namespaces (inodes kept, names unqualified); a name two machines use is qualified by each machine, and a later
    machine's inodes that an earlier one uses move to values none uses."""
    first = nodes[0]
    remaps = [Remap(shift_ns=node.wall_offset_ns + offset - first.wall_offset_ns if index else 0)
              for index, (node, offset) in enumerate(zip(nodes, offsets_ns))]
    firsts = machines(nodes)
    groups = sorted(set(firsts))
    if len(groups) > 1:
        qualifiers = _qualifiers(nodes, firsts)
        names = {group: set().union(*(node.used_names() for node, g in zip(nodes, firsts) if g == group))
                 for group in groups}
        inodes = {group: set().union(*(node.used_inodes() for node, g in zip(nodes, firsts) if g == group))
                  for group in groups}
        shared = {name for group in groups for name in names[group]
                  if sum(name in names[other] for other in groups) > 1}
        taken = set().union(*inodes.values())
        spare = (value for value in range((1 << 32) - 1, 0, -1) if value not in taken)
        moved: dict[int, dict[int, int]] = {}
        earlier: set[int] = set()
        for group in groups:
            moved[group] = {inode: next(spare) for inode in sorted(inodes[group] & earlier)}
            earlier |= inodes[group]
        for remap, group in zip(remaps, firsts):
            remap.names = {name: f"{qualifiers[group]}:{name}" for name in sorted(shared & names[group])}
            remap.inodes = dict(moved[group])
    netns: dict[int, str] = {}
    for node, remap in zip(nodes, remaps):
        for inode in sorted(node.used_inodes()):
            name = node.netns.get(inode)
            if name is not None:
                netns[remap.inode(inode)] = remap.name(name) or name
    # drop reasons: renumbered by name into the first node's table
    reasons = dict(first.reasons)
    by_name = {name: value for value, name in reasons.items()}
    for node, remap in zip(nodes[1:], remaps[1:]):
        for value, name in sorted(node.reasons.items()):
            if name in by_name:
                target = by_name[name]
            elif value not in reasons:
                target = value
            else:
                target = max(reasons) + 1
            reasons[target] = name
            by_name[name] = target
            if target != value:
                remap.reasons[value] = target
    # symbols: an address an earlier node names differently (another kernel, another KASLR slide) moves
    symbols = dict(first.symbols)
    every = set().union(*(node.symbols for node in nodes))
    spot = SYMBOL_BASE
    for node, remap in zip(nodes[1:], remaps[1:]):
        for address, name in sorted(node.symbols.items()):
            if symbols.get(address, name) != name:
                while spot in symbols or spot in every:
                    spot += 1
                remap.symbols[address] = spot
                address = spot
            symbols[address] = name
    return remaps, netns, symbols, reasons


def _rename_nodes(section: Mapping[str, Any] | None, remap: Remap) -> list[dict[str, Any]]:
    """The `nodes` entries of a links/conntrack/services header (or trailer) entry, netns names and inodes as the
    merged file has them."""
    out = []
    for node in (section or {}).get("nodes", []):
        node = dict(node)
        node["netns"] = remap.name(node.get("netns"))
        if node.get("inode"):
            node["inode"] = remap.inode(int(node["inode"]))
        if "links" in node:
            links = []
            for link in node["links"]:
                link = dict(link)
                if link.get("peer"):
                    peer = dict(link["peer"])
                    peer["netns"] = remap.name(peer.get("netns")) if peer.get("netns") else peer.get("netns")
                    if peer.get("inode"):
                        peer["inode"] = remap.inode(int(peer["inode"]))
                    link["peer"] = peer
                links.append(link)
            node["links"] = links
        out.append(node)
    return out


def _sum(counters: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for values in counters:
        for name, value in values.items():
            total[name] = total.get(name, 0) + value
    return total


def _wall_shift(nodes: list[NodeFile], remaps: list[Remap], index: int) -> int:
    """Added to node `index`'s wall clock to put it on the first's."""
    return remaps[index].shift_ns + nodes[0].wall_offset_ns - nodes[index].wall_offset_ns


def build_header(nodes: list[NodeFile], remaps: list[Remap], netns: dict[int, str], symbols: dict[int, str],
                 reasons: dict[int, str], merged: dict[str, Any], basename: str) -> dict[str, Any]:
    """The merged file's header: the first node's, with every node's names, links, conntrack tables and kube-proxy
    rules (netns names as rewritten), and `merged`."""
    first = nodes[0]
    header = {key: value for key, value in first.header.items()
              if key not in ("counters_at_start", "probe_counters_at_start", "softirq")}
    clock = dict(first.header.get("clock", {}))
    # the merged span starts with the earliest recording (each start on the first's clock)
    starts = [int(node.header.get("clock", {}).get("wall_ns", 0)) for node in nodes]
    shifted = [start + _wall_shift(nodes, remaps, index) for index, start in enumerate(starts) if start]
    if shifted:
        clock["wall_ns"] = min(shifted)
    pods: dict[str, str] = {}
    for node in reversed(nodes):  # the first node's names win
        pods.update(node.pods)
    names = dict(first.header.get("names", {}))
    names.update({"netns": {str(k): v for k, v in sorted(netns.items())},
                  "symbols": {str(k): v for k, v in sorted(symbols.items())}, "pods": pods})
    names["lab"] = next((node.header.get("names", {}).get("lab") for node in nodes
                         if node.header.get("names", {}).get("lab")), None)
    header.update({
        "format_version": FORMAT_VERSION, "format_minor": FORMAT_MINOR, "clock": clock, "names": names,
        "drop_reasons": {str(k): v for k, v in sorted(reasons.items())},
        "part": {"index": 0, "first": basename, "run_id": uuid.uuid4().hex},
        "counters_at_start": {}, "probe_counters_at_start": {},
        "merged": merged,
    })
    for key in ("links", "conntrack", "services"):
        sections = [node.header[key] for node in nodes if node.header.get(key)]
        if sections:
            entry = dict(sections[0])
            entry["nodes"] = [item for node, remap in zip(nodes, remaps)
                              for item in _rename_nodes(node.header.get(key), remap)]
            header[key] = entry
    header.pop("softirq", None)
    return header


def build_trailer(nodes: list[NodeFile], remaps: list[Remap], events: int, end_wall_ns: int) -> dict[str, Any]:
    trailer: dict[str, Any] = {
        "counters": _sum(node.counters for node in nodes), "events": events, "total_events": events,
        "next": None, "end_wall_ns": end_wall_ns}
    probes: dict[str, dict[str, int]] = {}
    for node in nodes:
        for probe, values in node.probe_counters.items():
            probes[probe] = _sum([probes.get(probe, {}), values])
    if probes:
        trailer["probe_counters"] = probes
    ends = [item for node, remap in zip(nodes, remaps)
            for item in _rename_nodes((node.trailer or {}).get("conntrack"), remap)]
    if ends:
        trailer["conntrack"] = {"nodes": ends}
    held = [(node.trailer or {}).get("cause_state") for node in nodes]
    if all(held):  # every node's state behind its drops' causes (minor 6); else the report says it is unknown
        states = [item for state, remap in zip(held, remaps) for item in _rename_nodes(state, remap)]
        errors = "; ".join(str(state.get("error")) for state in held if state and state.get("error"))
        trailer["cause_state"] = {"nodes": states, "error": errors}
        rules = [item for state, remap in zip(held, remaps)
                 for item in _rename_nodes((state or {}).get("rules"), remap)]
        if rules:  # kube-proxy's rules at each node's end, where netfilter dropped (minor 8)
            trailer["cause_state"]["rules"] = {"nodes": rules}
    return trailer


def recorded_before(nodes: list[NodeFile], index: int) -> set[bytes]:
    """Node `index`'s events that an earlier node of its machine recorded too (the same bytes, in a namespace both
    traced): the same kernel events recorded twice, written once."""
    firsts = machines(nodes)
    skip: set[bytes] = set()
    for earlier in range(index):
        if firsts[earlier] != firsts[index]:
            continue
        shared = nodes[earlier].inodes & nodes[index].inodes
        if not shared:
            continue
        source = ReplaySource(nodes[earlier].path)
        try:
            skip.update(raw for raw in source if netns_of(raw) in shared)
        finally:
            source.close()
    return skip


def _units(path: str, node: int, remap: Remap, skip: set[bytes]) -> Iterator[tuple[int, int, list[bytes]]]:
    """A node's events, rewritten, as (timestamp, node, events): a drop's conntrack event stays with its drop.
    Events in `skip` (the other node recorded them already) are left out."""
    source = ReplaySource(path)
    pending: bytes | None = None
    try:
        for raw in source:
            if raw in skip:
                continue
            raw = remap.event(raw) if node else raw
            if raw[0] == EVENT_CT and len(raw) != EVENT_SIZE:
                if pending is not None:
                    yield _U64.unpack_from(pending, TS_OFFSET)[0], node, [pending]
                pending = raw
                continue
            ts, = _U64.unpack_from(raw, TS_OFFSET)
            yield ts, node, ([pending, raw] if pending is not None else [raw])
            pending = None
        if pending is not None:
            yield _U64.unpack_from(pending, TS_OFFSET)[0], node, [pending]
    finally:
        source.close()


def write_events(writer: RecordWriter, nodes: list[NodeFile], remaps: list[Remap]) -> tuple[int, int]:
    """Every node's events in time order on the first node's clock; (events written, the last one's timestamp)."""
    batch: list[bytes] = []
    count = last = 0
    streams = [_units(node.path, index, remap, recorded_before(nodes, index) if index else set())
               for index, (node, remap) in enumerate(zip(nodes, remaps))]
    for ts, _node, unit in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        batch += unit
        count += len(unit)
        last = max(last, ts)
        if len(batch) >= BATCH:
            writer.write_events(batch)
            batch = []
    if batch:
        writer.write_events(batch)
    return count, last


def write_merged(path: str, nodes: list[NodeFile], offsets_ns: list[int], merged: dict[str, Any],
                 mode: int = 0o600) -> int:
    """Write the merged recording to `path` whole or not at all; returns the events written. An existing file (or a
    symbolic link) at `path` is refused, as `record` refuses it; a failure leaves nothing behind."""
    remaps, netns, symbols, reasons = plan(nodes, offsets_ns)
    merged = {**merged, "nodes": [
        {**entry, "netns": sorted(remap.inode(inode) for inode in node.inodes),
         "renamed": dict(sorted(remap.names.items()))}
        for entry, node, remap in zip(merged["nodes"], nodes, remaps)]}
    header = build_header(nodes, remaps, netns, symbols, reasons, merged, os.path.basename(path))
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{uuid.uuid4().hex[:12]}.tmp-{name}")  # the suffix keeps the compression
    writer = RecordWriter(temporary, mode)
    try:
        writer.write_json(KIND_HEADER, header)
        count, last = write_events(writer, nodes, remaps)
        ends = [int((node.trailer or {}).get("end_wall_ns") or 0) for node in nodes]
        end = max([end + _wall_shift(nodes, remaps, index) for index, end in enumerate(ends) if end]
                  + [last + nodes[0].wall_offset_ns if last else 0])
        writer.write_json(KIND_TRAILER, build_trailer(nodes, remaps, count, end))
        writer.close()  # flushed and fsynced
        _link_into_place(temporary, path)
    except WriteFailed as err:  # its message says the file keeps what was written: this one is removed
        writer.abandon()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        cause = err.__cause__
        full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        what = "the disk is full" if full else (getattr(cause, "strerror", None) or str(cause))
        raise RecordingError(f"cannot write {path}: {what}; nothing was written (a merged recording is written "
                             "whole or not at all)") from err
    except BaseException:
        writer.abandon()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):
        os.unlink(temporary)
    _sync_directory(directory)
    return count


def _link_into_place(temporary: str, path: str) -> None:
    """The complete file appears at `path` in one step, and only where nothing is (link(2) never overwrites)."""
    try:
        os.link(temporary, path)
    except FileExistsError as err:
        what = "a symbolic link" if os.path.islink(path) else "an existing file"
        raise RecordingError(f"cannot write {path}: it is {what}, refused (podtrace never overwrites or follows "
                             "links)", "remove it or choose another name") from err
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise RecordingError(f"cannot write {path}: {err.strerror}") from err
        if os.path.lexists(path):  # a file system without hard links: checked, then renamed
            raise RecordingError(f"cannot write {path}: it is an existing file, refused",
                                 "remove it or choose another name") from err
        os.rename(temporary, path)


def _sync_directory(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
