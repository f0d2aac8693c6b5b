"""MTU trouble in decoded events: ICMP frag-needed, ICMPv6 packet-too-big (with the MTU they quote), fragments on
the wire, packets ip_do_fragment cut, too-big drops and reassembly timeouts, counted by `MtuEventCounter` into the
`LiveCounts` the MTU verdict quotes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tracer.analysis.mtu import LiveCounts
from tracer.events.decode import EVENT_ICMP, EVENT_PATH, POINT_FRAGMENT, POINT_QUEUE, PacketEvent

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
