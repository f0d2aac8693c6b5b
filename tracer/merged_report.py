"""The cross-node section of `podtrace report` on a merged recording (header `merged`, tracer/merged_recording.py):
each flow's journey from the client's node to where it died, with the clock alignment it rests on. Pure code."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from typing import Any

ESTIMATE = "no clock is assumed synchronised, so this is an estimate"


def clock_line(merged: Mapping[str, Any]) -> str:
    clock = merged.get("clock", {})
    return f"{clock.get('text', 'clocks as recorded')}; {ESTIMATE}"


def _client(journey: Mapping[str, Any], pod_of: Callable[[str], str | None]) -> str:
    src = str(journey.get("src") or "?")
    pod = pod_of(src)
    return f"client {pod} ({src})" if pod else f"client {src}"


def journey_text(journey: Mapping[str, Any], pod_of: Callable[[str], str | None]) -> str:
    """A flow's journey, one hop a line (under 100 columns for the usual names)."""
    path = journey["path"]
    first = path[0]["node"] if path else "?"
    lines = [f"  {journey['flow']}: {journey['packets']} matched, {_client(journey, pod_of)} on {first}"]
    lines += [f"    {'+' + str(hop['t_us']) + ' us':>12}  {hop['node']}  {hop['at']}" for hop in path]
    one_way = journey.get("one_way_us")
    latency = "one way unknown" if one_way is None else f"one way {one_way} us" + (
        " (relative to the fastest packet)" if journey.get("one_way") == "relative" else " (estimated)")
    died = journey.get("died")
    if died:
        lines.append(f"    died at {died['node']} ({died['netns']}): {died['packets']} x {died['reason']}; {latency}")
    else:
        lines.append(f"    not seen dropped; {latency}")
    return "\n".join(lines)


def section_text(merged: Mapping[str, Any], pod_of: Callable[[str], str | None]) -> str:
    nodes = merged.get("nodes", [])
    names = " and ".join(f"{node['name']} ({node.get('file', '?')})" for node in nodes)
    journeys = merged.get("journeys", [])
    died = sum(1 for journey in journeys if journey.get("died"))
    lines = [f"cross-node journeys: merged recording of {names}",
             *textwrap.wrap(clock_line(merged), 98, initial_indent="  ", subsequent_indent="    "),
             f"  {merged.get('matched_packets', 0)} packets matched in {len(journeys)} flows, {died} of them dropped"]
    lines += [journey_text(journey, pod_of) for journey in sorted(journeys, key=lambda j: not j.get("died"))]
    return "\n".join(lines) + "\n"


def section_json(merged: Mapping[str, Any], pod_of: Callable[[str], str | None]) -> list[dict[str, Any]]:
    """One object per journey (as `podtrace merge --json` prints them, plus the client's pod) and the merge's."""
    out = []
    for journey in merged.get("journeys", []):
        out.append({**journey, "client_pod": pod_of(str(journey.get("src") or ""))})
    out.append({"merged": True, "nodes": [{k: v for k, v in node.items() if k != "renamed"}
                                          for node in merged.get("nodes", [])],
                "clock": {**merged.get("clock", {}), "estimate": True},
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
