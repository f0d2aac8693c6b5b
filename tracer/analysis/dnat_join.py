"""Which pre-DNAT flow (client -> the VIP it dialled) is which post-DNAT flow (client -> the backend chosen), from
what the kernel reported on a node: pure code for tracer/analysis/journey.py's one journey across the DNAT.

Observed: a conntrack event (the nf_conn on a dropped skb: its original tuple client -> VIP, its reply tuple
backend -> client) or a NAT record (nat_flows: the tuples before and after a rewrite). Inferred: one skb (the same
address, in the same namespace of one node) seen within WINDOW_NS first addressed to the VIP, then to the backend,
its source, IP id and TCP sequence unchanged (or, for a reply, from the backend, then from the VIP). Nothing else
joins two flows: addresses alone never do, and two answers for one flow join neither.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tracer.events.decode import IPS_DST_NAT, CtEvent, PacketEvent, Tuple

WINDOW_NS = 1_000_000  # one packet's way through a node's hooks takes microseconds; skb addresses are reused later

Endpoint = tuple[str, int]
FlowKey = tuple[int, str, int, str, int]  # proto, src, sport, dst, dport


@dataclass(frozen=True)
class Translation:
    """One connection's DNAT: the client's tuple to the VIP it dialled rewritten to the backend chosen."""

    proto: int
    client: Endpoint
    dialled: Endpoint
    backend: Endpoint
    node: int  # the recording that showed it
    how: str  # "conntrack", "nat record" (observed), "same skb" (inferred)

    @property
    def observed(self) -> bool:
        return self.how != "same skb"

    def key(self) -> tuple[int, Endpoint, Endpoint]:
        return self.proto, self.client, self.dialled


def from_conntrack(events: Iterable[CtEvent], node: int) -> list[Translation]:
    """Entries the kernel marked DNAT: original tuple client -> VIP, reply tuple backend -> client."""
    return [Translation(event.orig.proto, (event.orig.src, event.orig.sport), (event.orig.dst, event.orig.dport),
                        (event.reply.src, event.reply.sport), node, "conntrack")
            for event in events if event.status & IPS_DST_NAT and event.orig.family == 4
            and (event.orig.dst, event.orig.dport) != (event.reply.src, event.reply.sport)]


def from_nat(records: Iterable[tuple[Tuple, Tuple]], node: int) -> list[Translation]:
    """NAT records (before, after) that rewrote the destination only."""
    out = []
    for before, after in records:
        if before.family == 4 and (before.src, before.sport) == (after.src, after.sport) \
                and (before.dst, before.dport) != (after.dst, after.dport):
            out.append(Translation(before.proto, (before.src, before.sport), (before.dst, before.dport),
                                   (after.dst, after.dport), node, "nat record"))
    return out


def _pod(event: PacketEvent) -> Tuple:
    return event.inner or event.outer


def from_skbs(events: Sequence[PacketEvent], node: int, ids: dict[int, tuple[int, int | None]]) -> list[Translation]:
    """The same skb, one after the other within WINDOW_NS in one namespace, its addresses rewritten: `ids` is each
    event's (IP id, TCP sequence) by id(event), which must not change (the same packet)."""
    last: dict[tuple[int, int], PacketEvent] = {}
    out = []
    for event in sorted(events, key=lambda e: e.ts_ns):
        if event.skb == 0 or id(event) not in ids:
            continue
        slot = (event.netns, event.skb)
        before = last.get(slot)
        last[slot] = event
        if before is None or event.ts_ns - before.ts_ns > WINDOW_NS or ids[id(before)] != ids[id(event)]:
            continue
        a, b = _pod(before), _pod(event)
        if a.proto != b.proto:
            continue
        if (a.src, a.sport) == (b.src, b.sport) and (a.dst, a.dport) != (b.dst, b.dport):
            out.append(Translation(a.proto, (a.src, a.sport), (a.dst, a.dport), (b.dst, b.dport), node, "same skb"))
        elif (a.dst, a.dport) == (b.dst, b.dport) and (a.src, a.sport) != (b.src, b.sport):
            # a reply on its way back: from the backend, then (un-DNAT) from the VIP the client dialled
            out.append(Translation(a.proto, (a.dst, a.dport), (b.src, b.sport), (a.src, a.sport), node, "same skb"))
    return out


@dataclass
class Joins:
    """The translations decided on: pre-DNAT flow -> its translation, post-DNAT flow -> the same."""

    by_dialled: dict[tuple[int, Endpoint, Endpoint], Translation]
    by_backend: dict[tuple[int, Endpoint, Endpoint], Translation]

    def canonical(self, flow: FlowKey) -> FlowKey:
        """The post-DNAT flow of a pre-DNAT one (either way: client -> VIP becomes client -> backend, VIP -> client
        becomes backend -> client); any other flow as it is."""
        proto, src, sport, dst, dport = flow
        forward = self.by_dialled.get((proto, (src, sport), (dst, dport)))
        if forward is not None:
            return proto, src, sport, forward.backend[0], forward.backend[1]
        reply = self.by_dialled.get((proto, (dst, dport), (src, sport)))
        if reply is not None:
            return proto, reply.backend[0], reply.backend[1], dst, dport
        return flow

    def of_flow(self, flow: FlowKey) -> Translation | None:
        """The translation a post-DNAT flow (either way) was joined through, if any."""
        proto, src, sport, dst, dport = flow
        return self.by_backend.get((proto, (src, sport), (dst, dport))) or \
            self.by_backend.get((proto, (dst, dport), (src, sport)))


NO_JOINS = Joins({}, {})


def decide(found: Iterable[Translation]) -> Joins:
    """Per (proto, client, dialled), the one backend it was sent to: observed before inferred (an inference that
    disagrees with an observation is dropped); a flow two observations (or two inferences) send to different
    backends is left out (kept apart: nothing ties it to one)."""
    chosen: dict[tuple[int, Endpoint, Endpoint], Translation] = {}
    conflicting: set[tuple[int, Endpoint, Endpoint]] = set()
    for item in sorted(found, key=lambda t: not t.observed):
        key = item.key()
        if key in conflicting:
            continue
        known = chosen.get(key)
        if known is None:
            chosen[key] = item
        elif known.observed and not item.observed:
            continue  # what the kernel said of the connection wins over what the skb suggests
        elif known.backend != item.backend:
            conflicting.add(key)
            del chosen[key]
    return Joins(chosen, {(t.proto, t.client, t.backend): t for t in chosen.values()})
