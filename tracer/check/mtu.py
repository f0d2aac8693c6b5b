"""MTU consistency: underlay, overlay device (VXLAN 50, Geneve 50, IPIP 20 bytes of overhead), pod bridges,
pod veths on both ends, and flannel's FLANNEL_MTU. A pod MTU above what the overlay carries means large packets
are dropped with ICMP frag-needed (a PMTU black hole when NAT or a firewall eats it) or fragmented.
"""

from __future__ import annotations

from tracer.check.model import Finding, NodeState
from tracer.check.topology import Topology, analyse
from tracer.node.flannel import parse_subnet_env

AREA = "mtu"
MAX_LISTED = 6  # devices named in a finding's value before "and N more"


def _listing(items: list[tuple[str, int]]) -> str:
    shown = ", ".join(f"{name} {mtu}" for name, mtu in items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _carried(topo: Topology) -> tuple[int, str] | None:
    """The largest pod packet the node can send without fragmenting, and what sets it."""
    best: tuple[int, str] | None = None
    for o in topo.overlays:
        limits = [(o.mtu, f"{o.name} ({o.kind})")]
        if o.underlay:
            limits.append((topo.mtu(o.underlay) - o.overhead,
                           f"{o.name} ({o.kind} over {o.underlay} {topo.mtu(o.underlay)} - {o.overhead})"))
        lowest = min(limits, key=lambda limit: limit[0])  # on a tie, the device itself names the limit
        if best is None or lowest[0] < best[0]:
            best = lowest
    if best is None and topo.underlay:
        dev = min(topo.underlay, key=topo.mtu)
        best = (topo.mtu(dev), f"{dev} (no overlay)")
    return best


def _fix(devices: list[tuple[str, int]], limit: int) -> str:
    local = [name for name, _ in devices if ":" not in name]
    remote = [name for name, _ in devices if ":" in name]
    parts = []
    if local:
        parts.append(f"for d in {' '.join(local)}; do ip link set dev $d mtu {limit}; done")
    for label in remote:
        ns, dev = label.split(":", 1)
        parts.append(f"ip -n {ns} link set dev {dev} mtu {limit}")
    parts.append(f"# and set the CNI MTU to {limit} (FLANNEL_MTU / CNI config) so new pods get it")
    return "; ".join(parts)


def check(state: NodeState) -> list[Finding]:
    topo = analyse(state)
    out: list[Finding] = []
    for dev in topo.underlay:
        out.append(Finding("ok", "underlay", f"{dev} {topo.mtu(dev)}", area=AREA))
    for o in topo.overlays:
        if not o.underlay:
            out.append(Finding("ok", "overlay", f"{o.name} {o.mtu} ({o.kind}, underlay unknown)", area=AREA))
            continue
        room = topo.mtu(o.underlay) - o.overhead
        value = f"{o.name} {o.mtu} ({o.kind} over {o.underlay} {topo.mtu(o.underlay)}: room for {room})"
        if o.mtu > room:
            out.append(Finding("fail", "overlay", value, area=AREA,
                               why=f"{o.kind} adds {o.overhead} bytes: {o.name} packets over {room} do not fit "
                                   f"{o.underlay} and are fragmented or dropped",
                               fix=f"ip link set dev {o.name} mtu {room}"))
        else:
            out.append(Finding("ok", "overlay", value, area=AREA))
    carried = _carried(topo)
    env = parse_subnet_env(state.flannel_env) if state.flannel_env else {}
    flannel_mtu = int(env["FLANNEL_MTU"]) if env.get("FLANNEL_MTU", "").isdigit() else None
    if flannel_mtu is not None:
        value = f"FLANNEL_MTU={flannel_mtu}"
        if carried and flannel_mtu > carried[0]:
            out.append(Finding("fail", "flannel", f"{value} > {carried[0]} carried by {carried[1]}", area=AREA,
                               why="flannel hands this MTU to every new pod: their large packets will not fit",
                               fix=f"set the MTU in flannel's net-conf.json / backend to {carried[0]} and restart "
                                   "flannel (it rewrites /run/flannel/subnet.env)"))
        else:
            out.append(Finding("ok", "flannel", value, area=AREA))
    limit = carried
    if flannel_mtu is not None and (limit is None or flannel_mtu < limit[0]):
        limit = (flannel_mtu, "FLANNEL_MTU")
    pods = [(b, topo.mtu(b)) for b in topo.pod_bridges] + [(v, topo.mtu(v)) for v in topo.pod_veths] + topo.pod_ends
    if not pods:
        return out
    if limit is None:
        out.append(Finding("ok", "pods", f"{len(pods)} pod interfaces, no overlay or underlay found", area=AREA))
        return out
    over = [(name, mtu) for name, mtu in pods if mtu > limit[0]]
    if over:
        out.append(Finding("fail", "pods", f"{_listing(over)} > {limit[0]} carried by {limit[1]}", area=AREA,
                           why=f"pod packets over {limit[0]} cannot cross the overlay: dropped with ICMP frag-needed "
                               "(a black hole behind NAT) or fragmented; small requests work, large replies hang",
                           fix=_fix(over, limit[0])))
    else:
        highest = max(mtu for _, mtu in pods)
        out.append(Finding("ok", "pods", f"{len(pods)} pod interfaces at <= {highest}, {limit[1]} carries "
                           f"{limit[0]}", area=AREA))
    return out
