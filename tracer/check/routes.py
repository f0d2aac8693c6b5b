"""Routes that refuse pod or Service addresses: blackhole, unreachable and prohibit routes (in any table) whose
destination overlaps a pod subnet, an endpoint, a VIP or the ClusterIP range."""

from __future__ import annotations

from tracer.check.model import Finding, NodeState
from tracer.check.ranges import node_ranges, service_map

AREA = "routes"
SPECIAL = ("blackhole", "unreachable", "prohibit")


def check(state: NodeState) -> list[Finding]:
    if "routes" in state.errors:
        return [Finding("warn", "refusing routes", "unreadable", area=AREA, why=state.errors["routes"])]
    ranges = node_ranges(state, service_map(state))
    found = []
    for route in state.routes:
        if route.get("type") in SPECIAL:
            dst = str(route.get("dst", ""))
            hit = ranges.hit(("0.0.0.0/0",) if dst == "default" else (dst,))
            if hit:
                table = f" table {route['table']}" if route.get("table") not in (None, "main") else ""
                found.append((f"{route['type']} {dst}{table}", hit))
    if not found:
        return [Finding("ok", "refusing routes", "none to pod or Service addresses", area=AREA)]
    netns = f"-n {state.netns} " if state.netns else ""
    return [Finding("fail", "refusing routes", "; ".join(f"{what} covers {hit}" for what, hit in found), area=AREA,
                    why="packets to these addresses are dropped by the route lookup (ip_error): connections hang",
                    fix=f"ip {netns}route del {found[0][0]}  # if nobody meant it")]
