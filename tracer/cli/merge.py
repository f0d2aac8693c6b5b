"""`podtrace merge A B [C ...] [-o ALL]`: the journeys of packets seen by several nodes' recordings (matched packet
by packet, clocks aligned pair by pair from the matches onto the first one's), and with -o one merged recording of
them all (tracer/recording/merged_recording.py); a recording that shares no packet with the others is refused, never
stitched into a made-up journey."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tracer.analysis.journey import (
    ClockAlignment,
    NodeRecording,
    align,
    dnat_joins,
    identifiable,
    journeys,
    match,
    unmatched,
)
from tracer.cli.record import check_output
from tracer.events.decode import EVENT_CT, EVENT_SIZE, EVENT_SIZES, CtEvent, decode, decode_ct
from tracer.output.errors import PodtraceError, UsageError
from tracer.recording.merged_recording import NodeFile, read_node, write_merged
from tracer.recording.records_json import nat_from_json
from tracer.recording.schema import MERGED_MAX_NODES
from tracer.sources.replay import ReplaySource

EPILOG = """\
Each recording is one node's (`podtrace record --netns NODE` on each node, at the same time); two or more. A
packet is matched across them by its pod-level IPv4 header (the inner packet of VXLAN): addresses, ports, IP id,
TCP sequence. No clock is assumed synchronised: each recording's clock is put on the first one's by offsets
estimated pair by pair from the packets two nodes both saw (both ways: NTP's estimate; one way only: the fastest
packet is taken as instant, so one-way latencies are relative to it), chained from the first recording. Merge says
which. A recording that shares no packet with the others (none that joins it to the first's) is refused by name.

With -o FILE it also writes one merged recording: every node's events on the first one's clock, each attributable
to its node (a namespace name two nodes use, such as each host's own, is qualified by the node), the journeys and
the clock alignment. `podtrace report`, `export --pcapng`, `tui --replay` (its Journeys view, key 7) and the Python
API read it. FILE is written whole or not at all, and never over an existing file. Softirq snapshots are not merged
(one machine's CPUs each).

exit codes: 0 ok, 1 error (also: a recording shares no packet with the others; then no file is written), 2 usage

examples:
  podtrace merge node1.ptrec.gz node2.ptrec.gz
  podtrace merge --json node1.ptrec.gz node2.ptrec.gz | jq 'select(.died)'
  podtrace merge node1.ptrec.gz node2.ptrec.gz -o both.ptrec.gz && podtrace report both.ptrec.gz
  podtrace merge node1.ptrec.gz node2.ptrec.gz node3.ptrec.gz -o all.ptrec.gz   # three nodes, node1's clock
"""

PACKET_KINDS = frozenset(kind for kind, size in EVENT_SIZES.items() if size == EVENT_SIZE)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge", help="journeys across nodes: nodes' recordings matched packet by packet",
        description="Match the packets several nodes' recordings saw and print each flow's journey across them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recordings", nargs="+", metavar="RECORDING", help="two or more nodes' recordings")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="also write the merged recording (.gz: compressed); never over an existing file")
    parser.set_defaults(func=run)


def load(path: str) -> tuple[NodeRecording, NodeFile]:
    events: list[Any] = []
    conntrack: list[CtEvent] = []

    def keep(raw: bytes) -> None:
        if raw[0] in PACKET_KINDS:
            events.append(decode(raw))
        elif raw[0] == EVENT_CT:  # the nf_conn of a drop: its original and reply tuples join flows at a DNAT
            conntrack.append(decode_ct(raw))

    peek = ReplaySource(path)  # RecordingError: one line, exit 1 (tracer.cli.main)
    peek.close()
    header = peek.header
    if header.get("merged"):
        raise UsageError(f"{path} is already a merged recording (of {len(header['merged'].get('nodes', []))} nodes)",
                         "merge the nodes' own recordings, all at once")
    node = (header.get("filter") or {}).get("netns") or "host"
    label = f"{header.get('hostname', '?')}/{node}"
    read = read_node(path, label, keep)
    clock = header.get("clock") or {}
    run = (header.get("part") or {}).get("run_id") or f"{header.get('hostname')}@{clock.get('monotonic_ns')}"
    nat = [(record.before, record.after) for record in map(nat_from_json, read.nat)]
    return NodeRecording(label, read.wall_offset_ns, frozenset(read.pods), dict(read.netns), events,
                         dict(read.reasons), str(run), str(header.get("boot_id") or ""), conntrack, nat), read


def _line(journey: dict[str, Any]) -> str:
    path = " -> ".join(f"{hop['node']} {hop['at']} (+{hop['t_us']} us)" for hop in journey["path"])
    text = f"{journey['flow']}: {journey['packets']} packets matched; {path}"
    segments = journey.get("segments") or []
    if len(segments) > 1:
        text += "".join(f"; {seg['from']} -> {seg['to']} {seg['one_way_us']} us ({seg['one_way']})"
                        for seg in segments)
    if journey["one_way_us"] is not None:
        text += f"; one way {journey['one_way_us']} us ({journey['one_way']})"
    if journey["died"]:
        died = journey["died"]
        text += f"; died: {died['packets']} x {died['reason']} in {died['node']} {died['netns']}"
    return text


@dataclass
class Merge:
    """What merging two recordings found: the journeys, the matched packets, the clock alignment and how it was
    estimated."""

    nodes: list[NodeRecording]
    journeys: list[dict[str, Any]]
    matched: int
    clock: ClockAlignment
    how: str
    events_written: int | None = None  # with an output file


def merge_files(paths: Sequence[str], output: str | None = None) -> Merge:
    """Match two or more recordings' packets, align their clocks on the first one's and find the journeys; with
    `output`, also write the merged recording. PodtraceError (one line) for a recording that shares no packet with
    the others: no file is written then."""
    if len(paths) < 2:
        raise UsageError(f"merge needs two or more recordings, one per node (got {len(paths)})",
                         "podtrace merge node1.ptrec.gz node2.ptrec.gz")
    if len(paths) > MERGED_MAX_NODES:
        raise UsageError(f"merge takes at most {MERGED_MAX_NODES} recordings (got {len(paths)})")
    if output:
        check_output(output)  # before reading: an existing file is refused now, not after the work
    loaded = [load(path) for path in paths]  # RecordingError: one line, exit 1 (tracer.cli.main)
    nodes = [node for node, _file in loaded]
    runs: dict[str, int] = {}
    for index, node in enumerate(nodes):
        if node.run_id and node.run_id in runs:
            raise PodtraceError(f"{paths[runs[node.run_id]]} and {paths[index]} are the same recording (run "
                                f"{node.run_id}): one node's view, not a journey across two",
                                "give one recording of each node")
        runs[node.run_id] = index
    # a packet before a DNAT and after it is one packet when the kernel's record ties them (tracer.analysis.dnat_join)
    joins = dnat_joins(nodes)
    matched = match(nodes, joins)
    if not matched:
        counts = " and ".join(str(identifiable(node.events)) for node in nodes)
        what = " and ".join(paths) if len(paths) == 2 else ", ".join(paths)
        raise PodtraceError(f"{what} share no packet ({counts} identifiable packets): recordings of unrelated runs, "
                            "or no traffic between these nodes",
                            "record the nodes at the same time, with filters that keep the same flows")
    alone = unmatched(nodes, matched)
    if alone:
        names = ", ".join(f"{paths[index]} ({identifiable(nodes[index].events)} identifiable packets)"
                          for index in alone)
        raise PodtraceError(f"{names} {'shares' if len(alone) == 1 else 'share'} no packet with {paths[0]} or "
                            "the recordings that do: a recording of another run, or of a node no traced flow "
                            "crossed", "leave it out, or record all the nodes at the same time")
    # clocks from each address pair's sightings first: their sender is plainer (the one node that transmitted the
    # packet with those addresses); from the joined packets when those alone tie the recordings
    clock = align(nodes, match(nodes)) or align(nodes, matched) or \
        ClockAlignment([0] * len(nodes), names=[node.name for node in nodes])
    how = clock.describe()
    found = journeys(nodes, matched, clock, joins)
    result = Merge(nodes, found, len(matched), clock, how)
    if output:
        files = [read for _node, read in loaded]
        merged = {"nodes": [{"name": node.name, "file": os.path.basename(path),
                             "hostname": str(read.header.get("hostname", "?")),
                             "kernel_release": str(read.header.get("kernel_release", "?")),
                             "run_id": node.run_id, "events": read.events, "truncated": read.truncated,
                             "offset_ns": offset, "aligned": clock.aligned(index)}
                            for index, (node, read, path, offset) in enumerate(zip(nodes, files, paths,
                                                                                   clock.offsets))],
                  "clock": {"offset_ns": clock.offset_ns, "pairs": clock.pairs, "both_ways": clock.both_ways,
                            "aligned": bool(clock.links), "same_clock": clock.same_clock, "text": how,
                            "links": [{"from": nodes[link.a].name, "to": nodes[link.b].name,
                                       "offset_ns": link.offset_ns, "pairs": link.pairs, "both_ways": link.both_ways,
                                       "same_clock": link.same_clock}
                                      for link in clock.links]},
                  "matched_packets": len(matched), "journeys": found}
        result.events_written = write_merged(output, files, clock.offsets, merged)
    return result


def run(args: argparse.Namespace) -> int:
    result = merge_files(args.recordings, args.output)
    found, nodes, clock, how = result.journeys, result.nodes, result.clock, result.how
    if args.output:
        names = " and ".join(node.name for node in nodes) if len(nodes) == 2 else ", ".join(node.name for node in nodes)
        sys.stderr.write(f"wrote {args.output}: {result.events_written} events of {names}, {len(found)} journeys\n")
    if args.json:
        for journey in found:
            sys.stdout.write(json.dumps(journey) + "\n")
        sys.stdout.write(json.dumps({"summary": True, "matched_packets": result.matched, "flows": len(found),
                                     "clock": how, "offset_ns": clock.offset_ns,
                                     "nodes": [node.name for node in nodes]}) + "\n")
    else:
        for journey in found:
            sys.stdout.write(_line(journey) + "\n")
        sys.stdout.write(f"{result.matched} packets matched in {len(found)} flows; {how}\n")
    return 0
