"""ReplaySource: a recording read back with LiveSource's interface (poll/poll_raw/counters/close), so the same
aggregation, reports and TUI run on it. No BPF, no root: importing this never imports bcc.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tracer.events.decode import EVENT_SIZE, PacketEvent, decode
from tracer.kernel.ladder import AttachPlan
from tracer.output.errors import RecordingError
from tracer.output.report import Resolver
from tracer.recording.fileformat import (
    KIND_COUNTERS,
    KIND_EVENTS,
    KIND_HEADER,
    KIND_NAMES,
    KIND_NAT_FLOWS,
    KIND_SOFTIRQ,
    KIND_TRAILER,
    PREAMBLE,
    RecordReader,
    part_path,
    split_events,
)
from tracer.recording.records_json import nat_from_json, softirq_from_json

if TYPE_CHECKING:
    from tracer.analysis.flows import FlowTable, NatRecord
    from tracer.analysis.softirq import SoftirqAggregator
    from tracer.node.kubeproxy.model import ServiceMap
    from tracer.recording.recorded_causes import RecordedStates
    from tracer.recording.recorded_node import MtuSummary, RecordedConntrack


@dataclass
class RecordedNames:
    """The names a recording carries: drop reasons, netns, kernel symbols, the lab's pods and Services."""

    reasons: dict[int, str] = field(default_factory=dict)
    netns: dict[int, str] = field(default_factory=dict)
    symbols: dict[int, str] = field(default_factory=dict)
    lab: dict[str, Any] | None = None
    pods: dict[str, str] = field(default_factory=dict)  # pod IP -> namespace/name, as the node named it
    wall_offset_ns: int = 0

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> RecordedNames:
        names = header.get("names", {})
        return cls(
            reasons={int(k): v for k, v in header.get("drop_reasons", {}).items()},
            netns={int(k): v for k, v in names.get("netns", {}).items()},
            symbols={int(k): v for k, v in names.get("symbols", {}).items()},
            lab=names.get("lab"),
            pods=dict(names.get("pods") or {}),
            wall_offset_ns=int(header.get("clock", {}).get("wall_offset_ns", 0)),
        )

    def update(self, names: dict[str, Any]) -> None:
        self.netns.update({int(k): v for k, v in names.get("netns", {}).items()})
        self.symbols.update({int(k): v for k, v in names.get("symbols", {}).items()})

    def netns_name(self, inode: int) -> str:
        if inode == 0:
            return "-"
        return self.netns.get(inode) or f"netns:{inode}"

    def symbol(self, address: int) -> str:
        if address == 0:
            return "-"
        return self.symbols.get(address) or f"0x{address:x}"

    def resolver(self) -> Resolver:
        # The dicts are shared: names read later in the file resolve through the same Resolver.
        return Resolver(self.reasons, self.netns_name, self.symbol, self.wall_offset_ns, pod=self.pod_of_ip)

    def pod_of_ip(self, ip: str) -> str | None:
        if self.pods:  # named from the node when recorded; older recordings carry only the lab's manifest
            return self.pods.get(ip)
        for name, pod in (self.lab or {}).get("pods", {}).items():
            if pod.get("ip") == ip:
                return f"{pod.get('namespace', 'default')}/{name}"
        return None

    def pod_names(self) -> dict[str, str]:
        """Pod IP -> pod name, as `podtrace flows` labels flows: the node's names when recorded, else the lab's."""
        if self.pods:
            return {ip: label.split("/", 1)[-1] for ip, label in self.pods.items() if not label.startswith("pod ")}
        return {pod["ip"]: name for name, pod in (self.lab or {}).get("pods", {}).items() if pod.get("ip")}

    def service_of(self, ip: str, port: int) -> str | None:
        lab = self.lab or {}
        on_node = ip in lab.get("node_ips", {}).values()
        for name, svc in lab.get("services", {}).items():
            node_port = on_node and port and svc.get("node_port") == port
            if (svc.get("vip") == ip and svc.get("port") == port) or node_port:
                return str(name)
        return None


def recorded_services(header: dict[str, Any], per_node: dict[str, ServiceMap] | None = None,
                      ) -> tuple[ServiceMap, list[str]]:
    """kube-proxy's ServiceMap from the command output a recording's header carries (`services.nodes`), merged
    per node as `podtrace flows` merges it, and a warning per node whose rules could not be read. `per_node`, when
    given, receives each node's own map (its netns name, "host" for the recording's own)."""
    from tracer.node.kubeproxy.collect import collect
    from tracer.node.kubeproxy.ipvsadm import parse_ipvsadm
    from tracer.node.kubeproxy.model import ServiceMap, merge
    from tracer.output.errors import PodtraceError  # the kube-proxy parsers only when a report needs them

    services = ServiceMap()
    warnings = []
    for node in (header.get("services") or {}).get("nodes", []):
        where = node.get("netns") or "the recording namespace"
        if node.get("error"):
            warnings.append(f"Service names unavailable in {where}: {node['error']}")
            continue
        commands: dict[str, str | None] = node.get("commands", {})

        def replay(argv: Sequence[str], commands: dict[str, str | None] = commands) -> str | None:
            return commands.get(shlex.join(argv))

        try:
            found = collect(None, runner=replay)
        except PodtraceError as err:
            warnings.append(f"Service names unavailable in {where}: {err.one_line()}")
            continue
        ipvs = commands.get("ipvsadm -Ln")
        if ipvs and not os.path.exists("/proc/net/ip_vs"):  # collect() asks ipvsadm only where the module is loaded
            found = merge(found, parse_ipvsadm(ipvs))
        if per_node is not None:
            per_node[node.get("netns") or "host"] = found
        if not services.ports:
            services.mode, services.ports = found.mode, found.ports
        services.rules += found.rules
    return services, warnings


JSON_KINDS = (KIND_HEADER, KIND_NAMES, KIND_COUNTERS, KIND_TRAILER, KIND_NAT_FLOWS, KIND_SOFTIRQ)
MAX_PART_GAP = 16  # parts looked for past a missing one


@dataclass
class PartIdentity:
    """Which recording a part belongs to: the run id and part index of its header (format minor 4; older files
    have only the index) and the directory and first part's name its siblings are found by."""

    directory: str
    first: str  # the first part's file name, as the header has it (a bare name, never a path)
    run_id: str
    index: int

    @classmethod
    def of(cls, path: str, header: dict[str, Any]) -> PartIdentity | None:
        part = header.get("part") or {}
        index = int(part.get("index", 0))
        directory, name = os.path.split(path)
        first = str(part.get("first") or "")
        if not first or first != os.path.basename(first) or first in (".", ".."):
            first = name if index == 0 else ""
        if part_path(first, index) != name:  # renamed: only a first part keeps its siblings (name.1, ...)
            first = name if index == 0 else ""
        return cls(directory, first, str(part.get("run_id") or ""), index) if first else None

    def path(self, index: int) -> str | None:
        return os.path.join(self.directory, part_path(self.first, index)) if self.first else None

    def foreign(self, header: dict[str, Any]) -> str:
        """Why a header is not that of the expected next part ("" when it is)."""
        part = header.get("part") or {}
        run_id = str(part.get("run_id") or "")
        if run_id != self.run_id:
            return f"belongs to another recording (run {run_id or 'unknown'}, not {self.run_id or 'unknown'})"
        if int(part.get("index", -1)) != self.index:
            return f"is part {part.get('index')} of its recording, not part {self.index}"
        return ""


def counter_delta(now: dict[str, int], base: dict[str, int]) -> dict[str, int]:
    return {name: value - base.get(name, 0) for name, value in now.items()}


class ReplaySource:
    """Events from a recording, following its rotation parts (FILE, FILE.1, ...) unless `follow` is False.

    `speed=None` replays as fast as the reader asks; `speed=1.0` paces events by their recorded timestamps.
    A corrupt record ends the replay with RecordingError, raised by the poll after the one that returned the
    last good events.
    """

    def __init__(self, path: str, follow: bool = True, batch: int = 4096, speed: float | None = None,
                 events: bool = True) -> None:
        """events=False reads every other record (names, counters, trailer: a pass to learn the end first)."""
        self.path = path
        self.events = events
        self.follow = follow
        self.batch = batch
        self.speed = speed
        self.parts: list[str] = []
        self.truncated_parts: list[str] = []
        self.incomplete: list[str] = []  # missing or foreign rotation parts, one line each
        self.trailer: dict[str, Any] | None = None
        self._latest: dict[str, int] = {}
        self._base: dict[str, int] | None = None
        self._latest_probes: dict[str, dict[str, int]] = {}
        self._base_probes: dict[str, dict[str, int]] = {}
        self._records = self._all_records()
        self.header: dict[str, Any] = self._read_header()
        self.names = RecordedNames.from_header(self.header)
        self.reasons = self.names.reasons
        self.attached: list[str] = list(self.header.get("attached", []))
        self.final_counters: dict[str, int] = {}
        self.decode_errors = 0
        self.finished = False
        self._error: RecordingError | None = None
        self._lookahead: list[bytes] = []
        self._pace: tuple[float, int] | None = None  # (monotonic at first event, its ts_ns)
        self._nat: list[dict[str, Any]] | None = None  # the latest nat_flows snapshot read so far
        self.softirq: SoftirqAggregator | None = None  # softirq snapshots read so far (`record --softirq`)

    @property
    def done(self) -> bool:
        """Every event has been delivered (the TUI's ListSource spelling)."""
        return self.finished and not self._lookahead

    def plan(self) -> AttachPlan | None:
        """The attach plan recorded in the header (None when the recorder could not probe it)."""
        data = self.header.get("attach_plan")
        return AttachPlan.from_json(data) if data else None

    @property
    def truncated(self) -> bool:
        return bool(self.truncated_parts)

    def _all_records(self) -> Generator[tuple[int, dict[str, Any] | list[bytes]], None, None]:
        path: str | None = self.path
        identity: PartIdentity | None = None
        while path is not None:
            if identity is None:
                reader = RecordReader(path)
            else:  # a later part: only a regular file of its own name, never a link, a FIFO or a device
                try:
                    reader = RecordReader(path, follow_symlinks=False)
                except RecordingError as err:
                    self.incomplete.append(err.message)
                    return
            self.parts.append(path)
            more = False  # the trailer says another part follows (its `next` is a flag here, never a path)
            ended = False  # a trailer was read: a part without one was cut short, even at a record boundary
            foreign = ""
            try:
                for record in reader.records():
                    if record.kind == KIND_EVENTS:
                        if self.events:
                            yield record.kind, split_events(record, path)
                    elif record.kind in JSON_KINDS:
                        data = record.json(path)
                        if record.kind == KIND_HEADER and record.offset == PREAMBLE.size:
                            if identity is None:
                                identity = PartIdentity.of(path, data)
                            elif foreign := identity.foreign(data):
                                break  # nothing of another recording is replayed
                        if record.kind == KIND_TRAILER:
                            more, ended = data.get("next") is not None, True
                        yield record.kind, data
                    # unknown kinds are skipped: a newer minor addition an older reader can ignore
            finally:
                reader.close()
            if foreign:
                self.parts.remove(path)
                self.incomplete.append(f"{path} {foreign}")
                return
            if reader.truncated or not ended:
                self.truncated_parts.append(path)
            path = None
            if self.follow and more:
                if identity is None:
                    self.incomplete.append(f"the parts after {self.path} cannot be found: it was renamed")
                else:
                    path = self._next_part(identity)

    def _next_part(self, identity: PartIdentity) -> str | None:
        """The part after `identity.index` by its name, reporting missing ones (and reading on past a gap)."""
        for index in range(identity.index + 1, identity.index + 1 + MAX_PART_GAP):
            candidate = identity.path(index)
            if candidate is None:
                self.incomplete.append(f"part {identity.index + 1} cannot be found: {self.path} was renamed")
                return None
            if os.path.lexists(candidate):
                identity.index = index
                return candidate
            self.incomplete.append(f"part {index} ({candidate}) is missing")
            if not os.path.lexists(identity.path(index + 1) or ""):
                return None
        return None

    def _read_header(self) -> dict[str, Any]:
        for kind, data in self._records:
            if kind != KIND_HEADER or not isinstance(data, dict):
                raise RecordingError(f"{self.path} does not start with a header record")
            self._base = dict(data.get("counters_at_start", {}))
            self._base_probes = dict(data.get("probe_counters_at_start") or {})
            return data
        # A valid preamble and no complete header: cut short before anything could be replayed.
        if self.path not in self.truncated_parts:
            self.truncated_parts.append(self.path)
        return {}

    def _handle(self, kind: int, data: dict[str, Any]) -> None:
        if kind == KIND_NAMES:
            self.names.update(data)
        elif kind == KIND_COUNTERS:
            self._latest = dict(data.get("counters", {}))
            self._latest_probes = dict(data.get("probe_counters") or self._latest_probes)
        elif kind == KIND_TRAILER:
            self.trailer = data
            self._latest = dict(data.get("counters", {}))
            self._latest_probes = dict(data.get("probe_counters") or self._latest_probes)
        elif kind == KIND_HEADER:  # the next rotation part: names it repeats are already known
            self.names.update(data.get("names", {}))
        elif kind == KIND_NAT_FLOWS:  # cumulative snapshots of the kernel map: the latest wins
            self._nat = list(data.get("nat_flows", []))
        elif kind == KIND_SOFTIRQ:
            if self.softirq is None:
                from tracer.analysis.softirq import RECENT_SECONDS, SoftirqAggregator  # only when the file has them

                self.softirq = SoftirqAggregator(keep_seconds=RECENT_SECONDS)  # the TUI's windows
            self.softirq.add(softirq_from_json(data))

    def start(self, progress: bool = True) -> None:
        return None

    def _fill(self) -> None:
        """Read records until `batch` events are buffered or the recording ends."""
        while len(self._lookahead) < self.batch and not self.finished and self._error is None:
            try:
                kind, data = next(self._records)
            except StopIteration:
                self.finished = True
                break
            except RecordingError as err:
                self._error = err
                break
            if isinstance(data, list):
                self._lookahead += data
            else:
                self._handle(kind, data)

    def poll_raw(self, timeout_ms: int = 100) -> list[bytes]:
        if not self._lookahead:
            if self._error is not None:
                error, self._error = self._error, None
                self.finished = True
                raise error
            self._fill()
        if not self._lookahead and self.finished:
            self.final_counters = self.counters()
            time.sleep(timeout_ms / 1000)  # like a quiet ring buffer: pollers do not spin at the end
            return []
        if self.speed is None:
            batch, self._lookahead = self._lookahead, []
        else:
            batch = self._paced(timeout_ms)
        if self.finished and not self._lookahead and self._error is None:
            self.final_counters = self.counters()
        return batch

    def _paced(self, timeout_ms: int) -> list[bytes]:
        speed = self.speed or 1.0
        ts = [int.from_bytes(raw[8:16], "little") for raw in self._lookahead]
        if self._pace is None:
            self._pace = (time.monotonic(), ts[0])
        started, first_ts = self._pace
        due_by = time.monotonic() + timeout_ms / 1000
        cut = 0
        while cut < len(ts) and started + (ts[cut] - first_ts) / 1e9 / speed <= due_by:
            cut += 1
        if cut == 0:  # nothing due within the timeout: wait it out like a quiet ring buffer
            time.sleep(timeout_ms / 1000)
            return []
        wait = started + (ts[cut - 1] - first_ts) / 1e9 / speed - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        batch, self._lookahead = self._lookahead[:cut], self._lookahead[cut:]
        return batch

    def poll(self, timeout_ms: int = 100) -> list[PacketEvent]:
        """Packet events (drop and path); other event kinds (NAT) only come through poll_raw."""
        return [decode(raw) for raw in self.poll_raw(timeout_ms) if len(raw) >= EVENT_SIZE]

    def __iter__(self) -> Iterator[bytes]:
        """Every raw event to the end (raises RecordingError at a corrupt record, after the events before it)."""
        while not self.finished or self._lookahead or self._error is not None:
            yield from self.poll_raw(0)

    def counters(self) -> dict[str, int]:
        """Counters of the recorded span so far (the kernel's counters minus those at the first part's start)."""
        return counter_delta(self._latest, self._base or {})

    def probe_counters(self) -> dict[str, dict[str, int]]:
        """Per-probe counters of the recorded span so far, as counters() (empty for recordings before format
        minor 3, which kept only the totals)."""
        return {probe: counter_delta(values, self._base_probes.get(probe, {}))
                for probe, values in self._latest_probes.items()}

    def resolver(self) -> Resolver:
        return self.names.resolver()

    @property
    def conntrack_flows(self) -> bool:
        """Recorded with the conntrack-driven programs (bpf/nfct.c, the header's programs): counts, no hook time."""
        return "nfct" in self.header.get("programs", [])

    @property
    def has_nat_flows(self) -> bool:
        """The recording traced Service NAT (`record --node`): Services in its header or nat_flows snapshots."""
        return self._nat is not None or bool(self.header.get("services"))

    def nat_records(self) -> list[NatRecord]:
        """The kernel's nat_flows map as of the latest snapshot read so far (all of it once iterated)."""
        return [nat_from_json(item) for item in self._nat or []]

    def services(self) -> tuple[ServiceMap, list[str]]:
        """kube-proxy's Services as recorded in the header, and warnings for nodes without them."""
        return recorded_services(self.header)

    def flow_table(self, drop_rows: list[dict[str, Any]]) -> tuple[FlowTable, ServiceMap, list[str]]:
        """The table `podtrace flows` would have shown (read the events first: NAT snapshots come with them), with
        each node's conntrack state, so drops a full table explains are charged to it as `podtrace flows` does."""
        from tracer.analysis.flows import FlowTable

        services, warnings = self.services()
        pods = self.names.pod_names()
        table = FlowTable(services, lambda ip: pods.get(ip, "-"), timed=not self.conntrack_flows)
        table.add_nat(self.nat_records())
        table.add_conntrack(state for recorded in self.conntrack() if (state := recorded.state()) is not None)
        from tracer.recording.recorded_rules import both_ends, end_rules

        start: dict[str, ServiceMap] = {}
        recorded_services(self.header, start)
        table.drift_rules = both_ends(start, end_rules(self._cause_state()))  # a rule matched at one end only
        table.add_drops(drop_rows)
        return table, services, warnings

    def _cause_state(self) -> dict[str, Any] | None:
        """The last trailer's cause_state, once the recording is read to its end."""
        last = self.trailer if self.trailer and not self.trailer.get("next") and self.finished else None
        return (last or {}).get("cause_state")

    def cause_states(self) -> RecordedStates:
        """What the recording knows of each namespace for tracer/analysis/causes.py: kube-proxy's rules (header), the
        conntrack tables, and the routes, sysctls, RPS masks and ICMP counters read at its end (the last trailer's
        cause_state, format minor 6). What it does not hold is said to be unknown, and why."""
        from tracer.analysis.causes import NetnsState
        from tracer.recording.recorded_causes import RECORDED, RecordedStates, from_json, missing_reason
        from tracer.recording.recorded_rules import end_rules

        per_node: dict[str, ServiceMap] = {}
        recorded_services(self.header, per_node)
        tables = {recorded.node: recorded.end or recorded.start for recorded in self.conntrack()}
        held = self._cause_state()
        states = from_json(held) if held else {}
        if held:  # a namespace without drops at the end (or whose state the recorder could not read)
            missing = str(held.get("error") or "") or "not recorded for this namespace"
        else:
            missing = missing_reason(self.header, self.trailer, self.finished, self.truncated)
        rules_missing = "not in the recording: `record --node NETNS` keeps a node's rules"
        at_end = end_rules(held)  # where netfilter dropped, read at the end (minor 8); else the header's, at the start
        for node in {*per_node, *tables, *states, *at_end}:
            state = states.setdefault(node, NetnsState(node, errors=dict.fromkeys(RECORDED, missing), recorded=True))
            state.services, state.conntrack = at_end.get(node) or per_node.get(node), tables.get(node)
            state.services_start, state.rules_at = (per_node.get(node), "end") if node in at_end else (None, "start")
            if state.services is None:
                state.errors.setdefault("rules", rules_missing)
        return RecordedStates(states, missing, rules_missing)

    def conntrack(self) -> list[RecordedConntrack]:
        """Each node's conntrack table at the start and (once the last trailer is read) at the end."""
        from tracer.recording.recorded_node import recorded_conntrack

        return recorded_conntrack(self.header, self.trailer if self.trailer and not self.trailer.get("next") else None)

    def mtu_summary(self) -> MtuSummary:
        """An empty MTU section builder for this recording's links; feed it the decoded events."""
        from tracer.recording.recorded_node import MtuSummary

        return MtuSummary(self.header.get("links"), self.reasons, "icmp" in self.header.get("programs", []))

    @property
    def seconds(self) -> float:
        """Wall-clock span of the recording so far: header to the last trailer (0 until one is read)."""
        start = int(self.header.get("clock", {}).get("wall_ns", 0))
        end = int((self.trailer or {}).get("end_wall_ns") or 0)
        return max(0.0, (end - start) / 1e9) if start and end else 0.0

    def close(self) -> None:
        self._records.close()
        if not self.final_counters:
            self.final_counters = self.counters()

    def __enter__(self) -> ReplaySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
