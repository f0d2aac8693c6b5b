"""podtrace drops/watch against real probes, real traffic and real faults in throwaway namespaces."""

from __future__ import annotations

import time

import pytest
from support.netns import Pair, netns_pair, send_udp, sh, tcp_connect_attempts
from support.podtrace import start

pytestmark = pytest.mark.root

PRIME = 13
NETFILTER_FUNCTIONS = {"nf_hook_slow", "nft_do_chain", "ipt_do_table"}


@pytest.fixture
def pair() -> Pair:
    with netns_pair() as created:
        yield created


def _only_row(rows: list[dict], **match: object) -> dict:
    found = [row for row in rows if all(row.get(key) == value for key, value in match.items())]
    assert len(found) == 1, f"expected one row matching {match}, got {found} (all rows: {rows})"
    return found[0]


def test_iptables_drop_reports_netfilter_drop_with_exact_tuple_and_count(pair: Pair) -> None:
    sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", "5001", "-j", "DROP", netns=pair.b)
    tracer = start("drops", "--json", "--netns", pair.b, "udp")
    send_udp(pair.a, pair.addr_b, 5001, PRIME, src_port=40001)
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    row = _only_row(result.rows, dport=5001)
    assert row["reason"] == "NETFILTER_DROP"
    assert row["count"] == PRIME
    assert (row["proto"], row["src"], row["sport"], row["dst"]) == ("udp", pair.addr_a, 40001, pair.addr_b)
    assert row["netns"] == pair.b and row["ifname"] == "veth-b"
    # iptables-nft drops inside nft_do_chain; legacy iptables in nf_hook_slow after ipt_do_table's verdict.
    assert row["location"].split("+")[0] in NETFILTER_FUNCTIONS, row["location"]
    assert result.summary["lost"] == 0


def test_udp_and_tcp_to_closed_ports_are_no_socket(pair: Pair) -> None:
    tracer = start("drops", "--json", "--netns", pair.b, "--fail-on-drops")
    send_udp(pair.a, pair.addr_b, 5002, PRIME, src_port=40002)
    tcp_connect_attempts(pair.a, pair.addr_b, 5003, 7)
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 3, "--fail-on-drops exits 3 when drops matched"
    udp = _only_row(result.rows, proto="udp", dport=5002)
    assert (udp["reason"], udp["count"], udp["src"], udp["sport"]) == ("NO_SOCKET", PRIME, pair.addr_a, 40002)
    assert udp["location"].startswith("__udp4_lib_rcv"), udp["location"]
    tcp = _only_row(result.rows, proto="tcp", dport=5003)
    assert (tcp["reason"], tcp["count"], tcp["src"], tcp["dst"]) == ("NO_SOCKET", 7, pair.addr_a, pair.addr_b)


def test_filter_excluding_the_traffic_gives_no_events_and_port_filter_keeps_one_port(pair: Pair) -> None:
    excluded = start("drops", "--json", "--netns", pair.b, "udp port 6999")
    only_5005 = start("drops", "--json", "--netns", pair.b, "udp port 5005")
    send_udp(pair.a, pair.addr_b, 5004, PRIME)
    send_udp(pair.a, pair.addr_b, 5005, 11)
    time.sleep(0.5)
    excluded_result, only_result = excluded.stop(), only_5005.stop()
    assert excluded_result.rows == [] and excluded_result.summary["events"] == 0
    assert [(row["dport"], row["count"]) for row in only_result.rows] == [(5005, 11)]


def test_netns_filter_keeps_other_namespaces_out(pair: Pair) -> None:
    tracer = start("drops", "--json", "--netns", pair.a, "udp port 5006")
    send_udp(pair.a, pair.addr_b, 5006, PRIME)  # dropped in b (closed port), not in a
    time.sleep(0.5)
    result = tracer.stop()
    assert result.rows == []


def test_burst_larger_than_the_ring_buffer_is_counted_as_lost_and_tracing_continues(pair: Pair) -> None:
    # One 4 KiB page holds about 13 events: a burst of thousands overflows it between two polls 200 ms apart.
    tracer = start("drops", "--json", "--netns", pair.b, "--ringbuf-pages", "1", "--poll-interval", "200", "udp")
    send_udp(pair.a, pair.addr_b, 5007, 20000)
    time.sleep(1.0)
    send_udp(pair.a, pair.addr_b, 5008, 7)
    time.sleep(0.5)
    result = tracer.stop()
    summary = result.summary
    assert summary["lost"] > 0, summary
    burst = _only_row(result.rows, dport=5007)
    assert burst["count"] + summary["lost"] == 20000, (burst["count"], summary)
    assert _only_row(result.rows, dport=5008)["count"] == 7, "events after the burst still arrive"


def test_watch_streams_drop_and_path_events_for_matching_packets(pair: Pair) -> None:
    tracer = start("watch", "--json", "--netns", pair.b, "udp port 5009")
    send_udp(pair.a, pair.addr_b, 5009, 3, src_port=40009)
    time.sleep(0.5)
    result = tracer.stop()
    events = result.rows
    drops = [event for event in events if event["kind"] == "drop"]
    received = [event for event in events if event["kind"] == "path" and event["point"] == "rx"]
    assert len(drops) == 3 and {event["reason"] for event in drops} == {"NO_SOCKET"}
    assert len(received) == 3
    for event in received:
        assert (event["src"], event["sport"], event["dst"], event["dport"]) == (pair.addr_a, 40009, pair.addr_b, 5009)
        assert event["ifname"] == "veth-b" and event["netns"] == pair.b
    assert result.summary["lost"] == 0


def test_tc_on_a_chosen_interface_adds_ingress_path_events_and_cleans_up(pair: Pair) -> None:
    tracer = start("watch", "--json", "--netns", pair.b, "--tc", f"{pair.b}/veth-b", "udp port 5010")
    send_udp(pair.a, pair.addr_b, 5010, 5, src_port=40010)
    time.sleep(0.5)
    result = tracer.stop()
    tc_in = [event for event in result.rows if event.get("point") == "tc-in"]
    assert len(tc_in) == 5
    for event in tc_in:
        assert (event["src"], event["sport"], event["dst"], event["dport"]) == (pair.addr_a, 40010, pair.addr_b, 5010)
        assert event["ifname"] == "veth-b"
    left = sh("tc", "filter", "show", "dev", "veth-b", "ingress", netns=pair.b)
    assert "podtrace" not in left, left
