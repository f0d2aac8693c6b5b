"""`drops --kubeconfig` on real probes and traffic, the Kubernetes API being recorded responses served on loopback
(tests/unit/fixtures/kubeapi; no cluster is available here, so say so: the API is a replay, the node is real).

Two throwaway namespaces take the addresses of two pods the recorded API knows: 172.17.0.6 (default/queue-l4dv8,
owned by ReplicaSet queue) and 10.244.0.3 (kube-system/coredns-66bff467f8-z8czk, an EndpointSlice target). The
second is also laid out as a pod of this node (cgroup and kubelet directory), and the node's own name wins.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kubeapi import Api
from support.kubeapi import kubeconfig as _kubeconfig
from support.netns import send_udp
from support.podtrace import start

from tracer.benchmarks.netns import Pair, veth_pair
from tracer.lab import kubelet_layout

pytestmark = pytest.mark.root

DATAGRAMS = 11  # a prime
PORT = 5999


@pytest.fixture
def pair() -> Iterator[Pair]:
    with veth_pair("h22", "10.244.0.3", "172.17.0.6") as made:
        for ns, dev, peer in ((made.a, "veth-a", made.addr_b), (made.b, "veth-b", made.addr_a)):
            subprocess.run(["ip", "-n", ns, "route", "add", f"{peer}/32", "dev", dev], check=True)  # two subnets
        yield made


@pytest.fixture
def node_pod(pair: Pair, tmp_path: Path) -> Iterator[str]:
    """pair.a laid out as this node's pod default/dns-local; yields the kubelet root."""
    subtree, uid = f"podtrace-test-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    kubelet_layout.add_pod("default", "dns-local", uid, root=str(tmp_path), subtree=subtree)
    pause = subprocess.Popen(["ip", "netns", "exec", pair.a, "sleep", "infinity"])
    try:
        kubelet_layout.move_into(uid, pause.pid, subtree)
        yield str(tmp_path)
    finally:
        pause.kill()
        pause.wait()
        assert not kubelet_layout.remove_all(root=None, subtree=subtree)


def test_drops_name_other_pods_and_their_workload_from_the_api(pair: Pair, node_pod: str, tmp_path: Path) -> None:
    api = Api()
    try:
        tracer = start("drops", "--json", "--kubeconfig", _kubeconfig(tmp_path / "config", api.url),
                       "--kubelet-root", node_pod, f"udp port {PORT}")
        send_udp(pair.b, pair.addr_a, PORT, DATAGRAMS)  # queue-l4dv8 -> a closed port of dns-local
        time.sleep(0.5)
        result = tracer.stop()
    finally:
        api.close()
    assert result.returncode == 0, result.stderr
    assert "Kubernetes API" not in result.stderr, result.stderr
    rows = [row for row in result.rows if row["reason"] == "NO_SOCKET" and row["src"] == pair.addr_b]
    assert [row["count"] for row in rows] == [DATAGRAMS], result.rows
    row = rows[0]
    assert (row["src_pod"], row["src_owner"]) == ("default/queue-l4dv8", "ReplicaSet/queue"), row
    # 10.244.0.3 is also kube-system/coredns-... in the API's EndpointSlice: this node's own view wins
    assert (row["dst_pod"], row["dst_owner"]) == ("default/dns-local", None), row


def test_drops_with_an_unreachable_api_warn_once_and_name_from_the_node(pair: Pair, node_pod: str,
                                                                       tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    tracer = start("drops", "--json", "--kubeconfig", _kubeconfig(tmp_path / "config", f"http://127.0.0.1:{port}"),
                   "--kubelet-root", node_pod, f"udp port {PORT}")
    send_udp(pair.b, pair.addr_a, PORT, DATAGRAMS)
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "Kubernetes API" in line]
    assert len(warnings) == 1 and "unreachable" in warnings[0], result.stderr
    assert "Traceback" not in result.stderr
    rows = [row for row in result.rows if row["reason"] == "NO_SOCKET" and row["src"] == pair.addr_b]
    assert [row["count"] for row in rows] == [DATAGRAMS], result.rows
    assert (rows[0]["src_pod"], rows[0]["dst_pod"]) == (None, "default/dns-local"), rows
