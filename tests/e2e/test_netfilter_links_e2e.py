"""Two podtrace sessions with netfilter links in one namespace (a `record` beside a live `flows`): the kernel
allows one BPF program per hook and priority, so the second takes the neighbouring priorities, and both see
every NAT rewrite."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.netns import Pair, netns_pair, send_udp, sh

from tracer.events.decode import NatEvent, decode_any
from tracer.probes.build import ProbeConfig
from tracer.probes.pcapfilter import compile_filter
from tracer.sources.live import LiveSource

pytestmark = pytest.mark.root

PRIME = 23


@pytest.fixture
def pair() -> Iterator[Pair]:
    with netns_pair() as created:
        yield created


def _source(pair: Pair) -> LiveSource:
    source = LiveSource(ProbeConfig(filter=compile_filter("udp"), netfilter=True, netfilter_netns=(pair.b,)))
    source.start(progress=False)
    return source


def _nat_events(source: LiveSource) -> list[NatEvent]:
    events: list[NatEvent] = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        events += [e for e in map(decode_any, source.poll_raw(100)) if isinstance(e, NatEvent)]
    return events


def test_two_sessions_in_one_namespace_both_see_every_nat(pair: Pair) -> None:
    sh("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "5432", "-j", "DNAT",
       "--to-destination", f"{pair.addr_b}:5001", netns=pair.b)
    first = _source(pair)
    try:
        second = _source(pair)  # refused with EBUSY before the priority fallback
        try:
            for port in range(40300, 40300 + PRIME):  # a new conntrack entry each: one DNAT each
                send_udp(pair.a, pair.addr_b, 5432, 1, src_port=port)
            seen = [_nat_events(first), _nat_events(second)]
        finally:
            second.close()
    finally:
        first.close()
    for events in seen:
        dnat = [e for e in events if e.before.dport == 5432 and e.after.dport == 5001]
        assert len(dnat) == PRIME, [(e.before, e.after) for e in events]
        assert sorted(e.before.sport for e in dnat) == list(range(40300, 40300 + PRIME))
