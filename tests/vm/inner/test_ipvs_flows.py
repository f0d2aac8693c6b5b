"""`podtrace flows` in kube-proxy's IPVS mode on Debian's 6.1 kernel: kprobes on ip_vs_conn_new, ip_vs_nat_xmit
and handle_response (bpf/ipvs.c) give client -> VIP -> real server flows, `ipvsadm -Ln` and kube-ipvs0 name them.

One podtrace run (one BCC compile, about a minute under emulation) watches while known traffic goes to a
ClusterIP over UDP and TCP and to a NodePort on the other node; the tests assert on what it reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.podtrace import Running, start
from vmfacts import timed

from tracer.lab import names, traffic
from tracer.lab.traffic import Summary
from tracer.node import ipvs
from tracer.node.kubeproxy.model import ServiceMap

DNS, WEB, NODEPORT = "default/web:dns", "default/web:http", "default/web-nodeport:http"
DATAGRAMS, CONNECTIONS, NODEPORT_CONNECTIONS = 31, 30, 12  # 31: a prime nothing else in the lab sends
ENDPOINTS = {"web-1", "web-2", "web-3"}


@dataclass
class Traced:
    result: Running
    sent: dict[str, Summary]

    def flows(self, service: str, vip: str | None = None) -> list[dict[str, Any]]:
        return [row for row in self.result.rows if row.get("service") == service and "backend" in row
                and (vip is None or row["vip"] == vip)]


@pytest.fixture(scope="module")
def traced(ipvs_lab: None) -> Iterator[Traced]:
    began = time.monotonic()
    tracer = start("flows", "--json", "--node", "pt-node1", "--node", "pt-node2", timeout=900)
    timed("podtrace flows attach (ipvs)", time.monotonic() - began)
    try:
        sent = {
            DNS: traffic.probe(DNS, count=DATAGRAMS),
            WEB: traffic.probe(WEB, count=CONNECTIONS),
            NODEPORT: traffic.probe(f"{NODEPORT} nodeport", count=NODEPORT_CONNECTIONS),
        }
        time.sleep(1)
    finally:
        result = tracer.stop(timeout=600)
    out = os.environ.get("PODTRACE_VM_OUT")
    if out:  # what podtrace printed, for the host to read after the run
        Path(out, "ipvs-flows.jsonl").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr
    yield Traced(result, sent)


def _answered(summary: Summary) -> dict[str, int]:
    (stats,) = summary.per_target.values()
    return dict(stats.endpoints)


def test_ipvs_mode_and_nothing_lost(traced: Traced) -> None:
    summary = traced.result.summary
    assert summary["proxy_mode"] == "ipvs", traced.result.stdout
    assert summary["lost"] == 0, summary
    # 6.1 has no BPF netfilter links: the summary says the counts came from the IPVS kprobes alone, and why
    assert summary["counts"] == "ipvs_kprobes", summary
    assert "netfilter links need 6.4" in summary["counts_known"], summary


def test_udp_flows_name_the_service_and_every_endpoint_with_exact_counts(traced: Traced) -> None:
    answered = _answered(traced.sent[DNS])
    assert sum(answered.values()) == DATAGRAMS and set(answered) == ENDPOINTS, traced.sent[DNS].format()
    by_pod = {flow["backend_pod"]: flow for flow in traced.flows(DNS)}
    assert set(by_pod) == ENDPOINTS, (traced.result.rows, traced.result.stderr)
    for pod, flow in by_pod.items():
        assert (flow["client_pod"], flow["vip"], flow["port"], flow["proto"]) == ("client", "10.96.0.10", 53, "udp")
        assert flow["backend_port"] == 5353, flow
        # One datagram per client socket: one IPVS connection, one NATed request and one reply each.
        assert flow["scheduled"] == answered[pod], (pod, flow, answered)
        assert flow["packets_out"] == answered[pod], (pod, flow, answered)
        assert flow["packets_in"] == answered[pod], "each reply given the VIP back (handle_response)"
        assert flow["connections"] == answered[pod]


def test_tcp_flows_count_every_connection_the_scheduler_placed(traced: Traced) -> None:
    answered = _answered(traced.sent[WEB])
    assert sum(answered.values()) == CONNECTIONS, traced.sent[WEB].format()
    by_pod = {flow["backend_pod"]: flow for flow in traced.flows(WEB)}
    assert set(by_pod) == ENDPOINTS == set(answered), traced.result.rows
    for pod, flow in by_pod.items():
        assert (flow["client_pod"], flow["vip"], flow["port"], flow["backend_port"]) == ("client", "10.96.0.10",
                                                                                           80, 8080), flow
        assert flow["scheduled"] == answered[pod] == flow["connections"], (pod, flow, answered)
        # SYN, ACK and FIN at least out, SYN-ACK and FIN back: exact figures depend on TCP's timing.
        assert flow["packets_out"] >= 3 * answered[pod] and flow["packets_in"] >= 2 * answered[pod], flow


def test_nodeport_flows_on_the_other_node_name_the_service(traced: Traced) -> None:
    node2 = names().node_ips["node2"]
    answered = _answered(traced.sent[NODEPORT])
    assert sum(answered.values()) == NODEPORT_CONNECTIONS, traced.sent[NODEPORT].format()
    flows = traced.flows(NODEPORT, vip=node2)
    by_pod = {flow["backend_pod"]: flow for flow in flows}
    assert set(by_pod) == set(answered), traced.result.rows
    for pod, flow in by_pod.items():
        assert (flow["client_pod"], flow["port"], flow["backend_port"]) == ("client", 30080, 8080), flow
        assert flow["scheduled"] == answered[pod], (pod, flow, answered)
        assert flow["packets_in"] > 0, "replies came back through node2's IPVS (masqueraded NodePort)"


def test_virtual_servers_map_to_services_with_nodeports_folded_in(ipvs_lab: None) -> None:
    lab = names()
    services = ipvs.service_map(ServiceMap(), list(lab.nodes.values()))
    assert services.mode == "ipvs"
    web = services.lookup_vip("10.96.0.10", 80, "tcp")
    assert web is not None and web.name == WEB, services.ports
    assert sorted(str(ep) for ep in web.endpoints) == sorted(f"{ip}:{port}" for _, ip, port in
                                                              lab.services[WEB].endpoints)
    nodeport = services.lookup_nodeport(30080, "tcp", lab.node_ips["node2"])
    assert nodeport is not None and nodeport.name == NODEPORT and nodeport.vip == "10.96.0.20", services.ports
    assert sorted(services.node_ips) == sorted(lab.node_ips.values())
    empty = services.by_name("default/empty:http")
    assert empty is not None and empty.no_endpoints
