"""`podtrace serve` on the lab's nodes, scraped by a real Prometheus server and asserted with PromQL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.lab import exclusive_lab
from support.serve import Prometheus, prometheus, serve

from tracer.lab import faults, traffic

pytestmark = pytest.mark.root

WEB_HTTP = "default/web:http"


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    with exclusive_lab(proxy_mode="iptables"):
        yield


@pytest.fixture(scope="module")
def fleet(lab: None) -> Iterator[Prometheus]:
    """serve on both lab nodes (one process each, as the DaemonSet runs one per node) and Prometheus on both."""
    with serve("--node", "pt-node1", "--interval", "1") as (_n1, port1), \
            serve("--node", "pt-node2", "--interval", "1") as (_n2, port2), prometheus([port1, port2]) as server:
        yield server


@pytest.fixture
def no_faults(fleet: Prometheus) -> Iterator[Prometheus]:
    yield fleet
    faults.clear_all()


def _drops(server: Prometheus, selector: str) -> float:
    return server.value(f"sum(podtrace_drops_total{{{selector}}})") or 0.0


def _shown(server: Prometheus, promql: str = "podtrace_drops_total") -> str:
    """Every series of a query, one a line, for assertion messages."""
    return "\n".join(f"{row['metric']} {row['value'][1]}" for row in server.query(promql))


def _settle() -> None:
    time.sleep(4)  # serve's refresh (1 s) plus two scrapes (1 s)


def test_every_probe_attaches_and_both_nodes_are_scraped(no_faults: Prometheus) -> None:
    attached = {(r["metric"]["node"], r["metric"]["probe"]): float(r["value"][1])
                for r in no_faults.query("podtrace_probe_attached")}
    for node in ("pt-node1", "pt-node2"):
        for probe in ("drops", "netfilter", "softirq", "conntrack", "mtu"):
            assert attached.get((node, probe)) == 1, attached


def test_drop_backend_raises_that_service_and_backend_only(no_faults: Prometheus) -> None:
    server = no_faults
    selector = f'service="{WEB_HTTP}",backend="web-2",reason="NETFILTER_DROP"'
    traffic.probe(WEB_HTTP, count=10, timeout=0.5)  # healthy: every backend answers
    _settle()
    before = _drops(server, selector)
    assert before == 0, _shown(server)
    faults.set_fault("drop-backend", True)
    sent = traffic.probe(WEB_HTTP, count=30, timeout=0.5)
    assert sent.per_target[WEB_HTTP].failed > 0, "the fault broke some connections"
    _settle()
    after = server.wait_for(f"podtrace_drops_total{{{selector}}} > 0")
    assert after, _shown(server)
    series = after[0]["metric"]
    # node2 drops it after node1 chose the backend: web-2 also backs web-nodeport:http, so node2 cannot tell
    # which Service the client dialled and says so.
    assert (series["node"], series["severity"], series["attribution"]) == ("pt-node2", "policy", "ambiguous"), \
        series
    assert server.value(f'sum(podtrace_drops_total{{{selector},attribution="ambiguous"}})') == \
        server.value('sum(podtrace_drops_total{service="default/web-nodeport:http",backend="web-2",'
                     'reason="NETFILTER_DROP",attribution="ambiguous"})'), _shown(server)
    # Healthy Services and backends: no loss or policy drops (closing sockets' QUEUE_PURGE frees are benign).
    healthy = server.query(f'podtrace_drops_total{{severity!="benign",service!="",service!="{WEB_HTTP}",'
                           'attribution!="ambiguous"} > 0')
    assert not healthy, healthy
    other_backends = server.query(f'podtrace_drops_total{{severity!="benign",service="{WEB_HTTP}",'
                                  f'backend!="web-2"}} > 0')
    assert not other_backends, other_backends
    packets = server.value(f'sum(podtrace_service_packets_total{{service="{WEB_HTTP}",direction="out"}})')
    assert packets and packets > 0, server.query("podtrace_service_packets_total")


def test_conntrack_full_shows_in_the_fill_gauge_and_drop_cause(no_faults: Prometheus) -> None:
    server = no_faults
    faults.set_fault("conntrack-full", True)
    attempts = 10
    sent = traffic.probe(WEB_HTTP, count=attempts, timeout=0.5)
    assert sent.per_target[WEB_HTTP].failed == attempts, sent
    _settle()
    assert server.wait_for('podtrace_conntrack_fill_ratio{node="pt-node1"} == 1'), \
        server.query("podtrace_conntrack_fill_ratio")
    fill2 = server.value('podtrace_conntrack_fill_ratio{node="pt-node2"}')
    assert fill2 is not None and fill2 < 0.5
    entries = server.value('podtrace_conntrack_entries{node="pt-node1"}')
    assert entries == server.value('podtrace_conntrack_max_entries{node="pt-node1"}')
    charged = _drops(server, f'node="pt-node1",cause="conntrack",service="{WEB_HTTP}",severity="loss"')
    assert charged >= attempts, server.query("podtrace_drops_total")
    refused = server.value('podtrace_conntrack_drop_total{node="pt-node1"}')
    assert refused is not None and refused >= charged
