"""Netfilter attribution from the kprobe programs (bpf/nfkprobe.c): the hook a drop died in, and the table and
chain whose verdict dropped it (pure: raw events in, names out).

The kernel sends, for one packet an iptables table or nftables base chain drops, a verdict event and then,
from inside the same nf_hook_slow call, the drop event with the same skb address; the drop event itself carries
the hook (nf_point = PT_NFK_POINT(pf, hook)).
"""

from __future__ import annotations

from typing import Any

from tracer.events.decode import (
    EVENT_DROP,
    EVENT_NF_VERDICT,
    NFK_IPTABLES,
    NFK_NFTABLES,
    NfVerdictEvent,
    PacketEvent,
    decode_verdict,
)
from tracer.probes.nf_points import last_point_label

NFK_POINT_FLAG = 0x100  # PT_NFK_POINT_FLAG
HOOK_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")  # enum nf_inet_hooks order
FAMILIES = {2: "ipv4", 3: "arp", 5: "netdev", 7: "bridge", 10: "ipv6"}  # NFPROTO_*
VERDICTS = {0: "DROP", 1: "ACCEPT", 2: "STOLEN", 3: "QUEUE", 4: "REPEAT", 5: "STOP"}
SOURCES = {NFK_IPTABLES: "iptables", NFK_NFTABLES: "nftables"}
# A verdict belongs to the drop that follows it on the same skb within this time (same nf_hook_slow call).
MATCH_WINDOW_NS = 50_000_000
_KEEP = 65536  # bound on remembered verdicts and attributions


def kprobe_hook(nf_point: int) -> tuple[int, int] | None:
    """(family, hook) of a drop event freed inside nf_hook_slow, or None."""
    if not nf_point & NFK_POINT_FLAG:
        return None
    return (nf_point >> 4) & 0xF, nf_point & 0xF


def hook_name(family: int, hook: int) -> str:
    name = HOOK_CHAINS[hook] if hook < len(HOOK_CHAINS) else f"hook {hook}"
    return name if family == 2 else f"{name} ({FAMILIES.get(family, f'family {family}')})"


def hook_label(nf_point: int) -> str:
    """A drop event's nf_point as text: the kprobe hook, or the netfilter link point passed last."""
    found = kprobe_hook(nf_point)
    return hook_name(*found) if found else last_point_label(nf_point)


def chain_of(verdict: NfVerdictEvent) -> str:
    """nftables names its base chain; for iptables the base chain of a table is the hook's built-in one."""
    if verdict.chain:
        return verdict.chain
    return HOOK_CHAINS[verdict.hook] if verdict.hook < len(HOOK_CHAINS) else ""


def describe(verdict: NfVerdictEvent) -> dict[str, Any]:
    return {
        "nf_source": SOURCES.get(verdict.source, str(verdict.source)),
        "table": verdict.table or None,
        "chain": chain_of(verdict) or None,
        "verdict": VERDICTS.get(verdict.verdict, str(verdict.verdict)),
        "nf_hook_us": round(verdict.hook_ns / 1000, 3),
    }


class NfAttribution:
    """Feed raw ring-buffer events in order (add_raw); ask which verdict dropped a drop event (for_drop)."""

    def __init__(self) -> None:
        self._last: dict[int, NfVerdictEvent] = {}  # skb -> its latest verdict
        self._by_drop: dict[tuple[int, int], NfVerdictEvent] = {}  # (skb, drop ts) -> verdict
        self.verdicts: list[NfVerdictEvent] = []  # the most recent ones, for reports and tests
        self.total = 0

    def add_raw(self, data: bytes) -> None:
        kind = data[0]
        if kind == EVENT_NF_VERDICT:
            self.add_verdict(decode_verdict(data))
        elif kind == EVENT_DROP and self._last:
            skb = int.from_bytes(data[16:24], "little")
            ts_ns = int.from_bytes(data[8:16], "little")
            self._match(skb, ts_ns)

    def add_verdict(self, verdict: NfVerdictEvent) -> None:
        self.total += 1
        self._last[verdict.skb] = verdict
        self.verdicts.append(verdict)
        if len(self._last) > _KEEP:
            self._last.pop(next(iter(self._last)))
        if len(self.verdicts) > _KEEP:
            del self.verdicts[: _KEEP // 2]

    def add_drop(self, event: PacketEvent) -> None:
        self._match(event.skb, event.ts_ns)

    def _match(self, skb: int, ts_ns: int) -> None:
        verdict = self._last.get(skb)
        if verdict is None or not 0 <= ts_ns - verdict.ts_ns <= MATCH_WINDOW_NS:
            return
        self._by_drop[(skb, ts_ns)] = verdict
        if len(self._by_drop) > _KEEP:
            self._by_drop.pop(next(iter(self._by_drop)))

    def for_drop(self, event: PacketEvent) -> NfVerdictEvent | None:
        return self._by_drop.get((event.skb, event.ts_ns))
