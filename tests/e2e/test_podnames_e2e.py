"""The node-side pod resolver on real processes, network namespaces and cgroup v2 directories.

Each pod here is what a kubelet leaves on a node: a process in the pod's namespace, inside a cgroup named
`kubepods-besteffort-pod<UID>.slice` (systemd driver), and the kubelet's directories under a root of the test's
own. No lab: throwaway namespaces (tests/support/netns.py) and a cgroup subtree of the test's own, removed even
when the test fails.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.netns import netns_pair

from tracer.benchmarks.netns import Pair
from tracer.lab import kubelet_layout
from tracer.node.podnames import PodResolver

pytestmark = pytest.mark.root


@pytest.fixture
def pair() -> Iterator[Pair]:
    with netns_pair() as made:
        yield made


@pytest.fixture
def subtree() -> Iterator[str]:
    name = f"podtrace-test-{uuid.uuid4().hex[:8]}"
    yield name
    problems = kubelet_layout.remove_all(root=None, subtree=name)  # tmp_path holds the kubelet tree
    assert not problems, problems


class Pods:
    """Pause processes started by a test; stopped (and their cgroups emptied) at the end."""

    def __init__(self, root: Path, subtree: str) -> None:
        self.root, self.subtree = str(root), subtree
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, netns: str, uid: str | None = None) -> int:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "infinity"])
        self.procs.append(proc)
        if uid is not None:
            kubelet_layout.move_into(uid, proc.pid, self.subtree)
        return proc.pid

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def pods(tmp_path: Path, subtree: str) -> Iterator[Pods]:
    made = Pods(tmp_path, subtree)
    yield made
    made.stop()


def test_a_pod_is_named_by_ip_and_netns_from_its_cgroup_and_log_directory(pair: Pair, pods: Pods) -> None:
    uid = str(uuid.uuid4())
    kubelet_layout.add_pod("shop", "cart-7d9f", uid, root=pods.root, subtree=pods.subtree)
    pid = pods.start(pair.a, uid)
    resolver = PodResolver(roots=(pods.root,), crictl=None)
    pod = resolver.by_ip(pair.addr_a)
    assert pod is not None, resolver.pods()
    assert (pod.label, pod.uid, pod.ips, pod.pid) == ("shop/cart-7d9f", uid, (pair.addr_a,), pid)
    assert pod.netns == pair.inode(pair.a)
    assert resolver.by_netns(pair.inode(pair.a)) == pod
    assert f"var/log/pods/shop_cart-7d9f_{uid}" in pod.how
    # pair.b holds no process in a kubepods cgroup: no pod, never a guess
    pods.start(pair.b)
    assert resolver.by_ip(pair.addr_b) is None
    assert resolver.by_netns(pair.inode(pair.b)) is None


def test_a_pod_created_after_the_first_read_is_named_at_the_next_refresh(pair: Pair, pods: Pods) -> None:
    first = str(uuid.uuid4())
    kubelet_layout.add_pod("default", "early", first, root=pods.root, subtree=pods.subtree)
    pods.start(pair.a, first)
    resolver = PodResolver(roots=(pods.root,), crictl=None, refresh_every=0.0)
    assert resolver.pod_names() == {pair.addr_a: "early"}
    late = str(uuid.uuid4())
    kubelet_layout.add_pod("default", "late", late, root=pods.root, subtree=pods.subtree)
    pods.start(pair.b, late)
    pod = resolver.by_ip(pair.addr_b)  # an unknown IP: the resolver reads the node again
    assert pod is not None and pod.label == "default/late"
    assert resolver.pod_names() == {pair.addr_a: "early", pair.addr_b: "late"}


def test_a_pod_without_a_log_directory_is_known_by_uid_only(pair: Pair, pods: Pods) -> None:
    uid = str(uuid.uuid4())
    kubelet_layout.add_pod("default", "gone", uid, root=pods.root, subtree=pods.subtree)
    for entry in (Path(pods.root) / "var/log/pods").iterdir():
        entry.rmdir()
    pods.start(pair.a, uid)
    pod = PodResolver(roots=(pods.root,), crictl=None).by_ip(pair.addr_a)
    assert pod is not None and not pod.named
    assert pod.label == f"pod {uid}"
    assert "kubelet pod dir present, no log dir" in pod.how
    assert PodResolver(roots=(pods.root,), crictl=None).pod_names() == {}, "an unnamed pod is not given a name"


def test_the_cgroup_is_really_the_process_cgroup(pair: Pair, pods: Pods) -> None:
    uid = str(uuid.uuid4())
    kubelet_layout.add_pod("default", "x", uid, root=pods.root, subtree=pods.subtree)
    pid = pods.start(pair.a, uid)
    line = Path(f"/proc/{pid}/cgroup").read_text().splitlines()[-1]
    assert line.startswith("0::/") and line.endswith(
        f"/{pods.subtree}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid.replace('-', '_')}"
        ".slice"), line
    assert os.path.isdir(kubelet_layout.pod_cgroup(uid, pods.subtree))
