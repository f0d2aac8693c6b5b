"""`podtrace overlay`: VXLAN tunnels between nodes, the inner pod flows that rode them, their drops and fragments."""

from __future__ import annotations

import argparse
import json
import sys

from tracer.output.errors import PodtraceError

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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
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
