"""`flows`' conntrack mode (bpf/nfct.c) beside the per-packet links (bpf/netfilter.c) on the same DNAT'd traffic,
with the conntrack table flushed between bursts so that new connections reuse freed nf_conn memory: the counts a
recycled entry held are folded, not lost, and both modes give the same translations with the same counts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.netns import sh
from support.udp_dnat import dnat_echo_pair, exchange

from tracer.analysis.flows import nat_record_from_map
from tracer.benchmarks.netns import Pair
from tracer.probes.build import ProbeConfig
from tracer.probes.pcapfilter import compile_filter
from tracer.sources.live import LiveSource

pytestmark = pytest.mark.root

PRIME = 17  # connections per burst
BURSTS = 3


@pytest.fixture
def pair() -> Iterator[Pair]:
    with dnat_echo_pair("h18", "198.18.218.1", "198.18.218.2") as created:
        yield created


def _totals(source: LiveSource) -> dict[tuple[int, str, str], int]:
    """Packets per (point, before, after) translation."""
    totals: dict[tuple[int, str, str], int] = {}
    for key, stats in source.nat_flows():
        record = nat_record_from_map(key, stats)
        name = (record.point, f"{record.before.src}:{record.before.sport}>{record.before.dst}:{record.before.dport}",
                f"{record.after.src}:{record.after.sport}>{record.after.dst}:{record.after.dport}")
        totals[name] = totals.get(name, 0) + record.packets
    return totals


def test_recycled_conntrack_entries_keep_their_counts_and_match_the_per_packet_mode(pair: Pair) -> None:
    sources = [LiveSource(ProbeConfig(filter=compile_filter("udp"), netfilter=True, netfilter_netns=(pair.b,),
                                      netfilter_conntrack=conntrack)) for conntrack in (False, True)]
    try:
        for source in sources:
            source.start(progress=False)
        by_packet, by_conntrack = sources
        assert not by_packet.conntrack_flows and by_conntrack.conntrack_flows
        answered = 0
        for burst in range(BURSTS):
            answered += exchange(pair, range(41000 + burst * PRIME, 41000 + (burst + 1) * PRIME))
            sh("conntrack", "-F", netns=pair.b, check=False)  # the entries freed: the next burst reuses them
        assert answered == BURSTS * PRIME
        # nf_conn memory was reused: entries the kernel folded into nat_flows when their address came back
        recycled = len(by_conntrack._bpf["nat_flows"])  # the fold path itself, what this test is for
        old, new = _totals(by_packet), _totals(by_conntrack)
    finally:
        for source in sources:
            source.close()
    print(f"{recycled} translations folded from recycled nf_conn entries")
    assert recycled > 0, "no nf_conn was reused: the fold path was not exercised"
    dnat = {name: count for name, count in new.items() if name[0] == 1}
    replies = {name: count for name, count in new.items() if name[0] == 10}
    assert len(dnat) == len(replies) == BURSTS * PRIME, new
    assert set(dnat.values()) == {1} and set(replies.values()) == {1}, new
    assert new == old, (old, new)
