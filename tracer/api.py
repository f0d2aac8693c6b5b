"""The Python API for scripted investigations: open a recording, or trace live, and get events and tables.

    from tracer.api import open_recording

    rec = open_recording("node1.ptrec.gz")
    for event in rec:                       # PacketEvent, decoded
        ...
    rows = rec.drop_rows()                  # the rows `podtrace report --json` prints, each with its cause
    flows = rec.flow_rows()                 # the rows `podtrace flows --json` prints (recorded with --node)
    tables = rec.conntrack_rows()           # each node's conntrack table at the start and the end
    mtu = rec.mtu_rows()                    # link MTUs, frag-needed/fragment/too-big counts, path verdicts

    journeys = merge("node1.ptrec.gz", "node2.ptrec.gz", output="both.ptrec.gz")  # across nodes (merge -o), 2 or more
    open_recording("both.ptrec.gz").journeys()   # the same, from the merged recording; .merged: its clock, nodes

    services = read_rules("ticket.save")     # a saved iptables-save / iptables -S / nft -j dump: ServiceMap
    services.lookup_vip("10.96.0.10", 53, "udp")

Opening a recording needs neither root nor BPF; `live()` needs both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tracer.analysis.aggregate import DropTable
from tracer.analysis.identity import ConnIdentities
from tracer.events.decode import EVENT_SIZE, PacketEvent, decode
from tracer.node import cause_state
from tracer.node.cause_state import add_causes
from tracer.output.report import Resolver, drop_rows, summary_json
from tracer.sources.replay import RecordedNames, ReplaySource

if TYPE_CHECKING:
    from tracer.analysis.flows import FlowTable, NatRecord
    from tracer.node.kubeproxy.model import ServiceMap

__all__ = ["Recording", "LiveSession", "open_recording", "live", "merge", "read_rules", "tcp_flags", "PacketEvent"]

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def tcp_flags(event: PacketEvent) -> int | None:
    """TCP flags of the packet's (outer) header from its snapshot, or None when it is not TCP or was cut off."""
    snap = event.snap
    if event.outer.proto != 6 or not snap:
        return None
    version = snap[0] >> 4
    if version == 4:
        offset = (snap[0] & 0x0F) * 4
    elif version == 6:
        offset = 40  # extension headers are rare on pod traffic; the parsed proto says TCP follows directly
    else:
        return None
    return snap[offset + 13] if len(snap) > offset + 13 else None


class Recording:
    """A recording file (and its rotation parts). Iterating reads it from the start each time."""

    def __init__(self, path: str, follow: bool = True) -> None:
        self.path = path
        self.follow = follow
        source = ReplaySource(path, follow=follow)  # raises RecordingError now for missing/foreign/newer files
        source.close()
        self.header: dict[str, Any] = source.header
        self.names: RecordedNames = source.names
        self.truncated = False
        self.incomplete: list[str] = []  # missing or foreign rotation parts of the last full read, one line each
        self.counters: dict[str, int] = {}
        self.events = 0
        self._last_read = source

    @property
    def merged(self) -> dict[str, Any] | None:
        """A merged recording's nodes, clock alignment (how it was estimated) and journeys (`podtrace merge -o`);
        None for one node's recording."""
        return self.header.get("merged")

    def journeys(self) -> list[dict[str, Any]]:
        """The cross-node journeys a merged recording holds, as `podtrace merge --json` prints them (empty for one
        node's recording)."""
        return list((self.merged or {}).get("journeys", []))

    def source(self, speed: float | None = None) -> ReplaySource:
        """A fresh ReplaySource over this recording (LiveSource's interface, for shared aggregation code)."""
        return ReplaySource(self.path, follow=self.follow, speed=speed)

    def raw_events(self) -> Iterator[bytes]:
        """Raw 296-byte events; raises RecordingError at a corrupt record after yielding the events before it."""
        source = self.source()
        self.events = 0
        try:
            for raw in source:
                self.events += 1
                yield raw
        finally:
            source.close()
            self._last_read = source  # its trailer: what only a full read knows
            self.names = source.names
            self.truncated = source.truncated
            self.incomplete = list(source.incomplete)
            self.counters = source.final_counters

    def __iter__(self) -> Iterator[PacketEvent]:
        """The packet events: a recording made with --node also holds NAT and conntrack events, of other sizes."""
        for raw in self.raw_events():
            if len(raw) == EVENT_SIZE:
                yield decode(raw)

    def drops(self) -> Iterator[PacketEvent]:
        return (event for event in self if event.is_drop)

    def resolver(self) -> Resolver:
        return self.names.resolver()

    def drop_table(self) -> DropTable:
        table = DropTable()
        for raw in self.raw_events():
            table.add_raw(raw)
        return table

    def drop_rows(self) -> list[dict[str, Any]]:
        """The same row objects `podtrace report --json` prints, each with its "cause" from what the recording
        holds (its rules and conntrack tables; what it does not hold, such as routes, is said to be unknown)."""
        table, identities = DropTable(), ConnIdentities()
        for raw in self.raw_events():
            table.add_raw(raw)
            identities.add_raw(raw)
        rows = drop_rows(table, self.resolver(), None, identities)
        add_causes(rows, self._last_read.cause_states())
        return rows

    def nat_records(self) -> list[NatRecord]:
        """The kernel's Service NAT flows at the end of the recording (empty unless recorded with --node)."""
        source = self.source()
        try:
            for _raw in source:
                pass
            return source.nat_records()
        finally:
            source.close()

    def flow_table(self) -> FlowTable:
        """The Service flow table `podtrace flows` shows (empty unless recorded with --node), drops attributed."""
        source = self.source()
        table, identities = DropTable(), ConnIdentities()
        try:
            for raw in source:
                table.add_raw(raw)
                identities.add_raw(raw)
        finally:
            source.close()
        flows, _services, _warnings = source.flow_table(drop_rows(table, source.resolver(), None, identities))
        return flows

    def flow_rows(self) -> list[dict[str, Any]]:
        """The flow objects `podtrace flows --json` and `podtrace report --json` print."""
        return [flow.to_json() for flow in self.flow_table().rows()]

    def _read_through(self) -> ReplaySource:
        """The recording read to its end and closed: what only the trailer and the last snapshots hold."""
        source = self.source()
        try:
            for _raw in source:
                pass
        finally:
            source.close()
        return source

    def softirq_rows(self) -> list[dict[str, Any]]:
        """Per-CPU softirq/NAPI latency rows and the all-CPU one (as `podtrace overlay softirq --json`), over the
        recording; empty unless recorded with --softirq."""
        source = self._read_through()
        if source.softirq is None:
            return []
        seconds = round(source.softirq.seconds, 3)
        return [{**row.to_json(), "seconds": seconds} for row in source.softirq.report()]

    def conntrack_rows(self) -> list[dict[str, Any]]:
        """Each node's conntrack table at the end of the recording (count vs max, insert_failed, drop, early_drop,
        `drops_during` the recording) with its reading at the start, as `podtrace report --json` prints them."""
        source = self._read_through()
        return [recorded.to_json() for recorded in source.conntrack()]

    def mtu_rows(self) -> list[dict[str, Any]]:
        """Per node: link MTUs at record time, ICMP frag-needed / fragment / too-big counts of the recorded events
        and the `podtrace mtu` verdict of each pod's path (`ok` false on a mismatch), as `podtrace report --json`."""
        from tracer.recording.recorded_node import relevant  # netlink/conntrack code only when asked

        source = self.source()
        summary = source.mtu_summary()
        try:
            for raw in source:
                if len(raw) >= EVENT_SIZE and relevant(raw, summary.too_big):
                    summary.add(decode(raw))
        finally:
            source.close()
        return [node.to_json() for node in summary.nodes(source.seconds or summary.event_span())]

    def summary(self) -> dict[str, Any]:
        """Events, lost, ... of the last full read (as the CLI summary object)."""
        return {**summary_json(self.events, self.counters), "truncated": self.truncated,
                "incomplete": self.incomplete}


def read_rules(path: str) -> ServiceMap:
    """kube-proxy's Services from a saved ruleset file (iptables-save, ip6tables-save, iptables -S or
    `nft -j list ruleset`), read as the tracer reads a live node. Raises UsageError when it is none of those."""
    from tracer.node import rulesfile

    return rulesfile.read(path).services()


def merge(*recordings: str, output: str | None = None) -> list[dict[str, Any]]:
    """The journeys of the packets two or more nodes' recordings saw (as `podtrace merge --json`), every clock put
    on the first one's; with `output`, also write the merged recording there (never over an existing file).
    PodtraceError when a recording shares no packet with the others (it is named); UsageError for fewer than two."""
    from tracer.cli.merge import merge_files

    return merge_files(list(recordings), output).journeys


def open_recording(path: str, follow: bool = True) -> Recording:
    """Open a recording; `follow` also reads the rotation parts written after it (FILE.1, FILE.2, ...)."""
    return Recording(path, follow)


class LiveSession:
    """A live trace: iterate `events()`; drops are also aggregated into `table` as they pass."""

    def __init__(self, source: Any, resolver: Resolver) -> None:
        self.source = source
        self.resolver = resolver
        self.table = DropTable()
        self.identities = ConnIdentities()
        self.events_seen = 0
        # ICMP counters at the start: a REJECT's errors rate-limited during the session turn "refused" into timeouts
        self.icmp_before = cause_state.icmp_snapshot(cause_state.named_namespaces())

    def events(self, duration: float | None = None, timeout_ms: int = 100) -> Iterator[PacketEvent]:
        deadline = time.monotonic() + duration if duration is not None else None
        while deadline is None or time.monotonic() < deadline:
            for raw in self.source.poll_raw(timeout_ms):
                self.table.add_raw(raw)
                self.identities.add_raw(raw)
                if len(raw) < EVENT_SIZE:  # a drop's conntrack event, a NAT or verdict event: not a packet event
                    continue
                self.events_seen += 1
                yield decode(raw)

    def run(self, duration: float) -> None:
        """Trace for `duration` seconds, only aggregating."""
        for _event in self.events(duration):
            pass

    def drop_rows(self) -> list[dict[str, Any]]:
        """The rows `podtrace drops --json` prints, causes read from the namespaces now."""
        rows = drop_rows(self.table, self.resolver, None, self.identities)
        cause_state.add_causes(rows, cause_state.collect(rows, self.icmp_before))
        return rows

    def counters(self) -> dict[str, int]:
        return dict(self.source.counters())


@contextmanager
def live(
    filter: str = "",  # the name users expect
    netns: str | None = None,
    ifname: str | None = None,
    path: bool = False,
    btf: str | None = None,
    node: str | list[str] | None = None,
) -> Iterator[LiveSession]:
    """Attach the probes (root), yield a LiveSession, detach on exit.

    `filter` is a tcpdump expression run in the kernel; `netns` an `ip netns` name (or "host"); `node` one or
    more node namespaces traced with their pods (tracer/probes/scope.py); `path` adds receive/queue events for packets
    matching the filter.
    """
    from tracer.kernel import bccenv
    from tracer.node.names import NetnsNames, Symbolizer, netns_inode
    from tracer.probes.build import ProbeConfig
    from tracer.probes.pcapfilter import compile_filter
    from tracer.probes.scope import Scope
    from tracer.sources.live import LiveSource

    bccenv.require_root("tracing")
    nodes = tuple([node] if isinstance(node, str) else node or ())
    config = ProbeConfig(filter=compile_filter(filter), netns_inode=netns_inode(netns) if netns else None,
                         ifname=ifname, path=path, scope=Scope(nodes=nodes) if nodes else None)
    source = LiveSource(config, btf)
    source.start(progress=False)
    try:
        yield LiveSession(source, Resolver(source.reasons, NetnsNames().name, Symbolizer()))
    finally:
        source.close()
