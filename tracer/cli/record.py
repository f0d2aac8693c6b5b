"""`podtrace record` (trace to a file), `podtrace report` (the drops table from a file, no root, no BPF) and
`podtrace export` (pcapng for Wireshark/tshark)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from typing import Any

from tracer import __version__
from tracer.analysis.aggregate import DropTable
from tracer.analysis.flows import write_flow_table
from tracer.analysis.identity import ConnIdentities
from tracer.events.decode import EVENT_CT, EVENT_DROP, EVENT_SIZE, counted_events, decode
from tracer.node.cause_state import add_causes
from tracer.node.declared_names import declared_json
from tracer.node.flannel import SUBNET_ENV
from tracer.node.podnames import resolver_for
from tracer.output.errors import PodtraceError, RecordingError, RecordingIncomplete, UsageError
from tracer.output.layout import add_wide_option, table_width
from tracer.output.report import drop_rows, summary_json, summary_line, write_drop_table
from tracer.recording.fileformat import (
    FORMAT_MINOR,
    FORMAT_VERSION,
    Recorder,
    compression_of,
    create_new,
    nat_to_json,
    parse_size,
)
from tracer.recording.recorded_node import relevant
from tracer.recording.recorded_rules import capture as capture_rules
from tracer.sources.replay import ReplaySource

RECORD_EPILOG = """\
The file is self-contained: kernel, attach plan, drop-reason names, netns names and kernel symbols travel
with the events, so `podtrace report` and `podtrace export` work on any machine. Compressed when FILE ends in
.gz (or .zst with the zstandard package). With --max-size the recording continues in FILE.1, FILE.2, ...
(trace.1.gz for trace.gz), each readable on its own.

With --node NETNS (repeatable, as for `podtrace flows`) netfilter links are attached in that node's namespace
and the recording also holds kube-proxy's rules and the kernel's Service NAT flows, so `podtrace report` shows
the flow table `podtrace flows` would have shown. As there, Service flows are counted from conntrack by default
(a program per packet after DNAT, NF us "-"); --hook-timing records every packet at 11 points, timed, at about
the cost of forwarding it again (`podtrace flows --help`, BENCHMARKS.md). With --softirq it holds the
softirq/NAPI latency histograms and /proc/net/softnet_stat every second, and the report adds the softirq table.

Every recording also keeps the link MTUs of the node namespaces (--node, else --netns, else podtrace's own: pod
veths and their pod ends, bridges, overlay, underlay) and flannel's subnet.env, and each node's conntrack table
(count vs max, insert_failed, drop, early_drop) at the start and at the end: the report judges each pod's path
as `podtrace mtu` does, with the frag-needed, fragment and too-big counts of the recorded events (path events
for ICMP and fragments need a FILTER that keeps them, e.g. 'icmp or udp'), and charges drops to a full table.
When it ends, the recording also keeps what the recorded drops' causes need, read as `podtrace drops` reads it:
the route of each refused destination, rp_filter sysctls, RPS masks and IRQ steering, and the ICMP counters (also
read at the start), so the report names the same route, rp_filter, backlog and rate-limit causes.

examples:
  sudo podtrace record -o node1.ptrec.gz --duration 60
  sudo podtrace record -o drops.ptrec --max-size 100M --netns pt-node1 'tcp port 443'
  sudo podtrace record -o services.ptrec --node pt-node1 --node pt-node2 'udp port 53 or udp port 5353'
"""

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

EXPORT_EPILOG = """\
One frame per packet: its bytes as first seen, and a comment with every hop it was seen at (netns/interface,
point, time from the first), the NAT between them, and its drop with the reason, location and Service (from the
drop's conntrack entry when recorded). --per-hop writes a frame per hop instead, each hop point its own interface
("pt-node1/eth0 rx"): Wireshark 4.0 still marks a TCP segment's later hops as retransmissions (4.2+ can keep
conversations apart by interface). The bytes start at the IP header (link type RAW).

examples:
  podtrace export node1.ptrec.gz --pcapng node1.pcapng
  tshark -r node1.pcapng -T fields -e frame.comment -e ip.src -e ip.dst
  podtrace export node1.ptrec.gz --per-hop --pcapng node1-hops.pcapng
"""

BATCH = 1024  # events per EVENTS record
MAX_DROP_KINDS = 100_000  # as DropTable's groups: a scan of many addresses keeps the first ones
TICK_S = 1.0  # counters record, flush and status line


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from tracer.sources.session import add_trace_options

    record = subparsers.add_parser(
        "record", help="trace drops (and path events for FILTER) to a self-contained file",
        description="Record drop events, and path events for packets matching FILTER, to FILE.",
        epilog=RECORD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    record.add_argument("-o", "--output", required=True, metavar="FILE", help="recording to write")
    record.add_argument("--max-size", metavar="N", help="start a new part when a file reaches N bytes (10M, 1G)")
    record.add_argument("--mode", default="0600", metavar="OCTAL",
                        help="permissions of the files written (default %(default)s: they hold packet bytes)")
    add_trace_options(record)
    record.add_argument("--node", action="append", metavar="NETNS",
                        help="also record Service flows: attach netfilter links in this node's network namespace "
                             "and store its kube-proxy rules; repeat for several (the lab: --node pt-node1 "
                             "--node pt-node2)")
    record.add_argument("--hook-timing", action="store_true",
                        help="with --node: "
                             "time each packet in each netfilter hook (NF us): every packet copied and parsed at 11 "
                             "points, about as costly as forwarding it; default: Service flows counted "
                             "from conntrack, untimed")
    record.add_argument("--softirq", action="store_true",
                        help="also record NET_RX/NET_TX softirq and NAPI latency (the `overlay softirq` summary)")
    record.add_argument("--subnet-env", default=SUBNET_ENV, metavar="FILE",
                        help="flannel's subnet.env, kept for the MTU verdict (default: %(default)s)")
    record.set_defaults(func=run_record)

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

    export = subparsers.add_parser(
        "export", help="convert a recording to pcapng with per-packet comments",
        description="Write the recorded packets to a pcapng file that Wireshark and tshark open.",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("file", metavar="FILE")
    export.add_argument("--pcapng", required=True, metavar="OUT", help="pcapng file to write")
    export.add_argument("--no-follow", action="store_true", help="read FILE only, not its rotation parts")
    export.add_argument("--per-hop", action="store_true",
                        help="a frame per hop (each hop point its own interface) instead of one per packet")
    export.set_defaults(func=run_export)


# --- record ---------------------------------------------------------------------------------------------------


def _attach_plan() -> tuple[dict[str, Any] | None, str]:
    """The attach ladder's plan for the header; a recording is still worth making without it."""
    try:
        from tracer.kernel.capabilities import probe_kernel

        plan, _trials = probe_kernel()
        return plan.to_json(), ""
    except Exception as err:  # any failure here only costs the header its plan
        return None, str(err) or type(err).__name__


def node_namespaces(args: argparse.Namespace) -> list[str | None]:
    """The namespaces whose links and conntrack a recording keeps: the --node list, else --netns, else our own."""
    return list(getattr(args, "node", None) or [getattr(args, "netns", None)])


def prepare_header(args: argparse.Namespace) -> dict[str, Any]:
    """The slow parts of the header that do not need the probes (the attach ladder loads test programs, the checks
    watch for 0.2 s, kube-proxy's rules take a while on a large node): read before the probes attach, so nothing
    waits in the ring buffer meanwhile."""
    from tracer.recording.recorded_node import collect_conntrack, collect_links

    plan, plan_error = _attach_plan()
    nodes = node_namespaces(args)
    return {
        "attach_plan": plan,
        "attach_plan_error": plan_error,
        "node_checks": _node_checks(args.netns),
        "links": collect_links(nodes, getattr(args, "subnet_env", SUBNET_ENV)),
        "conntrack": collect_conntrack(nodes),  # each node's table at the start (the last trailer has the end)
        "lab": declared_json(),
        # pod IP -> namespace/name, from the node's cgroups and kubelet directories
        "pods": resolver_for(getattr(args, "kubelet_root", None)).ip_labels(),
        **({"services": capture_rules(args.node)} if getattr(args, "node", None) else {}),
    }


def boot_id() -> str | None:
    """The kernel's random id of this boot (None when /proc does not say)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read(64).strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def build_header(args: argparse.Namespace, source: Any, netns: dict[int, str],
                 prepared: dict[str, Any] | None = None) -> dict[str, Any]:
    found = dict(prepared if prepared is not None else prepare_header(args))
    wall, mono = time.time_ns(), time.monotonic_ns()
    lab = found.pop("lab")
    pods = found.pop("pods", {})
    return {
        "format_version": FORMAT_VERSION,
        "format_minor": FORMAT_MINOR,
        "podtrace_version": __version__,
        "kernel_release": platform.release(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "boot_id": boot_id(),  # recordings of one boot share CLOCK_MONOTONIC (podtrace merge: offset 0)
        # events carry bpf_ktime_get_ns (CLOCK_MONOTONIC): wall = ts_ns + wall_offset_ns
        "clock": {"wall_ns": wall, "monotonic_ns": mono, "wall_offset_ns": wall - mono},
        "attached": list(source.attached),
        "programs": list(source.build.programs),
        "drop_reasons": {str(value): name for value, name in sorted(source.reasons.items())},
        "filter": {"expression": " ".join(args.filter), "netns": args.netns, "netns_inode": source.config.netns_inode,
                   "ifname": args.ifname},
        "event_size": EVENT_SIZE,
        "names": {"netns": {str(k): v for k, v in netns.items()}, "lab": lab, "pods": pods},
        **found,  # attach plan, node checks, links (the MTU section), conntrack at the start, kube-proxy's rules
    }


def _node_checks(netns: str | None) -> list[dict[str, Any]] | dict[str, str]:
    """`podtrace check` findings at the start of the recording (a short window: it delays the ready file)."""
    from tracer.check import run_checks

    try:
        return [finding.to_json() for finding in run_checks(netns, window=0.2)]
    except PodtraceError as err:
        return {"error": err.one_line()}


class _RecordLoop:
    """Callbacks for run_session: buffer raw events, write them in batches, counters and status every second."""

    def __init__(self, args: argparse.Namespace, max_size: int | None) -> None:
        self.args = args
        self.max_size = max_size
        self.recorder: Recorder | None = None
        self.pending: list[bytes] = []
        self.next_tick = 0.0
        self.status = sys.stderr.isatty()
        self.softirq: Any = None  # tracer.probes.softirq_probe.SoftirqProbe with --softirq
        self.prepared: dict[str, Any] | None = None  # prepare_header(), read before the probes attach
        self.drained = 0  # events read during on_start (the session counts only those it delivers)
        # One drop of each kind recorded: at the end the node state their causes need is read for the trailer,
        # with the ICMP counters read before the probes attached (the window's rate-limited errors).
        self.drop_kinds: dict[bytes, bytes] = {}
        self.icmp_before: dict[str, dict[str, int]] = {}
        self.names: Any = None  # the session's Resolver, once started

    def _drain(self, source: Any) -> None:
        """Take what the ring buffer holds now: the probes are attached and run while the header is made."""
        batch = source.poll_raw(0)
        self.pending += batch
        self.drained += counted_events(batch)
        for raw in batch:
            self._kind_of(raw)

    def on_start(self, source: Any, names: Any) -> None:
        from tracer.node.names import named_netns

        self.names = names
        self._drain(source)
        known = {inode: name for name, inode in named_netns().items()}
        own = os.stat("/proc/self/ns/net").st_ino
        known[own] = "host"
        names.symbol(1)  # load kallsyms now (~0.6 s), not on the first drop while the ring buffer fills
        self._drain(source)
        header = build_header(self.args, source, known, self.prepared)
        self.recorder = Recorder(self.args.output, header, names.netns, names.symbol, self.max_size,
                                 self.args.file_mode)
        self.recorder.write_counters(source.counters(), time.monotonic_ns(), source.probe_counters())
        if getattr(self.args, "softirq", False):
            from tracer.probes.softirq_probe import SoftirqProbe

            self.softirq = SoftirqProbe()
            self._drain(source)
            self.softirq.start(progress=False)
            self._drain(source)
            self.recorder.write_softirq(self.softirq.snapshot())
        self.recorder.flush()
        self.next_tick = time.monotonic() + TICK_S

    def on_raw(self, raw: bytes) -> None:
        self.pending.append(raw)
        # _kind_of, inline: a third of DropTable.add_raw's cost per drop, which a burst must not pay in the poll loop
        if raw[0] == EVENT_DROP and len(self.drop_kinds) < MAX_DROP_KINDS:
            self.drop_kinds[raw[24:40] + raw[64:112]] = raw
        if len(self.pending) >= BATCH:
            self._write()

    def _kind_of(self, raw: bytes) -> None:
        """Keep the drop as its kind's: location, reason and netns [24:40], device and addresses [64:112] (offsets
        per tracer/events.field_offsets()), what tracer/node/cause_state.py reads the node for."""
        if raw[0] == EVENT_DROP and len(self.drop_kinds) < MAX_DROP_KINDS:
            self.drop_kinds[raw[24:40] + raw[64:112]] = raw

    def _write(self) -> None:
        assert self.recorder is not None
        self.recorder.add(self.pending)
        self.pending = []

    def on_tick(self, source: Any) -> None:
        self._write()
        now = time.monotonic()
        if now < self.next_tick:
            return
        self.next_tick = now + TICK_S
        assert self.recorder is not None
        counters = source.counters()
        self.recorder.write_counters(counters, time.monotonic_ns(), source.probe_counters())
        self.write_nat(source)
        if self.softirq is not None:
            self.recorder.write_softirq(self.softirq.snapshot())
        self.recorder.flush()  # a killed recorder loses at most the last second
        if self.status:
            parts = f", part {len(self.recorder.parts)}" if len(self.recorder.parts) > 1 else ""
            sys.stderr.write(f"\rrecording: {self.recorder.events} events, {counters.get('lost', 0)} lost{parts} ")
            sys.stderr.flush()

    def before_close(self, source: Any) -> None:
        """The last snapshot of the maps while they still exist (the events are all written by now)."""
        self._write()
        self.write_nat(source)
        if self.softirq is not None and self.recorder is not None:
            self.recorder.write_softirq(self.softirq.snapshot())

    def write_nat(self, source: Any) -> None:
        """The kernel's nat_flows map (only with --node: netfilter links attached)."""
        if self.recorder is None or not getattr(self.args, "node", None):
            return
        from tracer.analysis.flows import nat_record_from_map

        records = [nat_to_json(nat_record_from_map(key, stats)) for key, stats in source.nat_flows()]
        self.recorder.write_nat_flows(records, time.monotonic_ns())

    def close(self, final_counters: dict[str, int], probes: dict[str, dict[str, int]] | None = None) -> None:
        if self.softirq is not None:
            self.softirq.close()
        if self.recorder is None:
            return
        if self.pending:
            self._write()
        from tracer.recording.recorded_node import collect_conntrack

        end = collect_conntrack(node_namespaces(self.args))  # drops during the recording: end minus start
        self.recorder.close(final_counters, time.time_ns(), {"conntrack": end, "cause_state": self.cause_state()},
                            probes)
        if self.status:
            sys.stderr.write("\n")


    def cause_state(self) -> dict[str, Any]:
        """The routes, sysctls, RPS masks and ICMP counters behind the recorded drops' causes, read now as `drops`
        reads them when it ends (the trailer's cause_state, format minor 6)."""
        from tracer.recording.recorded_causes import record_end

        if self.names is None:
            return {"nodes": [], "error": "node state not read: the session did not start"}
        kinds = DropTable()
        for raw in self.drop_kinds.values():
            kinds.add_raw(raw)
        return record_end(drop_rows(kinds, self.names), self.icmp_before)


def check_output(path: str) -> None:
    """A recording may be written at `path` (UsageError naming why not; the writer refuses it again)."""
    if os.path.lexists(path):  # the writer refuses it too (O_EXCL): say so before compiling probes
        what = "a symbolic link" if os.path.islink(path) else "an existing file"
        raise UsageError(f"cannot write {path}: it is {what}, refused (podtrace never overwrites or follows links)",
                         "remove it or choose another name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {path}: {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"cannot write {path}: {directory} is not writable")
    if compression_of(path) == "zstd":
        from tracer.recording.fileformat import _zstandard

        _zstandard()  # the clear error before compiling probes, not after


def run_record(args: argparse.Namespace) -> int:
    from tracer.sources.session import check_namespaces, run_session

    try:
        max_size = parse_size(args.max_size) if args.max_size else None
    except ValueError as err:
        raise UsageError(f"--max-size: {err}") from err
    args.file_mode = parse_mode(args.mode)
    if args.node and args.netns:
        raise UsageError("record --node takes no --netns: with --node, drops are recorded in every namespace and "
                         "netfilter is traced in the --node ones", "leave out --netns")
    check_output(args.output)
    check_namespaces(args)
    from tracer.kernel import bccenv

    bccenv.require_root("tracing")  # before the header's slow parts, which need it too
    loop = _RecordLoop(args, max_size)
    loop.prepared = prepare_header(args)
    from tracer.node import cause_state

    # before the probes attach, as `drops` reads them: the ICMP errors a REJECT had rate-limited during the recording
    loop.icmp_before = cause_state.icmp_snapshot([args.netns] if args.netns else cause_state.named_namespaces())
    source = None
    try:
        source, _names, count = run_session(args, path=bool(args.filter), on_raw=loop.on_raw,
                                            on_start=loop.on_start, on_tick=loop.on_tick,
                                            netfilter=bool(args.node), before_close=loop.before_close,
                                            icmp=True)  # frag-needed the node sends, with the MTU it quoted
    finally:
        loop.close(source.final_counters if source is not None else {},
                   source.final_probe_counters if source is not None else None)
    assert loop.recorder is not None
    recorder = loop.recorder
    counters = source.final_counters
    count += loop.drained
    if args.json:
        summary = summary_json(count, counters)
        summary.update({"file": args.output, "parts": recorder.parts, "bytes": recorder.bytes_written})
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        files = args.output if len(recorder.parts) == 1 else f"{args.output} (+{len(recorder.parts) - 1} parts)"
        sys.stderr.write(f"recorded {summary_line(count, counters)} to {files}, {recorder.bytes_written} bytes\n")
    return 0


def parse_mode(text: str) -> int:
    """--mode: octal permissions, at most 0666 (no execute, no set-id bits)."""
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o666 or mode & 0o111:
        raise UsageError(f"--mode {text!r} is not a file mode", "use octal permissions such as 0600 or 0640")
    return mode


# --- report and export ----------------------------------------------------------------------------------------


def _warn_truncated(source: ReplaySource) -> None:
    merged = bool(source.header.get("merged"))  # a merged file cut short is an error, said once (run_report)
    for path in [] if merged else source.truncated_parts:
        sys.stderr.write(f"podtrace: warning: {path} was cut short (recorder killed?): read up to its last "
                         f"complete record\n")
    for problem in source.incomplete:
        sys.stderr.write(f"podtrace: warning: incomplete recording: {problem}\n")


def _incomplete(source: ReplaySource) -> RecordingIncomplete | None:
    """The error (exit 4) of a recording with missing or foreign parts, once its warnings are written."""
    if not source.incomplete:
        return None
    return RecordingIncomplete(f"{source.path}: incomplete recording, {len(source.incomplete)} part(s) missing or "
                               "foreign", "the events of the parts found were read")


def _describe(source: ReplaySource) -> str:
    header = source.header
    if not header:
        return f"{source.path}: cut short inside its header: nothing to report"
    started = header.get("clock", {}).get("wall_ns")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started / 1e9)) if started else "?"
    expression = header.get("filter", {}).get("expression") or "all drops"
    merged = header.get("merged")
    if merged:
        names = [str(node.get("name")) for node in merged.get("nodes", [])]
        nodes = " and ".join(names) if len(names) <= 2 else ", ".join(names)
        return f"merged recording of {nodes} from {when}, on the first one's clock"
    return (f"recording of {header.get('hostname', '?')} (kernel {header.get('kernel_release', '?')}) "
            f"from {when}, filter: {expression}")


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
        sys.stderr.write(_describe(source) + "\n")
    _warn_truncated(source)
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
    if (incomplete := _incomplete(source)) is not None:
        raise incomplete
    return 0


def _add_mtu_event(event: Any, mtu: Any, tunnels: Any, names: Any) -> None:
    """One decoded event into the MTU section and the tunnel table, named as `podtrace overlay` names it."""
    mtu.add(event)
    tunnels.add_named(event, names)


def _final_cause_states(path: str, follow: bool) -> Any:
    """ReplaySource.cause_states() once the whole recording is read, reading no event (damage and missing parts
    are reported by the pass that exports the packets)."""
    with ReplaySource(path, follow=follow, events=False) as ahead:
        try:
            for _ in ahead:
                pass
        except RecordingError:
            pass  # what was read before the damage still holds
        return ahead.cause_states()


def run_export(args: argparse.Namespace) -> int:
    from tracer.events.decode import EVENT_NAT, decode_nat
    from tracer.recording.pcapng import PcapngWriter
    from tracer.recording.pcapng_packets import DropCauses, Packet, PacketFolder, packet_comment

    source = ReplaySource(args.file, follow=not args.no_follow)
    header = source.header
    # what report would say: the header's rules, and the trailer's conntrack tables and node state, which come after
    # the packets in the file (a first pass reads them, without the events)
    causes = DropCauses(source.resolver(), _final_cause_states(args.file, not args.no_follow))
    error: PodtraceError | None = None
    identities = ConnIdentities()  # each drop's conntrack entry: the Service it dialled
    try:
        with create_new(args.pcapng) as out:
            writer = PcapngWriter(out, f"Linux {header.get('kernel_release', '')}", header.get("hostname", ""))

            def emit(packet: Packet) -> None:
                writer.folded(packet, source.names, packet_comment(packet, source.names, identities.for_drop, causes))

            folder = PacketFolder(emit)
            try:
                for raw in source:
                    identities.add_raw(raw)
                    if len(raw) < EVENT_SIZE:  # NAT (and other) events carry no packet bytes
                        if raw[0] == EVENT_NAT and not args.per_hop:
                            folder.add_nat(decode_nat(raw))
                    elif args.per_hop:
                        writer.event(decode(raw), source.names, per_hop=True)
                    else:
                        folder.add(decode(raw))
            except RecordingError as err:
                error = err  # the packets before the damage are in the file
            folder.flush()
    except OSError as err:
        raise RecordingError(f"cannot write {args.pcapng}: {err.strerror or err}") from err
    finally:
        source.close()
    _warn_truncated(source)
    sys.stderr.write(f"wrote {writer.packets} packets on {writer.interfaces} interfaces to {args.pcapng}\n")
    if error is not None:
        raise error
    if (incomplete := _incomplete(source)) is not None:
        raise incomplete
    return 0
