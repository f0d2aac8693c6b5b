"""Softirq pressure: /proc/net/softnet_stat dropped and time_squeeze per CPU, and CPU steal from /proc/stat,
both as deltas over a short window (both files are global, whatever the namespace).

dropped: the per-CPU backlog (netdev_max_backlog) was full, packets died before any socket. time_squeeze: NET_RX
ran out of budget with work left. Steal: the hypervisor ran someone else, delaying softirqs.
"""

from __future__ import annotations

from dataclasses import dataclass

from tracer.analysis.causes import mask_for, parse_cpu_mask
from tracer.check.model import Finding, NodeState

AREA = "softirq"
STEAL_WARN = 5.0  # percent of CPU time over the window
STEAL_FAIL = 15.0


@dataclass(frozen=True)
class Softnet:
    cpu: int
    processed: int
    dropped: int
    time_squeeze: int


def parse_softnet(text: str) -> dict[int, Softnet]:
    """One row per online CPU; the CPU id is column 13 since 5.10 (net-procfs.c), else the row index."""
    rows = {}
    for index, line in enumerate(line for line in text.splitlines() if line.strip()):
        cols = [int(c, 16) for c in line.split()]
        cpu = cols[12] if len(cols) > 12 else index
        rows[cpu] = Softnet(cpu, cols[0], cols[1], cols[2])
    return rows


def parse_stat(text: str) -> dict[str, list[int]]:
    """`cpu` and `cpuN` lines of /proc/stat: user nice system idle iowait irq softirq steal (guest is in user)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("cpu"):
            name, *values = line.split()
            out[name] = [int(v) for v in values[:8]] + [0] * max(0, 8 - len(values))
    return out


def steal_percent(before: list[int], after: list[int]) -> float:
    total = sum(after) - sum(before)
    return 100.0 * (after[7] - before[7]) / total if total > 0 else 0.0


def _cpus(deltas: dict[int, int]) -> str:
    busy = sorted(((n, cpu) for cpu, n in deltas.items() if n), reverse=True)
    return ", ".join(f"cpu{cpu} {n}" for n, cpu in busy[:6]) + (" ..." if len(busy) > 6 else "")


def _softnet(state: NodeState) -> list[Finding]:
    if not state.softnet_before or not state.softnet_after:
        return [Finding("warn", "softnet", "unreadable", area=AREA, why="/proc/net/softnet_stat could not be read")]
    before, after = parse_softnet(state.softnet_before), parse_softnet(state.softnet_after)
    window = f"{state.window:.1f} s"
    out = []
    for field, severity in (("dropped", "fail"), ("time_squeeze", "warn")):
        deltas = {cpu: getattr(row, field) - getattr(before[cpu], field)
                  for cpu, row in after.items() if cpu in before}
        total = sum(deltas.values())
        boot = sum(getattr(row, field) for row in after.values())
        if total > 0:
            if field == "dropped":
                backlog = int(state.sysctls.get("net.core.netdev_max_backlog", "1000") or 1000)
                why = "the per-CPU input backlog overflowed: packets died in the kernel before any socket saw them"
                fix = f"sysctl -w net.core.netdev_max_backlog={backlog * 2}  # and spread load: RPS/RSS, fewer hogs"
            else:
                budget = int(state.sysctls.get("net.core.netdev_budget", "300") or 300)
                why = "NET_RX ran out of budget with packets left: receive processing is falling behind"
                fix = f"sysctl -w net.core.netdev_budget={budget * 2}  # and check CPU steal and busy CPUs"
            out.append(Finding(severity, field, f"{total} in {window} ({_cpus(deltas)}); {boot} since boot",
                               area=AREA, why=why, fix=fix))
        else:
            out.append(Finding("ok", field, f"0 in {window} on {len(after)} CPUs; {boot} since boot", area=AREA))
    return out


def _steal(state: NodeState) -> Finding:
    if not state.stat_before or not state.stat_after:
        return Finding("warn", "cpu steal", "unreadable", area=AREA, why="/proc/stat could not be read")
    before, after = parse_stat(state.stat_before), parse_stat(state.stat_after)
    overall = steal_percent(before["cpu"], after["cpu"])
    per_cpu = {name: steal_percent(before[name], v) for name, v in after.items() if name != "cpu" and name in before}
    worst = max(per_cpu.items(), key=lambda kv: kv[1], default=("cpu", overall))
    value = f"{overall:.1f}% over {state.window:.1f} s (highest {worst[0]} {worst[1]:.1f}%)"
    if overall >= STEAL_WARN or worst[1] >= STEAL_FAIL:
        severity = "fail" if overall >= STEAL_FAIL else "warn"
        return Finding(severity, "cpu steal", value, area=AREA,
                       why="the hypervisor is running other guests: softirqs wait, backlogs overflow, latency jumps",
                       fix="move the VM to a less loaded host or a dedicated-CPU instance type; check with "
                           "`mpstat -P ALL 1`")
    return Finding("ok", "cpu steal", value, area=AREA,
                   why=f"warns at {STEAL_WARN:.0f}%, fails at {STEAL_FAIL:.0f}%")


def underlay_devices(state: NodeState) -> list[str]:
    """The devices the node's traffic arrives on: default-route devices and the links under its VXLAN devices."""
    devices = [str(r["dev"]) for r in state.default_routes if r.get("dev")]
    for link in state.links:
        info = link.get("linkinfo", {})
        if info.get("info_kind") == "vxlan" and info.get("info_data", {}).get("link"):
            devices.append(str(info["info_data"]["link"]))
    return sorted(set(devices))


def _steering(state: NodeState) -> Finding:
    """An RPS mask or IRQ affinity that sends all of an underlay device's receive to one CPU of several."""
    if state.cpus < 2:
        return Finding("ok", "receive steering", f"{state.cpus or '?'} CPU: nothing to spread", area=AREA)
    checked = []
    for dev in underlay_devices(state):
        rps = sorted({c for q, m in state.rps.items() if q.split("/")[0] == dev for c in parse_cpu_mask(m)})
        irq = sorted({c for action, m in state.irq_affinity.items() if action == dev or action.startswith(dev + "-")
                      for c in parse_cpu_mask(m)})
        for how, cpus in (("RPS", rps), ("IRQ affinity", irq)):
            if len(cpus) == 1:
                fix = (f"echo {mask_for(state.cpus)} > /sys/class/net/{dev}/queues/rx-0/rps_cpus" if how == "RPS"
                       else f"spread {dev}'s IRQs over all CPUs (irqbalance, or /proc/irq/N/smp_affinity)")
                prefix = f"ip netns exec {state.netns} sh -c '" if how == "RPS" and state.netns else ""
                return Finding("warn", "receive steering", f"{how} sends all of {dev}'s receive to CPU {cpus[0]} of "
                               f"{state.cpus}", area=AREA,
                               why="one CPU does every packet's receive work: its backlog overflows and NET_RX "
                                   "waits under load while the other CPUs idle",
                               fix=prefix + fix + ("'" if prefix else "") + "  # all CPUs")
        checked.append(dev)
    return Finding("ok", "receive steering", "underlay " + (", ".join(checked) or "not found") +
                   ": not steered to one CPU", area=AREA)


def check(state: NodeState) -> list[Finding]:
    return [*_softnet(state), _steal(state), _steering(state)]
