"""VXLAN tunnel table: which node-to-node tunnel each inner pod flow rode, underlay drops named by inner flow,
and fragment counts (pure: events in, rows out).

A tunnel is (outer source node, outer destination node, VNI, UDP port). One packet is seen at several points
(queue and xmit on the sender's underlay device, rx on the receiver's), so counts are kept per observation point
("where") and a flow's packet count is the largest per-point count: each point sees a packet at most once.

Fragments are counted honestly where they were seen:
- outer (underlay) fragments: IPv4 packets between two tunnel endpoints with MF set or a fragment offset
  (the VXLAN packet itself was fragmented after encapsulation);
- inner fragments in the tunnel: VXLAN packets whose inner IPv4 header has MF or an offset (a node fragmented
  the pod packet before encapsulating it, e.g. pod MTU 1500 over a 1450 overlay);
- inner fragments outside the tunnel: fragments between other addresses (pod packets on cni0, flannel.1 or veths
  before encapsulation or after decapsulation).

Where kprobes exist (bpf/overlay.c), three more points: vxlan_rcv (the outer packet, as on the wire), vxlan_xmit_one
(the inner packet before encapsulation; the outer tuple is the tunnel's remote, VNI and port from struct vxlan_rdst
and the device's `local` address, unspecified when the kernel picks it by route) and ip_do_fragment (one event per
packet this node cut, with the output device's MTU): "fragmented locally", counted apart from the fragments seen
on the wire.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tracer.events.decode import (
    EVENT_DROP,
    EVENT_PATH,
    POINT_FRAGMENT,
    POINT_NAMES,
    POINT_VXLAN_XMIT,
    PacketEvent,
    Tuple,
)

VXLAN_PORTS = (8472, 4789)
MF = 0x2000
OFFSET = 0x1FFF
OVERLAY_FILTER = "udp port 8472 or udp port 4789 or (ip[6:2] & 0x3fff != 0)"
UNSPECIFIED = frozenset({"0.0.0.0", "::"})  # a vxlan device without `local`: its source is chosen by route
FIRST_FRAGMENTS_KEPT = 65536  # IP ids of first outer fragments remembered, to place the fragments that follow


def is_fragment(t: Tuple | None) -> bool:
    """IPv4 MF or offset; IPv6 fragment header (offset or M bit)."""
    if t is None or not t.family:
        return False
    if t.family == 4:
        return bool(t.frag & (MF | OFFSET))
    return bool(t.frag & 0xFFF9)


def _flow(t: Tuple) -> str:
    return t.describe()


def _pair_flow(t: Tuple) -> str:
    return f"{t.proto_name} {t.src} > {t.dst}"


EPHEMERAL = 32768  # Linux's default net.ipv4.ip_local_port_range starts here: clients' source ports


def _end(t: Tuple, addr: str, port: int) -> str:
    return f"{t.proto_name} {f'[{addr}]' if ':' in addr else addr}:{port}"


def _ends(t: Tuple) -> tuple[str, str]:
    """(source end, destination end) of a flow with ports: "tcp 10.244.1.2:8080"."""
    return _end(t, t.src, t.sport), _end(t, t.dst, t.dport)


def _server(t: Tuple) -> str:
    """The end of an inner flow that stays put across its connections, so one group holds every connection to a
    backend and its replies: "tcp 10.244.1.2:8080". Where kube-proxy names neither end (see _groups): the
    destination, unless only the source port is below the ephemeral range (a reply). Inferred from the ports: a
    server on an ephemeral port, or a client port SNATed under it, is mistaken."""
    if t.proto in (6, 17, 132) and (t.sport or t.dport):
        src, dst = _ends(t)
        return src if t.dport >= EPHEMERAL > t.sport > 0 else dst
    return _pair_flow(t)


def _groups(flows: list[InnerFlow], fragments: dict[str, Counter[str]],
            services: Mapping[str, str]) -> list[dict[str, Any]]:
    """A tunnel's flows per server end, with packets, drops and the inner fragments of its address pair."""
    groups: dict[str, dict[str, Any]] = {}
    for f in flows:
        # The end kube-proxy names (a backend or VIP) is the server, whatever the ports say: a reply to a
        # masqueraded client has an SNATed destination port that may lie under the ephemeral range.
        server = next((end for end in f.ends[::-1] if end in services), f.server)
        g = groups.setdefault(server, {"server": server, "service": services.get(server), "flows": 0,
                                         "packets": 0, "drops": 0, "inner_fragments": 0, "fragment_pairs": [],
                                         "reasons": Counter()})
        g["flows"] += 1
        g["packets"] += f.packets
        g["drops"] += sum(f.drops.values())
        g["reasons"].update(f.drops)
    for pair, points in sorted(fragments.items()):
        proto, src, _gt, dst = pair.split(" ", 3)
        for server, g in groups.items():  # a fragment has no ports: its pair goes to a group of one of its ends
            s_proto, _, end = server.partition(" ")
            if s_proto == proto and end.rsplit(":", 1)[0].strip("[]") in (src, dst):
                g["inner_fragments"] += _most(points)
                g["fragment_pairs"].append(pair)
                break
    rows = []
    for g in groups.values():
        reasons = g.pop("reasons")
        g["drop_reasons"] = [{"reason": r, "where": w, "count": n} for (r, w), n in sorted(reasons.items())]
        rows.append(g)
    return sorted(rows, key=lambda g: (-g["drops"], -g["packets"], g["server"]))


def services_by_server(ports: Iterable[Any]) -> dict[str, str]:
    """kube-proxy's Service ports (tracer.node.kubeproxy.model.ServicePort) as server end -> Service names: every
    endpoint, and the VIP. A backend of several Services is named by all of them: which one a packet was for, its inner
    tuple (after DNAT) cannot say."""
    names: dict[str, set[str]] = {}
    for port in ports:
        proto = port.proto.lower()
        ends = [f"{proto} {e.ip}:{e.port}" for e in port.endpoints]
        if port.vip:
            ends.append(f"{proto} {port.vip}:{port.port}")
        for end in ends:
            names.setdefault(end, set()).add(port.name)
    return {end: ", ".join(sorted(found)) for end, found in names.items()}


@dataclass(frozen=True, slots=True, order=True)
class TunnelKey:
    src: str  # outer source node address
    dst: str  # outer destination node address
    vni: int
    port: int

    def describe(self) -> str:
        return f"{self.src} -> {self.dst} vni {self.vni} udp/{self.port}"


def _most(points: Counter[str]) -> int:
    return max(points.values(), default=0)


@dataclass
class InnerFlow:
    flow: str
    server: str = ""  # its group: the server end (see _server)
    ends: tuple[str, str] = ("", "")  # source and destination ends, when it has ports
    points: Counter[str] = field(default_factory=Counter)  # where -> packets
    bytes_points: Counter[str] = field(default_factory=Counter)  # where -> inner IP bytes
    drops: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reason, where) -> count

    @property
    def packets(self) -> int:
        return _most(self.points)

    def to_json(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "packets": self.packets,
            "bytes": _most(self.bytes_points),
            "points": dict(sorted(self.points.items())),
            "drops": sum(self.drops.values()),
            "drop_reasons": [{"reason": r, "where": w, "count": n} for (r, w), n in sorted(self.drops.items())],
        }


@dataclass
class Tunnel:
    key: TunnelKey
    flows: dict[str, InnerFlow] = field(default_factory=dict)
    points: Counter[str] = field(default_factory=Counter)  # where -> VXLAN packets (any inner)
    inner_fragments: dict[str, Counter[str]] = field(default_factory=dict)  # "proto src > dst" -> where -> n
    outer_fragments: Counter[str] = field(default_factory=Counter)  # first outer fragments with a VXLAN header
    # the outer fragments after the first (no UDP header), placed by the IP id of their first fragment
    later_fragments: Counter[str] = field(default_factory=Counter)
    cut: Counter[tuple[str, int]] = field(default_factory=Counter)  # (where, MTU) -> VXLAN packets ip_do_fragment cut
    inner_pairs: set[str] = field(default_factory=set)  # "proto src > dst" of every inner packet seen

    def flow(self, name: str, server: str = "", ends: tuple[str, str] = ("", "")) -> InnerFlow:
        found = self.flows.get(name)
        if found is None:
            found = self.flows[name] = InnerFlow(name, server or name, ends)
        return found

    def absorb(self, other: Tunnel) -> None:
        """Add another tunnel's counts (seen at other points, so per-point counts never collide)."""
        self.points.update(other.points)
        self.outer_fragments.update(other.outer_fragments)
        self.later_fragments.update(other.later_fragments)
        self.cut.update(other.cut)
        self.inner_pairs |= other.inner_pairs
        for pair, points in other.inner_fragments.items():
            self.inner_fragments.setdefault(pair, Counter()).update(points)
        for name, theirs in other.flows.items():
            mine = self.flow(name, theirs.server, theirs.ends)
            mine.points.update(theirs.points)
            mine.bytes_points.update(theirs.bytes_points)
            mine.drops.update(theirs.drops)

    def copy(self) -> Tunnel:
        fresh = Tunnel(self.key)
        fresh.absorb(self)
        return fresh


class TunnelTable:
    """Feed it decoded path and drop events (add); read rows (to_json) or a text table (format_text)."""

    def __init__(self) -> None:
        self.tunnels: dict[TunnelKey, Tunnel] = {}
        # Non-VXLAN fragments: (src, dst) -> flow text -> where -> count; classified at report time as underlay
        # (between tunnel endpoints) or inner (anything else).
        self.fragments: dict[tuple[str, str], dict[str, Counter[str]]] = {}
        self.fragment_drops: dict[tuple[str, str], Counter[tuple[str, str]]] = {}
        self.unattributed_drops = 0  # VXLAN drops whose inner packet could not be parsed
        # Non-VXLAN packets ip_do_fragment cut: (flow "proto src > dst", where, device MTU) -> packets
        self.cut: Counter[tuple[str, str, int]] = Counter()
        # (outer src, outer dst, IP id) of first outer fragments -> their tunnel (bounded, oldest forgotten)
        self._first_fragments: dict[tuple[str, str, int], TunnelKey] = {}
        self.events = 0

    def add(self, event: PacketEvent, where: str = "", reason: str = "") -> None:
        """where: observation point (e.g. "pt-node1/eth0 xmit"); reason: drop reason name for drop events."""
        self.events += 1
        outer = event.outer
        if not outer.family:
            return
        drop = event.type == EVENT_DROP
        point = event.reason if event.type == EVENT_PATH else 0
        # vxlan_xmit_one's outer tuple is the tunnel itself, whatever its port; elsewhere the port says VXLAN.
        vxlan = point == POINT_VXLAN_XMIT or (outer.proto == 17 and outer.dport in VXLAN_PORTS)
        if point == POINT_FRAGMENT:  # the whole packet, before ip_do_fragment cut it: not a fragment on the wire
            mtu = event.location
            if vxlan:
                self._tunnel(TunnelKey(outer.src, outer.dst, event.vni, outer.dport)).cut[(where, mtu)] += 1
            else:
                self.cut[(_pair_flow(outer), where, mtu)] += 1
            return
        if vxlan and not outer.frag & OFFSET:
            tunnel = self._tunnel(TunnelKey(outer.src, outer.dst, event.vni, outer.dport))
            if is_fragment(outer) and not drop:
                tunnel.outer_fragments[where] += 1
                self._remember_first_fragment(event, tunnel.key)
            inner = event.inner
            if inner is None or not inner.family:
                if drop:
                    self.unattributed_drops += 1
                    tunnel.flow("(inner not parsed)").drops[(reason, where)] += 1
                else:
                    tunnel.points[where] += 1
                return
            tunnel.inner_pairs.add(_pair_flow(inner))
            if is_fragment(inner) and not drop:
                tunnel.inner_fragments.setdefault(_pair_flow(inner), Counter())[where] += 1
            ports = inner.proto in (6, 17, 132) and bool(inner.sport or inner.dport)
            flow = tunnel.flow(_flow(inner), _server(inner), _ends(inner) if ports else ("", ""))
            if drop:
                flow.drops[(reason, where)] += 1
            else:
                tunnel.points[where] += 1
                flow.points[where] += 1
                flow.bytes_points[where] += inner.ip_len
            return
        if is_fragment(outer):
            pair = (outer.src, outer.dst)
            ip_id = event.ip_id
            owner = self._first_fragments.get((*pair, ip_id)) if ip_id is not None else None
            if drop:
                self.fragment_drops.setdefault(pair, Counter())[(reason, where)] += 1
            elif owner is not None:
                self.tunnels[owner].later_fragments[where] += 1
            else:
                self.fragments.setdefault(pair, {}).setdefault(_pair_flow(outer), Counter())[where] += 1

    def _remember_first_fragment(self, event: PacketEvent, key: TunnelKey) -> None:
        ip_id = event.ip_id
        if ip_id is None:
            return
        self._first_fragments[(event.outer.src, event.outer.dst, ip_id)] = key
        if len(self._first_fragments) > FIRST_FRAGMENTS_KEPT:
            del self._first_fragments[next(iter(self._first_fragments))]

    def add_named(self, event: PacketEvent, names: Any) -> None:
        """add() with the observation point and reason named as `podtrace overlay` and `report` show them
        (names: a tracer.output.report.Resolver)."""
        where = f"{names.netns(event.netns)}/{event.ifname or '-'}"
        if event.type == EVENT_DROP:
            self.add(event, where, names.reason(event.reason))
        elif event.reason == POINT_FRAGMENT:  # its rows name the device and MTU the packet was cut for
            self.add(event, where)
        else:
            self.add(event, f"{where} {POINT_NAMES.get(event.reason, str(event.reason))}")

    def has_rows(self) -> bool:
        return bool(self.tunnels or self.fragments or self.fragment_drops or self.cut)

    def _tunnel(self, key: TunnelKey) -> Tunnel:
        tunnel = self.tunnels.get(key)
        if tunnel is None:
            tunnel = self.tunnels[key] = Tunnel(key)
        return tunnel

    def add_all(self, events: list[tuple[PacketEvent, str, str]]) -> None:
        for event, where, reason in events:
            self.add(event, where, reason)

    def resolved(self) -> dict[TunnelKey, Tunnel]:
        """The tunnels, with those the xmit kprobe saw from an unspecified source joined to the one tunnel seen
        on the wire with the same destination, VNI and port (copies: the table itself is left as fed)."""
        tunnels = {key: tunnel.copy() for key, tunnel in self.tunnels.items() if key.src not in UNSPECIFIED}
        for key, tunnel in self.tunnels.items():
            if key.src not in UNSPECIFIED:
                continue
            known = [k for k in tunnels if (k.dst, k.vni, k.port) == (key.dst, key.vni, key.port)]
            if len(known) == 1:
                tunnels[known[0]].absorb(tunnel)
            else:  # never seen on the wire here (or ambiguous): keep it under its unspecified source
                tunnels.setdefault(key, Tunnel(key)).absorb(tunnel)
        return tunnels

    def endpoints(self) -> set[tuple[str, str]]:
        """(outer source, outer destination) of every tunnel seen, in its direction."""
        return {(k.src, k.dst) for k in self.resolved()}

    def _cut_rows(self, tunnels: dict[TunnelKey, Tunnel]) -> list[dict[str, Any]]:
        """Packets ip_do_fragment cut, each row placed: VXLAN packets on the underlay, inner packets before the
        tunnel that carried their address pair, or outside any tunnel. device_mtu is the output device's: a path
        MTU the route learned can be lower (vxlan_xmit_one lowers the inner route's to the underlay's room after
        the first oversize packet, skb_tunnel_check_pmtu), and the kernel then cuts to that; it is not read."""
        rows = []
        for key in sorted(tunnels):
            rows += [{"flow": f"vxlan {key.src} > {key.dst} vni {key.vni}", "where": where, "device_mtu": mtu,
                      "packets": n, "stage": "underlay", "tunnel": key.describe()}
                     for (where, mtu), n in sorted(tunnels[key].cut.items())]
        for (flow, where, mtu), n in sorted(self.cut.items()):
            carrier = next((k for k in sorted(tunnels) if flow in tunnels[k].inner_pairs), None)
            rows.append({"flow": flow, "where": where, "device_mtu": mtu, "packets": n,
                         "stage": "before encapsulation" if carrier else "outside tunnels",
                         "tunnel": carrier.describe() if carrier else None})
        return rows

    def to_json(self, services: Mapping[str, str] | None = None) -> dict[str, Any]:
        """services: a server end ("tcp 10.244.1.2:8080") -> its Service, from kube-proxy's endpoints."""
        resolved = self.resolved()
        endpoints = {(k.src, k.dst) for k in resolved}
        tunnels_per_pair = Counter((k.src, k.dst) for k in resolved)
        cut_rows = self._cut_rows(resolved)
        tunnels = []
        # A later outer fragment has no UDP header: placed by its first fragment's IP id (in the tunnel already),
        # else by the node pair when only one tunnel joins those nodes; with several, it stays unplaced.
        by_pair = {pair: sum(_most(points) for points in by_flow.values())
                   for pair, by_flow in self.fragments.items() if pair in endpoints}
        unplaced = sum(n for pair, n in by_pair.items() if tunnels_per_pair[pair] > 1)
        for key in sorted(resolved):
            tunnel = resolved[key]
            pair = (key.src, key.dst)
            placed_by_pair = by_pair.get(pair, 0) if tunnels_per_pair[pair] == 1 else 0
            flows = sorted(tunnel.flows.values(), key=lambda f: (-f.packets, -sum(f.drops.values()), f.flow))
            tunnels.append({
                "src": key.src, "dst": key.dst, "vni": key.vni, "port": key.port,
                "packets": _most(tunnel.points),
                "points": dict(sorted(tunnel.points.items())),
                "flows": [f.to_json() for f in flows],
                "drops": sum(sum(f.drops.values()) for f in tunnel.flows.values()),
                "outer_fragments": _most(tunnel.outer_fragments) + _most(tunnel.later_fragments) + placed_by_pair,
                "inner_fragments": sum(_most(p) for p in tunnel.inner_fragments.values()),
                "inner_fragment_flows": {flow: _most(p) for flow, p in sorted(tunnel.inner_fragments.items())},
                "cut_on_underlay": sum(tunnel.cut.values()),
                "cut_before_encapsulation": sum(r["packets"] for r in cut_rows if r["tunnel"] == key.describe()
                                                and r["stage"] == "before encapsulation"),
                "groups": _groups(flows, tunnel.inner_fragments, services or {}),
            })
        outside = []
        for (src, dst), by_flow in sorted(self.fragments.items()):
            if (src, dst) in endpoints:
                continue
            for flow, points in sorted(by_flow.items()):
                outside.append({"flow": flow, "fragments": _most(points), "points": dict(sorted(points.items()))})
        fragment_drops = [
            {"src": s, "dst": d, "reason": r, "where": w, "count": n, "underlay": (s, d) in endpoints}
            for (s, d), drops in sorted(self.fragment_drops.items()) for (r, w), n in sorted(drops.items())
        ]
        return {
            "tunnels": tunnels,
            "outer_fragments": sum(t["outer_fragments"] for t in tunnels) + unplaced,
            "outer_fragments_unplaced": unplaced,
            "inner_fragments_in_tunnels": sum(t["inner_fragments"] for t in tunnels),
            "inner_fragments_outside_tunnels": sum(f["fragments"] for f in outside),
            "fragments_outside_tunnels": outside,
            "fragment_drops": fragment_drops,
            "fragmented_locally": cut_rows,
            "unattributed_drops": self.unattributed_drops,
            "events": self.events,
        }

    def format_text(self, services: Mapping[str, str] | None = None) -> str:
        """A line per tunnel, then one per Service (or server end) it carried: not one per ephemeral-port flow."""
        data = self.to_json(services)
        lines: list[str] = []
        if not data["tunnels"]:
            lines.append("no VXLAN tunnel traffic seen (UDP 8472/4789)")
        for t in data["tunnels"]:
            key = TunnelKey(t["src"], t["dst"], t["vni"], t["port"])
            lines.append(f"tunnel {key.describe()}: {t['packets']} packets, {t['drops']} drops, "
                         f"{t['outer_fragments']} outer fragments, {t['inner_fragments']} inner fragments")
            for g in t["groups"]:
                label = f"{g['service']} ({g['server']})" if g["service"] else g["server"]
                lines.append(f"  {g['packets']:>8} pkts {g['drops']:>5} drops {g['inner_fragments']:>5} frags  "
                             f"{label}, {g['flows']} flow{'s' if g['flows'] != 1 else ''}")
                lines.extend(f"           dropped {d['count']} x {d['reason']} at {d['where'] or '-'}: {g['server']}"
                             for d in g["drop_reasons"])
            grouped = {pair for g in t["groups"] for pair in g["fragment_pairs"]}
            lines.extend(f"  {n:>8} inner fragments  {flow}" for flow, n in t["inner_fragment_flows"].items()
                         if flow not in grouped)
            lines.extend(f"  {r['packets']:>8} cut {r['stage']} at {r['where']} (device MTU {r['device_mtu']})  "
                         f"{r['flow']}"
                         for r in data["fragmented_locally"] if r["tunnel"] == key.describe())
        if data["outer_fragments_unplaced"]:
            lines.append(f"outer fragments between nodes with several tunnels, first fragment not seen: "
                         f"{data['outer_fragments_unplaced']}")
        for f in data["fragments_outside_tunnels"]:
            lines.append(f"fragments outside the tunnel: {f['fragments']} {f['flow']} "
                         f"(at {', '.join(f['points'])})")
        for r in data["fragmented_locally"]:
            if r["tunnel"] is None:
                lines.append(f"fragmented locally: {r['packets']} {r['flow']} at {r['where']} "
                             f"(device MTU {r['device_mtu']})")
        for d in data["fragment_drops"]:
            lines.append(f"fragment dropped {d['count']} x {d['reason']} at {d['where'] or '-'}: "
                         f"{d['src']} > {d['dst']}")
        return "\n".join(lines) + "\n"


def mtu_notes(findings_by_node: Mapping[str, Iterable[Any]]) -> list[str]:
    """Lines for nodes whose pods' MTU is over what the overlay carries (tracer.check's `mtu` findings): such
    packets die before encapsulation, where no tunnel shows them. From the link MTUs, not from traced packets."""
    lines = []
    for node, findings in findings_by_node.items():
        for f in findings:
            if f.area == "mtu" and f.severity == "fail":
                lines.append(f"{node}: {f.check} MTU {f.value} (read from the links, not traced): packets over "
                             "the overlay MTU are dropped or fragmented before encapsulation, where no tunnel sees "
                             "them; `podtrace mtu --from POD --to IP` probes the path")
    return lines
