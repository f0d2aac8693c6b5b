"""`podtrace report`: the drops table `podtrace drops` would have printed over a recording, and its Service flows,
conntrack, MTU, tunnel and softirq summaries (no root, no BPF)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tracer.analysis.aggregate import DropTable
from tracer.analysis.flows import write_flow_table
from tracer.analysis.identity import ConnIdentities
from tracer.cli.readback import describe, incomplete_error, warn_truncated
from tracer.events.decode import EVENT_CT, EVENT_SIZE, decode
from tracer.node.cause_state import add_causes
from tracer.output.errors import PodtraceError, RecordingError
from tracer.output.layout import add_wide_option, table_width
from tracer.output.report import drop_rows, summary_json, summary_line, write_drop_table
from tracer.recording.recorded_node import relevant
from tracer.sources.replay import ReplaySource

REPORT_EPILOG = """\
Sections: on a merged recording (`podtrace merge -o`) first the cross-node journeys (client's node -> where it
died, reason, one-way latency) and how the clocks were aligned; drops; Service flows (recorded with --node);
each node's conntrack table at the end with its growth since the start; MTU per node (link MTUs, ICMP
frag-needed, fragments and too-big drops of the recorded events, the `podtrace mtu` verdict of each pod's path);
VXLAN tunnels and fragments (`podtrace overlay`, when the recording has them); softirq (recorded with
--softirq). --json: one object per row, the summary last.

exit codes: 0 ok, 1 unreadable or corrupt recording, or a merged one cut short (what was read before the damage
is still printed), 4 incomplete: a rotation part is missing or belongs to another recording (the parts found are
reported)

examples:
  podtrace report node1.ptrec.gz
  podtrace report --json node1.ptrec.gz | jq 'select(.reason == "NETFILTER_DROP")'
  podtrace report --json services.ptrec | jq 'select(.backend)'      # Service flows (recorded with --node)
  podtrace report --json node1.ptrec.gz | jq 'select(.mtu and (.ok | not)) | .paths[].verdict.text'
  podtrace report --json node1.ptrec.gz | jq 'select(.conntrack) | {node, count, max, drops_during}'
  podtrace report --json both.ptrec.gz | jq 'select(.journey and .died)'   # merged: cross-node journeys
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser(
        "report", help="drops, Service flows, conntrack, MTU and softirq summaries of a recording (no root, no BPF)",
        description="Print the drops table `podtrace drops` would have printed over the recorded traffic, the "
                    "flow table of `podtrace flows` when it was recorded with --node, each node's conntrack table, "
                    "the MTU verdicts of `podtrace mtu`, the tunnels of `podtrace overlay` and the softirq table.",
        epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("file", metavar="FILE")
    report.add_argument("--json", action="store_true", help="one JSON object per line")
    report.add_argument("--no-follow", action="store_true", help="read FILE only, not its rotation parts")
    add_wide_option(report)
    report.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from tracer.analysis.overlay import TunnelTable

    source = ReplaySource(args.file, follow=not args.no_follow)
    table = DropTable()
    identities = ConnIdentities()  # recordings before conntrack events say "not-traced"
    mtu = source.mtu_summary()
    tunnels = TunnelTable()
    names = source.resolver()
    count = 0
    error: PodtraceError | None = None
    try:
        for raw in source:
            table.add_raw(raw)
            identities.add_raw(raw)
            count += raw[0] != EVENT_CT  # a drop's conntrack event is part of that drop, as live
            if len(raw) >= EVENT_SIZE and relevant(raw, mtu.too_big):
                _add_mtu_event(decode(raw), mtu, tunnels, names)
    except RecordingError as err:
        error = err
    finally:
        source.close()
    if not args.json:
        sys.stderr.write(describe(source) + "\n")
    warn_truncated(source)
    rows = drop_rows(table, source.resolver(), None, identities)
    add_causes(rows, source.cause_states())  # from the rules, conntrack tables and node state the recording holds
    merged = source.header.get("merged")
    if merged:
        from tracer.output.merged_report import add_nodes

        add_nodes(rows, merged)
    counters = source.final_counters
    flows = services = None
    if source.has_nat_flows:  # recorded with --node: the flow table `podtrace flows` shows
        flows, services, warnings = source.flow_table(rows)
        for warning in warnings:
            sys.stderr.write(f"podtrace: {warning}\n")
    conntrack = source.conntrack()
    mtu_nodes = mtu.nodes(source.seconds or mtu.event_span())
    overlay = tunnels.to_json() if tunnels.has_rows() else None
    softirq_rows = source.softirq.report() if source.softirq is not None else []
    softirq_seconds = source.softirq.seconds if source.softirq is not None else 0.0
    pod_of = source.names.pod_of_ip
    if args.json:
        if merged:
            from tracer.output.merged_report import section_json

            for item in section_json(merged, pod_of):
                sys.stdout.write(json.dumps(item) + "\n")
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        if flows is not None:
            for flow in flows.rows():
                sys.stdout.write(json.dumps(flow.to_json()) + "\n")
            for drop in flows.service_drops:
                sys.stdout.write(json.dumps({"service_drop": True, **drop.__dict__}) + "\n")
            for flagged in getattr(flows, "out_of_sync", []):  # VIPs no kube-proxy rule knows (as `flows` prints)
                sys.stdout.write(json.dumps(flagged.to_json()) + "\n")
        for recorded in conntrack:  # as `podtrace flows --json` prints each node's table, plus the start reading
            sys.stdout.write(json.dumps(recorded.to_json()) + "\n")
        for node in mtu_nodes:
            sys.stdout.write(json.dumps(node.to_json()) + "\n")
        if overlay is not None:  # as `podtrace overlay --json` prints it
            sys.stdout.write(json.dumps({"overlay": True, **overlay}) + "\n")
        for cpu_row in softirq_rows:  # as `podtrace overlay softirq --json` prints them
            sys.stdout.write(json.dumps({**cpu_row.to_json(), "seconds": round(softirq_seconds, 3)}) + "\n")
        summary = summary_json(count, counters, table.evicted)
        summary["truncated"] = source.truncated
        summary["incomplete"] = source.incomplete
        if services is not None:
            summary["proxy_mode"] = services.mode
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        width = table_width(sys.stdout, args.wide)
        if merged:
            from tracer.output.merged_report import by_node, section_text

            sys.stdout.write(section_text(merged, pod_of) + "\n")
            for name, node_rows in by_node(rows, merged):  # each node's drops, as its own report shows them
                sys.stdout.write(f"drops on {name}:\n")
                write_drop_table(node_rows, sys.stdout, width)
        else:
            write_drop_table(rows, sys.stdout, width)
        if flows is not None and services is not None:
            sys.stdout.write("\n")
            flows.conntrack = {}  # each node's table is printed below, with its start reading
            write_flow_table(flows, sys.stdout, width)
            sys.stdout.write(f"kube-proxy mode {services.mode}, {services.service_count} Services\n")
        if conntrack:
            sys.stdout.write("\n" + "".join(recorded.text() + "\n" for recorded in conntrack))
        if mtu_nodes:
            sys.stdout.write("\n" + "".join(node.text() for node in mtu_nodes))
        if overlay is not None:
            sys.stdout.write("\n" + tunnels.format_text())
        if softirq_rows:
            from tracer.analysis.softirq import format_table

            sys.stdout.write("\n" + format_table(softirq_rows, softirq_seconds))
        sys.stdout.write(summary_line(count, counters, table.evicted) + "\n")
    sys.stdout.flush()
    if error is not None:
        raise error
    if merged and source.truncated:
        raise RecordingError(f"{args.file}: merged recording cut short: it was written whole, so it was damaged "
                             "since (what it held before the cut is printed above)",
                             "merge the nodes' recordings again")
    if (incomplete := incomplete_error(source)) is not None:
        raise incomplete
    return 0


def _add_mtu_event(event: Any, mtu: Any, tunnels: Any, names: Any) -> None:
    """One decoded event into the MTU section and the tunnel table, named as `podtrace overlay` names it."""
    mtu.add(event)
    tunnels.add_named(event, names)
