"""`podtrace mtu`: an active path MTU probe from a pod or namespace, with an MTU verdict on the links."""

from __future__ import annotations

import argparse
import json
import sys

from tracer.output.errors import UsageError

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
