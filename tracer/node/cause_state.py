"""Reading what tracer/analysis/causes.py needs from the namespaces drops happened in: all of its IO.

Per-namespace files (/proc/sys/net, /proc/thread-self/net/snmp) are read with this thread moved into the
namespace (conntrack.in_netns), so no process is started for them; `ip -n NS` answers routes and links, and sysfs
(RPS masks) is read under `ip netns exec`, which mounts that namespace's /sys. Only what a drop row needs is read:
a route for each destination of a route failure, the rules of a namespace with netfilter drops, and so on.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tracer.analysis.causes import (
    MTU_REASONS,
    NETFILTER_REASONS,
    ROUTE_FUNCTIONS,
    ROUTE_REASONS,
    NetnsState,
    RouteAnswer,
    explain,
    parse_cpu_mask,
)
from tracer.node import conntrack
from tracer.node.kubeproxy.collect import collect as collect_rules
from tracer.node.kubeproxy.model import ServiceMap
from tracer.output.errors import PodtraceError

MAX_ROUTES = 64  # distinct destinations asked per namespace: a scan of thousands of addresses asks for 64
TIMEOUT = 10.0
SYSCTLS = ("net.core.netdev_max_backlog", "net.core.rmem_max")


def _target(netns: str) -> str | None:
    """conntrack.in_netns's argument: None for podtrace's own namespace; an `ip netns` name otherwise."""
    if netns == "host":
        return None
    if not netns or "/" in netns or netns in (".", "..") or not os.path.exists(f"/run/netns/{netns}"):
        raise PodtraceError(f"{netns!r} is not an `ip netns` name")
    return netns


def parse_icmp(text: str) -> dict[str, int]:
    """The Icmp: counters of /proc/net/snmp (a header line, then a value line)."""
    lines = [line.split() for line in text.splitlines() if line.startswith("Icmp:")]
    if len(lines) < 2:
        return {}
    return dict(zip(lines[0][1:], (int(v) for v in lines[1][1:])))


def icmp_counters(netns: str) -> dict[str, int] | None:
    try:
        with conntrack.in_netns(_target(netns)):
            return parse_icmp(Path("/proc/thread-self/net/snmp").read_text())
    except (OSError, PodtraceError):
        return None


def named_namespaces(limit: int = 256) -> list[str]:
    """"host" and the `ip netns` names (a bounded number), for a session that traces every namespace."""
    try:
        names = sorted(os.listdir("/run/netns"))[:limit]
    except OSError:
        names = []
    return ["host", *names]


def icmp_snapshot(namespaces: Iterable[str]) -> dict[str, dict[str, int]]:
    """ICMP counters per namespace, read at the start of a session (the end is read with the rest)."""
    return {name: found for name in namespaces if (found := icmp_counters(name)) is not None}


def _run(argv: list[str]) -> tuple[str, str]:
    """(stdout, first line of stderr)."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return "", str(err)
    error = (proc.stderr.strip().splitlines() or [""])[0] if proc.returncode else ""
    return proc.stdout, error.removeprefix("RTNETLINK answers: ")


def _ip(netns: str, *args: str) -> list[str]:
    return ["ip", *(["-n", netns] if netns != "host" else []), *args]


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else []
    except json.JSONDecodeError:
        return []


def _prefix_len(route: dict[str, Any]) -> int:
    dst = str(route.get("dst", ""))
    if dst == "default":
        return 0
    return int(dst.split("/", 1)[1]) if "/" in dst else 32


def route_answer(netns: str, dst: str) -> RouteAnswer:
    out, error = _run(_ip(netns, "-j", "route", "get", dst))
    return parse_route_answer(dst, out, error, _run(_ip(netns, "-j", "route", "show", "table", "all", "match", dst))[0])


def parse_route_answer(dst: str, get_out: str, get_error: str, match_out: str) -> RouteAnswer:
    """`ip -j route get DST` (its stdout and error) and `ip -j route show table all match DST` -> the answer."""
    got = _json(get_out)
    dev = str(got[0].get("dev", "")) if got and isinstance(got[0], dict) else ""
    listed = _json(match_out)
    routes = [r for r in listed if isinstance(r, dict) and r.get("type") not in ("local", "broadcast")]
    best = max(routes, key=_prefix_len) if routes else None
    return RouteAnswer(dst, get_error, dev, best)


def _rp_filter(netns: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with conntrack.in_netns(_target(netns)):
        base = Path("/proc/sys/net/ipv4/conf")
        for iface in sorted(os.listdir(base)):
            try:
                out[iface] = int((base / iface / "rp_filter").read_text())
            except (OSError, ValueError):
                continue
    return out


def _read_sysctls() -> dict[str, int]:
    out = {}
    for name in SYSCTLS:
        try:
            out[name] = int(Path("/proc/sys", name.replace(".", "/")).read_text())
        except (OSError, ValueError):
            continue
    return out


def _sysctls(netns: str) -> dict[str, int]:
    """The namespace's values; net.core's backlog and rmem_max exist only in the initial one: read there."""
    with conntrack.in_netns(_target(netns)):
        own = _read_sysctls()
    return {**_read_sysctls(), **own}


def parse_rps(text: str) -> dict[str, list[int]]:
    """`grep -H . /sys/class/net/*/queues/rx-*/rps_cpus` output -> device -> CPUs (union over its queues)."""
    out: dict[str, set[int]] = {}
    for line in text.splitlines():
        path, _, mask = line.partition(":")
        parts = path.split("/")
        if len(parts) >= 6 and parts[-1] == "rps_cpus":
            cpus = parse_cpu_mask(mask)
            if cpus:
                out.setdefault(parts[4], set()).update(cpus)
    return {dev: sorted(cpus) for dev, cpus in out.items()}


def _rps(netns: str) -> dict[str, list[int]]:
    glob = "grep -H . /sys/class/net/*/queues/rx-*/rps_cpus"
    argv = (["ip", "netns", "exec", netns] if netns != "host" else []) + ["sh", "-c", glob + " 2>/dev/null; true"]
    return parse_rps(_run(argv)[0])


def parse_irq_devices(interrupts: str) -> dict[int, str]:
    """/proc/interrupts: IRQ number -> its action name ("eth0-TxRx-0")."""
    out = {}
    for line in interrupts.splitlines():
        head, _, rest = line.partition(":")
        if head.strip().isdigit() and rest.split():
            out[int(head)] = rest.split()[-1]
    return out


def irq_affinity(devices: Iterable[str]) -> dict[str, list[int]]:
    """CPUs each device's IRQs go to (effective affinity), for devices named in /proc/interrupts ("eth0-rx-0")."""
    wanted = set(devices)
    try:
        irqs = parse_irq_devices(Path("/proc/interrupts").read_text())
    except OSError:
        return {}
    out: dict[str, set[int]] = {}
    for irq, action in irqs.items():
        dev = next((d for d in wanted if action == d or action.startswith(d + "-")), None)
        if dev is None:
            continue
        try:
            text = Path(f"/proc/irq/{irq}/effective_affinity").read_text()
        except OSError:
            continue
        out.setdefault(dev, set()).update(parse_cpu_mask(text))
    return {dev: sorted(cpus) for dev, cpus in out.items()}


def _needs(rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    """netns -> what its rows need read: "rules", "rp", "rps", "route:<ip>", "mtu"."""
    needs: dict[str, set[str]] = {}
    for row in rows:
        reason = str(row.get("reason", ""))
        function = str(row.get("location", "")).split("+", 1)[0]
        want = needs.setdefault(str(row.get("netns", "")), set())
        if reason in NETFILTER_REASONS:
            want.add("rules")
        elif reason == "IP_RPFILTER":
            want |= {"rp", f"route:{row.get('src')}"}
        elif reason in ROUTE_REASONS or function.startswith(ROUTE_FUNCTIONS):
            want.add(f"route:{row.get('dst')}")
        elif reason in MTU_REASONS:
            want |= {"mtu", f"route:{row.get('dst')}"}
        elif reason == "CPU_BACKLOG" or function == "enqueue_to_backlog":
            want.add("rps")
    return needs


def collect(rows: list[dict[str, Any]], icmp_before: dict[str, dict[str, int]],
            services: dict[str, ServiceMap] | None = None, rules: bool = True) -> dict[str, NetnsState]:
    """The state of every namespace the rows died in, as far as their causes need it.

    `services` are rule sets the caller already read (flows reads them per node); others are read here, unless
    `rules` is False (a recording keeps kube-proxy's rules and the conntrack tables apart).
    """
    states: dict[str, NetnsState] = {}
    for netns, want in _needs(rows).items():
        if not rules:
            want.discard("rules")
        state = NetnsState(netns, cpus=os.cpu_count() or 1)
        states[netns] = state
        try:
            _target(netns)
        except PodtraceError as err:
            state.errors = dict.fromkeys(("routes", "rp_filter", "rules"), err.one_line())
            continue
        try:
            _read_into(state, want, icmp_before, services)
        except (PodtraceError, OSError) as err:  # the namespace went away (a pod deleted) while we read it
            why = err.one_line() if isinstance(err, PodtraceError) else str(err)
            state.errors.update({key: why for key in ("routes", "rp_filter", "rules") if key not in state.errors})
    return states


def _read_into(state: NetnsState, want: set[str], icmp_before: dict[str, dict[str, int]],
               services: dict[str, ServiceMap] | None) -> None:
    netns = state.netns
    state.icmp_before = icmp_before.get(netns)
    state.icmp_after = icmp_counters(netns)
    state.sysctls = _sysctls(netns)
    for dst in sorted(w.split(":", 1)[1] for w in want if w.startswith("route:"))[:MAX_ROUTES]:
        state.routes[dst] = route_answer(netns, dst)
    if "rp" in want:
        state.rp_filter = _rp_filter(netns)
    if "mtu" in want:
        links = _json(_run(_ip(netns, "-j", "link", "show"))[0])
        state.mtus = {str(link["ifname"]): int(link["mtu"]) for link in links
                      if isinstance(link, dict) and "ifname" in link and "mtu" in link}
    if "rps" in want:
        state.rps = _rps(netns)
        if netns == "host":
            state.irqs = irq_affinity(os.listdir("/sys/class/net"))
    if "rules" in want:
        try:
            state.conntrack = conntrack.health(_target(netns))
        except PodtraceError as err:
            state.errors["conntrack"] = err.one_line()
        known = (services or {}).get(netns)
        if known is not None:
            state.services = known
        else:
            try:
                state.services = collect_rules(_target(netns))
            except PodtraceError as err:
                state.errors["rules"] = err.one_line()


def add_causes(rows: list[dict[str, Any]], states: Mapping[str, NetnsState]) -> None:
    """Set each row's "cause" (tracer/causes.Cause as JSON)."""
    for row in rows:
        row["cause"] = explain(row, states.get(str(row.get("netns", "")))).to_json()
