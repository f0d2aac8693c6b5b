"""The conntrack event of a drop (struct pt_ct_event) and its join onto the drop event that follows it."""

from __future__ import annotations

import io
import socket

from tracer.analysis.aggregate import DropTable
from tracer.analysis.attribution import knowledge
from tracer.analysis.identity import ConnIdentities
from tracer.events.decode import (
    CT_ENTRY,
    CT_NONE,
    CT_SIZE,
    CT_UNTRACKED,
    EVENT_CT,
    EVENT_DROP,
    FLAG_PARSED,
    IPS_DST_NAT,
    NETNS_OFFSETS,
    CtEvent,
    PacketEvent,
    Tuple,
    ct_offsets,
    decode_any,
    decode_ct,
    encode,
    encode_ct,
)
from tracer.output.report import Resolver, drop_rows, event_json, write_drop_table

SKB = 0xFFFF888012345600


def tcp(src: str, sport: int, dst: str, dport: int) -> Tuple:
    return Tuple(socket.inet_aton(src) + bytes(12), socket.inet_aton(dst) + bytes(12), sport, dport, 4, 6, 0, 0, 0, 0)


def drop(cpu: int = 1, skb: int = SKB, ts_ns: int = 2000) -> PacketEvent:
    # After DNAT on the backend's node: the packet's own addresses name the backend, not the VIP.
    return PacketEvent(EVENT_DROP, cpu, ts_ns, skb, 0xFFFFFFFF81000000, 6, 4026531840, 3, 60, 0, 0x800, FLAG_PARSED,
                       0, 0, "cni0", tcp("10.244.0.2", 40312, "10.244.1.2", 8080), None, b"")


def conntrack(cpu: int = 1, skb: int = SKB, ts_ns: int = 1990, state: int = CT_ENTRY, ctinfo: int = 2) -> CtEvent:
    if state != CT_ENTRY:
        empty = Tuple(bytes(16), bytes(16), 0, 0, 0, 0, 0, 0, 0, 0)
        return CtEvent(EVENT_CT, cpu, ts_ns, skb, 4026531840, state, ctinfo, 0, 0, empty, empty)
    return CtEvent(EVENT_CT, cpu, ts_ns, skb, 4026531840, state, ctinfo, 0xFFFF8880AAAA0000, IPS_DST_NAT,
                   tcp("10.244.0.2", 40312, "10.96.0.10", 80), tcp("10.244.1.2", 8080, "10.244.0.2", 40312))


def names() -> Resolver:
    return Resolver({6: "NETFILTER_DROP", 2: "NO_SOCKET"}, lambda inode: "pt-node2", lambda addr: "nf_hook_slow+0x8a")


def test_ct_event_layout_and_round_trip() -> None:
    event = conntrack()
    raw = encode_ct(event)
    assert len(raw) == CT_SIZE == 136
    assert ct_offsets()["netns"] == NETNS_OFFSETS[EVENT_CT] == 24  # where recordings read its netns
    assert decode_ct(raw) == event and decode_any(raw) == event


def test_a_dnat_drop_is_charged_to_the_dialled_vip_and_the_backend() -> None:
    ids = ConnIdentities()
    ids.add_raw(encode_ct(conntrack()))
    ids.add_raw(encode(drop()))
    identity = ids.for_drop(drop())
    assert identity.known and identity.direction == "original" and identity.dnat
    assert identity.dialled() == ("10.96.0.10", 80)
    assert identity.backend_endpoint() == ("10.244.1.2", 8080)
    assert identity.as_json()["ct_client"] == "10.244.0.2:40312"


def test_a_reply_direction_packet_says_so() -> None:
    ids = ConnIdentities()
    ids.add(conntrack(ctinfo=3))  # IP_CT_ESTABLISHED_REPLY
    ids.add(drop())
    assert ids.for_drop(drop()).direction == "reply"


def test_no_entry_and_untracked_are_said_as_such() -> None:
    for state, name in ((CT_NONE, "none"), (CT_UNTRACKED, "untracked")):
        ids = ConnIdentities()
        ids.add(conntrack(state=state, ctinfo=7 if state == CT_UNTRACKED else 0))
        ids.add(drop())
        identity = ids.for_drop(drop())
        assert (identity.source, identity.state, identity.client) == ("no-conntrack", name, None)


def test_a_conntrack_event_of_another_skb_or_cpu_is_never_borrowed() -> None:
    ids = ConnIdentities()
    ids.add(conntrack(skb=SKB + 0x100))  # its own drop event was lost: the next drop on this CPU is another skb
    ids.add(drop())
    assert ids.for_drop(drop()).source == "not-traced"
    ids.add(conntrack(cpu=0))
    ids.add(drop(cpu=1))
    assert ids.for_drop(drop(cpu=1)).source == "not-traced"
    assert ConnIdentities().for_drop(drop()).source == "not-traced"  # an older recording: no conntrack events


def test_drop_rows_and_table_carry_the_identity_and_severity() -> None:
    table, ids = DropTable(), ConnIdentities()
    for raw in (encode_ct(conntrack()), encode(drop())):
        table.add_raw(raw)
        ids.add_raw(raw)
    [row] = drop_rows(table, names(), None, ids)
    assert (row["severity"], row["ct_dialled"], row["ct_backend"], row["ct_identity"]) == (
        "policy", "10.96.0.10:80", "10.244.1.2:8080", "conntrack")
    out = io.StringIO()
    write_drop_table([row], out)
    expected = "dialled 10.96.0.10:80 from 10.244.0.2:40312, backend 10.244.1.2:8080 (conntrack, observed)"
    assert expected in out.getvalue()
    assert event_json(drop(), names(), ids.for_drop(drop()))["ct_dialled"] == "10.96.0.10:80"


def test_benign_rows_come_last_under_their_own_heading() -> None:
    table = DropTable()
    table.add(drop())
    for _ in range(3):  # more of them: count alone would rank them first
        table.add(PacketEvent(EVENT_DROP, 1, 9, SKB, 0xFFFFFFFF81000010, 99, 4026531840, 1, 60, 0, 0x800,
                              FLAG_PARSED, 0, 0, "lo", tcp("127.0.0.1", 1, "127.0.0.1", 2), None, b""))
    resolver = Resolver({6: "NETFILTER_DROP", 99: "QUEUE_PURGE"}, lambda inode: "host", lambda addr: "x+0x1")
    rows = drop_rows(table, resolver)
    assert [(row["reason"], row["severity"]) for row in rows] == [("NETFILTER_DROP", "policy"),
                                                                  ("QUEUE_PURGE", "benign")]
    out = io.StringIO()
    write_drop_table(rows, out)
    lines = out.getvalue().splitlines()
    assert lines[2] == "benign (normal kernel frees, not network loss):" and "QUEUE_PURGE" in lines[3]


def test_knowledge_says_observed_only_when_the_kernel_said_so() -> None:
    assert knowledge({"ct_identity": "conntrack", "src": "10.244.0.2", "hook": "FORWARD first"}) == {
        "connection_known": "observed", "hook_known": "observed"}
    assert knowledge({"ct_identity": "not-traced", "src": "10.244.0.2", "hook": "-"}) == {
        "connection_known": "matched", "hook_known": "unknown"}
    assert knowledge({"ct_identity": "no-conntrack", "src": "10.244.0.2", "hook": "-", "table": "filter"})[
        "hook_known"] == "observed"  # a verdict kprobe named the table
