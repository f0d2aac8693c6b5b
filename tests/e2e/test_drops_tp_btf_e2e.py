"""The drop probe on tp_btf and on its raw-tracepoint fallback: doctor names the one a session attaches, and both
report the same drops (reason, tuple, device, snapshot, conntrack) for the same fault."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
from support.netns import Pair, netns_pair, send_udp, sh
from support.podtrace import run

from tracer.events.decode import EVENT_CT, CtEvent, PacketEvent
from tracer.node.names import netns_inode
from tracer.probes.build import ProbeConfig
from tracer.sources.live import RAW_TP_DROPS_ENV, LiveSource

pytestmark = pytest.mark.root

PRIME = 17
PORT = 5031


@pytest.fixture
def pair() -> Iterator[Pair]:
    with netns_pair() as created:
        # A conntrack match: the namespace then tracks connections, so each drop has its conntrack entry.
        sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", str(PORT), "-m", "conntrack", "--ctstate", "NEW",
           "-j", "DROP", netns=created.b)
        yield created


def _drops_of_one_session(pair: Pair, raw_tp: bool, src_port: int) -> tuple[list[str], list[PacketEvent],
                                                                              list[CtEvent], str]:
    if raw_tp:
        os.environ[RAW_TP_DROPS_ENV] = "1"
    try:
        source = LiveSource(ProbeConfig(netns_inode=netns_inode(pair.b)))
        source.start(progress=False)
    finally:
        os.environ.pop(RAW_TP_DROPS_ENV, None)
    try:
        send_udp(pair.a, pair.addr_b, PORT, PRIME, src_port=src_port)
        events: list = []
        deadline = time.monotonic() + 10  # a bound on waiting, not an assertion on speed
        while sum(isinstance(e, PacketEvent) for e in events) < PRIME and time.monotonic() < deadline:
            events += source.poll_all(100)
        events += source.poll_all(200)  # nothing more may come: the count is checked exact
        reasons = source.reasons
        attached = list(source.attached)
    finally:
        source.close()
    drops = [e for e in events if isinstance(e, PacketEvent) and e.outer.dport == PORT]
    # Each drop's own conntrack event is the last one before it from the same skb. Not any event of that address:
    # a freed skb is reused at once (17 datagrams sent one after another often share one address), and a later
    # packet's conntrack event (an IPv6 router solicitation, no entry) would stand in for the drop's.
    last_ct: dict[int, CtEvent] = {}
    cts: list[CtEvent] = []
    for event in events:
        if isinstance(event, CtEvent) and event.type == EVENT_CT:
            last_ct[event.skb] = event
        elif isinstance(event, PacketEvent) and event.outer.dport == PORT and event.skb in last_ct:
            cts.append(last_ct.pop(event.skb))
    return attached, drops, cts, reasons.get(drops[0].reason, "?") if drops else ""


def test_doctor_chooses_tp_btf_and_the_session_attaches_it(pair: Pair) -> None:
    result = run("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    drops = next(hook for hook in report["hooks"] if hook["name"] == "drops")
    trial = report["trials"]["tp_btf:kfree_skb"]
    attached, events, _cts, _reason = _drops_of_one_session(pair, raw_tp=False, src_port=40031)
    if trial["ok"]:
        assert drops["chosen"] == "tp_btf" and not drops["fallback"]
        assert "tp_btf kfree_skb" in attached and "raw tracepoint kfree_skb" not in attached
    else:  # a kernel that refuses tp_btf: the ladder's fallback, with the reason
        assert drops["chosen"] == "raw_tracepoint" and drops["fallback"]
        assert drops["rejected"][0]["reason"] == trial["reason"]
        assert "raw tracepoint kfree_skb" in attached
    assert len(events) == PRIME


def test_tp_btf_and_raw_tracepoint_report_the_same_drops(pair: Pair) -> None:
    typed = _drops_of_one_session(pair, raw_tp=False, src_port=40032)
    raw = _drops_of_one_session(pair, raw_tp=True, src_port=40033)
    assert "raw tracepoint kfree_skb" in raw[0] and "tp_btf kfree_skb" not in raw[0]
    for attached, drops, cts, reason in (typed, raw):
        assert len(drops) == PRIME, attached
        assert reason == "NETFILTER_DROP"
        assert {(d.outer.src, d.outer.dst, d.outer.proto) for d in drops} == {(pair.addr_a, pair.addr_b, 17)}
        assert {d.ifname for d in drops} == {"veth-b"}
        assert all(d.location and d.len == 32 + 8 + 20 and d.snap_len == d.len for d in drops)
        assert {d.netns for d in drops} == {netns_inode(pair.b)}
        # Each drop's conntrack event came first, from the same skb: the UDP flow's original tuple.
        assert len(cts) == len(drops)
        assert {(ct.orig.src, ct.orig.dst, ct.orig.dport) for ct in cts} == {(pair.addr_a, pair.addr_b, PORT)}
    # Same packets, byte for byte, apart from the source port each session sent from.
    typed_snap, raw_snap = typed[1][0].snap[: typed[1][0].snap_len], raw[1][0].snap[: raw[1][0].snap_len]
    assert typed_snap[28:] == raw_snap[28:] and typed_snap[:20] != b"" and len(typed_snap) == len(raw_snap)
