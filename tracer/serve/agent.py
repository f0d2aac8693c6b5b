"""The serve loop: attach the cheap probes once, poll them every tick, read the node every refresh, fill the
metrics and feed the flight recorder. A probe that fails to attach is logged and exported as
podtrace_probe_attached 0; the others keep running.

    probe      what                                                   when it fails
    drops      raw tp kfree_skb (+ netfilter links for Service NAT)   retried without netfilter, then exported as 0
    netfilter  BPF netfilter links in the node namespace (6.4+)       drops still counted, Service names matched only
    path       path events for --path FILTER (the recorder's packets) no packets before a drop in incidents
    softirq    irq/napi tracepoints, /proc/net/softnet_stat           no softirq metrics
    conntrack  ctnetlink stats and the count/max sysctls               no conntrack metrics or fill trigger
    mtu        link MTUs over netlink, verdicts of `podtrace mtu`     no MTU metrics
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from tracer import __version__
from tracer.analysis.aggregate import DropTable
from tracer.analysis.flows import NatRecord, NodeConntrack, nat_record_from_map
from tracer.events.decode import EVENT_DROP, EVENT_SIZE, EVENT_SIZES, decode
from tracer.node.kubeproxy.model import ServiceMap
from tracer.output.errors import PodtraceError
from tracer.output.report import Resolver, drop_rows
from tracer.serve.attribution import Charge, attribute
from tracer.serve.labels import OTHER, TopN
from tracer.serve.metrics import MetricsState, serve_http
from tracer.serve.options import ServeOptions
from tracer.serve.recorder import FlightRecorder
from tracer.serve.triggers import Trigger, snapshot_of

TICK_S = 1.0  # recorder flush, counters, incident sealing
SOFTIRQ_WINDOW_S = 10.0  # the p99 gauges cover this much recent time
NAT_IDLE_S = 60.0  # a NAT flow idle this long is counted and its map slot freed
PROBES = ("drops", "netfilter", "path", "softirq", "conntrack", "mtu")
PACKET_KINDS = frozenset(kind for kind, size in EVENT_SIZES.items() if size == EVENT_SIZE)


def log(message: str) -> None:
    sys.stderr.write(f"podtrace serve: {message}\n")
    sys.stderr.flush()


class Agent:
    def __init__(self, options: ServeOptions, stop: Callable[[], bool], logger: Callable[[str], None] = log) -> None:
        self.options = options
        self.stop = stop
        self.log = logger
        self.node = options.node_name
        self.state = MetricsState()
        self.attached: dict[str, bool] = {}
        self.drops: Any = None  # LiveSource
        self.path: Any = None
        self.softirq: Any = None
        self.recorder: FlightRecorder | None = None
        self.names: Resolver | None = None
        self.services = ServiceMap()
        self.pods: dict[str, str] = {}
        self.service_labels = TopN(options.max_services)
        self.backend_labels = TopN(options.max_backends)
        self.interval_drops = DropTable(max_groups=10_000)
        self.filtered: dict[str, DropTable] = {t.text: DropTable(max_groups=10_000)
                                               for t in options.triggers if t.filter}
        self.nat_seen: dict[tuple[int, int, Any, Any], int] = {}
        self.softirq_snaps: deque[Any] = deque()
        self.last_health: Any = None
        self.mtu_events: list[Any] = []
        self.header: dict[str, Any] = {}
        self._server: Any = None

    # --- start and stop ----------------------------------------------------------------------------------

    def _mark(self, probe: str, ok: bool, why: str = "") -> None:
        changed = self.attached.get(probe) != ok
        self.attached[probe] = ok
        self.state.set("podtrace_probe_attached", (self.node, probe), 1 if ok else 0)
        if changed and not ok:
            self.log(f"probe {probe} not attached: {why}")

    def _probe_args(self, path: bool) -> argparse.Namespace:
        return argparse.Namespace(filter=[self.options.path_filter] if path else [], netns=None, ifname=None,
                                  node=[self.options.node] if self.options.node else None, tc=[],
                                  ringbuf_pages=self.options.ringbuf_pages, duration=None, path_rate=20000)

    def _start_drops(self) -> None:
        from tracer.sources.live import LiveSource  # BCC only when serving
        from tracer.sources.session import probe_config

        config = probe_config(self._probe_args(False), path=False, netfilter=True, icmp=True)
        netfilter_why = "" if config.netfilter else "this kernel has no BPF netfilter links (6.4+)"
        try:
            self.drops = LiveSource(config, self.options.btf)
            self.drops.start(progress=False)
        except PodtraceError as err:
            self.drops = None
            if not config.netfilter:
                raise
            netfilter_why = err.one_line()
            import dataclasses

            config = dataclasses.replace(config, netfilter=False, netfilter_netns=(None,))
            self.drops = LiveSource(config, self.options.btf)
            self.drops.start(progress=False)
        for warning in self.drops.warnings:
            self.log(warning)
        self._mark("netfilter", config.netfilter, netfilter_why)

    def _start_path(self) -> None:
        import dataclasses

        from tracer.sources.live import LiveSource
        from tracer.sources.session import probe_config

        config = dataclasses.replace(probe_config(self._probe_args(True), path=True), drops=False)
        self.path = LiveSource(config, self.options.btf)
        self.path.start(progress=False)

    def start(self) -> None:
        from tracer.node.names import NetnsNames, Symbolizer

        self._server = serve_http(self.state, self.options.address, self.options.port)
        self.state.set("podtrace_info", (self.node, __version__, platform.release()), 1)
        for probe, starter in (("drops", self._start_drops), ("path", self._start_path),
                               ("softirq", self._start_softirq)):
            if probe == "path" and not self.options.path_filter:
                continue
            try:
                starter()
                self._mark(probe, True)
            except PodtraceError as err:
                self._mark(probe, False, err.one_line())
                if probe == "drops":
                    self._mark("netfilter", False, "the drops probe did not load")
        reasons = self.drops.reasons if self.drops is not None else {}
        self.names = Resolver(reasons, NetnsNames().name, Symbolizer())
        self._load_names()
        if self.options.recorder_dir:
            self.header = self._build_header()
            from tracer.serve.incident_causes import IncidentCauses

            self.recorder = FlightRecorder(self.options.recorder_dir, self.options.retention, self._segment_header,
                                           self.names.netns, self.names.symbol, self.log,
                                           causes=IncidentCauses(self.options.node, self.names))
        self.refresh(first=True)
        self._refresh_mtu()
        listening = f"{self.options.address}:{self.options.port}"
        up = ", ".join(p for p, ok in self.attached.items() if ok) or "none"
        self.log(f"node {self.node}: metrics on http://{listening}/metrics; probes attached: {up}")
        if self.options.ready_file:
            with open(self.options.ready_file, "w", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()}\n")

    def _start_softirq(self) -> None:
        from tracer.probes.softirq_probe import SoftirqProbe

        self.softirq = SoftirqProbe()
        self.softirq.start(progress=False)

    def close(self) -> None:
        if self.recorder is not None:
            try:
                self.recorder.close()
            except (OSError, PodtraceError) as err:
                self.log(f"flight recorder not closed cleanly: {err}")
        for source in (self.path, self.drops, self.softirq):
            if source is not None:
                source.close()
        if self._server is not None:
            server, _thread = self._server
            server.shutdown()
            server.server_close()

    # --- names and headers ---------------------------------------------------------------------------------

    def _load_names(self) -> None:
        from tracer.node.kubeproxy.collect import collect

        try:
            self.services = collect(self.options.node)
        except PodtraceError as err:
            self.log(f"Service names unavailable: {err.one_line()}")
        from tracer.node.podnames import PodResolver

        self.pods = PodResolver().pod_names()  # from the node's cgroups and kubelet directories

    def _recording_args(self) -> argparse.Namespace:
        from tracer.node.flannel import SUBNET_ENV

        return argparse.Namespace(filter=[self.options.path_filter] if self.options.path_filter else [],
                                  netns=self.options.node, ifname=None, subnet_env=SUBNET_ENV,
                                  node=[self.options.node] if self.options.node else [None])

    def _build_header(self) -> dict[str, Any]:
        from tracer.node.names import named_netns
        from tracer.recording.header import build_header

        known = {inode: name for name, inode in named_netns().items()}
        known[os.stat("/proc/self/ns/net").st_ino] = "host"
        source = self.drops if self.drops is not None else _NoSource()
        header = build_header(self._recording_args(), source, known)
        header["serve"] = {"node": self.node, "path_filter": self.options.path_filter}
        return header

    def _segment_header(self) -> dict[str, Any]:
        """The start header with what changes refreshed: kube-proxy's rules, links, conntrack (the report's
        flow table, MTU and conntrack sections read them)."""
        from tracer.recording.recorded_node import collect_conntrack, collect_links
        from tracer.recording.recorded_rules import capture

        header = dict(self.header)
        nodes = [self.options.node]
        header["links"] = collect_links(nodes)
        header["conntrack"] = collect_conntrack(nodes)
        header["services"] = capture([self.options.node])
        wall, mono = time.time_ns(), time.monotonic_ns()
        header["clock"] = {"wall_ns": wall, "monotonic_ns": mono, "wall_offset_ns": wall - mono}
        return header

    # --- the loop -------------------------------------------------------------------------------------------

    def run(self) -> None:
        next_tick = next_refresh = time.monotonic()
        next_rules = time.monotonic() + self.options.rules_refresh
        next_mtu = time.monotonic() + self.options.mtu_refresh
        deadline = time.monotonic() + self.options.duration if self.options.duration else None
        while not self.stop() and (deadline is None or time.monotonic() < deadline):
            self.poll(100)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                self.tick()
            if now >= next_refresh:
                next_refresh = now + self.options.interval
                if now >= next_rules:
                    next_rules = now + self.options.rules_refresh
                    self._load_names()
                    for gone in (self.service_labels.rerank(), self.backend_labels.rerank()):
                        if gone:
                            self._forget_labels(gone)
                self.refresh()
            if now >= next_mtu:
                next_mtu = now + self.options.mtu_refresh
                self._refresh_mtu()
        self.poll(0)
        self.refresh()
        self.tick()

    def poll(self, timeout_ms: int) -> None:
        batch: list[bytes] = []
        for index, source in enumerate(s for s in (self.drops, self.path) if s is not None):
            batch += source.poll_raw(timeout_ms if index == 0 else 0)
        if not batch:
            if self.drops is None and self.path is None:
                time.sleep(timeout_ms / 1000)
            return
        too_big = self._too_big()
        for raw in batch:
            if raw[0] == EVENT_DROP:
                self.interval_drops.add_raw(raw)
                for trigger in self.options.triggers:
                    if trigger.matcher is not None and trigger.matcher(*snapshot_of(raw)):
                        self.filtered[trigger.text].add_raw(raw)
            if raw[0] in PACKET_KINDS and len(self.mtu_events) < 100_000 and self._mtu_relevant(raw, too_big):
                self.mtu_events.append(decode(raw))  # bounded: read and cleared every --mtu-refresh
        if self.recorder is not None:
            self.recorder.add(batch)

    def _too_big(self) -> frozenset[int]:
        from tracer.recording.recorded_node import MTU_DROP_REASONS

        reasons = self.names.reasons if self.names is not None else {}
        return frozenset(value for value, name in reasons.items() if name in MTU_DROP_REASONS)

    @staticmethod
    def _mtu_relevant(raw: bytes, too_big: frozenset[int]) -> bool:
        from tracer.recording.recorded_node import relevant

        return relevant(raw, too_big)

    def tick(self) -> None:
        if self.drops is not None:
            probes = self.drops.probe_counters()
            if self.path is not None:
                for probe, values in self.path.probe_counters().items():
                    probes.setdefault(probe, values)
            for metric, counter in (("podtrace_probe_events", "events"), ("podtrace_probe_events_lost", "lost"),
                                    ("podtrace_probe_events_sampled", "sampled")):
                self.state.replace(metric, {(self.node, probe): values.get(counter, 0)
                                            for probe, values in probes.items() if probe != "other"})
            if self.recorder is not None:
                totals = self.drops.counters()
                self.recorder.write_counters(totals, probes)
        recorder = self.recorder
        if recorder is None:
            return
        try:
            recorder.flush()
            recorder.tick()
        except (OSError, PodtraceError) as err:
            self.log(f"flight recorder: {err}")
        self.state.set("podtrace_recorder_ring_bytes", (self.node,), recorder.ring_bytes())
        self.state.set("podtrace_recorder_segments", (self.node,), len(recorder.segments))
        self.state.set("podtrace_recorder_incident_bytes", (self.node,), recorder.incident_bytes())
        self.state.replace("podtrace_recorder_incidents", {(self.node, t): n for t, n in recorder.sealed.items()})
        self.state.replace("podtrace_recorder_triggers", {(self.node, t): n for t, n in recorder.fired.items()})

    # --- one refresh -----------------------------------------------------------------------------------

    def refresh(self, first: bool = False) -> None:
        health = self._conntrack()
        nat = self._nat()
        node_key = self.options.node or "host"
        conntrack = [NodeConntrack(node_key, health, health.drop - self.last_health.drop
                                   if self.last_health is not None else None)] if health is not None else []
        if health is not None:
            self.last_health = health
        assert self.names is not None
        pod = self.pods.get
        table, self.interval_drops = self.interval_drops, DropTable(max_groups=10_000)
        charges = attribute(drop_rows(table, self.names), self.services, nat, conntrack, lambda ip: pod(ip, "-"))
        self._count_drops(charges)
        self._softirq()
        if first:
            return
        fills = {node_key: health.fill} if health is not None else {}
        for trigger in self.options.triggers:
            self._check(trigger, charges, conntrack, nat, fills)

    def _check(self, trigger: Trigger, charges: list[Charge], conntrack: list[NodeConntrack],
               nat: list[NatRecord], fills: dict[str, float]) -> None:
        if trigger.matcher is not None:
            assert self.names is not None
            table = self.filtered[trigger.text]
            self.filtered[trigger.text] = DropTable(max_groups=10_000)
            pod = self.pods.get
            charges = attribute(drop_rows(table, self.names), self.services, nat, conntrack, lambda ip: pod(ip, "-"))
        what = trigger.fired(charges, self.options.interval, fills)
        if what and self.recorder is not None:
            self.recorder.trigger(trigger.text, what)

    def _labels(self, service: str, backend: str, weight: int) -> tuple[str, str]:
        """Bounded (service, backend) label values: the top Services and backends, the rest "other"."""
        service_label = self.service_labels.label(service, weight)
        if not backend:
            return service_label, ""
        if service_label == OTHER:
            return OTHER, OTHER
        return service_label, self.backend_labels.label(f"{service}|{backend}", weight).split("|", 1)[-1]

    def _count_drops(self, charges: list[Charge]) -> None:
        for charge in charges:
            service, backend = self._labels(charge.service, charge.backend, charge.count)
            self.state.inc("podtrace_drops", (self.node, charge.reason, charge.severity, charge.cause, service,
                                              backend, charge.attribution), charge.count)
            if charge.service:
                self.state.inc("podtrace_service_drops", (self.node, service, backend), charge.count)

    def _forget_labels(self, gone: set[str]) -> None:
        services = {value for value in gone if "|" not in value}
        backends = {value.split("|", 1)[1] for value in gone if "|" in value}
        for name, service_at, backend_at in (("podtrace_drops", 4, 5), ("podtrace_service_drops", 1, 2),
                                             ("podtrace_service_packets", 1, 2)):

            def keep(labels: tuple[str, ...], s: int = service_at, b: int = backend_at) -> bool:
                return labels[s] not in services and labels[b] not in backends

            self.state.forget(name, keep)

    def _conntrack(self) -> Any:
        from tracer.node import conntrack

        try:
            health = conntrack.health(self.options.node)
        except PodtraceError as err:
            self._mark("conntrack", False, err.one_line())
            return None
        self._mark("conntrack", True)
        labels = (self.node,)
        for name, value in (("podtrace_conntrack_entries", health.count),
                            ("podtrace_conntrack_max_entries", health.max),
                            ("podtrace_conntrack_fill_ratio", health.fill),
                            ("podtrace_conntrack_insert_failed", health.insert_failed),
                            ("podtrace_conntrack_drop", health.drop),
                            ("podtrace_conntrack_early_drop", health.early_drop)):
            self.state.set(name, labels, value)
        return health

    def _nat(self) -> list[NatRecord]:
        """The kernel's NAT records now; Service packet counters grow by each record's growth since the last read."""
        if self.drops is None or not self.attached.get("netfilter"):
            return []
        from tracer.analysis.flows import FlowTable
        from tracer.recording.records_json import nat_to_json

        records = [nat_record_from_map(key, stats) for key, stats in self.drops.nat_flows()]
        deltas = []
        seen: dict[tuple[int, int, Any, Any], int] = {}
        for record in records:
            key = (record.point, record.netns, record.before, record.after)
            seen[key] = record.packets
            grown = record.packets - self.nat_seen.get(key, 0)
            if grown < 0:  # the slot was freed and taken again
                grown = record.packets
            if grown:
                deltas.append(NatRecord(record.point, record.netns, record.before, record.after, grown, 0,
                                        record.first_ns, record.last_ns, 0, 0))
        self.nat_seen = seen
        pod = self.pods.get
        table = FlowTable(self.services, lambda ip: pod(ip, "-"))
        table.add_nat(deltas)
        for flow in table.rows():
            if flow.service == "-":
                continue
            backend_name = flow.backend_pod if flow.backend_pod != "-" else f"{flow.backend}:{flow.backend_port}"
            service, backend = self._labels(flow.service, backend_name, flow.packets_out + flow.packets_in)
            for direction, packets in (("out", flow.packets_out), ("in", flow.packets_in)):
                if packets:
                    self.state.inc("podtrace_service_packets", (self.node, service, backend, direction), packets)
        if self.recorder is not None:
            self.recorder.write_nat_flows([nat_to_json(record) for record in records])
        idle_before = time.monotonic_ns() - int(NAT_IDLE_S * 1e9)
        if self.drops.forget_nat_flows(idle_before):
            for record in records:
                if record.last_ns < idle_before:
                    self.nat_seen.pop((record.point, record.netns, record.before, record.after), None)
        return records

    def _softirq(self) -> None:
        if self.softirq is None:
            return
        from tracer.analysis.softirq import SoftirqAggregator

        try:
            snapshot = self.softirq.snapshot()
        except PodtraceError as err:
            self._mark("softirq", False, err.one_line())
            return
        if self.recorder is not None:
            self.recorder.write_softirq(snapshot)
        self.softirq_snaps.append(snapshot)
        while len(self.softirq_snaps) > 2 and snapshot.ts - self.softirq_snaps[1].ts >= SOFTIRQ_WINDOW_S:
            self.softirq_snaps.popleft()
        aggregator = SoftirqAggregator()
        aggregator.add(self.softirq_snaps[0])
        aggregator.add(snapshot)
        waits: dict[tuple[str, ...], float] = {}
        runs: dict[tuple[str, ...], float] = {}
        for row in aggregator.report():
            if row.cpu is None:
                continue
            for softirq in ("NET_RX", "NET_TX"):
                labels = (self.node, str(row.cpu), softirq)
                waits[labels] = row.stats((softirq, "wait"))["p99_ns"] / 1e9
                runs[labels] = row.stats((softirq, "run"))["p99_ns"] / 1e9
        self.state.replace("podtrace_softirq_wait_p99_seconds", waits)
        self.state.replace("podtrace_softirq_run_p99_seconds", runs)
        self.state.replace("podtrace_softnet_backlog_drops",
                           {(self.node, str(cpu)): row.dropped for cpu, row in snapshot.softnet.items()})
        self.state.replace("podtrace_softnet_time_squeeze",
                           {(self.node, str(cpu)): row.time_squeeze for cpu, row in snapshot.softnet.items()})

    def _refresh_mtu(self) -> None:
        from tracer.recording.recorded_node import MtuSummary, collect_links

        links = collect_links([self.options.node])
        node_links = links["nodes"][0] if links.get("nodes") else {}
        if node_links.get("error"):
            self._mark("mtu", False, str(node_links["error"]))
            return
        self._mark("mtu", True)
        reasons = self.names.reasons if self.names is not None else {}
        summary = MtuSummary(links, reasons)
        events, self.mtu_events = self.mtu_events, []
        for event in events:
            summary.add(event)
        oks: dict[tuple[str, ...], float] = {}
        for section in summary.nodes(self.options.mtu_refresh):
            if section.node in ("other namespaces", "all namespaces"):
                continue
            for pods, path, judged in section.verdicts:
                for pod in pods or [path.host_veth.name if path.host_veth else "node"]:
                    oks[(self.node, pod)] = 1 if judged.ok else 0
        self.state.replace("podtrace_mtu_path_ok", oks)
        self.state.replace("podtrace_link_mtu_bytes", {
            (self.node, str(link["name"]), str(link.get("kind", ""))): int(link["mtu"])
            for link in node_links.get("links", []) if link.get("name") != "lo"})


class _NoSource:
    """build_header's source when the drops probe did not load: nothing attached, no reasons."""

    attached: list[str] = []
    reasons: dict[int, str] = {}

    class build:  # mirrors LiveSource.build.programs
        programs: list[str] = []

    class config:
        netns_inode = None
