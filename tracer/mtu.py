"""MTU along a pod's path: link MTUs from netlink, flannel's subnet.env, and a verdict with live counts.

The path from a pod to a destination is: pod eth0 -> its veth peer on the node -> the bridge (cni0) -> the
overlay device (flannel.1, VXLAN) -> the underlay device. `collect_path()` reads it with pyroute2 in the pod's
and node's namespaces; `verdict()` is pure and works on a recorded `PathLinks` (tests/unit/fixtures/mtu/).
`MtuEventCounter` turns decoded events (ICMP frag-needed, fragments, PKT_TOO_BIG drops) into the counts the
verdict quotes.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tracer.errors import UsageError
from tracer.events import EVENT_PATH, POINT_QUEUE, PacketEvent

SUBNET_ENV = "/run/flannel/subnet.env"
NETNS_DIR = "/run/netns"
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
    """What the kernel showed during `seconds`: frag-needed sent (by destination), fragments, too-big drops."""

    seconds: float = 0.0
    frag_needed: dict[str, int] = field(default_factory=dict)  # ICMP destination (the sender) -> count
    frag_needed_mtu: dict[int, int] = field(default_factory=dict)  # next-hop MTU quoted -> count
    fragments: int = 0
    too_big_drops: int = 0

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
        frags = f" ({counts.rate(counts.fragments)} fragments)" if counts else ""
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
    return MtuVerdict(ok, pod, overlay, underlay, carried, tuple(findings), text)


# Live counts from events ----------------------------------------------------------------------------------

TOO_BIG_REASONS = frozenset({"PKT_TOO_BIG", "FRAG_REASM_TIMEOUT", "FRAG_TOO_FAR", "IP_INADDRERRORS"})


def is_frag_needed(event: PacketEvent) -> bool:
    t = event.outer
    return (t.proto == 1 and t.icmp_type == 3 and t.icmp_code == 4) or (t.proto == 58 and t.icmp_type == 2)


def next_hop_mtu(event: PacketEvent) -> int | None:
    """The MTU an ICMP frag-needed (RFC 1191) or ICMPv6 packet-too-big quotes, read from the snapshot."""
    if not is_frag_needed(event) or not event.snap:
        return None
    snap = event.snap
    if event.outer.family == 4:
        at = (snap[0] & 0x0F) * 4
        return int.from_bytes(snap[at + 6:at + 8], "big") if len(snap) >= at + 8 else None
    return int.from_bytes(snap[44:48], "big") if len(snap) >= 48 else None


def is_fragment(event: PacketEvent) -> bool:
    t = event.outer
    return t.family == 4 and bool(t.frag & 0x3FFF)  # MF or a non-zero offset


class MtuEventCounter:
    """Counts frag-needed, fragments and too-big drops from events; one packet seen at several devices counts once.

    Path events fire at every device a packet is queued on (a bridge and then its port); the same skb pointer
    within `dedupe_ns` is the same packet.
    """

    def __init__(self, reasons: Mapping[int, str], dedupe_ns: int = 2_000_000) -> None:
        self.reasons = reasons
        self.dedupe_ns = dedupe_ns
        self.counts = LiveCounts()
        self._recent: dict[tuple[int, str], int] = {}
        self.first_ns = 0
        self.last_ns = 0

    def _fresh(self, event: PacketEvent, what: str) -> bool:
        key = (event.skb, what)
        seen = self._recent.get(key)
        self._recent[key] = event.ts_ns
        if len(self._recent) > 4096:
            horizon = event.ts_ns - self.dedupe_ns
            self._recent = {k: ts for k, ts in self._recent.items() if ts >= horizon}
        return seen is None or event.ts_ns - seen > self.dedupe_ns

    def add(self, event: PacketEvent) -> None:
        if not self.first_ns:
            self.first_ns = event.ts_ns
        self.last_ns = max(self.last_ns, event.ts_ns)
        if event.is_drop:
            if self.reasons.get(event.reason, "") in TOO_BIG_REASONS:
                self.counts.too_big_drops += 1
            return
        if event.type != EVENT_PATH or event.reason != POINT_QUEUE:
            return
        if is_frag_needed(event) and self._fresh(event, "icmp"):
            dst = event.outer.dst
            self.counts.frag_needed[dst] = self.counts.frag_needed.get(dst, 0) + 1
            mtu = next_hop_mtu(event)
            if mtu is not None:
                self.counts.frag_needed_mtu[mtu] = self.counts.frag_needed_mtu.get(mtu, 0) + 1
        elif is_fragment(event) and self._fresh(event, "frag"):
            self.counts.fragments += 1

    def result(self, seconds: float) -> LiveCounts:
        self.counts.seconds = seconds
        return self.counts


# Collection with netlink ----------------------------------------------------------------------------------


def parse_subnet_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines of flannel's subnet.env (FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip().strip('"')
    return values


def flannel_mtu(path: str = SUBNET_ENV) -> int | None:
    try:
        with open(path, encoding="utf-8") as handle:
            value = parse_subnet_env(handle.read()).get("FLANNEL_MTU")
    except OSError:
        return None
    return int(value) if value and value.isdigit() else None


def _netns_handle(name: str) -> Any:
    from pyroute2 import IPRoute, NetNS  # noqa: PLC0415 - netlink only where collection runs

    if name in ("", "host"):
        return IPRoute()
    return NetNS(name)


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name) if msg is not None else None


def _link(ipr: Any, index: int, netns: str) -> tuple[LinkInfo, Any]:
    msg = ipr.get_links(index)[0]
    info = _attr(msg, "IFLA_LINKINFO")
    kind = _attr(info, "IFLA_INFO_KIND") or ""
    return LinkInfo(msg.get_attr("IFLA_IFNAME"), int(msg.get_attr("IFLA_MTU")), kind, netns, index), msg


def _route(ipr: Any, target: str) -> tuple[int, str]:
    try:
        routes = ipr.route("get", dst=target)
    except Exception as err:  # noqa: BLE001 - pyroute2 raises NetlinkError for unreachable targets
        raise UsageError(f"no route to {target}: {err}") from err
    msg = routes[0]
    return int(msg.get_attr("RTA_OIF")), msg.get_attr("RTA_PREFSRC") or ""


def _find_veth_peer(pod_ifindex: int, peer_ifindex: int, skip: str) -> tuple[str, LinkInfo, Any] | None:
    """The namespace holding the veth peer: its ifindex is our IFLA_LINK and its IFLA_LINK is our ifindex."""
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except OSError:
        names = []
    for name in ["host", *names]:
        if name == skip:
            continue
        try:
            ipr = _netns_handle(name)
        except Exception:  # noqa: BLE001, S112 - a namespace that vanished meanwhile
            continue
        try:
            found = ipr.get_links(peer_ifindex)
        except Exception:  # noqa: BLE001 - no such index there
            found = []
        try:
            for msg in found:
                if msg.get_attr("IFLA_LINK") == pod_ifindex:
                    kind = _attr(_attr(msg, "IFLA_LINKINFO"), "IFLA_INFO_KIND") or ""
                    if kind == "veth":
                        return name, LinkInfo(msg.get_attr("IFLA_IFNAME"), int(msg.get_attr("IFLA_MTU")), kind, name,
                                              peer_ifindex), msg
        finally:
            ipr.close()
    return None


def collect_path(src_netns: str, target: str, subnet_env: str = SUBNET_ENV) -> PathLinks:
    """Read link MTUs along src_netns -> target with netlink, in the pod's and then the node's namespace."""
    try:
        ipaddress.ip_address(target)
    except ValueError as err:
        raise UsageError(f"{target!r} is not an IP address") from err
    ipr = _netns_handle(src_netns)
    try:
        oif, src_ip = _route(ipr, target)
        pod, pod_msg = _link(ipr, oif, src_netns)
    finally:
        ipr.close()
    host_veth = bridge = overlay = underlay = None
    family = 4
    if pod.kind == "veth":
        peer_index = pod_msg.get_attr("IFLA_LINK")
        found = _find_veth_peer(pod.ifindex, peer_index, src_netns) if peer_index else None
        if found:
            node, host_veth, veth_msg = found
            master = veth_msg.get_attr("IFLA_MASTER")
            nipr = _netns_handle(node)
            try:
                if master:
                    bridge, _ = _link(nipr, master, node)
                out_index, _ = _route(nipr, target)
                out, out_msg = _link(nipr, out_index, node)
                if out.kind in OVERLAY_KINDS:
                    overlay = out
                    data = _attr(_attr(out_msg, "IFLA_LINKINFO"), "IFLA_INFO_DATA")
                    if _attr(data, "IFLA_VXLAN_LOCAL6") or _attr(data, "IFLA_VXLAN_GROUP6"):
                        family = 6
                    lower = _attr(data, "IFLA_VXLAN_LINK") or _attr(out_msg, "IFLA_LINK")
                    if lower and lower != out_index:
                        underlay, _ = _link(nipr, lower, node)
                    else:
                        # No lower device recorded: the one the node's default route uses (TEST-NET addresses).
                        under_index, _ = _route(nipr, "2001:db8::1" if family == 6 else "192.0.2.1")
                        underlay, _ = _link(nipr, under_index, node)
                elif bridge is None or out.ifindex != bridge.ifindex:
                    underlay = out  # routed without encapsulation (host-gw, Calico BGP)
            finally:
                nipr.close()
    return PathLinks(target, src_ip, pod, host_veth, bridge, overlay, underlay, family, flannel_mtu(subnet_env))
