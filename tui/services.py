"""The Services view: Service flows (client -> Service -> backend) from the kernel's NAT records, live
(tracer.analysis.flows.LiveFlowsTable) or from a recording (tracer.sources.replay.ReplaySource), with the drops the
model saw attributed to them, and the orders the view sorts them in.

Drops go through tracer.analysis.flows.FlowTable.add_drops, as in `podtrace flows`: a drop whose (src, dst, dport) is a
flow's (client, backend, backend_port) counts on that flow; one that matches no flow but a Service (a VIP, a rule,
an endpoint) gets a row of its own under that Service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tracer.analysis.flows import FlowTable, LiveFlowsTable, nat_record_from_map
from tracer.node.kubeproxy.model import ServiceMap
from tui.timelines import ip_flow

COLUMNS = ["service", "vip", "client", "backend", "loss", "pkts_out", "pkts_in", "nf_us", "drops"]


def loss_share(drops: int, packets_out: int) -> float | None:
    """The share of a flow's packets the kernel dropped. A drop after the DNAT (FORWARD, the backend) was counted
    by the NAT hook too, one before it was not: of max(packets, drops) it is never above 1. None: no packets known
    (a drop row of its own, attributed to the Service but to no flow)."""
    if packets_out <= 0:
        return None
    return drops / max(packets_out, drops)


def loss_text(share: float | None, drops: int) -> str:
    if not drops:
        return ""
    return "?" if share is None else f"{share:.0%}" if share >= 0.01 else "<1%"


def problems_first(row: dict[str, Any]) -> tuple[int, float, int, int]:
    """Rows with drops first, by the share of their packets lost (drops with no packet count after those with
    one), then by drops and packets."""
    drops, share = row.get("_drops", 0), row.get("_loss")
    return (1 if drops else 0, share if share is not None else -1.0, drops, row.get("_packets", 0))


# The Services view's orders (`s` cycles them): label, key on a row, descending. The first is the default.
SORTS: list[tuple[str, Callable[[dict[str, Any]], Any], bool]] = [
    ("loss share", problems_first, True),
    ("packets", lambda row: (row.get("_packets", 0), row.get("_drops", 0)), True),
    ("drops", lambda row: (row.get("_drops", 0), row.get("_packets", 0)), True),
    ("time in netfilter", lambda row: (row.get("_nf_us", 0.0), row.get("_packets", 0)), True),
    ("name", lambda row: (str(row.get("service", "")), str(row.get("client", "")), str(row.get("backend", ""))),
     False),
]


def drops_text(drops: dict[str, int]) -> str:
    """"13 NETFILTER_DROP at FORWARD by filter FORWARD #1, 2 QUEUE_PURGE at -": the most frequent first."""
    return ", ".join(f"{count} {label}" for label, count in sorted(drops.items(), key=lambda item: -item[1]))


def flow_rows(table: FlowTable, pods: dict[str, str]) -> list[dict[str, Any]]:
    """The view's rows; keys starting with "_" are for sorting and drill-down, not shown."""

    def name(ip: str) -> str:
        return pods.get(ip, ip)

    rows = []
    for flow in table.rows():
        nf_us = round(flow.nat_ns_sum / max(flow.packets_out, 1) / 1000, 1)
        drops = sum(flow.drops.values())
        share = loss_share(drops, flow.packets_out)
        rows.append({
            "service": flow.service,
            "vip": f"{flow.vip}:{flow.port}" if flow.vip else "-",
            "client": name(flow.client),
            "backend": f"{name(flow.backend)}:{flow.backend_port}",
            "loss": loss_text(share, drops),
            "pkts_out": flow.packets_out,
            "pkts_in": flow.packets_in,
            "nf_us": nf_us if flow.timed else "-",  # counted from conntrack: not measured, not 0
            "drops": drops_text(flow.drops),
            "_packets": flow.packets_out + flow.packets_in,
            "_drops": drops,
            "_loss": share,
            "_nf_us": nf_us,
            # client -> VIP: the model follows it across the DNAT to the backend
            "_flow": ip_flow(flow.proto, flow.client, flow.vip, flow.port) if flow.vip else None,
            "_title": f"{flow.service}  {flow.client} -> {flow.vip}:{flow.port} -> {flow.backend}:{flow.backend_port}",
        })
    for drop in table.service_drops:
        by = f" by {drop.rule}" if drop.rule != "-" else ""
        rows.append({"service": drop.service, "vip": "-", "client": name(drop.src),
                     "backend": f"{name(drop.dst)}:{drop.dport}", "loss": loss_text(None, drop.count),
                     "pkts_out": "", "pkts_in": "", "nf_us": "",
                     "drops": f"{drop.count} {drop.reason} at {drop.hook}{by}",
                     "_packets": 0, "_drops": drop.count, "_loss": None, "_nf_us": 0.0})
    return rows


class ServiceFlowsTable(LiveFlowsTable):
    """A TableSource (tui/model.py) that also takes the snapshot's drop rows (`uses_drops`)."""

    columns = COLUMNS
    uses_drops = True

    def rows(self, drops: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        if self._services is None:
            self._services = self._load_names()
        if self._pod_resolver is not None:  # re-read when stale: pods created since are named
            self._pods = self._pod_resolver.pod_names()
        table = FlowTable(self._services, lambda ip: self._pods.get(ip, "-"),
                          timed=not getattr(self.source, "conntrack_flows", False))
        table.add_nat(nat_record_from_map(key, stats) for key, stats in self.source.nat_flows())
        table.add_drops(drops)
        return flow_rows(table, self._pods)


class RecordedFlowsTable:
    """The Services view of a recording: its NAT snapshots as read so far, its Services, its conntrack state (a
    tracer.sources.replay.ReplaySource, read by the reader thread that feeds the model)."""

    columns = COLUMNS
    uses_drops = True

    def __init__(self, source: Any) -> None:
        self.source = source
        self._services: ServiceMap | None = None

    def rows(self, drops: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        if not self.source.has_nat_flows:
            return []
        if self._services is None:  # parsed once: the header's kube-proxy rules do not change
            self._services = self.source.services()[0]
        pods = self.source.names.pod_names()
        table = FlowTable(self._services, lambda ip: pods.get(ip, "-"), timed=not self.source.conntrack_flows)
        table.add_nat(self.source.nat_records())
        table.add_conntrack(state for recorded in self.source.conntrack() if (state := recorded.state()) is not None)
        table.add_drops(drops)
        return flow_rows(table, pods)
