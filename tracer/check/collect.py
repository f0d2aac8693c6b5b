"""Reading the node: sysctls, /proc files, `ip -j`, `iptables-save`, `nft -j`, `ipvsadm`. All of check's IO.

With a netns name, the per-namespace part is read by this module re-run under `ip netns exec NAME` (a child
process prints the NodeState as JSON), so the caller's threads never change namespace; /proc/stat and
/proc/net/softnet_stat are global and are sampled here, across the softirq window.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tracer.check.model import NodeState
from tracer.output.errors import PodtraceError, UsageError

PROC_SYS = Path("/proc/sys")
NETNS_DIR = Path("/run/netns")
FLANNEL_ENV = Path("/run/flannel/subnet.env")
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
TIMEOUT = 30.0

SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.core.somaxconn",
    "net.core.netdev_max_backlog",
    "net.core.netdev_budget",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_syn_backlog",
    "net.netfilter.nf_conntrack_count",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_buckets",
    "net.ipv4.vs.conntrack",
    "fs.file-max",
)
CONF_KEYS = ("rp_filter", "arp_ignore", "arp_announce", "forwarding")
# Modules the checks ask about; everything else in /proc/modules is left out of the state.
MODULE_PREFIXES = ("ip_vs", "nf_conntrack", "br_netfilter", "vxlan", "ipip", "geneve", "nf_tables", "ip_tables")


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _sysctl(name: str) -> str | None:
    text = _read(PROC_SYS / name.replace(".", "/"))
    return None if text is None else " ".join(text.split())


def _run(state: NodeState, source: str, argv: list[str]) -> str | None:
    """stdout of a command, or None with the reason in state.errors."""
    if shutil.which(argv[0]) is None:
        state.errors[source] = f"{argv[0]} is not installed"
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        state.errors[source] = f"`{' '.join(argv)}` did not finish in {TIMEOUT:g} s"
        return None
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or f"exit status {proc.returncode}").splitlines()
        state.errors[source] = f"`{' '.join(argv)}`: {lines[0]}"
        return None
    return proc.stdout


def _run_json(state: NodeState, source: str, argv: list[str]) -> Any:
    text = _run(state, source, argv)
    if text is None:
        return None
    try:
        return json.loads(text) if text.strip() else None
    except json.JSONDecodeError as err:
        state.errors[source] = f"`{' '.join(argv)}` printed invalid JSON: {err}"
        return None


def _modules() -> list[str]:
    names = {line.split()[0] for line in (_read("/proc/modules") or "").splitlines() if line.strip()}
    builtin = _read(f"/lib/modules/{os.uname().release}/modules.builtin") or ""
    names |= {Path(line.strip()).name.split(".ko")[0] for line in builtin.splitlines() if line.strip()}
    # Built-in code with parameters shows up in /sys/module even without modules.builtin.
    with contextlib.suppress(OSError):
        names |= set(os.listdir("/sys/module"))
    return sorted(n for n in names if n.startswith(MODULE_PREFIXES))


LOCAL_ROUTE_TYPES = ("local", "broadcast", "multicast", "anycast")
SYS_NET = Path("/sys/class/net")  # under `ip netns exec`, the namespace's own sysfs


def _rps_masks() -> dict[str, str]:
    """Each device queue's RPS mask, "eth0/rx-0" -> "00000002" (0: not steered)."""
    out = {}
    with contextlib.suppress(OSError):
        for dev in sorted(os.listdir(SYS_NET)):
            with contextlib.suppress(OSError):
                for queue in sorted(os.listdir(SYS_NET / dev / "queues")):
                    if queue.startswith("rx-"):
                        text = _read(SYS_NET / dev / "queues" / queue / "rps_cpus")
                        if text is not None:
                            out[f"{dev}/{queue}"] = text.strip()
    return out


def _irq_affinity() -> dict[str, str]:
    """IRQ action name (the last column of /proc/interrupts, e.g. "eth0-TxRx-0") -> its effective CPU mask."""
    out = {}
    for line in (_read("/proc/interrupts") or "").splitlines():
        head, _, rest = line.partition(":")
        if head.strip().isdigit() and rest.split():
            mask = _read(f"/proc/irq/{head.strip()}/effective_affinity")
            if mask is not None:
                out[rest.split()[-1]] = mask.strip()
    return out


def collect_netns_part() -> NodeState:
    """Everything that depends on the network namespace this process is in."""
    state = NodeState()
    state.sysctls = {name: value for name in SYSCTLS if (value := _sysctl(name)) is not None}
    conf_dir = PROC_SYS / "net/ipv4/conf"
    try:
        interfaces = sorted(os.listdir(conf_dir))
    except OSError:
        interfaces = []
    for iface in interfaces:
        values = {key: v for key in CONF_KEYS if (v := _read(conf_dir / iface / key)) is not None}
        state.ipv4_conf[iface] = {k: v.strip() for k, v in values.items()}
    state.links = _run_json(state, "links", ["ip", "-d", "-j", "link", "show"]) or []
    state.default_routes = _run_json(state, "routes", ["ip", "-j", "route", "show", "default"]) or []
    every = _run_json(state, "routes", ["ip", "-j", "route", "show", "table", "all"]) or []
    state.routes = [r for r in every if isinstance(r, dict) and r.get("type") not in LOCAL_ROUTE_TYPES]
    state.rps = _rps_masks()
    state.peer_links = _peer_links(state)
    state.iptables_save = _run(state, "iptables", ["iptables-save"])
    state.ip6tables_save = _run(state, "ip6tables", ["ip6tables-save"])
    ruleset = _run_json(state, "nft", ["nft", "-j", "list", "ruleset"])
    if ruleset is None and "nft" not in state.errors:
        ruleset = {"nftables": []}  # an empty ruleset prints nothing
    state.nft_ruleset = ruleset if isinstance(ruleset, dict) else None
    if os.path.exists("/proc/net/ip_vs"):  # only when IPVS is loaded: ipvsadm would modprobe it otherwise
        state.ipvsadm = _run(state, "ipvs", ["ipvsadm", "-Ln"])
    state.conntrack_stat = _read("/proc/net/stat/nf_conntrack")
    if state.conntrack_stat is None and shutil.which("conntrack"):
        state.conntrack_stat = _run(state, "conntrack", ["conntrack", "-S"])
    state.sockstat = _read("/proc/net/sockstat")
    return state


def _peer_links(state: NodeState) -> dict[int, tuple[str, list[dict[str, Any]]]]:
    """Links of the named namespaces that hold the other end of this namespace's veths (pods, as CNI names them)."""
    wanted = {link["link_netnsid"] for link in state.links
              if link.get("linkinfo", {}).get("info_kind") == "veth" and "link_netnsid" in link}
    if not wanted:
        return {}
    listing = _run_json(state, "netns", ["ip", "-j", "netns", "list"]) or []
    found: dict[int, tuple[str, list[dict[str, Any]]]] = {}
    for entry in listing:
        nsid = entry.get("id")
        if nsid in wanted:
            links = _run_json(state, f"links:{entry['name']}", ["ip", "-n", entry["name"], "-d", "-j", "link", "show"])
            if links is not None:
                found[int(nsid)] = (entry["name"], links)
    return found


def _in_netns(netns: str) -> NodeState:
    # A name is one entry of /run/netns: "", ".", ".." or a path would resolve to some other directory.
    if netns in ("", ".", "..") or "/" in netns or not (NETNS_DIR / netns).exists():
        known = ", ".join(sorted(os.listdir(NETNS_DIR))) if NETNS_DIR.is_dir() else ""
        raise UsageError(f"no network namespace named {netns!r}", f"known: {known or 'none'}")  # exit 2, as drops
    if os.geteuid() != 0:
        raise PodtraceError(f"check --netns {netns} needs root", "run it with sudo")
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "tracer.check.collect"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT * 4, env=env, check=False)
    except subprocess.TimeoutExpired as err:
        raise PodtraceError(f"reading netns {netns} did not finish in {TIMEOUT * 4:g} s") from err
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise PodtraceError(f"cannot read netns {netns}: {last}")
    state = NodeState.from_dict(json.loads(proc.stdout))
    state.netns = netns
    return state


def collect(netns: str | None = None, window: float = 1.0) -> NodeState:
    """Read the node (or the named namespace); the global counters are sampled `window` seconds apart."""
    started = time.monotonic()
    softnet_before, stat_before = _read("/proc/net/softnet_stat"), _read("/proc/stat")
    state = _in_netns(netns) if netns is not None else collect_netns_part()
    state.softnet_before, state.stat_before = softnet_before, stat_before
    state.modules = _modules()
    state.irq_affinity = _irq_affinity()  # global: IRQs belong to the machine's devices
    state.cpus = len(os.sched_getaffinity(0))
    # subnet.env is a file of the host's mount namespace: it describes the host's flannel, not a named netns.
    state.flannel_env = _read(FLANNEL_ENV) if netns is None else None
    remaining = window - (time.monotonic() - started)
    if remaining > 0:
        time.sleep(remaining)
    state.window = max(window, time.monotonic() - started)
    state.softnet_after, state.stat_after = _read("/proc/net/softnet_stat"), _read("/proc/stat")
    return state


if __name__ == "__main__":
    # Run under `ip netns exec NAME`: print this namespace's part of the state as one JSON object.
    json.dump(collect_netns_part().to_dict(), sys.stdout)
    sys.stdout.write("\n")
