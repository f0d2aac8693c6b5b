"""Softirq pressure: /proc/net/softnet_stat dropped and time_squeeze per CPU, and CPU steal from /proc/stat,
both as deltas over a short window (both files are global, whatever the namespace).

dropped: the per-CPU backlog (netdev_max_backlog) was full, packets died before any socket. time_squeeze: NET_RX
ran out of budget with work left. Steal: the hypervisor ran someone else, delaying softirqs.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def check(state: NodeState) -> list[Finding]:
    return [*_softnet(state), _steal(state)]
