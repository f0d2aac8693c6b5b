"""Service flows: client pod -> Service VIP -> DNAT -> backend pod -> reply, from NAT records and drops.

Pure: takes NAT records (from the kernel's nat_flows map or a recording), drop rows and a ServiceMap
(tracer/node/kubeproxy/model.py) plus pod names, and returns the table `podtrace flows` and the TUI show.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tracer.analysis.rule_drift import drift
from tracer.events.decode import Tuple
from tracer.node.kubeproxy.model import ServiceMap, ServicePort
from tracer.output.layout import cut, fit_columns
from tracer.probes.nf_points import point_label

if TYPE_CHECKING:  # conntrack reads netlink: the table needs only its type
    from tracer.node.conntrack import Health
    from tracer.node.podnames import PodResolver

# IPVS records (bpf/ipvs.c, PT_IPVS_* in bpf/podtrace.h) share the NAT record shape under their own points.
IPVS_CONN, IPVS_XMIT, IPVS_REPLY = 32, 33, 34
DNAT_POINTS = {1, 7, IPVS_XMIT}  # PREROUTING / OUTPUT after DNAT; IPVS NAT transmit
UNDNAT_POINTS = {3, 10, IPVS_REPLY}  # INPUT last / POSTROUTING after SNAT: where replies get their VIP back
# What nf_hook_slow reports when a hook returned NF_DROP: a rule's DROP, or conntrack refusing a new entry.
NETFILTER_DROP_REASONS = ("NETFILTER_DROP", "NETFILTER_REJECT")
OUT_OF_SYNC = "VIP with no kube-proxy rules: out of sync?"
RANGE_MAX_PREFIX = 24  # a ClusterIP range guessed from few VIPs is never narrower than this


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
    scheduled: int = 0  # IPVS: connections its scheduler placed on this backend (ip_vs_conn_new)
    timed: bool = True  # the time in netfilter was measured (per-packet links, --hook-timing); else unknown

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client, "client_pod": self.client_pod, "service": self.service, "vip": self.vip,
            "port": self.port, "proto": self.proto, "backend": self.backend, "backend_port": self.backend_port,
            "backend_pod": self.backend_pod, "packets_out": self.packets_out, "bytes_out": self.bytes_out,
            "packets_in": self.packets_in, "bytes_in": self.bytes_in, "connections": len(self.client_ports),
            "netfilter_ns_avg": self.nat_ns_sum // max(self.packets_out, 1) if self.timed else None,
            "netfilter_ns_max": self.nat_ns_max if self.timed else None,
            "drops": self.drops, "scheduled": self.scheduled,
        }


def _endpoint(text: object) -> tuple[str, int] | None:
    """An "address:port" drop-row field as (address, port), IPv6 with or without brackets; None when absent."""
    if not isinstance(text, str) or ":" not in text:
        return None
    addr, _, port = text.rpartition(":")
    return addr.strip("[]"), int(port)


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
    cause: str = ""  # why, when no rule did it (e.g. "conntrack table full (262144/262144)")
    # how the Service is known: "observed" (the drop's conntrack entry named the VIP dialled), "matched", or
    # "ambiguous" (a backend several Services share, with nothing to say which was dialled: `service` names them all)
    service_known: str = "matched"
    fix: str = ""  # the cause's one-line fix (tracer/analysis/causes.py), when it has one

    def text(self) -> str:
        named = self.rule == "-" or self.rule in self.cause  # a cause naming the rule says "matched" itself
        return (f"{self.reason} at {self.hook}" + ("" if named else f" by {self.rule} (matched)")
                + (f": {self.cause}" if self.cause else ""))


@dataclass(frozen=True)
class NodeConntrack:
    """One node's conntrack table at the end of a trace; `drops_during` is the drop counter's growth during it."""

    node: str
    health: Health
    drops_during: int | None = None

    @property
    def cause(self) -> str:
        """Why this table drops new connections, or "" when it does not look like it does."""
        state = f"{self.health.count}/{self.health.max}"
        if self.health.full:
            return f"conntrack table full ({state})"
        if self.drops_during:
            return f"conntrack dropped {self.drops_during} new connections (table {state})"
        return ""

    def to_json(self) -> dict[str, Any]:
        return {"conntrack": True, "node": self.node, **self.health.to_dict(), "drops_during": self.drops_during}

    def text(self) -> str:
        h = self.health
        during = f" ({self.drops_during} during the trace)" if self.drops_during is not None else ""
        return (f"conntrack {self.node}: {h.count}/{h.max} entries ({h.fill:.0%} full), "
                f"insert_failed {h.insert_failed}, drop {h.drop}{during}, early_drop {h.early_drop}"
                + (" - TABLE FULL" if h.full else ""))


@dataclass
class OutOfSync:
    """Traffic to a ClusterIP-range address no kube-proxy rule knows: rules behind the API, or on another node."""

    vip: str
    port: int
    proto: str
    src: str
    packets: int
    seen: str  # what happened to it: "DNATed to IP:port", "NETFILTER_DROP at ..."
    cluster_range: str
    note: str = OUT_OF_SYNC

    def to_json(self) -> dict[str, Any]:
        return {"out_of_sync": True, **self.__dict__}


def cluster_range(services: ServiceMap) -> ipaddress.IPv4Network | None:
    """The ClusterIP range the known VIPs suggest: their common prefix, at most /24 (IPv4 only)."""
    vips = []
    for port in services.ports:
        try:
            vips.append(ipaddress.IPv4Address(port.vip))
        except ValueError:
            continue
    if not vips:
        return None
    low, high = int(min(vips)), int(max(vips))
    prefix = 32 - (low ^ high).bit_length()
    return ipaddress.IPv4Network((low, min(prefix, RANGE_MAX_PREFIX)), strict=False)


def _service_label(port: ServicePort | None) -> str:
    return port.name if port and port.name else "-"


def _backend_services(ports: list[ServicePort]) -> tuple[str | None, str]:
    """The Service a drop at this backend belongs to, when only the backend is known, and how that is known.
    Several Services can share one backend (a ClusterIP and a NodePort): naming the first would be a guess, so all
    are named and the answer is "ambiguous"."""
    names = sorted({_service_label(port) for port in ports})
    if len(names) > 1:
        return f"{' or '.join(names)} (shared backend: which was dialled is not known)", "ambiguous"
    return (names[0] if names else None), "matched"


class FlowTable:
    def __init__(self, services: ServiceMap, pod_of_ip: Callable[[str], str], timed: bool = True) -> None:
        """timed: the NAT records carry the time spent in the hook (False: counted from conntrack, untimed)."""
        self.services = services
        self.timed = timed
        self.pod_of_ip = pod_of_ip
        self.flows: dict[tuple[str, str, int, str, str, int], ServiceFlow] = {}
        self.service_drops: list[ServiceDrop] = []
        self.other_nat: list[NatRecord] = []
        self.conntrack: dict[str, NodeConntrack] = {}  # node (netns name, "host" for podtrace's own) -> table state
        self.out_of_sync: list[OutOfSync] = []
        self.cluster_range = cluster_range(services)
        self._vips = {port.vip for port in services.ports if port.vip}
        # netns -> (rules read at the start, at the end): a drop matching different rules at each has no known rule
        self.drift_rules: dict[str, tuple[ServiceMap, ServiceMap]] = {}

    def add_conntrack(self, states: Iterable[NodeConntrack]) -> None:
        """Table state per node: drops no rule explains, on a node whose table refuses entries, are charged to it."""
        for state in states:
            self.conntrack[state.node] = state

    def _unknown_vip(self, ip: str) -> bool:
        """An address in the ClusterIP range that no Service has (any port): no kube-proxy rules for it at all."""
        if self.cluster_range is None or ip in self._vips:
            return False
        try:
            return ipaddress.IPv4Address(ip) in self.cluster_range
        except ValueError:
            return False

    def _flag(self, vip: str, port: int, proto: str, src: str, packets: int, seen: str) -> None:
        for flagged in self.out_of_sync:
            if (flagged.vip, flagged.port, flagged.proto, flagged.src, flagged.seen) == (vip, port, proto, src, seen):
                flagged.packets += packets
                return
        self.out_of_sync.append(OutOfSync(vip, port, proto, src, packets, seen, str(self.cluster_range)))

    def _flow(self, client: str, vip: str, port: int, proto: str, backend: str, backend_port: int,
              service: ServicePort | None) -> ServiceFlow:
        key = (client, vip, port, proto, backend, backend_port)
        flow = self.flows.get(key)
        if flow is None:
            flow = ServiceFlow(client, self.pod_of_ip(client), _service_label(service), vip, port, proto,
                               backend, backend_port, self.pod_of_ip(backend), timed=self.timed)
            self.flows[key] = flow
        return flow

    def add_nat(self, records: Iterable[NatRecord]) -> None:
        for record in records:
            before, after = record.before, record.after
            proto = before.proto_name
            if record.point in DNAT_POINTS and self._unmasquerade(before, proto):
                # A reply to a masqueraded connection getting its client's address back: conntrack undoes the SNAT
                # at the DNAT hook. Its flow is the one the forward direction made; the reply's VIP comes later.
                self.other_nat.append(record)
            elif record.point in DNAT_POINTS and (before.dst, before.dport) != (after.dst, after.dport):
                service = self.services.lookup_vip(before.dst, before.dport, proto) or \
                    self.services.lookup_nodeport(before.dport, proto)
                if service is None and self._unknown_vip(before.dst):
                    self._flag(before.dst, before.dport, proto, before.src, record.packets,
                               f"DNATed to {after.dst}:{after.dport}")
                flow = self._flow(before.src, before.dst, before.dport, proto, after.dst, after.dport, service)
                flow.packets_out += record.packets
                flow.bytes_out += record.bytes
                flow.nat_ns_sum += record.hook_ns_sum
                flow.nat_ns_max = max(flow.nat_ns_max, record.hook_ns_max)
                flow.client_ports.add(before.sport)
            elif record.point == IPVS_CONN:
                service = self.services.lookup_vip(before.dst, before.dport, proto) or \
                    self.services.lookup_nodeport(before.dport, proto)
                flow = self._flow(before.src, before.dst, before.dport, proto, after.dst, after.dport, service)
                flow.scheduled += record.packets
                flow.client_ports.add(before.sport)
            elif record.point in UNDNAT_POINTS and self._reply_service(after, proto) is not None:
                # A reply getting its Service address back (masquerade SNAT also rewrites sources: not this).
                service = self._reply_service(after, proto)
                flow = self._flow(after.dst, after.src, after.sport, proto, before.src, before.sport, service)
                flow.packets_in += record.packets
                flow.bytes_in += record.bytes
            else:
                self.other_nat.append(record)

    def _unmasquerade(self, before: Tuple, proto: str) -> bool:
        """From a Service's endpoint to an address that is no Service's: a reply, not a client dialling a VIP."""
        return bool(self.services.lookup_endpoint(before.src, before.sport, proto)) and \
            self.services.lookup_vip(before.dst, before.dport, proto) is None and \
            self.services.lookup_nodeport(before.dport, proto) is None

    def _reply_service(self, after: Tuple, proto: str) -> ServicePort | None:
        return self.services.lookup_vip(after.src, after.sport, proto) or \
            self.services.lookup_nodeport(after.sport, proto, after.src)

    def add_drops(self, rows: Iterable[dict[str, Any]]) -> None:
        """Drop rows (tracer/report.drop_rows) attributed to the flow or Service they belong to."""
        for row in rows:
            proto, dst, dport, src = row["proto"], row["dst"], row["dport"], row["src"]
            netfilter = row["reason"] in NETFILTER_DROP_REASONS or "netfilter" in row.get("hook", "")
            match = self.services.rule_for_drop(dst, dport, proto, src=src) if netfilter else None
            ends = self.drift_rules.get(str(row.get("netns", ""))) if netfilter else None
            changed = drift(row, *ends) if ends else ""
            if changed:
                match = None  # the rule is not known (the cause below says why)
            # This node's conntrack refuses new entries, and either no rule explains the drop or the packet was last
            # seen before conntrack (only conntrack, mangle and nat run between there and "after DNAT": kube-proxy's
            # DROP/REJECT rules sit later, so a rule matched on addresses alone is the wrong answer): conntrack did
            # it. nf_conntrack_in returns NF_DROP before any NAT, so the packet still carries the VIP.
            table = self.conntrack.get(row.get("netns", "")) if netfilter else None
            cause = table.cause if table else ""
            if cause and match is not None and not row.get("hook", "-").endswith("before conntrack"):
                cause = ""
            if cause:
                match = None
            rule = match.rule.where() if match else "-"
            # Why, in words (tracer/analysis/causes.py), when the conntrack table above does not already say it.
            explained = row.get("cause") or {}
            fix, by_table = "", bool(cause)
            if not cause and explained.get("kind", "unknown") != "unknown":
                how = explained["known"] + (f"; {explained['state']}" if explained.get("state") else "")  # Cause.how
                cause, fix = f"{explained['text']} ({how})", explained.get("fix", "")
            if changed and not by_table and "ruleset changed" not in cause:  # a full table is observed: it stays
                cause, fix = f"{changed} (unknown)", ""
            # The rule is found by matching the packet's fields against the saved ruleset, not reported by the kernel;
            # a cause that names the rule already says "matched": once is enough.
            by_rule = f" by {rule} (matched)" if match and rule not in cause else ""
            label = f"{row['reason']} at {row.get('hook', '-')}{by_rule}" + (f": {cause}" if cause else "")
            # Only an entry this node DNATed knows the VIP: on the backend's node of a cross-node connection the
            # client's node did the DNAT, and the local entry holds the post-DNAT addresses (then: NAT records).
            dialled = _endpoint(row.get("ct_dialled")) if row.get("ct_dnat") else None
            if dialled is not None:
                # The kernel said which connection this packet belongs to: charge exactly that one, or its Service.
                if self._charge_identity(row, label):
                    continue
                dst, dport = dialled  # no flow seen for it: its Service is the one the client dialled
            if not cause and self._unknown_vip(dst):
                # Whatever dropped it (no route, kube-proxy's "unallocated ClusterIP" DROP): nothing maps this VIP.
                self._flag(dst, dport, proto, src, row["count"], label)
            if dialled is None and self._charge_flows(row, label):
                continue
            service = self.services.lookup_vip(dst, dport, proto)
            if service is None and match and match.service:
                service = match.service
            name = _service_label(service) if service is not None else None
            known = "observed" if dialled is not None else "matched"
            if service is None and dialled is None:  # with the dialled address known, a backend's Service is a guess
                name, known = _backend_services(self.services.lookup_endpoint(dst, dport, proto))
            if name is not None:
                self.service_drops.append(ServiceDrop(name, row["reason"], row.get("hook", "-"),
                                                      rule, row["count"], src, dst, dport, cause, known, fix))

    def _charge_identity(self, row: dict[str, Any], label: str) -> bool:
        """Charge a drop to the flow its conntrack entry names: client, dialled VIP and backend (observed)."""
        client, dialled, backend = (_endpoint(row.get(key)) for key in ("ct_client", "ct_dialled", "ct_backend"))
        if client is None or dialled is None or backend is None:
            return False
        flows = [flow for flow in self.flows.values()
                 if flow.client == client[0] and (flow.vip, flow.port) == dialled
                 and (flow.backend, flow.backend_port) == backend]
        if not flows:
            return False
        label += " (conntrack)"
        for flow in flows:
            flow.drops[label] = flow.drops.get(label, 0) + row["count"]
        return True

    def _charge_flows(self, row: dict[str, Any], label: str) -> bool:
        """Charge a drop group to the client's flow to that backend (dropped after DNAT) or to that VIP (before).

        Several Services (a ClusterIP and a NodePort) can share one backend: the group names only the backend, so
        every such flow shows it, marked as shared. A VIP before DNAT names no backend: with several flows it is
        not charged here but to the Service.
        """
        src, dst, dport = row["src"], row["dst"], row["dport"]
        mine = [flow for flow in self.flows.values() if flow.client == src]
        flows = [flow for flow in mine if (flow.backend, flow.backend_port) == (dst, dport)]
        if len(flows) > 1:
            label += f" (one count shared by {len(flows)} flows to {dst}:{dport})"
        elif not flows:
            flows = [flow for flow in mine if (flow.vip, flow.port) == (dst, dport)]
            if len(flows) != 1:
                return False
        for flow in flows:
            flow.drops[label] = flow.drops.get(label, 0) + row["count"]
        return True

    def rows(self) -> list[ServiceFlow]:
        return sorted(self.flows.values(), key=lambda f: (f.service, f.backend, f.client))


COUNTS_CONNTRACK, COUNTS_PACKETS, COUNTS_IPVS, COUNTS_NONE = "conntrack", "packets", "ipvs_kprobes", "none"


def counts_mode(conntrack: bool, links: bool, ipvs: bool) -> str:
    """How a session counted its Service flows: the JSON summary's "counts"."""
    if links:
        return COUNTS_CONNTRACK if conntrack else COUNTS_PACKETS
    return COUNTS_IPVS if ipvs else COUNTS_NONE


def counts_known(conntrack: bool, mode: str = "", why: str = "") -> str:
    """How a session's flow counts are known, in the words its output uses; `why` says why netfilter links were not
    used (a kernel before 6.4)."""
    mode = mode or (COUNTS_CONNTRACK if conntrack else COUNTS_PACKETS)
    if mode == COUNTS_CONNTRACK:
        return ("counts per conntrack entry: each packet of a connection the kernel DNATed, counted after DNAT; "
                "the filter is checked on a connection's first packet each way; time in netfilter not measured "
                "(--hook-timing)")
    if mode == COUNTS_PACKETS:
        return "counts per packet: each packet whose tuple changed between two netfilter points, timed in the hook"
    because = f" ({why})" if why else ""
    if mode == COUNTS_IPVS:
        return (f"counts from IPVS kprobes only: no netfilter links{because}, so iptables/nftables DNAT is not "
                "counted; time in netfilter not measured")
    return f"no Service flow counts: no netfilter links{because} and no IPVS kprobes"


def nat_record_from_map(key: Any, stats: Any) -> NatRecord:
    """A BCC nat_flows (key, value) pair as a NatRecord."""

    def tuple_of(t: Any) -> Tuple:
        return Tuple(bytes(t.saddr), bytes(t.daddr), t.sport, t.dport, t.family, t.proto, t.icmp_type,
                     t.icmp_code, t.frag, t.ip_len)

    return NatRecord(key.point, key.netns, tuple_of(key.before), tuple_of(key.after), stats.packets, stats.bytes,
                     stats.first_ns, stats.last_ns, stats.hook_ns_sum, stats.hook_ns_max)


def write_flow_table(table: FlowTable, out: Any, width: int | None = None) -> None:
    """Service, client, backend as wide as their widest value; on a terminal (`width`) the widest gives way
    first, down to a floor, a shortened name ending in CUT."""
    flows = table.rows()
    if not flows:
        out.write("no Service flows seen\n")
    else:
        cells = []
        for flow in flows:
            client = flow.client_pod if flow.client_pod != "-" else flow.client
            backend = f"{flow.backend_pod if flow.backend_pod != '-' else flow.backend}:{flow.backend_port}"
            cells.append((flow.service, client, backend))
        heads = ("SERVICE", "CLIENT", "BACKEND")
        natural = [max(len(head), *(len(row[i]) for row in cells)) for i, head in enumerate(heads)]
        sw, cw, bw = fit_columns(natural, [16, 12, 16], 3 + 7 * 3 + len("DROPS"), width)
        out.write(f"{'SERVICE':<{sw}} {'CLIENT':<{cw}} {'BACKEND':<{bw}} {'PKTS>':>6} {'<PKTS':>6} {'NF us':>6} "
                  "DROPS\n")
        for flow, (service, client, backend) in zip(flows, cells):
            avg_us = f"{flow.nat_ns_sum / max(flow.packets_out, 1) / 1000:.1f}" if flow.timed else "-"
            drops = sum(flow.drops.values())
            out.write(f"{cut(service, sw):<{sw}} {cut(client, cw):<{cw}} {cut(backend, bw):<{bw}} "
                      f"{flow.packets_out:>6} {flow.packets_in:>6} {avg_us:>6} {drops}\n")
            for label, count in flow.drops.items():
                out.write(f"{'':<{sw}} {count:>6} x {label}\n")
    for drop in table.service_drops:
        out.write(f"{drop.service:<22} {drop.count:>6} x {drop.text()} ({drop.src} > {drop.dst}:{drop.dport})\n")
        if drop.fix:
            out.write(f"{'':<22} fix: {drop.fix}\n")
    for flagged in table.out_of_sync:
        out.write(f"{flagged.proto} {flagged.src} > {flagged.vip}:{flagged.port}: {flagged.packets} packets, "
                  f"{flagged.seen}; {flagged.note} (ClusterIP range {flagged.cluster_range} guessed from the VIPs)\n")
    for state in table.conntrack.values():
        out.write(state.text() + "\n")


class LiveFlowsTable:
    """The TUI's Services view (a tui/model.py TableSource): NAT records read from the kernel at each refresh."""

    columns = ["service", "client", "backend", "pkts_out", "pkts_in", "nf_us"]

    def __init__(self, source: Any, nodes: Iterable[str | None]) -> None:
        self.source = source
        self.nodes = list(nodes)
        self._services: ServiceMap | None = None
        self._pods: dict[str, str] = {}
        self._pod_resolver: PodResolver | None = None

    def _load_names(self) -> ServiceMap:
        from tracer.node.kubeproxy.collect import collect  # runs iptables-save/nft once
        from tracer.node.kubeproxy.model import merge
        from tracer.output.errors import PodtraceError

        maps = []
        for node in self.nodes:
            try:
                maps.append(collect(node))
            except PodtraceError:
                continue
        from tracer.node.podnames import PodResolver

        self._pod_resolver = self._pod_resolver or PodResolver()
        return merge(*maps) if maps else ServiceMap()

    def rows(self) -> list[dict[str, Any]]:
        if self._services is None:
            self._services = self._load_names()
        if self._pod_resolver is not None:  # re-read when stale: pods created since are named
            self._pods = self._pod_resolver.pod_names()
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


__all__ = ["FlowTable", "NatRecord", "NodeConntrack", "OutOfSync", "ServiceDrop", "ServiceFlow", "cluster_range",
           "counts_known", "counts_mode", "nat_record_from_map", "point_label", "write_flow_table"]
