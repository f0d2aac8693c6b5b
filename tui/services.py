"""The Services view: tracer.flows.LiveFlowsTable's Service flows, with the drops the model saw attributed to them.

Drops go through tracer.flows.FlowTable.add_drops, as in `podtrace flows`: a drop whose (src, dst, dport) is a
flow's (client, backend, backend_port) counts on that flow; one that matches no flow but a Service (a VIP, a rule,
an endpoint) gets a row of its own under that Service.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tracer.flows import FlowTable, LiveFlowsTable, nat_record_from_map

COLUMNS = ["service", "client", "backend", "pkts_out", "pkts_in", "nf_us", "drops"]


def drops_text(drops: dict[str, int]) -> str:
    """"13 NETFILTER_DROP at FORWARD by filter FORWARD #1, 2 QUEUE_PURGE at -": the most frequent first."""
    return ", ".join(f"{count} {label}" for label, count in sorted(drops.items(), key=lambda item: -item[1]))


class ServiceFlowsTable(LiveFlowsTable):
    """A TableSource (tui/model.py) that also takes the snapshot's drop rows (`uses_drops`)."""

    columns = COLUMNS
    uses_drops = True

    def rows(self, drops: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        if self._services is None:
            self._services = self._load_names()
        table = FlowTable(self._services, lambda ip: self._pods.get(ip, "-"))
        table.add_nat(nat_record_from_map(key, stats) for key, stats in self.source.nat_flows())
        table.add_drops(drops)

        def name(ip: str) -> str:
            return self._pods.get(ip, ip)

        rows = [{
            "service": flow.service,
            "client": name(flow.client),
            "backend": f"{name(flow.backend)}:{flow.backend_port}",
            "pkts_out": flow.packets_out,
            "pkts_in": flow.packets_in,
            "nf_us": round(flow.nat_ns_sum / max(flow.packets_out, 1) / 1000, 1),
            "drops": drops_text(flow.drops),
        } for flow in table.rows()]
        for drop in table.service_drops:
            by = f" by {drop.rule}" if drop.rule != "-" else ""
            rows.append({"service": drop.service, "client": name(drop.src), "backend": f"{name(drop.dst)}:{drop.dport}",
                         "pkts_out": "", "pkts_in": "", "nf_us": "",
                         "drops": f"{drop.count} {drop.reason} at {drop.hook}{by}"})
        return rows
