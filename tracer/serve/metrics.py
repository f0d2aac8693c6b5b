"""What `podtrace serve` exports: every metric declared once here (name, type, labels, meaning), the state the
agent fills, and the prometheus_client collector that renders it at each scrape.

The agent thread writes and the HTTP thread reads under one lock; a scrape copies the values, never waits on a
probe. Counters are kept as running totals here (deltas the agent adds, or kernel counters it copies), so a
scrape costs O(series), and the series are bounded (tracer/serve/labels.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

LabelValues = tuple[str, ...]


@dataclass(frozen=True)
class Metric:
    name: str  # without the _total suffix of counters (prometheus_client adds it)
    kind: str  # "counter" or "gauge"
    labels: tuple[str, ...]
    help: str

    @property
    def exported(self) -> str:
        """The series name Prometheus stores."""
        return f"{self.name}_total" if self.kind == "counter" else self.name


DROP_LABELS = ("node", "reason", "severity", "cause", "service", "backend", "attribution")
METRICS: tuple[Metric, ...] = (
    Metric("podtrace_drops", "counter", DROP_LABELS,
           "Packets the kernel freed as drops (kfree_skb with a reason), by kernel reason, severity (loss, policy, "
           "benign), cause (conntrack, rule, or empty), Service and backend (empty when none), and attribution: "
           "observed (the kernel's own NAT record of that client and backend), matched (addresses matched against "
           "kube-proxy's rules), ambiguous (a backend several Services share, dropped on a node that did not DNAT it: "
           "each candidate Service is charged; exclude it when summing over Services) or none"),
    Metric("podtrace_service_packets", "counter", ("node", "service", "backend", "direction"),
           "Packets of Service flows through kube-proxy's NAT on this node: direction out (client to backend, "
           "DNATed) or in (replies un-NATed)"),
    Metric("podtrace_service_drops", "counter", ("node", "service", "backend"),
           "Drops charged to a Service (the podtrace_drops_total series with a service label, summed)"),
    Metric("podtrace_conntrack_entries", "gauge", ("node",), "nf_conntrack_count"),
    Metric("podtrace_conntrack_max_entries", "gauge", ("node",), "nf_conntrack_max"),
    Metric("podtrace_conntrack_fill_ratio", "gauge", ("node",), "nf_conntrack_count / nf_conntrack_max (0-1)"),
    Metric("podtrace_conntrack_insert_failed", "counter", ("node",),
           "conntrack insert_failed summed over CPUs (insert races, e.g. parallel UDP DNS queries)"),
    Metric("podtrace_conntrack_drop", "counter", ("node",),
           "conntrack drop summed over CPUs (new connections refused, e.g. a full table)"),
    Metric("podtrace_conntrack_early_drop", "counter", ("node",), "conntrack early_drop summed over CPUs"),
    Metric("podtrace_softirq_wait_p99_seconds", "gauge", ("node", "cpu", "softirq"),
           "99th percentile of the time from softirq raise to entry over the last window (log2 buckets: the "
           "value is the upper bound of the bucket), NET_RX and NET_TX"),
    Metric("podtrace_softirq_run_p99_seconds", "gauge", ("node", "cpu", "softirq"),
           "99th percentile of softirq handler run time over the last window"),
    Metric("podtrace_softnet_backlog_drops", "counter", ("node", "cpu"),
           "/proc/net/softnet_stat dropped: packets dropped because the CPU's input backlog was full"),
    Metric("podtrace_softnet_time_squeeze", "counter", ("node", "cpu"),
           "/proc/net/softnet_stat time_squeeze: NET_RX ran out of budget or time with work left"),
    Metric("podtrace_mtu_path_ok", "gauge", ("node", "link"),
           "1 when the pod path through this node-side link has no MTU mismatch (`podtrace mtu` verdict), else 0"),
    Metric("podtrace_link_mtu_bytes", "gauge", ("node", "link", "kind"), "MTU of each link of the node"),
    Metric("podtrace_probe_events", "counter", ("node", "probe"), "Events a probe wrote to the ring buffer"),
    Metric("podtrace_probe_events_lost", "counter", ("node", "probe"),
           "Events a probe could not write (ring buffer full): never silent"),
    Metric("podtrace_probe_events_sampled", "counter", ("node", "probe"),
           "Events a probe skipped on purpose (per-CPU rate limit)"),
    Metric("podtrace_probe_attached", "gauge", ("node", "probe"),
           "1 when the probe is attached and read, 0 when it failed to attach (the log says why)"),
    Metric("podtrace_recorder_ring_bytes", "gauge", ("node",), "Bytes of flight-recorder segments on disk"),
    Metric("podtrace_recorder_segments", "gauge", ("node",), "Flight-recorder segments on disk"),
    Metric("podtrace_recorder_incident_bytes", "gauge", ("node",), "Bytes of sealed incident recordings on disk"),
    Metric("podtrace_recorder_incidents", "counter", ("node", "trigger"),
           "Incidents sealed into a recording, by the trigger that opened them"),
    Metric("podtrace_recorder_triggers", "counter", ("node", "trigger"),
           "Trigger firings, including those folded into an open incident or within the cooldown"),
    Metric("podtrace_info", "gauge", ("node", "version", "kernel"), "Constant 1, with podtrace's version"),
)
BY_NAME = {metric.name: metric for metric in METRICS}


def exported_names() -> set[str]:
    """Every series name a scrape can contain (a histogram or summary would add suffixes here)."""
    return {metric.exported for metric in METRICS}


class MetricsState:
    """Series values by metric name and label values; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[LabelValues, float]] = {metric.name: {} for metric in METRICS}

    def _series(self, name: str, labels: LabelValues) -> dict[LabelValues, float]:
        metric = BY_NAME[name]
        if len(labels) != len(metric.labels):
            raise ValueError(f"{name} takes labels {metric.labels}, got {labels}")
        return self._values[name]

    def inc(self, name: str, labels: LabelValues, value: float = 1) -> None:
        with self._lock:
            series = self._series(name, labels)
            series[labels] = series.get(labels, 0) + value

    def set(self, name: str, labels: LabelValues, value: float) -> None:
        with self._lock:
            self._series(name, labels)[labels] = value

    def replace(self, name: str, values: dict[LabelValues, float]) -> None:
        """All series of a metric at once (gauges recomputed wholesale, kernel counters copied)."""
        for labels in values:
            self._series(name, labels)
        with self._lock:
            self._values[name] = dict(values)

    def forget(self, name: str, keep: Callable[[LabelValues], bool]) -> int:
        """Remove the series `keep` refuses (a Service that lost its place in the top N)."""
        with self._lock:
            series = self._values[name]
            gone = [labels for labels in series if not keep(labels)]
            for labels in gone:
                del series[labels]
        return len(gone)

    def value(self, name: str, labels: LabelValues) -> float | None:
        with self._lock:
            return self._values[name].get(labels)

    def snapshot(self) -> dict[str, dict[LabelValues, float]]:
        with self._lock:
            return {name: dict(series) for name, series in self._values.items()}

    def series_count(self) -> int:
        with self._lock:
            return sum(len(series) for series in self._values.values())


class StateCollector:
    """prometheus_client custom collector over a MetricsState."""

    def __init__(self, state: MetricsState) -> None:
        self.state = state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        values = self.state.snapshot()
        for metric in METRICS:
            family_type = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            family = family_type(metric.name, metric.help, labels=list(metric.labels))
            for labels, value in sorted(values[metric.name].items()):
                family.add_metric(list(labels), value)
            yield family

    def describe(self) -> Iterator[Any]:
        return iter(())  # no describe: registering never calls collect() before the state is filled


def serve_http(state: MetricsState, address: str, port: int) -> tuple[Any, Any]:
    """Start the /metrics HTTP server in a daemon thread; returns (server, thread) for shutdown."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes: serve's cost
    return start_http_server(port, addr=address, registry=registry)
