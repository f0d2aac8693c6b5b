"""`podtrace tui`: the interactive view, live on this node or on a recording (`--replay FILE`).

Textual is imported only inside run_tui: tracer/ stays headless (a test checks that importing any tracer module
leaves textual out of sys.modules).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tracer.output.errors import PodtraceError, UsageError

EPILOG = """\
keys: 1-6 views (7 Journeys on a merged recording), Enter drill into a drop, a Service flow or a journey, s sort
Services, / view filter, p pause, r record, x screenshot (SVG), ? help, q quit. Recordings and screenshots go to
--save-dir (0600 files).

examples:
  sudo podtrace tui
  sudo podtrace tui --netns pt-node1 'udp or tcp'
  podtrace tui --replay incident.ptrec
  podtrace tui --replay all.ptrec.gz       # `podtrace merge ... -o all.ptrec.gz`: 7 shows the journeys
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    tui = subparsers.add_parser(
        "tui", help="interactive view: drops, Service flows, MTU, softirq, probes (the default command)",
        description="Interactive terminal UI, live on this node or replaying a recording.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_tui_options(tui)
    tui.set_defaults(func=run_tui)


def add_tui_options(parser: argparse.ArgumentParser) -> None:
    from tracer.sources.session import add_probe_options

    add_probe_options(parser, "tcpdump (pcap-filter) expression run in the kernel; `/` in the TUI narrows it further")
    parser.add_argument("--replay", metavar="FILE", help="show a recording instead of the live node")
    parser.add_argument("--hook-timing", action="store_true",
                        help="time each packet in each netfilter hook (NF us): every packet copied and parsed at 11 "
                             "points, about as costly as forwarding it; default: Service flows counted "
                             "from conntrack, untimed")
    parser.add_argument("--node", action="append", metavar="NETNS",
                        help="node network namespace for the Services view's netfilter links and kube-proxy rules, "
                             "audited by the Node view (repeatable; default: this namespace, which is the node on a "
                             "real worker)")
    parser.add_argument("--save-dir", metavar="DIR", default=None,
                        help="where r (record) and x (screenshot) write; default $PODTRACE_DIR, else "
                             "~/.local/state/podtrace (made 0700)")


def tui_defaults() -> dict[str, Any]:
    """The options run_tui reads, for `podtrace` with no subcommand: the parser's own defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    add_tui_options(parser)
    return vars(parser.parse_args([]))


def run_tui(args: argparse.Namespace) -> int:
    for name, value in tui_defaults().items():
        if not hasattr(args, name):
            setattr(args, name, value)
    _require_terminal()
    if args.replay:
        if args.filter or args.netns or args.ifname:
            raise UsageError("--replay takes no kernel filter, --netns or --ifname",
                             "use `/` inside the TUI to filter a recording")
        source, info = _replay(args.replay)
    else:
        source, info = _live(args)
    from tui.app import PodtraceApp, run_app  # textual only when the TUI runs

    if args.save_dir:
        info.save_dir = args.save_dir
    app = PodtraceApp(source, info, ready_file=args.ready_file, ingest="process")
    code = run_app(app)
    if app.error:
        raise _Failed(app.error)
    return code


def _require_terminal() -> None:
    """Without a terminal nobody can read the screen or press q: a failed source would leave the app running
    for good (seen: 60% CPU after the probes failed to attach, with stdin from /dev/null)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("podtrace tui needs a terminal (its stdin and stdout are not one)",
                         "for a stream of events use `podtrace watch`, for a file `podtrace record -o FILE`")


class _Failed(PodtraceError):
    """The source failed inside the TUI: printed on one line after the screen is restored."""


def _live(args: argparse.Namespace) -> tuple[Any, Any]:
    import threading

    from tracer.check.table import NodeFindingsTable
    from tracer.kernel import bccenv
    from tracer.kernel.capabilities import kernel_version, probe_kernel
    from tracer.node import cause_state
    from tracer.sources.live import LiveSource
    from tracer.sources.session import node_resolver, probe_config
    from tui.services import ServiceFlowsTable
    from tui.softirq import SoftirqTable
    from tui.sources import SessionInfo

    args.duration = None
    config = probe_config(args, path=bool(args.filter))
    bccenv.require_root("tracing")
    # Service flows need BPF netfilter links (kernel >= 6.4); without them the Services view says so.
    if kernel_version() >= (6, 4):
        config.netfilter = True
        config.netfilter_conntrack = not args.hook_timing  # `flows`' default: a program per packet, not 11
        config.netfilter_netns = tuple(args.node or [None])
    source = LiveSource(config, args.btf)
    names, _pods = node_resolver(args, source.reasons)  # pods named from the node, as `drops` names them
    plan_done = threading.Event()
    # ICMP counters at the start: a REJECT's errors rate-limited since then turn "refused" into timeouts
    icmp_before = cause_state.icmp_snapshot([args.netns] if args.netns else cause_state.named_namespaces())
    info = SessionInfo(names, mode="live", kernel_filter=config.filter.expression, programs=list(source.build.programs),
                       probe_plan=lambda: probe_kernel()[0], live_clock=True,
                       # the Node view audits the nodes being traced (--node), not the namespace podtrace runs in
                       tables={"node": NodeFindingsTable(list(args.node) if args.node else args.netns),
                               "flows": ServiceFlowsTable(source, args.node or [None]),
                               "softirq": SoftirqTable(after=plan_done)},
                       record_header=lambda: _record_header(args, source, info), plan_done=plan_done,
                       explain=lambda rows: cause_state.add_causes(rows, cause_state.collect(rows, icmp_before)))
    return source, info


def _record_header(args: argparse.Namespace, source: Any, info: Any) -> dict[str, Any]:
    """A `podtrace record`-style header for a recording started with `r`, from what the TUI already knows (its attach
    plan was probed once; probing again would compile BCC programs while others may be compiling, which crashes)."""
    import os

    from tracer.node.declared_names import declared_json
    from tracer.node.names import named_netns
    from tui.recording import basic_header

    known = {inode: name for name, inode in named_netns().items()}
    known[os.stat("/proc/self/ns/net").st_ino] = "host"
    info.names.symbol(1)  # load kallsyms before the first drop needs a name
    header = basic_header(info.names, info.node, info.kernel, info.programs, info.attached,
                          info.plan.to_json() if info.plan else None, info.kernel_filter)
    header["filter"] = {"expression": " ".join(args.filter), "netns": args.netns,
                        "netns_inode": source.config.netns_inode, "ifname": args.ifname}
    header["names"] = {"netns": {str(k): v for k, v in known.items()}, "lab": declared_json()}
    node = info.tables.get("node")
    if hasattr(node, "header_entry"):  # the Node view's findings, as `podtrace record` keeps them
        header["node_checks"] = node.header_entry()
    return header


def _replay(path: str) -> tuple[Any, Any]:
    from tui.sources import open_replay

    return open_replay(path)
