"""The cross-node section of `podtrace report` on a merged recording (header `merged`,
tracer/recording/merged_recording.py): each flow's journey from the client's node to where it died, with the clock
alignment it rests on. Pure code."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ESTIMATE = "no clock is assumed synchronised, so this is an estimate"


def clock_line(merged: Mapping[str, Any]) -> str:
    clock = merged.get("clock", {})
    if clock.get("same_clock"):
        return str(clock.get("text"))
    return f"{clock.get('text', 'clocks as recorded')}; {ESTIMATE}"


def _client(journey: Mapping[str, Any], pod_of: Callable[[str], str | None]) -> str:
    src = str(journey.get("src") or "?")
    pod = pod_of(src)
    return f"client {pod} ({src})" if pod else f"client {src}"


def latency_text(one_way_us: float | None, how: str | None) -> str:
    if one_way_us is None:
        return "one way unknown"
    said = {"same clock": "same machine clock", "relative": "relative to the fastest packet", "estimated": "estimated",
            "unaligned": "clocks not aligned: as recorded"}.get(str(how), str(how))
    return f"one way {one_way_us} us ({said})"


@dataclass(frozen=True)
class Hop:
    t_us: float  # from the flow's first sighting, on the first node's clock
    node: str
    at: str  # "xmit host/eth0", "dropped in pt-node2/cni0"


@dataclass(frozen=True)
class Segment:
    source: str
    target: str
    packets: int
    latency: str  # "one way 20.0 us (estimated)"


@dataclass(frozen=True)
class JourneyView:
    """A flow's journey as people read it (the report's lines, the TUI's rows): one builder for both."""

    flow: str
    packets: int
    client: str  # "client default/frontend-7 (10.244.0.2)"
    first_node: str
    hops: tuple[Hop, ...]
    segments: tuple[Segment, ...]
    latency: str  # over the whole way
    one_way_us: float | None
    one_way: str  # "estimated", "relative" (to the fastest packet), "unaligned"
    died: str | None  # "died at node-b/host (host): 3 x NETFILTER_DROP"
    died_node: str | None
    died_what: str | None  # "3 x NETFILTER_DROP"
    nodes: tuple[str, ...]  # the nodes it crossed, in order
    dnat: str | None = None  # "dialled 10.96.0.10:80, DNAT to 10.244.1.2:8080 on node-a (observed: conntrack entry)"
    unjoined: str | None = None  # why a flow that may be one connection with another stayed apart

    @property
    def outcome(self) -> str:
        return f"{self.died}; {self.latency}" if self.died else f"not seen dropped; {self.latency}"


def journey_view(journey: Mapping[str, Any], pod_of: Callable[[str], str | None]) -> JourneyView:
    path = journey.get("path") or []
    died = journey.get("died")
    segments = tuple(Segment(str(seg["from"]), str(seg["to"]), int(seg.get("packets") or 0),
                             latency_text(seg.get("one_way_us"), seg.get("one_way")))
                     for seg in journey.get("segments") or [])
    return JourneyView(
        flow=str(journey.get("flow")), packets=int(journey.get("packets") or 0), client=_client(journey, pod_of),
        first_node=str(path[0]["node"]) if path else "?",
        hops=tuple(Hop(float(hop["t_us"]), str(hop["node"]), str(hop["at"])) for hop in path),
        segments=segments, latency=latency_text(journey.get("one_way_us"), journey.get("one_way")),
        one_way_us=journey.get("one_way_us"), one_way=str(journey.get("one_way") or ""),
        died=f"died at {died['node']} ({died['netns']}): {died['packets']} x {died['reason']}" if died else None,
        died_node=str(died["node"]) if died else None,
        died_what=f"{died['packets']} x {died['reason']}" if died else None,
        nodes=tuple(dict.fromkeys(str(hop["node"]) for hop in path)),
        dnat=str((journey.get("dnat") or {}).get("text") or "") or None, unjoined=journey.get("unjoined"))


def journey_views(merged: Mapping[str, Any], pod_of: Callable[[str], str | None]) -> list[JourneyView]:
    """Every journey of a merged recording, those that died first."""
    journeys = sorted(merged.get("journeys", []), key=lambda j: not j.get("died"))
    return [journey_view(journey, pod_of) for journey in journeys]


def nodes_text(merged: Mapping[str, Any]) -> str:
    names = [f"{node['name']} ({node.get('file', '?')})" for node in merged.get("nodes", [])]
    return " and ".join(names) if len(names) <= 2 else ", ".join(names)


def journey_text(view: JourneyView) -> str:
    """A flow's journey, one hop a line (under 100 columns for the usual names); with more than one segment between
    nodes, each segment's one-way latency too."""
    lines = [f"  {view.flow}: {view.packets} matched, {view.client} on {view.first_node}"]
    lines += [f"    {text}" for text in (view.dnat, view.unjoined) if text]
    lines += [f"    {'+' + str(hop.t_us) + ' us':>12}  {hop.node}  {hop.at}" for hop in view.hops]
    if len(view.segments) > 1:
        lines += [f"    {seg.source} -> {seg.target}: {seg.latency}" for seg in view.segments]
    lines.append(f"    {view.outcome}")
    return "\n".join(lines)


def section_text(merged: Mapping[str, Any], pod_of: Callable[[str], str | None]) -> str:
    journeys = merged.get("journeys", [])
    died = sum(1 for journey in journeys if journey.get("died"))
    lines = [f"cross-node journeys: merged recording of {nodes_text(merged)}",
             *textwrap.wrap(clock_line(merged), 98, initial_indent="  ", subsequent_indent="    "),
             f"  {merged.get('matched_packets', 0)} packets matched in {len(journeys)} flows, {died} of them dropped"]
    lines += [journey_text(view) for view in journey_views(merged, pod_of)]
    return "\n".join(lines) + "\n"


def section_json(merged: Mapping[str, Any], pod_of: Callable[[str], str | None]) -> list[dict[str, Any]]:
    """One object per journey (as `podtrace merge --json` prints them, plus the client's pod) and the merge's."""
    out = []
    for journey in merged.get("journeys", []):
        out.append({**journey, "client_pod": pod_of(str(journey.get("src") or ""))})
    out.append({"merged": True, "nodes": [{k: v for k, v in node.items() if k != "renamed"}
                                          for node in merged.get("nodes", [])],
                "clock": {**merged.get("clock", {}), "estimate": not merged.get("clock", {}).get("same_clock")},
                "matched_packets": merged.get("matched_packets", 0)})
    return out


def add_nodes(rows: list[dict[str, Any]], merged: Mapping[str, Any]) -> None:
    """Each drop row's node (`node`), by its netns inode in `merged.nodes[].netns` (the first node that lists it:
    on one machine a namespace both recorded is listed by both)."""
    owner: dict[int, str] = {}
    for node in merged.get("nodes", []):
        for inode in node.get("netns", []):
            owner.setdefault(int(inode), str(node.get("name")))
    for row in rows:
        row["node"] = owner.get(int(row.get("netns_inode") or 0))


def by_node(rows: list[dict[str, Any]], merged: Mapping[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The drop rows per node, in the merged nodes' order (rows add_nodes found no node for last)."""
    names = [str(node.get("name")) for node in merged.get("nodes", [])]
    groups = [(name, [row for row in rows if row.get("node") == name]) for name in names]
    rest = [row for row in rows if row.get("node") not in names]
    return groups + ([("no node", rest)] if rest else [])
