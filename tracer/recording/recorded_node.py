"""The traced nodes' link MTUs and conntrack tables as a recording carries them, and the report's MTU and conntrack
sections built from them and from the recorded events (docs/recording-format.md: header `links` and `conntrack`,
trailer `conntrack`).

At record time `collect_links()` reads every link of each node namespace with netlink (pyroute2), the pod end of
each veth and flannel's subnet.env, and `collect_conntrack()` each node's conntrack health (count vs
nf_conntrack_max, the per-CPU counters). Everything else here is pure, for a laptop without root: each pod's path
is judged with tracer.analysis.mtu.verdict (what `podtrace mtu` prints), fed with the ICMP frag-needed, fragment and
too-big counts of the recorded events, and the conntrack readings become the `podtrace flows` table states.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from tracer.analysis.flows import NodeConntrack
from tracer.analysis.mtu import OVERLAY_KINDS, LinkInfo, LiveCounts, MtuVerdict, PathLinks, verdict
from tracer.analysis.mtu_events import MTU_DROP_REASONS, MtuEventCounter
from tracer.events.decode import EVENT_DROP, EVENT_ICMP, EVENT_PATH, POINT_FRAGMENT, PacketEvent, packet_view
from tracer.node.conntrack import CpuStats, Health
from tracer.node.flannel import SUBNET_ENV, parse_subnet_env
from tracer.output.errors import PodtraceError

NETNS_DIR = "/run/netns"
MAX_POD_NAMES = 4  # pods named on a verdict line before "and N more"

# --- collection at record time (netlink, sysctl) -------------------------------------------------------------


def _open(netns: str | None) -> Any:
    from pyroute2 import IPRoute, NetNS  # netlink only where a recording is made

    return IPRoute() if netns in (None, "", "host") else NetNS(netns, flags=0)  # flags=0: never create it


def _inode(netns: str | None) -> int:
    return os.stat(f"{NETNS_DIR}/{netns}" if netns not in (None, "", "host") else "/proc/self/ns/net").st_ino


def _kind_and_data(msg: Any) -> tuple[str, Any]:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None:
        return "", None
    return info.get_attr("IFLA_INFO_KIND") or "", info.get_attr("IFLA_INFO_DATA")


def _nsids(ipr: Any, node: str | None) -> dict[int, str]:
    """nsid (as the node numbers the namespaces its veths lead to) -> `ip netns` name ("host" for podtrace's own)."""
    candidates = [] if node in (None, "", "host") else [("host", "/proc/self/ns/net")]
    with contextlib.suppress(OSError):  # no /run/netns: no named namespaces
        candidates += [(name, f"{NETNS_DIR}/{name}") for name in sorted(os.listdir(NETNS_DIR)) if name != node]
    found: dict[int, str] = {}
    for name, path in candidates:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # removed meanwhile
        try:
            nsid = ipr.get_netnsid(fd=fd).get("nsid")
        except Exception:  # pyroute2 raises NetlinkError for namespaces it cannot resolve
            continue
        finally:
            os.close(fd)
        if isinstance(nsid, int) and nsid >= 0:
            found[nsid] = name
    return found


def _peer(nsid_names: dict[int, str], nsid: int, index: int, our_index: int) -> dict[str, Any] | None:
    """The pod end of a veth: the link `index` in the namespace the node calls `nsid`."""
    name = nsid_names.get(nsid)
    if name is None:
        return None
    ipr = _open(name)
    try:
        msgs = ipr.get_links(index)
        addresses = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index)]
    except Exception:  # the pod went away meanwhile
        return None
    finally:
        ipr.close()
    for msg in msgs:
        if msg.get_attr("IFLA_LINK") == our_index:
            return {"netns": name, "inode": _inode(name), "name": msg.get_attr("IFLA_IFNAME"), "ifindex": index,
                    "mtu": int(msg.get_attr("IFLA_MTU")),
                    "addresses": sorted(filter(None, addresses), key=lambda a: (":" in a, a))}  # IPv4 first
    return None


def _node_links(node: str | None) -> dict[str, Any]:
    ipr = _open(node)
    try:
        msgs = list(ipr.get_links())
        # A dump of the default routes, not `route get`: the kernel builds (and frees) a packet for that, which
        # the drop probe would record.
        defaults = [r.get_attr("RTA_OIF") for r in ipr.get_default_routes(family=socket.AF_INET)]
        default_index = next((int(index) for index in defaults if index), 0)
        nsid_names = _nsids(ipr, node) if any(m.get_attr("IFLA_LINK_NETNSID") is not None for m in msgs) else {}
    finally:
        ipr.close()
    names = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in msgs}
    links = []
    for msg in msgs:
        kind, data = _kind_and_data(msg)
        link: dict[str, Any] = {"name": msg.get_attr("IFLA_IFNAME"), "ifindex": msg["index"],
                                "mtu": int(msg.get_attr("IFLA_MTU")), "kind": kind,
                                "master": names.get(msg.get_attr("IFLA_MASTER"), "")}
        if kind in OVERLAY_KINDS:
            lower = (data.get_attr("IFLA_VXLAN_LINK") if data is not None and kind == "vxlan" else None) or \
                msg.get_attr("IFLA_LINK")
            link["lower"] = names.get(lower, "") if lower != msg["index"] else ""
            six = data is not None and kind == "vxlan" and (data.get_attr("IFLA_VXLAN_LOCAL6")
                                                            or data.get_attr("IFLA_VXLAN_GROUP6"))
            link["family"] = 6 if six else 4
        nsid = msg.get_attr("IFLA_LINK_NETNSID")
        if kind == "veth" and nsid is not None and msg.get_attr("IFLA_LINK"):
            link["peer"] = _peer(nsid_names, nsid, msg.get_attr("IFLA_LINK"), msg["index"])
        links.append(link)
    return {"netns": node or "host", "inode": _inode(node), "default_dev": names.get(default_index, ""),
            "links": links, "error": ""}


def collect_links(nodes: Iterable[str | None], subnet_env: str = SUBNET_ENV) -> dict[str, Any]:
    """Every link of each node namespace (None: podtrace's own) as netlink shows it now, and flannel's subnet.env."""
    result = []
    for node in nodes:
        try:
            result.append(_node_links(node))
        except Exception as err:  # a recording is still worth making without the links
            result.append({"netns": node or "host", "links": [], "error": str(err) or type(err).__name__})
    try:
        with open(subnet_env, encoding="utf-8") as handle:
            env: str | None = handle.read()
    except OSError:
        env = None
    return {"nodes": result, "flannel_env": env}


def health_to_json(health: Health) -> dict[str, Any]:
    return {"count": health.count, "max": health.max, "cpus": [asdict(cpu) for cpu in health.cpus]}


def health_from_json(data: Mapping[str, Any]) -> Health:
    known = {f.name for f in fields(CpuStats)}
    # a CPU entry without its number (a damaged file; the schema allows it) is numbered by its place
    cpus = tuple(CpuStats(**{"cpu": index, **{k: int(v) for k, v in cpu.items() if k in known}})
                 for index, cpu in enumerate(data.get("cpus", [])))
    return Health(int(data["count"]), int(data["max"]), cpus)


def collect_conntrack(nodes: Iterable[str | None]) -> dict[str, Any]:
    """Each node's conntrack health now: {"nodes": [{"netns", "health" or None, "error"}]}."""
    from tracer.node import conntrack  # ctnetlink only where a recording is made

    result: list[dict[str, Any]] = []
    for node in nodes:
        try:
            result.append({"netns": node or "host", "health": health_to_json(conntrack.health(node)), "error": ""})
        except PodtraceError as err:
            result.append({"netns": node or "host", "health": None, "error": err.one_line()})
    return {"nodes": result}


# --- conntrack in the report (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedConntrack:
    """One node's conntrack table at the start and at the end of a recording (None: not read or not recorded)."""

    node: str
    start: Health | None
    end: Health | None
    error: str = ""

    def state(self) -> NodeConntrack | None:
        """The table as `podtrace flows` judges it: the last reading, and the drop counter's growth in between."""
        last = self.end or self.start
        if last is None:
            return None
        during = self.end.drop - self.start.drop if self.end is not None and self.start is not None else None
        return NodeConntrack(self.node, last, during)

    def to_json(self) -> dict[str, Any]:
        state = self.state()
        data: dict[str, Any] = state.to_json() if state else {"conntrack": True, "node": self.node}
        data["start"] = self.start.to_dict() if self.start else None
        data["at"] = "end" if self.end is not None else "start" if self.start is not None else None
        if self.error:
            data["error"] = self.error
        return data

    def text(self) -> str:
        state = self.state()
        if state is None:
            return f"conntrack {self.node}: not read ({self.error or 'unknown error'})"
        line = state.text()
        if self.end is None:
            return line + " - at the start (no reading at the end: the recording was cut short)"
        if self.start is not None:
            line += f"; at the start {self.start.count}/{self.start.max}"
        return line


def recorded_conntrack(header: Mapping[str, Any], trailer: Mapping[str, Any] | None) -> list[RecordedConntrack]:
    """The conntrack readings of a recording, per node (empty for recordings made before they were recorded)."""

    def by_node(data: Any) -> dict[str, dict[str, Any]]:
        return {item["netns"]: item for item in (data or {}).get("nodes", []) if isinstance(item, dict)}

    starts, ends = by_node(header.get("conntrack")), by_node((trailer or {}).get("conntrack"))
    out = []
    for node in [*starts, *(n for n in ends if n not in starts)]:
        start, end = starts.get(node, {}), ends.get(node, {})
        out.append(RecordedConntrack(
            node, health_from_json(start["health"]) if start.get("health") else None,
            health_from_json(end["health"]) if end.get("health") else None,
            end.get("error") or start.get("error") or ""))
    return out


# --- MTU in the report (pure) ------------------------------------------------------------------------------------


def _info(link: Mapping[str, Any], netns: str) -> LinkInfo:
    return LinkInfo(str(link["name"]), int(link["mtu"]), str(link.get("kind", "")), netns, int(link.get("ifindex", 0)))


@dataclass
class PodPath:
    """A pod's way out of its node: pod end -> node veth -> bridge -> overlay -> underlay, as recorded."""

    pod: str  # "netns:ifname" of the pod end, or the node veth's name when its peer was not found
    addresses: list[str]
    path: PathLinks


def node_paths(node: Mapping[str, Any], flannel_mtu: int | None, nodes: Iterable[str] = ()) -> list[PodPath]:
    """One PathLinks per pod veth of a recorded node (or one for the node itself when it has no pods). A veth to
    one of the other recorded `nodes`, or the tunnel's own underlay, is not a pod."""
    netns = str(node.get("netns", ""))
    links = {str(link["name"]): link for link in node.get("links", [])}
    overlays = sorted((link for link in links.values() if link.get("kind") in OVERLAY_KINDS),
                      key=lambda link: str(link["name"]))
    overlay = overlays[0] if overlays else None
    under_name = (overlay.get("lower") if overlay else "") or node.get("default_dev", "")
    underlay = _info(links[under_name], netns) if under_name in links and under_name != (overlay or {}).get("name") \
        else None
    family = int(overlay.get("family", 4)) if overlay else 4
    target = "pods on other nodes" if overlay else "other nodes"
    node_only = PathLinks(target, overlay=_info(overlay, netns) if overlay else None, underlay=underlay,
                          underlay_family=family, flannel_mtu=flannel_mtu)
    paths = []
    for link in links.values():
        peer = link.get("peer")
        if link.get("kind") != "veth" or "peer" not in link or link["name"] == under_name or (
                peer and peer.get("netns") in nodes):
            continue
        bridge = links.get(str(link.get("master", "")))
        pod = LinkInfo(peer["name"], int(peer["mtu"]), "veth", peer["netns"], int(peer.get("ifindex", 0))) \
            if peer else None
        label = f"{peer['netns']}:{peer['name']}" if peer else f"{netns}:{link['name']} (pod end not found)"
        addresses = list(peer.get("addresses", [])) if peer else []
        paths.append(PodPath(label, addresses, replace(
            node_only, src_ip=addresses[0] if addresses else "", pod=pod, host_veth=_info(link, netns),
            bridge=_info(bridge, netns) if bridge else None)))
    if not paths:
        paths.append(PodPath("", [], node_only))
    return paths


@dataclass
class NodeMtu:
    """The MTU section of one node: its links, what the events showed, and a verdict per group of pod paths."""

    node: str
    links: list[dict[str, Any]]
    flannel_mtu: int | None
    counts: LiveCounts
    verdicts: list[tuple[list[str], PathLinks, MtuVerdict]] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return all(judged.ok for _pods, _path, judged in self.verdicts)

    def to_json(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "mtu": True, "node": self.node, "ok": self.ok, "error": self.error, "flannel_mtu": self.flannel_mtu,
            "links": [{k: v for k, v in link.items() if k in ("name", "mtu", "kind", "master", "lower")}
                      for link in self.links if link.get("name") != "lo"],
            "frag_needed": dict(sorted(counts.frag_needed.items())),
            "frag_needed_mtu": {str(k): v for k, v in sorted(counts.frag_needed_mtu.items())},
            "frag_needed_seen_by": counts.frag_needed_seen_by,
            "ptb_sent": dict(sorted(counts.ptb_sent.items())),  # ICMPv6 packet-too-big, by destination
            "ptb_mtu": {str(k): v for k, v in sorted(counts.ptb_mtu.items())},
            "fragments": counts.fragments, "fragmented_locally": counts.fragmented_locally,
            "too_big_drops": counts.too_big_drops, "reasm_drops": counts.reasm_drops,
            "seconds": round(counts.seconds, 3),
            "paths": [{"pods": pods, "links": path.to_json(), "verdict": judged.to_json()}
                      for pods, path, judged in self.verdicts],
        }

    def text(self) -> str:
        if self.error:
            return f"MTU {self.node}: links not read ({self.error})\n"
        if not self.links:
            head = f"MTU {self.node} (no links recorded)"
        roles = []
        for link in self.links:
            kind = link.get("kind", "")
            if kind in OVERLAY_KINDS:
                roles.append(f"{link['name']} {link['mtu']} ({kind} over {link.get('lower') or '?'})")
            elif kind == "bridge":
                roles.append(f"{link['name']} {link['mtu']} (bridge)")
        paths = {id(path.underlay): path.underlay for _pods, path, _judged in self.verdicts if path.underlay}
        roles += [f"{u.name} {u.mtu} (underlay)" for u in paths.values()]
        flannel = f", FLANNEL_MTU {self.flannel_mtu}" if self.flannel_mtu is not None else ""
        if self.links:
            head = f"MTU {self.node}: {', '.join(roles) or 'no overlay, bridge or underlay found'}{flannel}"
        lines = [head]
        c = self.counts
        quoted = ", ".join(f"{mtu} x{n}" for mtu, n in sorted(c.frag_needed_mtu.items()))
        to = ", ".join(f"{dst} x{n}" for dst, n in sorted(c.frag_needed.items()))
        quoted6 = ", ".join(f"{mtu} x{n}" for mtu, n in sorted(c.ptb_mtu.items()))
        to6 = ", ".join(f"{dst} x{n}" for dst, n in sorted(c.ptb_sent.items()))
        lines.append(f"  events over {c.seconds:.1f} s: {sum(c.frag_needed.values())} ICMP frag-needed sent"
                     + (f" (next-hop MTU {quoted}; to {to})" if to else "")
                     + (f", {sum(c.ptb_sent.values())} packet-too-big sent (ICMPv6) (MTU {quoted6}; to {to6})"
                        if to6 else "")
                     + f", {c.fragments} fragments"
                     + (f", {c.fragmented_locally} packets fragmented locally (ip_do_fragment)"
                        if c.fragmented_locally else "")
                     + f", {c.too_big_drops} dropped as too big"
                     + (f", {c.reasm_drops} reassembly timeouts" if c.reasm_drops else ""))
        for pods, path, judged in self.verdicts:
            hops = [link for link in (path.pod, path.host_veth, path.bridge, path.overlay, path.underlay) if link]
            shown = ", ".join(pods[:MAX_POD_NAMES]) + (f" and {len(pods) - MAX_POD_NAMES} more"
                                                       if len(pods) > MAX_POD_NAMES else "")
            who = f"{len(pods)} pod{'s' if len(pods) != 1 else ''} ({shown})" if pods else "node"
            lines.append(f"  {who}: " + " -> ".join(f"{h.name} {h.mtu}" for h in hops))
            lines.append(f"    {'ok' if judged.ok else 'MISMATCH'}: {judged.text}")
        return "\n".join(lines) + "\n"


# The few fields relevant() reads, each at its declared offset (tracer/events/decode.py)
_TYPE, _TYPE_AT = packet_view("type")
_REASON, _REASON_AT = packet_view("reason")
_PROTO, _PROTO_AT = packet_view("outer.proto")
_DPORT, _DPORT_AT = packet_view("outer.dport")
_FRAG, _FRAG_AT = packet_view("outer.frag")
_VXLAN_PORTS = frozenset({8472, 4789})


def relevant(raw: bytes, too_big: frozenset[int]) -> bool:
    """Whether a raw packet event can count for the MTU or overlay sections (decoding costs 10x a drop-table add,
    so the report decodes only these): ICMP errors the node sent, too-big and reassembly-timeout drops, ICMP and
    ICMPv6, fragments, packets ip_do_fragment cut, VXLAN."""
    kind, = _TYPE.unpack_from(raw, _TYPE_AT)
    if kind == EVENT_ICMP:  # bpf/icmp.c emits only frag-needed and reassembly time-exceeded
        return True
    if kind == EVENT_DROP and _REASON.unpack_from(raw, _REASON_AT)[0] in too_big:
        return True
    if kind not in (EVENT_DROP, EVENT_PATH):
        return False
    if kind == EVENT_PATH and _REASON.unpack_from(raw, _REASON_AT)[0] == POINT_FRAGMENT:  # ip_do_fragment (kprobe)
        return True
    proto, = _PROTO.unpack_from(raw, _PROTO_AT)
    return proto in (1, 58) or bool(_FRAG.unpack_from(raw, _FRAG_AT)[0] & 0x3FFF) or (
        proto == 17 and _DPORT.unpack_from(raw, _DPORT_AT)[0] in _VXLAN_PORTS)


class MtuSummary:
    """Feed it a recording's decoded events; `nodes()` gives each recorded node's MTU section.

    An event counts for a node when it happened in the node's namespace or one of its pods'; events of other
    namespaces go to an "other namespaces" section (and recordings without links get only that one).
    """

    def __init__(self, links: Mapping[str, Any] | None, reasons: Mapping[int, str], icmp_tracepoint: bool = False
                 ) -> None:
        """icmp_tracepoint: the recording has bpf/icmp.c's events (each ICMP error sent) to count frag-needed by."""
        self.links = dict(links or {})
        self.reasons = reasons
        self.icmp_tracepoint = icmp_tracepoint
        self._nodes: list[dict[str, Any]] = [n for n in self.links.get("nodes", []) if isinstance(n, dict)]
        self._counters: dict[str, MtuEventCounter] = {}
        self._owner: dict[int, str] = {}
        for node in self._nodes:
            name = str(node.get("netns", ""))
            self._counters[name] = MtuEventCounter(reasons, icmp_tracepoint=icmp_tracepoint)
            if node.get("inode"):
                self._owner[int(node["inode"])] = name
            for link in node.get("links", []):
                peer = link.get("peer")
                if peer and peer.get("inode"):
                    self._owner.setdefault(int(peer["inode"]), name)
        self._other = MtuEventCounter(reasons, icmp_tracepoint=icmp_tracepoint)
        self.too_big = frozenset(value for value, name in reasons.items() if name in MTU_DROP_REASONS)
        env = self.links.get("flannel_env")
        value = parse_subnet_env(env).get("FLANNEL_MTU", "") if env else ""
        self.flannel_mtu = int(value) if value.isdigit() else None

    def add(self, event: PacketEvent) -> None:
        owner = self._owner.get(event.netns)
        (self._counters[owner] if owner is not None else self._other).add(event)

    def event_span(self) -> float:
        """Seconds between the first and the last event counted (for recordings cut before their trailer)."""
        counters = [*self._counters.values(), self._other]
        first = min((c.first_ns for c in counters if c.first_ns), default=0)
        return max(0.0, (max(c.last_ns for c in counters) - first) / 1e9) if first else 0.0

    def nodes(self, seconds: float) -> list[NodeMtu]:
        out = []
        for node in self._nodes:
            name = str(node.get("netns", ""))
            counts = self._counters[name].result(seconds)
            section = NodeMtu(name, list(node.get("links", [])), self.flannel_mtu, counts,
                              error=str(node.get("error", "")))
            if not section.error:
                groups: dict[tuple[Any, ...], tuple[list[str], PathLinks, MtuVerdict]] = {}
                others = [str(n.get("netns", "")) for n in self._nodes]
                for pod in node_paths(node, self.flannel_mtu, others):
                    # Judged without the pod's own address, so pods alike share a line: the frag-needed counts name
                    # every pod that got them.
                    judged = verdict(replace(pod.path, src_ip=""), counts)
                    hops = tuple((h.name, h.mtu) if h else None for h in (pod.path.host_veth, pod.path.bridge))
                    key = (judged.text, pod.path.pod.mtu if pod.path.pod else None, hops[1],
                           hops[0][1] if hops[0] else None)
                    if key in groups:
                        groups[key][0].append(pod.pod)
                    else:
                        groups[key] = ([pod.pod] if pod.pod else [], pod.path, judged)
                section.verdicts = list(groups.values())
            out.append(section)
        other = self._other.result(seconds)
        if (other.frag_needed or other.ptb_sent or other.fragments or other.fragmented_locally or other.too_big_drops
                or other.reasm_drops):  # older recordings: only this, if anything
            out.append(NodeMtu("other namespaces" if self._nodes else "all namespaces", [], self.flannel_mtu, other))
        return out
