"""MTU along a pod's path: link MTUs from netlink, flannel's subnet.env, and a verdict with live counts.

The path from a pod to a destination is: pod eth0 -> its veth peer on the node -> the bridge (cni0) -> the
overlay device (flannel.1, VXLAN) -> the underlay device. `collect_path()` reads it with pyroute2 in the pod's
and node's namespaces; `verdict()` is pure and works on a recorded `PathLinks` (tests/unit/fixtures/mtu/).
`MtuEventCounter` turns decoded events (ICMP frag-needed, ICMPv6 packet-too-big, fragments on the wire, packets
ip_do_fragment cut, PKT_TOO_BIG drops, reassembly timeouts) into the counts the verdict quotes.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tracer.errors import UsageError
from tracer.events import EVENT_ICMP, EVENT_PATH, POINT_FRAGMENT, POINT_QUEUE, PacketEvent
from tracer.flannel import parse_subnet_env  # also imported from here by tracer/recorded_node.py

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


# Live counts from events ----------------------------------------------------------------------------------

TOO_BIG_REASONS = frozenset({"PKT_TOO_BIG", "FRAG_TOO_FAR", "IP_INADDRERRORS"})
REASM_TIMEOUT_REASON = "FRAG_REASM_TIMEOUT"  # ip_expire (net/ipv4/ip_fragment.c) frees the queued fragments
# Drops the MTU and overlay counts look at: too big, and reassembly timeouts (counted apart: a lost fragment, not
# a packet too big for a link).
MTU_DROP_REASONS = TOO_BIG_REASONS | {REASM_TIMEOUT_REASON}
ICMP_FRAG_NEEDED = (3, 4)
ICMP_REASM_TIME_EXCEEDED = (11, 1)  # ICMP_TIME_EXCEEDED, ICMP_EXC_FRAGTIME: sent when the first fragment came
ICMPV6_PACKET_TOO_BIG = 2  # RFC 4443 3.2: type 2, code 0, then the 32-bit MTU
FRAG_NEEDED_BY_TRACEPOINT = "icmp:icmp_send (each error sent, quoted MTU)"
FRAG_NEEDED_BY_PATH = "ICMP packets queued on devices (path events)"
# icmp:icmp_send is IPv4 only and icmp6_send has no tracepoint (checked on 6.18): packet-too-big is always counted
# from the ICMPv6 packets themselves.
PTB_BY_PATH = "ICMPv6 packets queued on devices (path events)"


def icmp_sent(event: PacketEvent) -> tuple[int, int] | None:
    """(type, code) of an ICMP error the node sent (an EVENT_ICMP from bpf/icmp.c), else None."""
    return (event.reason >> 8, event.reason & 0xFF) if event.type == EVENT_ICMP else None


def is_frag_needed(event: PacketEvent) -> bool:
    """An ICMP (IPv4) destination-unreachable, fragmentation-needed packet."""
    t = event.outer
    return t.family == 4 and t.proto == 1 and t.icmp_type == 3 and t.icmp_code == 4


def is_packet_too_big(event: PacketEvent) -> bool:
    """An ICMPv6 packet-too-big packet (IPv6 routers never fragment: they send this instead)."""
    t = event.outer
    return t.family == 6 and t.proto == 58 and t.icmp_type == ICMPV6_PACKET_TOO_BIG


def next_hop_mtu(event: PacketEvent) -> int | None:
    """The MTU an ICMP frag-needed (RFC 1191) or ICMPv6 packet-too-big quotes, read from the snapshot."""
    if not (is_frag_needed(event) or is_packet_too_big(event)) or not event.snap:
        return None
    snap = event.snap
    if event.outer.family == 4:
        at = (snap[0] & 0x0F) * 4
        return int.from_bytes(snap[at + 6:at + 8], "big") if len(snap) >= at + 8 else None
    # The IPv6 header is 40 bytes (bpf/skb.h parses no extension header but the fragment header, which an ICMPv6
    # error sent by this node never has); then type, code, checksum and the MTU.
    return int.from_bytes(snap[44:48], "big") if len(snap) >= 48 else None


def is_fragment(event: PacketEvent) -> bool:
    t = event.outer
    return t.family == 4 and bool(t.frag & 0x3FFF)  # MF or a non-zero offset


class MtuEventCounter:
    """Counts frag-needed, packet-too-big, fragments, packets fragmented locally, too-big drops and reassembly
    timeouts from events; one packet seen at several devices counts once.

    Path events fire at every device a packet is queued on (a bridge and then its port); the same skb pointer
    within `dedupe_ns` is the same packet.
    """

    def __init__(self, reasons: Mapping[int, str], dedupe_ns: int = 2_000_000, icmp_tracepoint: bool = False) -> None:
        """icmp_tracepoint: bpf/icmp.c was attached, so frag-needed is counted from its events (one per error
        sent, exact) instead of ICMP packets queued on devices."""
        self.reasons = reasons
        self.dedupe_ns = dedupe_ns
        self.icmp_tracepoint = icmp_tracepoint
        self.counts = LiveCounts()
        self._queued_needed: dict[str, int] = {}
        self._queued_mtu: dict[int, int] = {}
        self._sent_needed: dict[str, int] = {}
        self._sent_mtu: dict[int, int] = {}
        self._recent: dict[tuple[Any, ...], int] = {}
        self.first_ns = 0
        self.last_ns = 0

    def _fresh(self, event: PacketEvent, what: str) -> bool:
        # A packet is known by its IP identity, not its skb: a freed skb is reused at once by the next packet (a
        # burst of ICMP errors alternates between two addresses), and a fragment reassembled by conntrack and cut
        # again the same way comes out of another skb. ICMP errors and fragments are never atomic (DF, ID 0).
        # IPv6 has no ID: an ICMPv6 error is known by its bytes (it quotes the offending packet; a bridge that
        # floods clones the skb), so only identical errors within dedupe_ns merge.
        t, snap = event.outer, event.snap
        if event.ip_id is not None:
            key: tuple[Any, ...] = (what, t.src, t.dst, event.ip_id, t.frag, t.ip_len)
        elif t.family == 6 and len(snap) >= 48:
            key = (what, t.src, t.dst, bytes(snap))
        else:
            key = (what, event.skb)
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
            reason = self.reasons.get(event.reason, "")
            if reason == REASM_TIMEOUT_REASON:
                self.counts.reasm_drops += 1
            elif reason in TOO_BIG_REASONS:
                self.counts.too_big_drops += 1
            return
        sent = icmp_sent(event)
        if sent is not None:
            # The event is the offending packet: the error goes back to its source.
            if sent == ICMP_FRAG_NEEDED:
                _bump(self._sent_needed, event.outer.src)
                if event.location:
                    _bump(self._sent_mtu, event.location)
            elif sent == ICMP_REASM_TIME_EXCEEDED:
                _bump(self.counts.reasm_time_exceeded, event.outer.src)
            return
        if event.type != EVENT_PATH:
            return
        if event.reason == POINT_FRAGMENT:
            # The ip_do_fragment kprobe (bpf/overlay.c): one call per packet cut, location the device MTU.
            self.counts.fragmented_locally += 1
            if event.location:
                _bump(self.counts.fragmented_locally_mtu, event.location)
            return
        if event.reason != POINT_QUEUE:
            return
        if is_frag_needed(event) and self._fresh(event, "icmp"):
            _bump(self._queued_needed, event.outer.dst)
            mtu = next_hop_mtu(event)
            if mtu is not None:
                _bump(self._queued_mtu, mtu)
        elif is_packet_too_big(event) and self._fresh(event, "ptb"):
            _bump(self.counts.ptb_sent, event.outer.dst)
            mtu = next_hop_mtu(event)
            if mtu is not None:
                _bump(self.counts.ptb_mtu, mtu)
        elif is_fragment(event) and self._fresh(event, "frag"):
            self.counts.fragments += 1

    def result(self, seconds: float) -> LiveCounts:
        self.counts.seconds = seconds
        if self.icmp_tracepoint:
            self.counts.frag_needed, self.counts.frag_needed_mtu = self._sent_needed, self._sent_mtu
            self.counts.frag_needed_seen_by = FRAG_NEEDED_BY_TRACEPOINT
        else:
            self.counts.frag_needed, self.counts.frag_needed_mtu = self._queued_needed, self._queued_mtu
            self.counts.frag_needed_seen_by = FRAG_NEEDED_BY_PATH
        self.counts.ptb_seen_by = PTB_BY_PATH
        return self.counts


def _bump(counts: dict[Any, int], key: Any) -> None:
    counts[key] = counts.get(key, 0) + 1


# IPv4 fragmentation counters of /proc/net/snmp, per namespace ---------------------------------------------

# net/ipv4/proc.c snmp4_ipstats_list: ReasmTimeout counts queues ip_expire gave up on; ReasmFails counts them
# too, plus queues that failed for other reasons (overlaps, too big, out of memory).
SNMP_FIELDS = ("ReasmTimeout", "ReasmReqds", "ReasmOKs", "ReasmFails", "FragOKs", "FragFails", "FragCreates")


def parse_snmp(text: str) -> dict[str, int]:
    """The `Ip:` counters of /proc/net/snmp (a header line of names, then a line of values)."""
    lines = [line.split() for line in text.splitlines() if line.startswith("Ip:")]
    if len(lines) < 2 or len(lines[0]) != len(lines[1]):
        raise ValueError("no `Ip:` header and value lines in /proc/net/snmp")
    names, values = lines[0][1:], lines[1][1:]
    return {name: int(value) for name, value in zip(names, values) if name in SNMP_FIELDS}


def read_snmp(netns: str) -> dict[str, int] | None:
    """The counters inside `netns` ("" or "host": this namespace; a name in /run/netns; a namespace file)."""
    if netns in ("", "host"):
        command = ["cat", "/proc/net/snmp"]
    elif netns.startswith("/"):
        command = ["nsenter", f"--net={netns}", "cat", "/proc/net/snmp"]
    else:
        command = ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        return parse_snmp(result.stdout) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None  # a namespace that vanished meanwhile


class SnmpWatch:
    """Counters in the namespaces a probe crosses, read at start and at the end: deltas and end totals."""

    def __init__(self, namespaces: Iterable[str]) -> None:
        self.namespaces = list(dict.fromkeys(ns for ns in namespaces if ns is not None))
        self.start = {ns: found for ns in self.namespaces if (found := read_snmp(ns)) is not None}

    def finish(self, counts: LiveCounts) -> None:
        for ns, before in self.start.items():
            after = read_snmp(ns)
            if after is None:
                continue
            counts.snmp[ns] = snmp_delta(before, after)
            counts.snmp_total[ns] = after


def snmp_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {name: max(0, after.get(name, 0) - before.get(name, 0)) for name in SNMP_FIELDS}


# Collection with netlink ----------------------------------------------------------------------------------


def flannel_mtu(path: str = SUBNET_ENV) -> int | None:
    try:
        with open(path, encoding="utf-8") as handle:
            value = parse_subnet_env(handle.read()).get("FLANNEL_MTU")
    except OSError:
        return None
    return int(value) if value and value.isdigit() else None


def _netns_handle(name: str) -> Any:
    from pyroute2 import IPRoute, NetNS  # netlink only where collection runs

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
    except Exception as err:  # pyroute2 raises NetlinkError for unreachable targets
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
        except Exception:  # a namespace that vanished meanwhile
            continue
        try:
            found = ipr.get_links(peer_ifindex)
        except Exception:  # no such index there
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
