"""MTU along a pod's path: the links' MTUs, live counts, and the verdict `podtrace mtu` prints.

The path from a pod to a destination is: pod eth0 -> its veth peer on the node -> the bridge (cni0) -> the
overlay device (flannel.1, VXLAN) -> the underlay device. tracer/node/mtu_path.py reads it with netlink;
`verdict()` here is pure and works on a recorded `PathLinks` (tests/unit/fixtures/mtu/). The counts it quotes
come from events (tracer/analysis/mtu_events.py) and /proc/net/snmp (tracer/node/mtu_snmp.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

# Encapsulation overhead on the underlay's MTU, by overlay kind and underlay family. VXLAN: outer Ethernet 14 +
# IP 20/40 + UDP 8 + VXLAN 8 (drivers/net/vxlan: VXLAN_HEADROOM / VXLAN6_HEADROOM). The outer Ethernet header
# is not part of the underlay MTU, but Linux (and flannel) subtract it anyway: the inner Ethernet header is.
OVERHEAD = {("vxlan", 4): 50, ("vxlan", 6): 70, ("geneve", 4): 50, ("geneve", 6): 70, ("ipip", 4): 20,
            ("sit", 4): 20, ("ip6tnl", 6): 40, ("wireguard", 4): 60, ("wireguard", 6): 80}
OVERLAY_KINDS = frozenset(kind for kind, _ in OVERHEAD)


@dataclass(frozen=True)
class LinkInfo:
    name: str
    mtu: int
    kind: str = ""  # IFLA_INFO_KIND: veth, bridge, vxlan, ... ("" for physical devices)
    netns: str = ""
    ifindex: int = 0


@dataclass(frozen=True)
class PathLinks:
    """The links a pod's packets to `target` cross, as netlink reported them (None where not on the path)."""

    target: str
    src_ip: str = ""
    pod: LinkInfo | None = None
    host_veth: LinkInfo | None = None
    bridge: LinkInfo | None = None
    overlay: LinkInfo | None = None
    underlay: LinkInfo | None = None
    underlay_family: int = 4  # of the tunnel's outer header
    flannel_mtu: int | None = None  # FLANNEL_MTU from subnet.env

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PathLinks:
        links = {key: LinkInfo(**data[key]) if data.get(key) else None
                 for key in ("pod", "host_veth", "bridge", "overlay", "underlay")}
        return cls(target=data["target"], src_ip=data.get("src_ip", ""), underlay_family=data.get("underlay_family", 4),
                   flannel_mtu=data.get("flannel_mtu"), **links)

    @property
    def overhead(self) -> int:
        if self.overlay is None:
            return 0
        return OVERHEAD.get((self.overlay.kind, self.underlay_family), 50)


@dataclass
class LiveCounts:
    """What the kernel showed during `seconds`: frag-needed sent (by destination), ICMPv6 packet-too-big sent,
    fragments on the wire, packets fragmented locally, too-big drops, reassembly timeouts (drops, ICMP
    time-exceeded sent, and /proc/net/snmp deltas per namespace)."""

    seconds: float = 0.0
    frag_needed: dict[str, int] = field(default_factory=dict)  # ICMP destination (the sender) -> count
    frag_needed_mtu: dict[int, int] = field(default_factory=dict)  # next-hop MTU quoted -> count
    fragments: int = 0
    too_big_drops: int = 0
    frag_needed_seen_by: str = ""  # FRAG_NEEDED_BY_TRACEPOINT or FRAG_NEEDED_BY_PATH
    ptb_sent: dict[str, int] = field(default_factory=dict)  # ICMPv6 packet-too-big: destination (the sender) -> count
    ptb_mtu: dict[int, int] = field(default_factory=dict)  # MTU quoted -> count
    ptb_seen_by: str = ""  # PTB_BY_PATH: no kernel has an ICMPv6 send tracepoint
    fragmented_locally: int = 0  # packets ip_do_fragment cut (kprobe): each became 2+ fragments on the wire
    fragmented_locally_mtu: dict[int, int] = field(default_factory=dict)  # device MTU they were cut for -> count
    reasm_drops: int = 0  # fragments freed with FRAG_REASM_TIMEOUT
    reasm_time_exceeded: dict[str, int] = field(default_factory=dict)  # ICMP 11/1 destination -> count
    snmp: dict[str, dict[str, int]] = field(default_factory=dict)  # netns -> SNMP_FIELDS deltas during the run
    snmp_total: dict[str, dict[str, int]] = field(default_factory=dict)  # netns -> the counters at the end

    def rate(self, count: int) -> str:
        if self.seconds <= 0:
            return f"{count}"
        return f"{count / self.seconds:.1f}/s"


@dataclass(frozen=True)
class MtuVerdict:
    ok: bool
    pod_mtu: int | None
    overlay_mtu: int | None
    underlay_mtu: int | None
    carried: int | None  # the largest IP packet the path carries without fragmenting
    findings: tuple[str, ...]
    text: str
    notes: tuple[str, ...] = ()  # context that is not a fault now (e.g. reassembly timeouts before this run)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verdict(path: PathLinks, counts: LiveCounts | None = None) -> MtuVerdict:
    """Name the MTU mismatches on `path`, with figures; pure."""
    pod = path.pod.mtu if path.pod else None
    overlay = path.overlay.mtu if path.overlay else None
    underlay = path.underlay.mtu if path.underlay else None
    findings: list[str] = []
    carried_parts = [m for m in (overlay, (underlay - path.overhead) if underlay and path.overlay else underlay) if m]
    if path.bridge and path.overlay is None:
        carried_parts.append(path.bridge.mtu)
    carried = min(carried_parts) if carried_parts else None
    kind = path.overlay.kind.upper() if path.overlay else ""
    sender = path.src_ip or "the sender"

    if pod is not None and overlay is not None and pod > overlay:
        sent = sum(counts.frag_needed.values()) if counts else None
        to = ", ".join(f"{dst} ({counts.rate(n)})" for dst, n in sorted(counts.frag_needed.items())) if counts else ""
        icmp = f"ICMP frag-needed sent to {to}" if to else f"ICMP frag-needed sent to {sender}" + (
            " (none seen)" if sent == 0 else "")
        if counts and counts.ptb_sent:
            icmp += ", ICMPv6 packet-too-big sent to " + ", ".join(
                f"{dst} ({counts.rate(n)})" for dst, n in sorted(counts.ptb_sent.items()))
        frags = ""
        if counts:
            cut = (f", {counts.rate(counts.fragmented_locally)} packets cut by ip_do_fragment"
                   if counts.fragmented_locally else "")
            frags = f" ({counts.rate(counts.fragments)} fragments{cut})"
        findings.append(f"pod MTU {pod} > overlay {overlay}: DF packets above {overlay} dropped, {icmp}; "
                        f"non-DF packets fragmented on the node before encapsulation{frags}")
    if overlay is not None and underlay is not None and overlay > underlay - path.overhead:
        findings.append(f"overlay MTU {overlay} > underlay {underlay} - {path.overhead} ({kind} overhead) = "
                        f"{underlay - path.overhead}: encapsulated packets above {underlay} are fragmented on the "
                        "underlay or dropped where DF is set")
    if path.flannel_mtu is not None:
        if overlay is not None and path.flannel_mtu != overlay:
            device = path.overlay.name if path.overlay else "the overlay"
            findings.append(f"flannel subnet.env FLANNEL_MTU={path.flannel_mtu} but {device} has MTU {overlay}")
        if pod is not None and pod > path.flannel_mtu and not (overlay is not None and pod > overlay):
            findings.append(f"pod MTU {pod} > FLANNEL_MTU {path.flannel_mtu}: the CNI configured pods larger than "
                            "flannel allows")
    if path.pod and path.host_veth and path.pod.mtu != path.host_veth.mtu:
        findings.append(f"pod {path.pod.name} MTU {path.pod.mtu} != node-side {path.host_veth.name} MTU "
                        f"{path.host_veth.mtu}: replies larger than {min(path.pod.mtu, path.host_veth.mtu)} are "
                        "dropped on the veth")
    if counts and counts.too_big_drops and not findings:
        findings.append(f"{counts.too_big_drops} packets dropped as too big ({counts.rate(counts.too_big_drops)}) "
                        "although the link MTUs agree: look for a smaller MTU further on")
    reassembly, notes = _reassembly(counts) if counts else ([], [])
    findings += reassembly

    ok = not findings
    if ok:
        if path.overlay is not None and underlay is not None:
            text = (f"no mismatch: pod MTU {pod} <= overlay {overlay} ({path.overlay.name}, underlay {underlay} - "
                    f"{path.overhead} {kind})")
        elif path.overlay is None and path.bridge is not None and (path.underlay is None):
            text = f"no mismatch: {path.target} is on this node (via {path.bridge.name}), pod MTU {pod}"
        else:
            text = f"no mismatch: pod MTU {pod}, path MTU {carried}"
    else:
        text = "; ".join(findings)
    if notes:
        text += " (" + "; ".join(notes) + ")"
    return MtuVerdict(ok, pod, overlay, underlay, carried, tuple(findings), text, tuple(notes))


def _reassembly(counts: LiveCounts) -> tuple[list[str], list[str]]:
    """Findings (reassembly timeouts during the run) and notes (earlier ones), from snmp deltas and events."""
    evidence = []
    if counts.reasm_drops:
        evidence.append(f"{counts.reasm_drops} fragments dropped as FRAG_REASM_TIMEOUT")
    if counts.reasm_time_exceeded:
        to = ", ".join(f"{dst} ({counts.rate(n)})" for dst, n in sorted(counts.reasm_time_exceeded.items()))
        evidence.append(f"ICMP time-exceeded (reassembly) sent to {to}")
    per_netns = [(netns, delta) for netns, delta in sorted(counts.snmp.items()) if delta.get("ReasmTimeout", 0)]
    findings = [f"{delta['ReasmTimeout']} IPv4 reassembly timeouts in {netns} ({counts.rate(delta['ReasmTimeout'])}; "
                f"ReasmTimeout +{delta['ReasmTimeout']}, ReasmFails +{delta.get('ReasmFails', 0)}): fragments of "
                "those packets never all arrived, so the whole packets were lost"
                for netns, delta in per_netns]
    if findings and evidence:
        findings[0] += "; " + "; ".join(evidence)
    elif evidence:
        findings.append("IPv4 reassembly timed out (some fragments never arrived): " + "; ".join(evidence))
    notes = [f"{netns} counted {total['ReasmTimeout']} reassembly timeouts before this run"
             for netns, total in sorted(counts.snmp_total.items())
             if total.get("ReasmTimeout", 0) and not counts.snmp.get(netns, {}).get("ReasmTimeout", 0)]
    return findings, notes
