"""Scope in the kernel: a session on one node pays nothing for another namespace's drop storm.

Each test builds its own "node" namespace with two "pods" behind veths (as CNI plugins and the lab wire them) and,
apart from it, a pair of namespaces where one floods a closed UDP port of the other. The storm's drops are real
(the receiver's UdpNoPorts counter says how many); the scoped session must see exactly the drops made inside the
node and its pods, and lose none.
"""

from __future__ import annotations

import subprocess
import threading
from collections import Counter

import pytest
from support.netns import netns_pair, send_udp, sh
from support.podtrace import start

from tracer.benchmarks.netns import node_with_pods, udp_no_ports
from tracer.node.names import netns_inode
from tracer.probes.scope import Scope, pods_of

pytestmark = pytest.mark.root

STORM = 200_000  # datagrams to a closed port in the neighbour namespaces
POD_DROPS = 13  # to a closed port in each pod, from the node
NODE_DROPS = 7  # to a closed port on the node, from the first pod


def _storm(neighbour_a: str, neighbour_b: str, done: threading.Event) -> None:
    try:
        send_udp(neighbour_a, neighbour_b, 9, STORM)
    finally:
        done.set()


def test_a_node_scope_is_the_node_and_its_pods_not_its_neighbours() -> None:
    with node_with_pods() as node, netns_pair() as other:
        assert pods_of(node.netns) == set(node.pods)
        scope = Scope(nodes=(node.netns,)).inodes()
        # The neighbours are joined to each other, not to the node: neither is in its scope.
        assert scope == {netns_inode(name) for name in (node.netns, *node.pods)}
        assert not scope & {netns_inode(other.a), netns_inode(other.b)}


def test_a_drop_storm_in_another_namespace_costs_a_scoped_session_no_events() -> None:
    from tracer.api import live

    with node_with_pods() as node, netns_pair() as other:
        storm_before = udp_no_ports(other.b)
        with live(filter="udp port 9", node=node.netns) as session:
            done = threading.Event()
            storm = threading.Thread(target=_storm, args=(other.a, other.addr_b, done))
            storm.start()
            for ip in node.pod_ips:
                send_udp(node.netns, ip, 9, POD_DROPS)
            send_udp(node.pods[0], node.node_ip, 9, NODE_DROPS)
            # Nothing reads the ring buffer during the storm: had its drops been events, they would overflow it.
            storm.join()
            seen = Counter(event.netns for event in session.events(duration=2))
            counters = session.counters()
        storm_drops = udp_no_ports(other.b) - storm_before
        expected = {netns_inode(pod): POD_DROPS for pod in node.pods}
        expected[netns_inode(node.netns)] = NODE_DROPS
    assert storm_drops >= STORM * 0.9, f"the storm made only {storm_drops} drops"
    assert dict(seen) == expected
    assert counters.get("lost", 0) == 0, counters


def test_flows_on_a_node_loses_nothing_to_a_neighbours_storm() -> None:
    with node_with_pods() as node, netns_pair() as other:
        tracer = start("flows", "--json", "--node", node.netns, "udp port 9")
        storm_before = udp_no_ports(other.b)
        try:
            send_udp(other.a, other.addr_b, 9, STORM)
            for ip in node.pod_ips:
                send_udp(node.netns, ip, 9, POD_DROPS)
        finally:
            result = tracer.stop()
        storm_drops = udp_no_ports(other.b) - storm_before
    assert result.returncode == 0, result.stderr
    assert storm_drops >= STORM * 0.9, f"the storm made only {storm_drops} drops"
    summary = result.summary
    assert summary["lost"] == 0, summary
    # The node's own traffic: POD_DROPS datagrams to each pod, each dropped there; netfilter events for them too.
    assert summary["events"] < STORM // 100, summary


def test_a_pod_created_during_the_session_joins_the_scope() -> None:
    from tracer.api import live

    with node_with_pods(count=1) as node:
        late = f"{node.netns.removesuffix('-node')}-late"
        with live(filter="udp port 9", node=node.netns) as session:
            try:
                sh("ip", "netns", "add", late)
                sh("ip", "-n", node.netns, "link", "add", "vlate", "type", "veth", "peer", "name", "eth0",
                   "netns", late)
                sh("ip", "-n", node.netns, "addr", "add", f"{node.node_ip}/32", "dev", "vlate")
                sh("ip", "-n", node.netns, "link", "set", "vlate", "up")
                sh("ip", "-n", node.netns, "route", "add", "198.18.240.99/32", "dev", "vlate")
                sh("ip", "-n", late, "addr", "add", "198.18.240.99/24", "dev", "eth0")
                sh("ip", "-n", late, "link", "set", "eth0", "up")
                sh("ip", "-n", late, "link", "set", "lo", "up")
                # The scope is looked at about once a second: poll past that before the pod's traffic.
                list(session.events(duration=1.5))
                send_udp(node.netns, "198.18.240.99", 9, POD_DROPS)
                seen = Counter(event.netns for event in session.events(duration=2))
                assert seen == {netns_inode(late): POD_DROPS}
            finally:
                subprocess.run(["ip", "netns", "del", late], capture_output=True, check=False)
