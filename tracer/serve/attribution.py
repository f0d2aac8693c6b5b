"""Charge one refresh's drops to Service, backend and cause with `podtrace flows`' own code (tracer/analysis/flows.py).

Pure: takes drop rows (tracer/report.drop_rows), the NAT records the kernel holds now, kube-proxy's ServiceMap
and each node's conntrack state; returns one Charge per (row, Service) with the labels serve exports. A row
charged to a flow whose NAT record names that client and backend is "observed"; one charged by matching its
addresses against kube-proxy's rules (a VIP, an endpoint, a rule's match) is "matched"; a backend several
Services share, dropped on a node that did not do the DNAT, is "ambiguous" and charged to each candidate; the
rest "none".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tracer.analysis.flows import FlowTable, NatRecord, NodeConntrack, ServiceFlow
from tracer.analysis.severity import classify
from tracer.node.kubeproxy.model import ServiceMap


@dataclass(frozen=True)
class Charge:
    reason: str
    severity: str
    cause: str  # "conntrack" (a table refusing entries), "rule" (a netfilter rule matched), "" (unknown)
    service: str  # "" when none
    backend: str  # "pod" or "ip:port"; "" when none
    attribution: str  # "observed", "matched", "ambiguous", "none"
    count: int
    row: dict[str, Any]


def _cause_of_label(label: str) -> str:
    """A flow's drop label is "REASON at HOOK[ by RULE][: CAUSE]" (tracer/flows.FlowTable.add_drops)."""
    if ": conntrack" in label:
        return "conntrack"
    return "rule" if " by " in label else ""


def _severity(reason: str, location: str, cause: str) -> str:
    return classify(reason, location, "loss" if cause == "conntrack" else None)


def _backend(pod: str, ip: str, port: int) -> str:
    return pod if pod and pod != "-" else f"{ip}:{port}"


def attribute(rows: Iterable[dict[str, Any]], services: ServiceMap, nat: Iterable[NatRecord],
              conntrack: Iterable[NodeConntrack], pod_of_ip: Callable[[str], str]) -> list[Charge]:
    table = FlowTable(services, pod_of_ip)
    table.add_nat(nat)
    table.add_conntrack(conntrack)
    by_client: dict[str, list[ServiceFlow]] = {}
    for flow in table.flows.values():
        by_client.setdefault(flow.client, []).append(flow)
    charges: list[Charge] = []
    for row in rows:
        mine = by_client.get(row["src"], [])
        before = [dict(flow.drops) for flow in mine]
        service_drops = len(table.service_drops)
        table.add_drops([row])
        reason, location = row["reason"], row["location"]
        charged = False
        for flow, old in zip(mine, before):
            for label, count in flow.drops.items():
                added = count - old.get(label, 0)
                if added <= 0:
                    continue
                cause = _cause_of_label(label)
                charges.append(Charge(reason, _severity(reason, location, cause), cause, flow.service,
                                      _backend(flow.backend_pod, flow.backend, flow.backend_port), "observed",
                                      added, row))
                charged = True
        for drop in table.service_drops[service_drops:]:
            cause = "conntrack" if drop.cause else ("rule" if drop.rule != "-" else "")
            severity = _severity(reason, location, cause)
            # A drop to an endpoint names its backend; one to the VIP (before DNAT) has none yet.
            endpoint = services.lookup_vip(drop.dst, drop.dport, row["proto"]) is None
            backend = _backend(pod_of_ip(drop.dst), drop.dst, drop.dport) if endpoint else ""
            candidates = sorted({port.name for port in services.lookup_endpoint(drop.dst, drop.dport, row["proto"])
                                 if port.name}) if endpoint else []
            if len(candidates) > 1 and drop.service_known == "ambiguous":
                # The backend serves several Services and the DNAT that chose one happened elsewhere (the client's
                # node): this node cannot tell which was dialled, so each is charged and marked so.
                charges += [Charge(reason, severity, cause, name, backend, "ambiguous", drop.count, row)
                            for name in candidates]
            else:
                charges.append(Charge(reason, severity, cause, drop.service, backend, "matched", drop.count, row))
            charged = True
        if not charged:
            charges.append(Charge(reason, _severity(reason, location, ""), "", "", "", "none", row["count"], row))
    return charges
