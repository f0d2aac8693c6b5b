"""What a Service flow row must say about the lab's `default/web:dns` traffic (live `flows` and a recording's
`report` print the same rows)."""

from __future__ import annotations

from typing import Any


def assert_web_dns_flows(flows: list[dict[str, Any]], answered: dict[str, int], timed: bool = True) -> None:
    """One flow per web backend that answered, client -> VIP 10.96.0.10:53 -> pod:5353, counts as answered;
    timed: the per-packet links measured the time in netfilter (else the conntrack mode says it is unknown)."""
    by_pod = {flow["backend_pod"]: flow for flow in flows}
    assert set(by_pod) == {"web-1", "web-2", "web-3"} == set(answered), flows
    for pod, flow in by_pod.items():
        assert flow["client_pod"] == "client" and flow["vip"] == "10.96.0.10" and flow["port"] == 53
        assert flow["backend_port"] == 5353 and flow["proto"] == "udp"
        assert flow["packets_out"] == answered[pod], (pod, flow, answered)
        assert flow["packets_in"] == answered[pod], "each reply un-NATed back to the VIP"
        assert flow["connections"] == answered[pod]
        if timed:
            assert flow["netfilter_ns_max"] > 0
        else:
            assert flow["netfilter_ns_max"] is None and flow["netfilter_ns_avg"] is None, "unknown, not 0"
