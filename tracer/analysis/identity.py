"""A dropped packet's own connection: the conntrack entry the kernel had on its skb when it was freed.

The drop probe submits a conntrack event (struct pt_ct_event) just before each drop event, on the same CPU for
the same skb (bpf/skb.h pt_ct_emit_in). Joining the two gives every drop the original tuple its client sent
(client -> the VIP it dialled) and the reply tuple (the backend chosen -> client): observed, read from the
kernel at the moment of the drop, so an entry that was never confirmed (a first SYN) or that conntrack has
forgotten since still answers. Pure: raw events in, identities out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tracer.events.decode import (
    CT_ENTRY,
    CT_NONE,
    CT_UNTRACKED,
    EVENT_CT,
    EVENT_DROP,
    IPS_DST_NAT,
    IPS_SRC_NAT,
    CtEvent,
    PacketEvent,
    Tuple,
    decode_ct,
)

_KEEP = 65536  # bound on identities remembered for drops not yet read


@dataclass(frozen=True, slots=True)
class Identity:
    """What the kernel said about a drop's connection; `source` says how it is known."""

    # "conntrack": read from the skb's nf_conn; "no-conntrack": the skb had none (dropped before conntrack, or
    # untracked); "not-traced": this session or recording has no conntrack events (older kernel or recording)
    source: str
    state: str  # "entry", "none", "untracked", "unknown"
    direction: str | None = None  # "original" or "reply" (of the connection, for this packet)
    client: Tuple | None = None  # the original tuple: client -> dialled address
    backend: Tuple | None = None  # the reply tuple: backend -> reply address
    dnat: bool = False
    snat: bool = False
    ct: int = 0  # nf_conn address: the same connection while it lives

    @property
    def known(self) -> bool:
        return self.source == "conntrack"

    def dialled(self) -> tuple[str, int] | None:
        """(address, port) the client dialled: the VIP for a Service."""
        return (self.client.dst, self.client.dport) if self.client else None

    def backend_endpoint(self) -> tuple[str, int] | None:
        """(address, port) the connection was sent to: its reply tuple's source."""
        return (self.backend.src, self.backend.sport) if self.backend else None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ct_state": self.state, "ct_identity": self.source}
        if self.client is not None and self.backend is not None:
            data.update({
                "ct_direction": self.direction,
                "ct_client": f"{self.client.src}:{self.client.sport}",
                "ct_dialled": f"{self.client.dst}:{self.client.dport}",
                "ct_backend": f"{self.backend.src}:{self.backend.sport}",
                "ct_dnat": self.dnat,
                "ct_snat": self.snat,
            })
        return data

    def describe(self) -> str:
        """One short phrase for text output."""
        if self.client is None or self.backend is None:
            return {"no-conntrack": f"no conntrack entry ({self.state})", "not-traced": "conntrack not traced"}.get(
                self.source, "conntrack unknown")
        text = f"ct {self.client.src}:{self.client.sport} > {self.client.dst}:{self.client.dport}"
        if self.dnat:
            text += f" via {self.backend.src}:{self.backend.sport}"
        return text + (" (reply)" if self.direction == "reply" else "")


NOT_TRACED = Identity("not-traced", "unknown")


def identity_of(event: CtEvent) -> Identity:
    if event.state == CT_ENTRY:
        return Identity("conntrack", "entry", "reply" if event.reply_direction else "original", event.orig,
                        event.reply, bool(event.status & IPS_DST_NAT), bool(event.status & IPS_SRC_NAT), event.ct)
    if event.state == CT_UNTRACKED:
        return Identity("no-conntrack", "untracked")
    if event.state == CT_NONE:
        return Identity("no-conntrack", "none")
    return Identity("no-conntrack", "unknown")


class ConnIdentities:
    """Feed raw ring-buffer events in order (add_raw); ask for a drop event's identity (for_drop).

    A drop without its conntrack event (a session or recording without them, or the event lost) is
    "not-traced": never reported as "no conntrack entry".
    """

    def __init__(self) -> None:
        self._pending: dict[int, CtEvent] = {}  # cpu -> the conntrack event waiting for its drop
        self._by_drop: dict[tuple[int, int], Identity] = {}  # (skb, drop ts) -> identity

    def add_raw(self, data: bytes) -> None:
        kind = data[0]
        if kind == EVENT_CT:
            self.add_ct(decode_ct(data))
        elif kind == EVENT_DROP and self._pending:
            cpu = int.from_bytes(data[4:8], "little")
            skb = int.from_bytes(data[16:24], "little")
            ts_ns = int.from_bytes(data[8:16], "little")
            self._match(cpu, skb, ts_ns)

    def add_ct(self, event: CtEvent) -> None:
        self._pending[event.cpu] = event

    def add_drop(self, event: PacketEvent) -> None:
        self._match(event.cpu, event.skb, event.ts_ns)

    def add(self, event: object) -> None:
        """Decoded events in order (replays through decode_any)."""
        if isinstance(event, CtEvent):
            self.add_ct(event)
        elif isinstance(event, PacketEvent) and event.is_drop:
            self.add_drop(event)

    def _match(self, cpu: int, skb: int, ts_ns: int) -> None:
        pending = self._pending.pop(cpu, None)
        # The same CPU submitted the pair back to back: the same skb, a drop no older than its conntrack event.
        if pending is None or pending.skb != skb or ts_ns < pending.ts_ns:
            return
        self._by_drop[(skb, ts_ns)] = identity_of(pending)
        if len(self._by_drop) > _KEEP:
            self._by_drop.pop(next(iter(self._by_drop)))

    def for_drop(self, event: PacketEvent) -> Identity:
        return self._by_drop.get((event.skb, event.ts_ns), NOT_TRACED)
