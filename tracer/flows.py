"""Service flows: client pod -> Service VIP -> DNAT -> backend pod -> reply, from NAT records and drops.

Pure: takes NAT records (from the kernel's nat_flows map or a recording), drop rows and a ServiceMap
(tracer/kubeproxy.py) plus pod names, and returns the table `podtrace flows` and the TUI show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tracer.events import Tuple
from tracer.kubeproxy import ServiceMap, ServicePort
from tracer.netfilter import point_label

DNAT_POINTS = {1, 7}  # PREROUTING / OUTPUT after DNAT
UNDNAT_POINTS = {3, 10}  # INPUT last / POSTROUTING after SNAT: where replies get their VIP back


@dataclass(frozen=True)
class NatRecord:
    """One translation the kernel saw between two points of a hook (struct pt_nat_key + pt_nat_stats)."""

    point: int
    netns: int
    before: Tuple
    after: Tuple
    packets: int
    bytes: int
    first_ns: int
    last_ns: int
    hook_ns_sum: int
    hook_ns_max: int


@dataclass
class ServiceFlow:
    client: str
    client_pod: str
    service: str
    vip: str
    port: int
    proto: str
    backend: str
    backend_port: int
    backend_pod: str
    packets_out: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    bytes_in: int = 0
    connections: int = 0  # distinct client ports seen
    nat_ns_sum: int = 0  # time in the DNAT hook, summed over the translated packets
    nat_ns_max: int = 0
    drops: dict[str, int] = field(default_factory=dict)  # "REASON at hook / rule" -> count
    client_ports: set[int] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client, "client_pod": self.client_pod, "service": self.service, "vip": self.vip,
            "port": self.port, "proto": self.proto, "backend": self.backend, "backend_port": self.backend_port,
            "backend_pod": self.backend_pod, "packets_out": self.packets_out, "bytes_out": self.bytes_out,
            "packets_in": self.packets_in, "bytes_in": self.bytes_in, "connections": len(self.client_ports),
            "netfilter_ns_avg": self.nat_ns_sum // max(self.packets_out, 1), "netfilter_ns_max": self.nat_ns_max,
            "drops": self.drops,
        }


@dataclass
class ServiceDrop:
    """Drops attributed to a Service without a flow (e.g. a REJECT for a Service with no endpoints)."""

    service: str
    reason: str
    hook: str
    rule: str
    count: int
    src: str
    dst: str
    dport: int


def _service_label(port: ServicePort | None) -> str:
    return port.name if port and port.name else "-"


class FlowTable:
    def __init__(self, services: ServiceMap, pod_of_ip: Callable[[str], str]) -> None:
        self.services = services
        self.pod_of_ip = pod_of_ip
        self.flows: dict[tuple[str, str, int, str, str, int], ServiceFlow] = {}
        self.service_drops: list[ServiceDrop] = []
        self.other_nat: list[NatRecord] = []

    def _flow(self, client: str, vip: str, port: int, proto: str, backend: str, backend_port: int,
              service: ServicePort | None) -> ServiceFlow:
        key = (client, vip, port, proto, backend, backend_port)
        flow = self.flows.get(key)
        if flow is None:
            flow = ServiceFlow(client, self.pod_of_ip(client), _service_label(service), vip, port, proto,
                               backend, backend_port, self.pod_of_ip(backend))
            self.flows[key] = flow
        return flow

    def add_nat(self, records: Iterable[NatRecord]) -> None:
        for record in records:
            before, after = record.before, record.after
            proto = before.proto_name
            if record.point in DNAT_POINTS and (before.dst, before.dport) != (after.dst, after.dport):
                service = self.services.lookup_vip(before.dst, before.dport, proto) or \
                    self.services.lookup_nodeport(before.dport, proto)
                flow = self._flow(before.src, before.dst, before.dport, proto, after.dst, after.dport, service)
                flow.packets_out += record.packets
                flow.bytes_out += record.bytes
                flow.nat_ns_sum += record.hook_ns_sum
                flow.nat_ns_max = max(flow.nat_ns_max, record.hook_ns_max)
                flow.client_ports.add(before.sport)
            elif record.point in UNDNAT_POINTS and self._reply_service(after, proto) is not None:
                # A reply getting its Service address back (masquerade SNAT also rewrites sources: not this).
                service = self._reply_service(after, proto)
                flow = self._flow(after.dst, after.src, after.sport, proto, before.src, before.sport, service)
                flow.packets_in += record.packets
                flow.bytes_in += record.bytes
            else:
                self.other_nat.append(record)

    def _reply_service(self, after: Tuple, proto: str) -> ServicePort | None:
        return self.services.lookup_vip(after.src, after.sport, proto) or \
            self.services.lookup_nodeport(after.sport, proto, after.src)

    def add_drops(self, rows: Iterable[dict[str, Any]]) -> None:
        """Drop rows (tracer/report.drop_rows) attributed to the flow or Service they belong to."""
        for row in rows:
            proto, dst, dport, src = row["proto"], row["dst"], row["dport"], row["src"]
            match = self.services.rule_for_drop(dst, dport, proto, src=src) if row["reason"] in (
                "NETFILTER_DROP", "NETFILTER_REJECT") or "netfilter" in row.get("hook", "") else None
            rule = match.rule.where() if match else "-"
            label = f"{row['reason']} at {row.get('hook', '-')}" + (f" by {rule}" if match else "")
            flows = [flow for flow in self.flows.values()
                     if flow.client == src and ((flow.backend, flow.backend_port) == (dst, dport)
                                                or (flow.vip, flow.port) == (dst, dport))]
            if flows:
                flows[0].drops[label] = flows[0].drops.get(label, 0) + row["count"]
                continue
            service = self.services.lookup_vip(dst, dport, proto)
            if service is None and match and match.service:
                service = match.service
            if service is None:
                endpoints = self.services.lookup_endpoint(dst, dport, proto)
                service = endpoints[0] if endpoints else None
            if service is not None:
                self.service_drops.append(ServiceDrop(_service_label(service), row["reason"], row.get("hook", "-"),
                                                      rule, row["count"], src, dst, dport))

    def rows(self) -> list[ServiceFlow]:
        return sorted(self.flows.values(), key=lambda f: (f.service, f.backend, f.client))


def nat_record_from_map(key: Any, stats: Any) -> NatRecord:
    """A BCC nat_flows (key, value) pair as a NatRecord."""

    def tuple_of(t: Any) -> Tuple:
        return Tuple(bytes(t.saddr), bytes(t.daddr), t.sport, t.dport, t.family, t.proto, t.icmp_type,
                     t.icmp_code, t.frag, t.ip_len)

    return NatRecord(key.point, key.netns, tuple_of(key.before), tuple_of(key.after), stats.packets, stats.bytes,
                     stats.first_ns, stats.last_ns, stats.hook_ns_sum, stats.hook_ns_max)


def write_flow_table(table: FlowTable, out: Any) -> None:
    flows = table.rows()
    if not flows:
        out.write("no Service flows seen\n")
    else:
        out.write(f"{'SERVICE':<22} {'CLIENT':<18} {'BACKEND':<24} {'PKTS>':>6} {'<PKTS':>6} {'NF us':>6} DROPS\n")
        for flow in flows:
            client = flow.client_pod if flow.client_pod != "-" else flow.client
            backend = f"{flow.backend_pod if flow.backend_pod != '-' else flow.backend}:{flow.backend_port}"
            avg_us = flow.nat_ns_sum / max(flow.packets_out, 1) / 1000
            drops = sum(flow.drops.values())
            out.write(f"{flow.service[:22]:<22} {client[:18]:<18} {backend[:24]:<24} {flow.packets_out:>6} "
                      f"{flow.packets_in:>6} {avg_us:>6.1f} {drops}\n")
            for label, count in flow.drops.items():
                out.write(f"{'':<22} {count:>6} x {label}\n")
    for drop in table.service_drops:
        out.write(f"{drop.service[:22]:<22} {drop.count:>6} x {drop.reason} at {drop.hook} by {drop.rule}"
                  f" ({drop.src} > {drop.dst}:{drop.dport})\n")


class LiveFlowsTable:
    """The TUI's Services view (a tui/model.py TableSource): NAT records read from the kernel at each refresh."""

    columns = ["service", "client", "backend", "pkts_out", "pkts_in", "nf_us"]

    def __init__(self, source: Any, nodes: Iterable[str | None]) -> None:
        self.source = source
        self.nodes = list(nodes)
        self._services: ServiceMap | None = None
        self._pods: dict[str, str] = {}

    def _load_names(self) -> ServiceMap:
        from tracer.errors import PodtraceError  # noqa: PLC0415
        from tracer.kubeproxy import collect, merge  # noqa: PLC0415 - runs iptables-save/nft once

        maps = []
        for node in self.nodes:
            try:
                maps.append(collect(node))
            except PodtraceError:
                continue
        try:
            from tracer.lab import is_up, names  # noqa: PLC0415 - the lab is optional

            if is_up():
                self._pods = {pod.ip: name for name, pod in names().pods.items()}
        except PodtraceError:
            pass
        return merge(*maps) if maps else ServiceMap()

    def rows(self) -> list[dict[str, Any]]:
        if self._services is None:
            self._services = self._load_names()
        table = FlowTable(self._services, lambda ip: self._pods.get(ip, "-"))
        table.add_nat(nat_record_from_map(key, stats) for key, stats in self.source.nat_flows())
        return [{
            "service": flow.service,
            "client": flow.client_pod if flow.client_pod != "-" else flow.client,
            "backend": f"{flow.backend_pod if flow.backend_pod != '-' else flow.backend}:{flow.backend_port}",
            "pkts_out": flow.packets_out,
            "pkts_in": flow.packets_in,
            "nf_us": round(flow.nat_ns_sum / max(flow.packets_out, 1) / 1000, 1),
        } for flow in table.rows()]


__all__ = ["FlowTable", "NatRecord", "ServiceFlow", "nat_record_from_map", "point_label", "write_flow_table"]
