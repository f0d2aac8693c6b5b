"""Pod names from the node: the pure parts (cgroup lines, kubelet directory names, crictl's JSON) on real node
material (tests/unit/fixtures/podnames/SOURCES.md). tests/e2e/test_podnames_e2e.py runs the resolver on real
processes, namespaces and cgroups."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracer.node.podnames import PodResolver, pod_uid_of_cgroup, pods_from_crictl, pods_from_log_dirs
from tracer.output.errors import RecordingError
from tracer.recording.schema import HEADER, check
from tracer.sources.replay import RecordedNames

FIXTURES = Path(__file__).parent / "fixtures" / "podnames"
BPFMAN_UID = "88c00a72-09fa-4f0b-b2e7-185fcaff3b0d"


def test_the_pod_uid_of_a_cgroupfs_driver_v1_container() -> None:
    text = (FIXTURES / "cgroup-v1-cgroupfs.txt").read_text()
    assert pod_uid_of_cgroup(text) == "74c13223-5a00-11e9-b385-42010a80018d"


def test_the_pod_uid_of_a_systemd_driver_v2_container_has_its_dashes_back() -> None:
    text = (FIXTURES / "cgroup-v2-systemd.txt").read_text()
    assert pod_uid_of_cgroup(text) == "3adc37e4-63c0-42af-82b9-69f90208510a"


def test_processes_outside_kubepods_have_no_pod() -> None:
    assert pod_uid_of_cgroup("0::/\n") is None
    assert pod_uid_of_cgroup("0::/system.slice/containerd.service\n") is None
    # a docker container outside Kubernetes: a 64-hex id, no kubepods, no pod UID
    assert pod_uid_of_cgroup("10:devices:/system.slice/docker-9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378"
                             "375056cd4422cf3d.scope\n") is None
    # "pod" followed by something that is not a UID, under kubepods
    assert pod_uid_of_cgroup("0::/kubepods.slice/kubepods-podnotauid.slice\n") is None


def test_log_directories_give_namespace_and_name_and_junk_is_left_out(tmp_path: Path) -> None:
    logs = tmp_path / "var/log/pods"
    # the directory of the bpfman pod's logPath (fixtures/podnames/SOURCES.md)
    (logs / f"bpfman_bpfman-daemon-hf5gv_{BPFMAN_UID}" / "bpfman-agent").mkdir(parents=True)
    (logs / "not-a-pod-dir").mkdir()
    (logs / "a_b").mkdir()
    found = pods_from_log_dirs(str(tmp_path))
    assert set(found) == {BPFMAN_UID}
    assert (found[BPFMAN_UID].namespace, found[BPFMAN_UID].name) == ("bpfman", "bpfman-daemon-hf5gv")
    assert pods_from_log_dirs(str(tmp_path / "missing")) == {}


def test_crictl_sandboxes_give_namespace_and_name() -> None:
    found = pods_from_crictl((FIXTURES / "crictl-pods.json").read_text())
    assert set(found) == {BPFMAN_UID}
    assert (found[BPFMAN_UID].namespace, found[BPFMAN_UID].name) == ("bpfman", "bpfman-daemon-hf5gv")
    assert found[BPFMAN_UID].how.startswith("crictl sandbox ffde0b824a13")


def test_crictl_output_that_is_not_its_json_names_nothing() -> None:
    assert pods_from_crictl("") == {}
    assert pods_from_crictl("[1, 2]") == {}
    assert pods_from_crictl('{"items": [{"metadata": {"uid": "x"}}, 7]}') == {}


def test_without_crictl_the_resolver_says_it_did_not_read_the_cri(tmp_path: Path) -> None:
    resolver = PodResolver(roots=(str(tmp_path),), crictl=None)
    resolver.refresh()
    assert resolver.notes == ["crictl not installed: CRI sandbox metadata not read (names from the kubelet's "
                              "directories)"]


def test_a_recording_keeps_the_node_s_pod_names_and_replays_them() -> None:
    names = {"netns": {}, "lab": None, "pods": {"10.244.0.2": "default/client", "10.244.1.9": f"pod {BPFMAN_UID}"}}
    check({"names": names}, HEADER, "header")
    with pytest.raises(RecordingError):
        check({"names": {**names, "pods": {"10.244.0.2": 7}}}, HEADER, "header")
    recorded = RecordedNames.from_header({"names": names})
    assert recorded.resolver().pod("10.244.0.2") == "default/client"
    assert recorded.resolver().pod("10.244.7.7") is None
    assert recorded.pod_names() == {"10.244.0.2": "client"}, "a pod known by UID only is given no name"
