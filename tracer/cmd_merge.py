"""`podtrace merge A B`: the journeys of packets seen by two nodes' recordings (matched packet by packet, clocks
aligned from the matches); recordings that share no packet are refused, never stitched into a made-up journey."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tracer.errors import PodtraceError
from tracer.events import EVENT_SIZE, EVENT_SIZES, decode
from tracer.journey import ClockAlignment, NodeRecording, align, identifiable, journeys, match

EPILOG = """\
Each recording is one node's (`podtrace record --netns NODE` on each node, at the same time). A packet is matched
across them by its pod-level IPv4 header (the inner packet of VXLAN): addresses, ports, IP id, TCP sequence.
Writing the merged recording (-o) is not done yet: merge prints the journeys.

exit codes: 0 ok, 1 error (also: the recordings share no packet), 2 usage

examples:
  podtrace merge node1.ptrec.gz node2.ptrec.gz
  podtrace merge --json node1.ptrec.gz node2.ptrec.gz | jq 'select(.died)'
"""

PACKET_KINDS = frozenset(kind for kind, size in EVENT_SIZES.items() if size == EVENT_SIZE)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge", help="journeys across nodes: two nodes' recordings matched packet by packet",
        description="Match the packets two nodes' recordings both saw and print each flow's journey across them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recordings", nargs=2, metavar="RECORDING")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=run)


def load(path: str) -> NodeRecording:
    from tracer.api import open_recording  # noqa: PLC0415

    recording = open_recording(path)
    events = [decode(raw) for raw in recording.raw_events() if raw[0] in PACKET_KINDS]
    header = recording.header
    node = (header.get("filter") or {}).get("netns") or "host"
    names = recording.names
    clock = header.get("clock") or {}
    run = (header.get("part") or {}).get("run_id") or f"{header.get('hostname')}@{clock.get('monotonic_ns')}"
    return NodeRecording(f"{header.get('hostname', '?')}/{node}", names.wall_offset_ns, frozenset(names.pods),
                         dict(names.netns), events, dict(names.reasons), str(run))


def _line(journey: dict[str, Any]) -> str:
    path = " -> ".join(f"{hop['node']} {hop['at']} (+{hop['t_us']} us)" for hop in journey["path"])
    text = f"{journey['flow']}: {journey['packets']} packets matched; {path}"
    if journey["one_way_us"] is not None:
        text += f"; one way {journey['one_way_us']} us ({journey['one_way']})"
    if journey["died"]:
        died = journey["died"]
        text += f"; died: {died['packets']} x {died['reason']} in {died['node']} {died['netns']}"
    return text


def run(args: argparse.Namespace) -> int:
    nodes = [load(path) for path in args.recordings]  # RecordingError: one line, exit 1 (tracer.cli)
    if nodes[0].run_id and nodes[0].run_id == nodes[1].run_id:
        raise PodtraceError(f"{args.recordings[0]} and {args.recordings[1]} are the same recording (run "
                            f"{nodes[0].run_id}): one node's view, not a journey across two",
                            "give one recording of each node")
    matched = match(nodes)
    if not matched:
        counts = " and ".join(str(identifiable(node.events)) for node in nodes)
        raise PodtraceError(f"{args.recordings[0]} and {args.recordings[1]} share no packet ({counts} identifiable "
                            "packets): recordings of unrelated runs, or no traffic between these nodes",
                            "record both nodes at the same time, with filters that keep the same flows")
    clock = align(nodes, matched)
    how = clock.describe() if clock else \
        "clocks as recorded (no matched packet's sender is a pod that either recording names)"
    clock = clock or ClockAlignment(0, 0, False)
    found = journeys(nodes, matched, clock)
    if args.json:
        for journey in found:
            sys.stdout.write(json.dumps(journey) + "\n")
        sys.stdout.write(json.dumps({"summary": True, "matched_packets": len(matched), "flows": len(found),
                                     "clock": how, "offset_ns": clock.offset_ns,
                                     "nodes": [node.name for node in nodes]}) + "\n")
    else:
        for journey in found:
            sys.stdout.write(_line(journey) + "\n")
        sys.stdout.write(f"{len(matched)} packets matched in {len(found)} flows; {how}\n")
    return 0
