"""`podtrace lab up|down|status|traffic|fault`: the built-in two-node lab from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from tracer.output.errors import NotRootError, PodtraceError

EPILOG = """\
examples:
  sudo podtrace lab up                          two nodes, 4 pods, kube-proxy in iptables mode
  sudo podtrace lab up --proxy-mode nftables --services 2000
  sudo podtrace lab up --proxy-mode nftables --manifest dualstack   IPv6 ClusterIP, LoadBalancer, ExternalIP
  sudo podtrace lab traffic --rate 50 --duration 10
  sudo podtrace lab traffic --background        until `lab down` (at most an hour)
  sudo podtrace lab fault --list
  sudo podtrace lab fault drop-backend --on
  podtrace lab status --json
  sudo podtrace lab down                        removes everything; safe to run twice
"""


def _progress(line: str) -> None:
    print(f"lab: {line}", flush=True)


def _need_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("the lab")


def cmd_up(args: argparse.Namespace) -> int:
    _need_root()
    from tracer.lab import control

    control.up(args.manifest, args.proxy_mode, args.services, args.if_down, progress=_progress)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _need_root()
    from tracer.lab import control

    control.down(progress=_progress)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tracer.lab import control

    st = control.status()
    if args.json:
        print(json.dumps(st, sort_keys=True))
        return 0
    print(_format_status(st))
    return 0


def _format_status(st: dict[str, Any]) -> str:
    if not st["up"]:
        return "lab is down"
    age = time.time() - (st.get("started") or time.time())
    lines = [f"lab is up for {age:.0f} s: proxy mode {st['proxy_mode']}, {st['services']} Services"
             f" ({st['dummy_services']} dummies), manifest {st['manifest']}"]
    for name, n in st["nodes"].items():
        lines.append(f"  node {name:<10} netns {n['netns']:<12} {n['ip']:<15} pods {n['pod_cidr']}"
                     + ("" if n["present"] else "  MISSING"))
    for name, p in st["pods"].items():
        lines.append(f"  pod  {name:<10} netns {p['netns']:<12} {p['ip']:<15} on {p['node']}"
                     + ("" if p["present"] else "  MISSING"))
    for name, proc in st["processes"].items():
        lines.append(f"  proc {name:<22} {proc['running']}/{len(proc['pids'])} running")
    lines.append("  faults on: " + (", ".join(st["faults"]) or "none"))
    return "\n".join(lines)


def cmd_traffic(args: argparse.Namespace) -> int:
    _need_root()
    from tracer.lab import processes, state, traffic

    if args.background:
        data = state.require()
        old = data.setdefault("processes", {}).pop("traffic", [])
        processes.stop(old)
        extra = [a for s in (args.service or []) for a in ("--service", s)]
        duration = args.duration if args.duration is not None else 3600.0
        pid = processes.python_module("tracer.lab.traffic", "--rate", str(args.rate), "--duration",
                                      str(duration), *extra, log="traffic.log")
        data["processes"]["traffic"] = [pid]
        state.save(data)
        print(f"lab: traffic in the background (pid {pid}, {args.rate:g}/s for at most {duration:g} s);"
              " `podtrace lab down` stops it")
        return 0
    summary = traffic.run(args.rate, args.duration if args.duration is not None else 10.0, args.service)
    print(json.dumps(summary.to_dict()) if args.json else summary.format())
    return 0


def cmd_fault(args: argparse.Namespace) -> int:
    from tracer.lab import faults, state
    from tracer.output.errors import UsageError

    if args.list or not args.name:
        data = state.load()
        active = data.get("faults", {}) if data else {}
        for f in faults.FAULTS.values():
            mark = "on " if f.name in active else "off"
            print(f"{f.name:<16} {mark}  {f.breaks}")
        return 0
    if args.on == args.off:
        raise UsageError(f"say --on or --off for fault {args.name}", "e.g. podtrace lab fault drop-backend --on")
    _need_root()
    changed, details = faults.set_fault(args.name, args.on)
    what = "on" if args.on else "off"
    said = ", ".join(f"{k}={v}" for k, v in details.items() if k != "old")
    print(f"lab: fault {args.name} {what}" + ("" if changed else " already") + (f" ({said})" if said else ""))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    lab = subparsers.add_parser("lab", help="the built-in two-node Kubernetes node lab in network namespaces",
                                description="A two-node Kubernetes node network in network namespaces: flannel"
                                " VXLAN, cni0 bridges, pods, kube-proxy rules, traffic and faults.",
                                epilog=EPILOG, formatter_class=fmt)
    sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND")
    lab.set_defaults(func=lambda _args: (lab.print_help(), 2)[1])

    up = sub.add_parser("up", help="build the lab",
                        epilog="examples:\n  sudo podtrace lab up\n"
                        "  sudo podtrace lab up --proxy-mode nftables --services 2000\n"
                        "  sudo podtrace lab up --if-down        (no error when it is already up)",
                        formatter_class=fmt)
    up.add_argument("--manifest", metavar="FILE",
                    help="topology JSON, or `dualstack` for the shipped IPv6/LoadBalancer one (nftables mode; "
                         "default: the shipped default.json)")
    up.add_argument("--proxy-mode", choices=("iptables", "nftables", "ipvs"), default="iptables")
    up.add_argument("--services", type=int, default=0, metavar="N",
                    help="add N dummy ClusterIP Services (rule-count experiments)")
    up.add_argument("--if-down", action="store_true", help="do nothing if the lab is already up")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="remove everything the lab made (safe to run twice)",
                          epilog="examples:\n  sudo podtrace lab down", formatter_class=fmt)
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="what is up, proxy mode, faults",
                            epilog="examples:\n  podtrace lab status\n  podtrace lab status --json | jq .faults",
                            formatter_class=fmt)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=cmd_status)

    tr = sub.add_parser("traffic", help="pod -> Service traffic with a summary",
                        epilog="examples:\n  sudo podtrace lab traffic --rate 100 --duration 5\n"
                               "  sudo podtrace lab traffic --service default/web:http --json",
                        formatter_class=fmt)
    tr.add_argument("--rate", type=float, default=20.0, help="attempts per second (default 20, max 5000)")
    tr.add_argument("--duration", type=float, help="seconds (default 10; 3600 with --background)")
    tr.add_argument("--background", action="store_true", help="detach; `lab down` stops it")
    tr.add_argument("--service", action="append", metavar="NAME", help="only this Service (port); repeatable")
    tr.add_argument("--json", action="store_true", help="summary as one JSON object")
    tr.set_defaults(func=cmd_traffic)

    fault = sub.add_parser("fault", help="switch a fault on or off; --list shows them",
                           epilog="examples:\n  podtrace lab fault --list\n  sudo podtrace lab fault mtu-mismatch --on"
                                  "\n  sudo podtrace lab fault mtu-mismatch --off", formatter_class=fmt)
    fault.add_argument("name", nargs="?", help="fault name")
    fault.add_argument("--on", action="store_true")
    fault.add_argument("--off", action="store_true")
    fault.add_argument("--list", action="store_true", help="one line per fault: what it breaks")
    fault.set_defaults(func=cmd_fault)
    return lab


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="podtrace")
    add_parser(parser.add_subparsers())
    ns = parser.parse_args()
    try:
        sys.exit(ns.func(ns))
    except PodtraceError as err:
        sys.exit(f"podtrace: {err.one_line()}")
