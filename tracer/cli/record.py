"""`podtrace record`: trace drops (and path events for FILTER) to a self-contained file."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from tracer.analysis.aggregate import DropTable
from tracer.events.decode import EVENT_DROP, counted_events
from tracer.node.flannel import SUBNET_ENV
from tracer.output.errors import UsageError
from tracer.output.report import drop_rows, summary_json, summary_line
from tracer.recording.fileformat import compression_of
from tracer.recording.header import build_header, node_namespaces, prepare_header
from tracer.recording.recorder import Recorder, parse_size
from tracer.recording.records_json import nat_to_json

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
