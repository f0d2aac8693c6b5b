"""A live tracing session as the CLI commands run it: options -> probes -> poll loop until done."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

from tracer.events.decode import EVENT_SIZE, EVENT_SIZES, PacketEvent, counted_events, decode
from tracer.kernel import bccenv
from tracer.node import kubeapi
from tracer.node.names import NetnsNames, Symbolizer, netns_inode
from tracer.node.podnames import PodResolver, resolver_for
from tracer.output.errors import UsageError
from tracer.output.report import Resolver
from tracer.probes.build import ProbeConfig
from tracer.probes.kprobes import CONCERNS, choose_live, netfilter_links_possible
from tracer.probes.pcapfilter import compile_filter
from tracer.probes.scope import Scope
from tracer.sources.live import LiveSource

PACKET_EVENTS = frozenset(kind for kind, size in EVENT_SIZES.items() if size == EVENT_SIZE)


FILTER_HELP = "tcpdump (pcap-filter) expression, run in the kernel, e.g. 'tcp port 80'"


def add_probe_options(parser: argparse.ArgumentParser, filter_help: str = FILTER_HELP, path: bool = True) -> None:
    """What every live command (the tracing commands and the TUI) asks the probes for; `path`: the command traces
    path events (watch, record, the TUI), so it takes their rate cap."""
    parser.add_argument("filter", nargs="*", metavar="FILTER", help=filter_help)
    parser.add_argument("--netns", metavar="NAME", help="only packets in this network namespace (`ip netns` name)")
    parser.add_argument("--ifname", metavar="IF", help="only packets on this interface")
    parser.add_argument("--btf", metavar="FILE", help="BTF to read instead of /sys/kernel/btf/vmlinux")
    parser.add_argument("--kubeconfig", metavar="FILE",
                        help="also name pods, their workloads and other nodes' pods from the Kubernetes API "
                             "(in a pod: its service account); optional, names come from the node without it")
    parser.add_argument("--kubelet-root", metavar="DIR",
                        help="root of the kubelet's tree (var/log/pods, var/lib/kubelet/pods) that names pods; "
                             "default: / and the built-in lab's root")
    parser.add_argument("--ready-file", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--ringbuf-pages", type=int, default=256, metavar="N",
                        help="ring buffer size in 4 KiB pages, a power of two (default %(default)s = 1 MiB); raise "
                             "it when the summary reports lost events")
    if path:
        parser.add_argument("--path-rate", type=int, default=ProbeConfig.path_rate, metavar="N",
                            help="at most N path events per second per CPU; over that, packets are skipped before they "
                                 "are copied or filtered, and counted as sampled (default %(default)s)")


def add_trace_options(parser: argparse.ArgumentParser, path: bool = True) -> None:
    add_probe_options(parser, path=path)
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tc", action="append", metavar="[NETNS/]IF", default=[],
                        help="also trace path events with tc ingress/egress programs on this interface (repeatable)")
    # Read the ring buffer in batches every MS instead of waking per event (tests use it to overflow it).
    parser.add_argument("--poll-interval", type=float, default=0, metavar="MS", help=argparse.SUPPRESS)


def check_namespaces(args: argparse.Namespace) -> None:
    """--netns and every --node name an existing namespace: a usage error (exit 2) before anything slow
    (compiling, the recording header), not after a second of compiling for nothing."""
    for name in [getattr(args, "netns", None), *(getattr(args, "node", None) or ())]:
        if name:
            netns_inode(name)


def probe_config(args: argparse.Namespace, path: bool, netfilter: bool = False, icmp: bool = False,
                 overlay: bool = False) -> ProbeConfig:
    """overlay: a `podtrace overlay` session, whose VXLAN and fragmentation kprobe events skip its pcap filter."""
    check_namespaces(args)
    expression = " ".join(args.filter)
    pages = args.ringbuf_pages
    if pages < 1 or pages & (pages - 1):
        raise UsageError(f"--ringbuf-pages {pages} is not a power of two")
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be positive")
    path_rate = getattr(args, "path_rate", ProbeConfig.path_rate)
    if path_rate < 1:
        raise UsageError(f"--path-rate {path_rate} must be at least 1")
    # The kprobe side of the attach ladder (kernels with kprobes): netfilter verdicts with table and chain for
    # every session; VXLAN and fragmentation kprobes with the path events.
    # IPVS kprobes (bpf/ipvs.c) with Service flows: kube-proxy's IPVS mode never passes netfilter's NAT.
    kprobes = choose_live((CONCERNS if path else ("netfilter",)) + (("ipvs",) if netfilter else ()))
    if netfilter and not netfilter_links_possible():
        sys.stderr.write(f"podtrace: kernel {platform.release()} has no BPF netfilter links (6.4+): no per-packet "
                         "NAT tuples" + (", netfilter verdicts from kprobes" if kprobes else "") + "\n")
        netfilter = False
    if getattr(args, "ct_flows_max", 1) < 1 or getattr(args, "ct_idle", 1) <= 0:
        raise UsageError("--ct-flows-max must be at least 1 and --ct-idle positive")
    nodes = tuple(getattr(args, "node", None) or ())
    return ProbeConfig(
        filter=compile_filter(expression),
        # --netns is one namespace (a constant in the C); --node a node with its pods (a map), in every program.
        netns_inode=netns_inode(args.netns) if args.netns else None,
        scope=Scope(nodes=nodes) if nodes else None,
        netfilter=netfilter,
        # `flows` counts from conntrack unless asked to time every packet; record and the TUI keep the hook timing
        netfilter_conntrack=netfilter and getattr(args, "hook_timing", None) is False,
        ct_flows_max=getattr(args, "ct_flows_max", ProbeConfig.ct_flows_max),
        ct_idle_s=getattr(args, "ct_idle", ProbeConfig.ct_idle_s),
        kprobes=kprobes,
        tc_interfaces=tuple(getattr(args, "tc", None) or ()),
        netfilter_netns=tuple(getattr(args, "node", None) or [args.netns]) if netfilter else (None,),
        ifname=args.ifname,
        path=path,
        ringbuf_pages=pages,
        path_rate=path_rate,
        icmp=icmp,
        overlay_kprobes_unfiltered=overlay,
    )


class StopFlag:
    """Set by SIGINT/SIGTERM, so the loop ends cleanly and the summary is printed."""

    def __init__(self) -> None:
        self.stopped = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopped = True


def pod_resolver(args: argparse.Namespace) -> PodResolver:
    """Pods named from this node (cgroups and the kubelet's directories), never from the lab's manifest."""
    return resolver_for(getattr(args, "kubelet_root", None))


def node_resolver(args: argparse.Namespace, reasons: dict[int, str]) -> tuple[Resolver, PodResolver]:
    """The resolver of a live session: netns names, kernel symbols, and pods named from this node (then from the
    Kubernetes API with --kubeconfig); the pod resolver too, refreshed at the end for pods created meanwhile."""
    pods = pod_resolver(args)
    pods.refresh()  # the node's pods as the trace starts; one created later is read when its IP first shows
    api = kubeapi.from_args(getattr(args, "kubeconfig", None))
    if api is not None:
        api.names()  # listed before the trace: an unreachable API is said now, in one line

    def pod(ip: str) -> str | None:  # this node's own view first: observed; the API's for the rest
        found = pods.label_of_ip(ip)
        listed = api.names() if found is None and api is not None else None
        return found or (listed.pod_label(ip) if listed else None)

    def owner(ip: str) -> str | None:
        listed = api.names() if api is not None else None
        return listed.owner(ip) if listed else None

    return Resolver(reasons, NetnsNames().name, Symbolizer(), pod=pod, owner=owner), pods


def run_session(
    args: argparse.Namespace,
    path: bool,
    on_event: Callable[[PacketEvent, Resolver], None] | None = None,
    on_raw: Callable[[bytes], None] | None = None,
    on_start: Callable[[LiveSource, Resolver], None] | None = None,
    on_tick: Callable[[LiveSource], None] | None = None,
    netfilter: bool = False,
    before_close: Callable[[LiveSource], None] | None = None,
    icmp: bool = False,
    overlay: bool = False,
) -> tuple[LiveSource, Resolver, int]:
    """Trace until --duration or a signal; returns the closed source, its resolver and the event count.

    on_start runs once the probes are attached (before --ready-file is written); on_tick after every poll.
    """
    config = probe_config(args, path, netfilter, icmp, overlay)
    bccenv.require_root("tracing")
    source = LiveSource(config, args.btf)
    if args.dump_bpf:
        sys.stdout.write(source.build.dump())
        raise SystemExit(0)
    names, pods = node_resolver(args, source.reasons)
    stop = StopFlag()
    source.start()
    count = 0
    try:
        if on_start:
            on_start(source, names)
        if args.ready_file:
            with open(args.ready_file, "w", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()}\n")
        deadline = time.monotonic() + args.duration if args.duration else None
        while True:
            finished = stop.stopped or (deadline is not None and time.monotonic() >= deadline)
            if args.poll_interval and not finished:
                time.sleep(args.poll_interval / 1000)
                batch = source.poll_raw(0)
            else:
                batch = source.poll_raw(0 if finished else 100)  # a last poll drains what arrived before the stop
            count += counted_events(batch)
            for raw in batch:
                if on_raw:
                    on_raw(raw)
                if on_event and raw[0] in PACKET_EVENTS:
                    on_event(decode(raw), names)
            if on_tick:
                on_tick(source)
            if finished:
                break
        if before_close:
            before_close(source)
    finally:
        source.close()
    pods.refresh(keep_gone=True)  # pods created during the trace, for the report that follows
    return source, names, count
