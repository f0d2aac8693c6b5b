"""The culprit of each lab fault, as the README's command for it names it: `podtrace flows --node pt-node1 --node
pt-node2` (Service, VIP, backend, the drop's hook and cause, observed vs matched) and `podtrace drops` (the
cause field), on one iptables-mode lab. Services whose traffic was healthy are charged no drop that is not a
normal kernel free (QUEUE_PURGE on close is benign: tracer/analysis/severity.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any

import pytest
from support.lab import faults_cleared, iptables_lab  # noqa: F401 (fixtures)
from support.podtrace import Running, start

from tracer.analysis.severity import classify
from tracer.lab import faults, traffic

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("faults_cleared")]

NODES = ("--node", "pt-node1", "--node", "pt-node2")
WEB_VIP, NODEPORT_VIP = "10.96.0.10", "10.96.0.20"


def _not_benign(drops: dict[str, int]) -> dict[str, int]:
    return {label: n for label, n in drops.items() if classify(label.split()[0]) != "benign"}


def _stop(tracer: Running) -> Running:
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    return result


def _flows(result: Running) -> list[dict[str, Any]]:
    return [row for row in result.rows if "backend" in row and "service" in row]


def test_no_endpoints_names_the_service_and_the_rate_limited_icmp_behind_the_timeouts() -> None:
    faults.set_fault("no-endpoints", True)
    flows = start("flows", "--json", *NODES, "tcp port 80 or tcp port 8080")
    drops = start("drops", "--json", "--netns", "pt-node1", "tcp port 80")
    # Back to back, faster than the per-host ICMP limit (1/s, burst 6): later REJECTs send no ICMP and the
    # client's SYNs time out instead of being refused.
    sent = traffic.probe("default/web:http", count=20, timeout=0.5)
    healthy = traffic.probe("default/web-nodeport:http", count=6, timeout=2)
    flow_result, drop_result = _stop(flows), _stop(drops)
    web = sent.per_target["default/web:http"]
    assert web.ok == 0 and web.failed == 20, web
    assert healthy.per_target["default/web-nodeport:http"].ok == 6, healthy
    service_drops = [row for row in flow_result.rows if row.get("service_drop")]
    assert {row["service"] for row in service_drops} == {"default/web:http"}, flow_result.rows
    for row in service_drops:
        assert (row["reason"], row["dst"], row["dport"], row["src"]) == ("NETFILTER_DROP", WEB_VIP, 80, "10.244.0.2")
        assert row["cause"].startswith("Service default/web:http has no endpoints: kube-proxy rejects its VIP "
                                       f"{WEB_VIP}:80/tcp (filter KUBE-SERVICES #"), row
        assert row["cause"].endswith("(matched)") and row["fix"].startswith(
            "kubectl -n default get endpointslices -l kubernetes.io/service-name=web"), row
    assert sum(row["count"] for row in service_drops) >= 20, "every SYN (and retransmit) was REJECTed"
    [cause] = {row["cause"]["text"] for row in drop_result.rows if row.get("reason") == "NETFILTER_DROP"}
    timeouts = web.failures.get("timeout", 0)
    assert timeouts > 0 and web.failures.get("refused", 0) > 0, web
    found = re.search(r"; (\d+) ICMP errors were rate-limited in pt-node1 during the session \(IcmpOutRateLimitHost "
                      r"\+(\d+)\): those clients saw timeouts, not 'connection refused'$", cause)
    assert found, cause
    # Every client that timed out had its REJECT's ICMP error rate-limited (the kernel's own counter).
    assert int(found.group(2)) >= timeouts, (cause, web)
    for flow in _flows(flow_result):
        assert flow["service"] == "default/web-nodeport:http" and not _not_benign(flow["drops"]), flow


def test_rp_filter_charges_the_nodeport_it_broke_with_the_interface_and_sysctls() -> None:
    faults.set_fault("rp-filter", True)
    flows = start("flows", "--json", *NODES, "tcp port 80 or tcp port 8080 or tcp port 30080")
    drops = start("drops", "--json", "--netns", "pt-node2", "tcp")
    broken = traffic.probe("default/web-nodeport:http nodeport", count=6, timeout=0.5)
    fine = traffic.probe("default/web:http", count=9, timeout=2)
    flow_result, drop_result = _stop(flows), _stop(drops)
    assert broken.per_target["default/web-nodeport:http nodeport"].ok == 0, broken
    assert fine.per_target["default/web:http"].ok == 9, fine
    rp_rows = [row for row in drop_result.rows if row["reason"] == "IP_RPFILTER"]
    assert rp_rows and {(row["netns"], row["ifname"]) for row in rp_rows} == {("pt-node2", "eth0")}, drop_result.rows
    for row in rp_rows:
        assert row["cause"]["kind"] == "rp_filter" and row["cause"]["known"] == "observed"
        assert row["cause"]["text"].startswith("reverse-path filter: rp_filter=1 (strict) on pt-node2/eth0 (all=1, "
                                               "eth0=1) dropped a packet from 10.244.0.2"), row["cause"]
    labels = {label: n for flow in _flows(flow_result) for label, n in _not_benign(flow["drops"]).items()}
    labels.update({row["cause"]: row["count"] for row in flow_result.rows if row.get("service_drop")})
    assert labels and all("reverse-path filter: rp_filter=1 (strict) on pt-node2/eth0" in label for label in labels), \
        flow_result.rows
    for flow in _flows(flow_result):
        if flow["service"] == "default/web:http":
            assert not _not_benign(flow["drops"]), flow  # the ClusterIP traffic was fine: charged nothing


def test_blackhole_route_charges_the_one_backend_behind_it_with_the_route() -> None:
    _, details = faults.set_fault("blackhole-route", True)
    flows = start("flows", "--json", *NODES, "tcp port 80 or tcp port 8080")
    drops = start("drops", "--json", "--netns", details["netns"], "tcp")
    sent = traffic.probe("default/web:http", count=30, timeout=0.5)
    flow_result, drop_result = _stop(flows), _stop(drops)
    web = sent.per_target["default/web:http"]
    assert web.failed > 0 and details["pod"] not in web.endpoints, web
    route = f"route lookup: `blackhole {details['ip']}/32` in {details['netns']} refuses {details['ip']}"
    routed = [row for row in drop_result.rows if row.get("cause", {}).get("kind") == "route"]
    assert routed and all(row["cause"]["text"] == route and row["dst"] == details["ip"] for row in routed), \
        drop_result.rows
    assert all(row["ct_dialled"] == f"{WEB_VIP}:80" and row["ct_backend"] == f"{details['ip']}:8080"
               for row in routed), routed
    charged = {flow["backend_pod"]: _not_benign(flow["drops"]) for flow in _flows(flow_result)
               if flow["service"] == "default/web:http"}
    assert charged.get(details["pod"]), charged
    for label in charged[details["pod"]]:
        assert f": {route} (observed) (conntrack)" in label, label
    assert {pod: got for pod, got in charged.items() if got and pod != details["pod"]} == {}, charged
    assert not any(row.get("service_drop") for row in flow_result.rows), "charged to its flow, not to the Service"


def _send_df(size: int, count: int) -> None:
    """`count` UDP datagrams of `size` bytes with DF set, client pod -> web-2 (node2) across the overlay."""
    code = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.IPPROTO_IP,10,2)\n"  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
            f"for _ in range({count}):\n    try: s.sendto(b'x'*{size},('10.244.1.2',5353))\n"
            "    except OSError: pass\n")  # EMSGSIZE once the learned path MTU says so
    subprocess.run(["ip", "netns", "exec", "pt-client", sys.executable, "-c", code], check=True, timeout=30)


def test_mtu_mismatch_drops_name_the_overlay_device_and_its_mtu() -> None:
    faults.set_fault("mtu-mismatch", True)
    drops = start("drops", "--json", "--netns", "pt-node1", "udp port 5353")
    _send_df(1460, 5)
    result = _stop(drops)
    too_big = [row for row in result.rows if row.get("reason") == "PKT_TOO_BIG"]
    assert too_big and {(row["netns"], row["dst"]) for row in too_big} == {("pt-node1", "10.244.1.2")}, result.rows
    for row in too_big:
        assert row["cause"]["kind"] == "mtu" and row["cause"]["known"] == "observed"
        assert row["cause"]["text"].startswith(f"packets of ~{row['bytes'] // row['count']} bytes to 10.244.1.2 are "
                                               "larger than pt-node1/flannel.1's MTU 1450"), row["cause"]


def test_conntrack_full_drops_name_the_table_and_its_figures() -> None:
    _, details = faults.set_fault("conntrack-full", True)
    drops = start("drops", "--json", "--netns", details["netns"], "tcp port 80")
    sent = traffic.probe("default/web:http", count=5, timeout=0.5)
    result = _stop(drops)
    assert sent.per_target["default/web:http"].failed == 5, sent
    full = [row for row in result.rows if row.get("dst") == WEB_VIP]
    limit = details["nf_conntrack_max"]
    assert full and all(row["cause"] == {
        "kind": "conntrack-full", "known": "observed",
        "text": f"conntrack table full in {details['netns']} ({limit}/{limit}): new connections are dropped before NAT",
        "fix": f"ip netns exec {details['netns']} sysctl -w net.netfilter.nf_conntrack_max={limit * 2}"}
        for row in full), result.rows


def test_softirq_load_backlog_drops_name_the_rps_mask() -> None:
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("one CPU: softirq-load steers nothing")
    _, details = faults.set_fault("softirq-load", True)
    try:
        drops = start("drops", "--json", "--netns", details["netns"], "--duration", "4")
        drops.process.wait(timeout=60)
        result = _stop(drops)
    finally:
        faults.set_fault("softirq-load", False)
    backlog = [row for row in result.rows if row.get("reason") == "CPU_BACKLOG"]
    assert backlog, result.rows
    for row in backlog:
        assert row["cause"]["kind"] == "backlog" and row["cause"]["text"].endswith(
            f": RPS sends all of {details['netns']}/eth0's receive to CPU {details['hog_cpu']} of {cpus}, whose "
            "backlog overflows"), row["cause"]
