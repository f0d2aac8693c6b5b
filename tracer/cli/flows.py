"""`podtrace flows`: Service traffic as the node's kernel handles it, client -> VIP -> backend -> reply."""

from __future__ import annotations

import argparse
import json
import platform
import sys

from tracer.analysis.aggregate import DropTable
from tracer.analysis.flows import (
    FlowTable,
    NatRecord,
    NodeConntrack,
    counts_known,
    counts_mode,
    nat_record_from_map,
    write_flow_table,
)
from tracer.analysis.identity import ConnIdentities
from tracer.analysis.nfverdict import NfAttribution
from tracer.node import cause_state, conntrack, ipvs
from tracer.node.conntrack import Health
from tracer.node.kubeproxy.collect import collect
from tracer.node.kubeproxy.model import ServiceMap
from tracer.output.errors import PodtraceError
from tracer.output.layout import add_wide_option, table_width
from tracer.output.report import drop_rows, summary_json, summary_line
from tracer.sources.live import LiveSource
from tracer.sources.session import add_trace_options, check_namespaces, pod_resolver, run_session

EPILOG = """\
Netfilter links are attached in the node's network namespace (--netns; default: podtrace's own, which is the
node on a real worker), just after kube-proxy's DNAT (--hook-timing: around conntrack, DNAT and SNAT).
Service names come from kube-proxy's rules in that namespace (iptables or nftables mode). At the end each
node's conntrack table is read (count vs max, insert_failed, drop, early_drop): drops no rule explains on a
node whose table refuses new entries are charged to it. Traffic to a ClusterIP-range address no Service has
is flagged "out of sync?".
Cost: by default translations and per-flow counts come from conntrack: one program per packet (PREROUTING or
OUTPUT, after DNAT) counts each DNATed connection's packets; tuples and the filter are read on a connection's
first packet only, and the hook a netfilter drop died in from the drop's stack. The NF us column is then "-".
--hook-timing copies and parses every packet at 11 points to time each hook: it costs about as much as
forwarding the packet again. Measured on a DNAT'd UDP flood on a shared 2-CPU VM (BENCHMARKS.md, "Flows mode
per packet"): 130-230 ns of BPF and +3 to +13% CPU per small packet by default, 1.2-2.2 us and +37 to +58% with
--hook-timing. A netfilter drop costs about 1.3 us more by default (its stack read to name the hook).
`record --node` and the TUI count the same way, with the same --hook-timing.
In kube-proxy's IPVS mode (kernels with kprobes and ip_vs loaded) the flows come from kprobes on ip_vs_conn_new,
ip_vs_nat_xmit and handle_response, and `ipvsadm -Ln` with kube-ipvs0's addresses maps virtual servers to Services.

examples:
  sudo podtrace flows --duration 10
  sudo podtrace flows --netns pt-node1 --duration 10 --json 'tcp port 80 or tcp port 8080'
  sudo podtrace flows --node pt-node1 --node pt-node2 --duration 10
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flows", help="Service flows: client -> VIP -> DNAT -> backend -> reply, with drops",
        description="Trace kube-proxy's NAT on the node and show each Service flow with packets, drops and "
                    "the time spent in netfilter.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_trace_options(parser, path=False)
    parser.add_argument("--node", action="append", metavar="NETNS",
                        help="a node's network namespace to attach netfilter links in and read kube-proxy rules "
                             "from; repeat for several (the lab: --node pt-node1 --node pt-node2)")
    parser.add_argument("--hook-timing", action="store_true",
                        help="time each packet in each netfilter hook (NF us): every packet is copied and parsed "
                             "at 11 points, which costs about as much as forwarding it; default: counts from "
                             "conntrack, untimed")
    # tests/e2e/test_ct_sweep_e2e.py sets both small: more connections than the table holds, counts still exact
    parser.add_argument("--ct-flows-max", type=int, default=65536, metavar="N",
                        help="conntrack mode: (connection, direction) entries the kernel keeps at once; past it new "
                             "connections are counted as lost (default 65536)")
    parser.add_argument("--ct-idle", type=float, default=30.0, metavar="S",
                        help="conntrack mode: an entry whose counts stood still S seconds is taken out of the "
                             "kernel's table, its counts kept, so a long session keeps counting (default 30)")
    add_wide_option(parser)
    parser.set_defaults(func=run)


def _pod_name(label: str | None) -> str | None:
    """The name part of a `namespace/name` label (flows show pod names); None for `pod <UID>` and no label."""
    if not label or label.startswith("pod ") or "/" not in label:
        return None
    return label.split("/", 1)[1]


def _health(node: str | None, warn: bool) -> Health | None:
    try:
        return conntrack.health(node)
    except PodtraceError as err:
        if warn:
            sys.stderr.write(f"podtrace: conntrack health unavailable in {node or 'this namespace'}: "
                             f"{err.one_line()}\n")
        return None


def run(args: argparse.Namespace) -> int:
    check_namespaces(args)  # before the conntrack readings below, which run `ip netns exec` per node
    drops = DropTable()
    nodes: list[str | None] = list(args.node or [args.netns])
    # The drop counters before the trace: their growth during it is what the trace's drops can be charged to.
    before = {node: _health(node, warn=False) for node in nodes}
    icmp_before = cause_state.icmp_snapshot(node or "host" for node in nodes)  # a REJECT's rate-limited ICMP
    # kube-proxy's rules now and at the end: a drop matching a rule at one end only has no known rule
    rules_start = cause_state.rules_snapshot(node or "host" for node in nodes)
    records: list[NatRecord] = []

    def read_maps(source: LiveSource) -> None:
        records.extend(nat_record_from_map(key, stats) for key, stats in source.nat_flows())

    verdicts = NfAttribution()  # netfilter table and chain of each drop, on kernels with kprobes

    identities = ConnIdentities()  # each drop's own conntrack entry: the flow it belongs to, observed

    def on_raw(data: bytes) -> None:
        drops.add_raw(data)
        verdicts.add_raw(data)
        identities.add_raw(data)

    def on_start(source: LiveSource, _names: object) -> None:
        if source.build.nfct_refusal:  # the per-packet links instead: said before the trace, with what it costs
            sys.stderr.write(f"podtrace: Service flows from every packet (costly), not from conntrack: "
                             f"{source.build.nfct_refusal}\n")

    source, names, count = run_session(args, path=False, on_raw=on_raw, netfilter=True, before_close=read_maps,
                                       on_start=on_start)
    states = []
    for node in nodes:
        after = _health(node, warn=True)
        if after is not None:
            start = before.get(node)
            states.append(NodeConntrack(node or "host", after, after.drop - start.drop if start else None))
    services = ServiceMap()
    per_node: dict[str, ServiceMap] = {}
    for node in nodes:
        try:
            found = collect(node)
        except PodtraceError as err:
            sys.stderr.write(f"podtrace: Service names unavailable in {node or 'this namespace'}: {err.one_line()}\n")
            continue
        per_node[node or "host"] = found
        if not services.ports:
            services.mode, services.ports = found.mode, found.ports
        services.rules += found.rules
    services = ipvs.service_map(services, nodes)  # IPVS virtual servers named as Services, NodePorts folded in
    pods = pod_resolver(args).pod_names()  # read at the end: pods created during the trace are named too
    # pods this node does not hold (backends on other nodes) by the Kubernetes API's name, when it is used
    by_conntrack = source.conntrack_flows
    table = FlowTable(services, lambda ip: pods.get(ip) or _pod_name(names.pod(ip)) or "-", timed=not by_conntrack)
    table.add_nat(records)
    table.add_conntrack(states)
    rows = drop_rows(drops, names, verdicts, identities)
    cause_state.add_causes(rows, cause_state.collect(rows, icmp_before, per_node, rules_start=rules_start))
    table.drift_rules = {node: (rules_start[node], end) for node, end in per_node.items() if node in rules_start}
    table.add_drops(rows)
    counters = source.final_counters
    mode = counts_mode(by_conntrack, source.config.netfilter, "ipvs_kprobe" in source.build.programs)
    why = "" if source.config.netfilter else f"kernel {platform.release()}: BPF netfilter links need 6.4"
    known = counts_known(by_conntrack, mode, why)
    if args.json:
        for flow in table.rows():
            sys.stdout.write(json.dumps(flow.to_json()) + "\n")
        for drop in table.service_drops:
            sys.stdout.write(json.dumps({"service_drop": True, **drop.__dict__}) + "\n")
        for flagged in table.out_of_sync:
            sys.stdout.write(json.dumps(flagged.to_json()) + "\n")
        for state in states:
            sys.stdout.write(json.dumps(state.to_json()) + "\n")
        sys.stdout.write(json.dumps({**summary_json(count, counters), "proxy_mode": services.mode,
                                     "counts": mode, "counts_known": known}) + "\n")
    else:
        write_flow_table(table, sys.stdout, table_width(sys.stdout, args.wide))
        sys.stdout.write(f"kube-proxy mode {services.mode}, {services.service_count} Services; "
                         + summary_line(count, counters) + "\n")
        sys.stdout.write(known + "\n")
    return 0
