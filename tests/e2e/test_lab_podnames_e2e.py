"""The lab's pods named by the node-side resolver, with the lab's manifest out of the tracer's reach.

The lab lays its pods out as a kubelet does (cgroups `kubepods-besteffort-pod<UID>.slice`, var/log/pods and
var/lib/kubelet/pods under /run/podtrace-lab/root). The tracer runs with PODTRACE_LAB_DIR pointing at an empty
directory, so the lab's state file, and with it the manifest, is not there for it to read: every pod name in
its output came from cgroups and kubelet directories.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.lab import faults_cleared, iptables_lab  # noqa: F401 (fixtures)
from support.netns import send_udp
from support.podtrace import Running, start

from tracer.lab import control, faults, traffic

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("faults_cleared")]

NODES = ("--node", "pt-node1", "--node", "pt-node2")
LATE_DATAGRAMS = 7  # a prime: nothing else in the lab sends exactly this many to that port
CLOSED_PORT = 5999  # no lab server listens there


@pytest.fixture
def blind_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a tracer that cannot see the lab's state (and so its manifest)."""
    env = dict(os.environ, PODTRACE_LAB_DIR=str(tmp_path / "no-lab-state"))
    seen = subprocess.run([sys.executable, "-c", "from tracer.lab import is_up; print(is_up())"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert seen == "False", "with this environment the tracer must not find the lab's state"
    return env


def _stop(tracer: Running) -> Running:
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    return result


def test_flows_name_client_and_backend_pods_from_the_node(blind_env: dict[str, str]) -> None:
    faults.set_fault("drop-backend", True)
    tracer = start("flows", "--json", *NODES, "--kubelet-root", "/run/podtrace-lab/root",
                   "tcp port 80 or tcp port 8080", env=blind_env)
    sent = traffic.probe("default/web:http", count=30, timeout=0.5)
    time.sleep(0.5)
    result = _stop(tracer)
    assert sent.per_target["default/web:http"].failed > 0, "the fault broke some connections"
    flows = [row for row in result.rows if row.get("service") == "default/web:http" and "backend" in row]
    assert flows, result.rows
    assert {flow["client_pod"] for flow in flows} == {"client"}, flows
    answered = {pod for pod, count in sent.per_target["default/web:http"].endpoints.items() if count}
    assert {flow["backend_pod"] for flow in flows if flow["packets_in"]} == answered, flows
    dropped = [flow for flow in flows if any(label.startswith("NETFILTER_DROP") for label in flow["drops"])]
    assert [flow["backend_pod"] for flow in dropped] == ["web-2"], flows


def test_drops_name_both_pods_of_a_dropped_connection(blind_env: dict[str, str]) -> None:
    faults.set_fault("drop-backend", True)
    tracer = start("drops", "--json", "--netns", "pt-node2", "tcp port 8080", env=blind_env)
    sent = traffic.probe("default/web:http", count=30, timeout=0.5)
    time.sleep(0.5)
    result = _stop(tracer)
    assert sent.per_target["default/web:http"].failed > 0
    dropped = [row for row in result.rows if row["reason"] == "NETFILTER_DROP"]
    assert dropped, result.rows
    assert {(row["src"], row["dst"]) for row in dropped} == {("10.244.0.2", "10.244.1.2")}, dropped
    assert {(row["src_pod"], row["dst_pod"]) for row in dropped} == {("default/client", "default/web-2")}, dropped


def test_a_pod_created_after_the_session_started_is_named(blind_env: dict[str, str]) -> None:
    tracer = start("drops", "--json", f"udp port {CLOSED_PORT}", env=blind_env)
    late = control.add_pod("late-1", "node1")  # after the probes attached and the resolver's first read
    send_udp(late["netns"], "10.244.0.3", CLOSED_PORT, LATE_DATAGRAMS)
    time.sleep(0.5)
    result = _stop(tracer)
    rows = [row for row in result.rows if row["reason"] == "NO_SOCKET" and row["src"] == late["ip"]]
    assert [row["count"] for row in rows] == [LATE_DATAGRAMS], result.rows
    assert (rows[0]["src_pod"], rows[0]["dst_pod"]) == ("default/late-1", "default/web-1"), rows
