"""`podtrace check` audits on state the test builds in a namespace of its own: a bridge with a pod subnet, then a
DROP rule on a pod address, a blackhole route into that subnet, a kube-proxy-style REJECT for a Service without
endpoints and an RPS mask on the underlay veth. Each flips its finding; the namespace is removed even on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from support.netns import Pair, netns_pair, sh

pytestmark = pytest.mark.root

PODS = "198.19.210"  # the bridge's subnet: the "pods" of this namespace


@pytest.fixture
def node() -> Iterator[Pair]:
    """pair.a is the node: underlay veth-a (default route), bridge br-h16 with PODS.0/24."""
    with netns_pair() as pair:
        sh("ip", "link", "add", "br-h16", "type", "bridge", netns=pair.a)
        sh("ip", "addr", "add", f"{PODS}.1/24", "dev", "br-h16", netns=pair.a)
        sh("ip", "link", "set", "br-h16", "up", netns=pair.a)
        sh("ip", "route", "add", "default", "via", pair.addr_b, netns=pair.a)
        yield pair


def _check(netns: str) -> dict[tuple[str, str], dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "tracer.cli.main", "check", "--json", "--netns", netns,
                           "--window", "0.2"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode in (0, 3), proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()][:-1]
    return {(row["area"], row["check"]): row for row in rows}


def test_each_audit_flips_on_the_state_built_for_it(node: Pair) -> None:
    clean = _check(node.a)
    for key in (("rules", "foreign drop rules"), ("rules", "no endpoints"), ("routes", "refusing routes")):
        assert clean[key]["severity"] == "ok", clean[key]
    assert clean[("softirq", "receive steering")]["value"] == "underlay veth-a: not steered to one CPU"

    sh("iptables", "-A", "FORWARD", "-d", f"{PODS}.5/32", "-p", "tcp", "-j", "DROP", netns=node.a)
    sh("ip", "route", "add", "blackhole", f"{PODS}.9", netns=node.a)
    # The rule kube-proxy writes for a Service without endpoints (pkg/proxy/iptables: "<ns>/<svc>:<port> has no
    # endpoints" in filter KUBE-SERVICES, REJECT).
    sh("iptables", "-N", "KUBE-SERVICES", netns=node.a)
    sh("iptables", "-A", "KUBE-SERVICES", "-d", "198.19.211.10/32", "-p", "tcp", "-m", "comment", "--comment",
       "default/gone:http has no endpoints", "-m", "tcp", "--dport", "80", "-j", "REJECT", netns=node.a)
    cpus = len(os.sched_getaffinity(0))
    if cpus > 1:
        sh("sh", "-c", "echo 2 > /sys/class/net/veth-a/queues/rx-0/rps_cpus", netns=node.a)
    found = _check(node.a)
    rule = found[("rules", "foreign drop rules")]
    assert rule["severity"] == "fail"
    assert rule["value"] == (f"1: filter FORWARD #1 `-A FORWARD -d {PODS}.5/32 -p tcp -j DROP` hits pods "
                             f"{PODS}.0/24 (routed to br-h16)"), rule
    assert rule["fix"] == f"ip netns exec {node.a} iptables -t filter -D FORWARD 1  # after asking who added it"
    route = found[("routes", "refusing routes")]
    assert route["severity"] == "fail" and route["value"] == f"blackhole {PODS}.9 covers pods {PODS}.0/24 " \
        "(routed to br-h16)", route
    empty = found[("rules", "no endpoints")]
    assert (empty["severity"], empty["value"]) == ("warn", "default/gone:http"), empty
    if cpus > 1:
        steering = found[("softirq", "receive steering")]
        assert (steering["severity"], steering["value"]) == ("warn", f"RPS sends all of veth-a's receive to CPU 1 "
                                                                     f"of {cpus}"), steering
