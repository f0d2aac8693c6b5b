"""`podtrace mtu` (active path MTU probe with an MTU verdict) and `podtrace softirq` (NET_RX/NET_TX latency)."""

from __future__ import annotations

import argparse
import json
import sys

from tracer.output.errors import PodtraceError, UsageError

MTU_EPILOG = """\
Sends DF probes from inside the source namespace (ICMP echo, UDP or a TCP SYN padded to the size) and
binary-searches the largest IP total length that arrives, tracing drops and ICMP errors in the kernel
meanwhile. Sizes are IP total lengths: 1450 means a 1450-byte IP packet. At most --max-probes probes and
--max-seconds seconds. --watch S keeps tracing S seconds after the search, so the verdict's counts (frag-needed
sent, fragments, reassembly timeouts) include the node's own traffic. Reassembly timeouts come from
FRAG_REASM_TIMEOUT drops, ICMP time-exceeded sent, and ReasmTimeout/ReasmFails of /proc/net/snmp read inside
the source, node and target namespaces.

exit codes: 0 ok, 1 error, 2 bad usage, 3 an MTU mismatch was found and --fail-on-mismatch was given

examples:
  sudo podtrace mtu --from pt-client --to 10.244.1.2
  sudo podtrace mtu --from client --to 10.244.1.3:8080 --proto tcp --json
  sudo podtrace mtu --from /proc/4242/ns/net --to 10.244.1.2:53 --proto udp
  sudo podtrace mtu --from client --to 10.244.1.3 --watch 30
"""

SOFTIRQ_EPILOG = """\
wait: from raise (irq:softirq_raise) to the handler starting (irq:softirq_entry); run: entry to exit.
defer (JSON net_rx_wait_ksoftirqd): the waits whose handler ran in ksoftirqd. Softirqs raised by an interrupt or
by a task sending packets run inline, at irq exit or local_bh_enable, so CPU load alone hardly changes their
wait. A CPU that cannot keep up with its receive work defers NET_RX behind busy tasks (to ksoftirqd or the next
tick): its own row shows waits of milliseconds, backlog drops and exhausted NAPI polls, which the all-CPU row can
hide. The findings at the end name such CPUs (JSON: "findings" in the all-CPU object).
p50/p99 are estimated from the kernel's log2 buckets (within a factor of two of the truth); max is exact.
napi exhausted: polls that used their whole budget; softnet dropped/squeezed: /proc/net/softnet_stat deltas.

examples:
  sudo podtrace softirq --duration 10
  sudo podtrace softirq --json --duration 5 | jq '.net_rx_wait.p99_us'
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    mtu = subparsers.add_parser(
        "mtu", help="largest DF packet a pod's path carries, where bigger ones die, and an MTU verdict",
        description="Probe the path MTU from a pod or network namespace to an IP, and judge the link MTUs on it.",
        epilog=MTU_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mtu.add_argument("--from", dest="source", required=True, metavar="POD|NETNS",
                     help="lab pod name, `ip netns` name, or a namespace file such as /proc/PID/ns/net")
    mtu.add_argument("--to", dest="target", required=True, metavar="IP[:PORT]", help="destination address")
    mtu.add_argument("--proto", choices=("icmp", "udp", "tcp"), default="icmp", help="probe protocol (icmp)")
    mtu.add_argument("--json", action="store_true", help="one JSON object")
    mtu.add_argument("--max-probes", type=int, default=40, help="probe count limit (40)")
    mtu.add_argument("--max-seconds", type=float, default=60.0, help="time limit (60 s)")
    mtu.add_argument("--max-size", type=int, help="largest size to try (default: the source interface's MTU)")
    mtu.add_argument("--subnet-env", default="/run/flannel/subnet.env", help="flannel's subnet.env")
    mtu.add_argument("--fail-on-mismatch", action="store_true", help="exit 3 when the verdict finds a mismatch")
    mtu.add_argument("--watch", type=float, default=0.0, metavar="S",
                     help="keep tracing S seconds after the search for live counts (0)")
    mtu.add_argument("--ready-file", metavar="PATH", help=argparse.SUPPRESS)
    mtu.set_defaults(func=run_mtu)

    softirq = subparsers.add_parser(
        "softirq", help="NET_RX/NET_TX softirq wait and run latency, NAPI budget, softnet drops per CPU",
        description="Measure softirq latency per CPU with in-kernel log2 histograms.",
        epilog=SOFTIRQ_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    softirq.add_argument("--duration", type=float, default=5.0, metavar="S", help="measure for S seconds (5)")
    softirq.add_argument("--interval", type=float, default=0.5, metavar="S",
                         help="read the maps every S seconds, 0.1-1 (0.5)")
    softirq.add_argument("--json", action="store_true", help="one JSON object per CPU, then one for all CPUs")
    softirq.add_argument("--ready-file", metavar="PATH", help=argparse.SUPPRESS)
    softirq.set_defaults(func=run_softirq)

    add_overlay_parser(subparsers)


OVERLAY_EPILOG = """\
Traces packet path events and drops for VXLAN (UDP 8472 flannel, 4789 IANA) and IP fragments, and groups them
by tunnel: outer source node -> outer destination node, VNI, UDP port, with the inner pod flows that rode it.
Packet counts are the largest count seen at any one point (queue, xmit, rx), so a packet is counted once.
Drops of VXLAN packets name the inner flow. Fragments: outer (the VXLAN packet fragmented on the underlay),
inner in the tunnel (the pod packet fragmented before encapsulation), and outside the tunnel (pod fragments
on cni0/flannel.1/veths).
Where the kernel has kprobes, also vxlan_rcv and vxlan_xmit_one (the VNI and the tunnel's remote from the
device's own forwarding entry, before encapsulation) and ip_do_fragment: "cut" counts packets this node
fragmented itself, with the output device and its MTU (on the underlay, before encapsulation, or elsewhere).

examples:
  sudo podtrace overlay --duration 10
  sudo podtrace overlay --netns pt-node2 --json --duration 5
"""


def add_overlay_parser(subparsers: argparse._SubParsersAction) -> None:
    overlay = subparsers.add_parser(
        "overlay", help="VXLAN tunnels between nodes with their inner pod flows, drops and fragments",
        description="Correlate VXLAN outer and inner packets: which tunnel each pod flow rode, underlay drops "
                    "named by inner flow, fragment counts.",
        epilog=OVERLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    overlay.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    overlay.add_argument("--json", action="store_true", help="one JSON object")
    overlay.add_argument("--netns", metavar="NODE", help="only packets in this network namespace (`ip netns` name)")
    overlay.add_argument("--btf", metavar="FILE", help="BTF to read instead of /sys/kernel/btf/vmlinux")
    overlay.add_argument("--ready-file", metavar="PATH", help=argparse.SUPPRESS)
    overlay.set_defaults(func=run_overlay, filter=[], ifname=None, dump_bpf=False, ringbuf_pages=256, tc=[],
                         poll_interval=0)


def _nodes(netns: str | None) -> list[str | None]:
    """--netns, and the nodes the environment declares (the lab's, when it is up)."""
    from tracer.node.declared_names import declared

    found = declared()
    return [netns] + ([node for node in found.nodes.values() if node != netns] if found else [])


def _mtu_notes(nodes: list[str | None]) -> list[str]:
    from tracer.analysis.overlay import mtu_notes
    from tracer.check import run_checks

    found = {}
    for node in nodes:
        try:
            found[node or "this node"] = [f for f in run_checks(node, window=0) if f.area == "mtu"]
        except PodtraceError:
            continue
    return mtu_notes(found)


def _service_names(netns: str | None) -> dict[str, str]:
    """Backend and VIP ends -> Service names from kube-proxy's rules in the namespace (and the lab's nodes when
    the lab is up); none where no rules can be read (the groups are then named by their server end)."""
    from tracer.analysis.overlay import services_by_server
    from tracer.node.kubeproxy.collect import collect

    ports = []
    for node in _nodes(netns):
        try:
            ports += collect(node).ports
        except PodtraceError:
            continue
    return services_by_server(ports)


def run_overlay(args: argparse.Namespace) -> int:
    from tracer.analysis.overlay import OVERLAY_FILTER, TunnelTable
    from tracer.output.report import summary_line
    from tracer.sources.session import run_session

    args.filter = [OVERLAY_FILTER]
    table = TunnelTable()

    source, _names, count = run_session(args, path=True, on_event=table.add_named, overlay=True)
    services = _service_names(args.netns)
    notes = _mtu_notes(_nodes(args.netns))
    data = table.to_json(services)
    data["mtu_notes"] = notes
    data["counters"] = dict(source.final_counters)
    data["attached"] = list(source.attached)  # e.g. "kprobe vxlan_xmit_one": which points could be seen
    if args.json:
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        sys.stdout.write(table.format_text(services))
        sys.stdout.write("".join(f"{note}\n" for note in notes))
        sys.stdout.write(summary_line(count, source.final_counters) + "\n")
    sys.stdout.flush()
    return 0


def resolve_source(name: str) -> str:
    """A pod name of this node -> its namespace file; `ip netns` names and namespace files pass through."""
    import os

    if name.startswith("/"):
        if not os.path.exists(name):
            raise UsageError(f"no namespace file {name}")
        return name
    if os.path.exists(f"/run/netns/{name}"):
        return name
    from tracer.node.podnames import PodResolver

    # a pod of this node, by name or namespace/name, as its cgroup and the kubelet's directories name it
    matches = [pod for pod in PodResolver().pods() if name in (pod.name, pod.label)]
    if len(matches) == 1:
        # its `ip netns` name when it has one (containerd pins pod namespaces in /run/netns/cni-...): the path
        # collection reads named namespaces only
        from tracer.node.names import named_netns

        pinned = [netns for netns, inode in named_netns().items() if inode == matches[0].netns]
        return pinned[0] if pinned else f"/proc/{matches[0].pid}/ns/net"
    if matches:
        raise UsageError(f"{len(matches)} pods are named {name!r}: " + ", ".join(pod.label for pod in matches),
                         "give it as namespace/name")
    raise UsageError(f"no pod or network namespace named {name!r}",
                     "give an `ip netns` name, a pod of this node (name or namespace/name), or /proc/PID/ns/net")


def parse_target(text: str) -> tuple[str, int | None]:
    import ipaddress

    host, port = text, None
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"bad port in {text!r}")
        port = int(port_text)
    try:
        if ipaddress.ip_address(host).version != 4:
            raise UsageError("podtrace mtu probes IPv4 targets only for now")
    except ValueError as err:
        raise UsageError(f"{host!r} is not an IP address", "--to takes IP[:PORT]") from err
    return host, port


def run_mtu(args: argparse.Namespace) -> int:
    from tracer.analysis.mtu import verdict
    from tracer.kernel import bccenv
    from tracer.node.mtu_path import collect_path
    from tracer.node.mtuprobe import run_probe

    bccenv.require_root("podtrace mtu")
    if args.watch < 0:
        raise UsageError("--watch must be 0 or more seconds")
    source = resolve_source(args.source)
    target, port = parse_target(args.target)
    path = collect_path(source, target, args.subnet_env) if not source.startswith("/") else None

    def progress(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def ready() -> None:
        if args.ready_file:
            with open(args.ready_file, "w", encoding="utf-8") as handle:
                handle.write("ready\n")

    result = run_probe(source, target, args.proto, port, max_size=args.max_size, max_probes=args.max_probes,
                       max_seconds=args.max_seconds, progress=progress, watch=args.watch, ready=ready)
    judged = verdict(path, result.live) if path else None
    if args.json:
        out = {"probe": result.to_json(), "path": path.to_json() if path else None,
               "verdict": judged.to_json() if judged else None}
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        sys.stdout.write(result.summary() + "\n")
        if path and judged:
            hops = [link for link in (path.pod, path.host_veth, path.bridge, path.overlay, path.underlay) if link]
            sys.stdout.write("path: " + " -> ".join(f"{h.name}@{h.netns} {h.mtu}" for h in hops)
                             + (f" (FLANNEL_MTU {path.flannel_mtu})" if path.flannel_mtu else "") + "\n")
            sys.stdout.write(f"verdict: {judged.text}\n")
        if result.live and result.live.snmp:
            sys.stdout.write("reassembly during the run (/proc/net/snmp): " + ", ".join(
                f"{ns} timeouts +{d['ReasmTimeout']} fails +{d['ReasmFails']}"
                for ns, d in sorted(result.live.snmp.items())) + "\n")
    sys.stdout.flush()
    return 3 if args.fail_on_mismatch and judged and not judged.ok else 0


def run_softirq(args: argparse.Namespace) -> int:
    from tracer.analysis.softirq import SoftirqAggregator, findings, format_table
    from tracer.probes.softirq_probe import SoftirqProbe

    if args.duration <= 0:
        raise UsageError("--duration must be positive")
    interval = min(max(args.interval, 0.1), 1.0)
    import time

    probe = SoftirqProbe()
    probe.start()
    aggregator = SoftirqAggregator()
    try:
        aggregator.add(probe.snapshot())
        if args.ready_file:
            with open(args.ready_file, "w", encoding="utf-8") as handle:
                handle.write("ready\n")
        end = time.monotonic() + args.duration
        try:
            while (remaining := end - time.monotonic()) > 0:
                time.sleep(min(interval, remaining))
                aggregator.add(probe.snapshot())
        except KeyboardInterrupt:
            aggregator.add(probe.snapshot())
    finally:
        probe.close()
    rows = aggregator.report()
    if args.json:
        for row in rows:
            data = row.to_json()
            data["seconds"] = round(aggregator.seconds, 3)
            if row.cpu is None:
                data["findings"] = findings(rows, aggregator.seconds)
            sys.stdout.write(json.dumps(data) + "\n")
    else:
        sys.stdout.write(format_table(rows, aggregator.seconds))
    sys.stdout.flush()
    return 0
