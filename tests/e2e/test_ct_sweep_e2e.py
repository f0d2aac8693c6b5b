"""`flows`' conntrack mode in a long session: more connections than the kernel's per-connection table holds
(a small table, --ct-flows-max's knob), none of them ending by its nf_conn being reused (no conntrack flush), so
only the reader's sweep of idle entries (tracer/sources/ct_sweep.py) frees the table. Every count is still exact, the
entries taken out are said, and the same traffic without the sweep fills the table and loses connections."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.udp_dnat import dnat_echo_pair, exchange

from tracer.analysis.flows import nat_record_from_map
from tracer.benchmarks.netns import Pair
from tracer.node.names import netns_inode
from tracer.output.report import summary_line
from tracer.probes.build import ProbeConfig
from tracer.probes.pcapfilter import compile_filter
from tracer.sources.live import LiveSource

pytestmark = pytest.mark.root

TABLE = 32  # (connection, direction) entries: 16 connections with their replies
PER_BATCH = 13  # connections per batch (26 entries): one batch fits, two do not
BATCHES = 7
FIRST_PORT = 42000


@pytest.fixture
def pair() -> Iterator[Pair]:
    with dnat_echo_pair("h18s", "198.18.219.1", "198.18.219.2") as created:
        yield created


def _read_for(sources: list[LiveSource], seconds: float) -> None:
    """What a live command does between refreshes: poll the ring buffer (the sweep runs from there)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for source in sources:
            source.poll_raw(50)


def _dnat_counts(source: LiveSource) -> tuple[dict[int, int], dict[int, int]]:
    """Packets per client port: after DNAT (client -> backend), and of the replies given the VIP back."""
    requests: dict[int, int] = {}
    replies: dict[int, int] = {}
    for key, stats in source.nat_flows():
        record = nat_record_from_map(key, stats)
        if record.point == 1:
            requests[record.before.sport] = requests.get(record.before.sport, 0) + record.packets
        elif record.point == 10:
            replies[record.after.dport] = replies.get(record.after.dport, 0) + record.packets
    return requests, replies


def test_idle_entries_are_taken_out_with_their_counts_so_more_connections_than_the_table_are_counted(
        pair: Pair) -> None:
    # scoped to the namespace (drops elsewhere on the machine cost no events), so `lost` is this table's
    swept, unswept = (LiveSource(ProbeConfig(filter=compile_filter("udp"), netns_inode=netns_inode(pair.b),
                                             netfilter=True, netfilter_netns=(pair.b,), netfilter_conntrack=True,
                                             ct_flows_max=TABLE, ct_idle_s=idle))
                      for idle in (0.6, 3600.0))
    sources = [swept, unswept]
    try:
        for source in sources:
            source.start(progress=False)
        answered = 0
        for batch in range(BATCHES):
            start = FIRST_PORT + batch * PER_BATCH
            answered += exchange(pair, range(start, start + PER_BATCH))
            _read_for(sources, 1.5)  # the batch's entries idle for longer than 0.6 s, read more than once
        # The first batch again, on the same conntrack entries (alive for 30 s): their kernel entries were taken
        # out, so each starts a new one; both parts add up to the same translation.
        answered += exchange(pair, range(FIRST_PORT, FIRST_PORT + PER_BATCH))
        requests, replies = _dnat_counts(swept)
        lost = {**swept.probe_counters().get("netfilter", {}), "ct_retired": swept.counters()["ct_retired"]}
        lost_unswept = {**unswept.probe_counters().get("netfilter", {}), "ct_retired": unswept.counters()["ct_retired"]}
        totals_unswept = unswept.counters()
    finally:
        for source in sources:
            source.close()
    connections = BATCHES * PER_BATCH
    print(f"table {TABLE}: swept {lost}, unswept {lost_unswept}")
    assert answered == connections + PER_BATCH
    expected = {port: 2 if port < FIRST_PORT + PER_BATCH else 1 for port in range(FIRST_PORT, FIRST_PORT + connections)}
    assert requests == expected, requests
    assert replies == expected, replies
    assert lost.get("lost", 0) == 0, lost
    # every batch but the last was taken out (the re-sent first batch's too, once more): said in the counters
    assert lost["ct_retired"] >= 2 * PER_BATCH * (BATCHES - 1), lost
    # the control: without the sweep the table fills with the first connections and the later ones are lost
    assert lost_unswept["lost"] >= 2 * (connections - TABLE // 2), lost_unswept
    assert lost_unswept["ct_retired"] == 0, lost_unswept
    # what the full table could not count is said as such, not as ring-buffer loss (its fix is --ct-flows-max)
    assert totals_unswept["ct_table_full"] >= 2 * (connections - TABLE // 2), totals_unswept
    assert totals_unswept["lost"] == 0, totals_unswept  # a quiet, scoped session: the ring buffer lost nothing
    line = summary_line(0, totals_unswept)
    assert "the per-connection table was full: raise --ct-flows-max" in line and "--ringbuf-pages" not in line, line
