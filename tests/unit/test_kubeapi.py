"""The optional Kubernetes API path, against recorded API responses (tests/unit/fixtures/kubeapi/SOURCES.md)
served by a real HTTP server on loopback, through the real `kubernetes` client and a real kubeconfig. No cluster
is available here: these responses were recorded on minikube and kind clusters by others.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.kubeapi import FIXTURES, ROUTES, Api
from support.kubeapi import kubeconfig as _kubeconfig

from tracer.node.kubeapi import KubeApi, api_names
from tracer.output.errors import UsageError


@pytest.fixture
def api() -> Iterator[Api]:
    served = Api()
    yield served
    served.close()


def test_pods_services_endpoints_and_nodes_are_named_from_the_api(api: Api, tmp_path: Path) -> None:
    warnings: list[str] = []
    kube = KubeApi(_kubeconfig(tmp_path / "config", api.url), warn=warnings.append)
    names = kube.names()
    assert names is not None and warnings == []
    assert set(api.paths) == {*ROUTES, "/apis/apps/v1/replicasets"}
    assert names.pod_label("172.17.0.6") == "default/queue-l4dv8"
    assert names.owner("172.17.0.6") == "ReplicaSet/queue"  # kuard's rs-queue: a ReplicaSet of its own
    assert names.pods["172.17.0.6"].node == "minikube"
    # etcd-m01 runs in the host network: 172.17.0.2 is node m01, never that pod
    assert names.pod_label("172.17.0.2") is None and names.node("172.17.0.2") == "m01"
    # the coredns pod is known from its EndpointSlice's targetRef only
    assert names.pod_label("10.244.0.3") == "kube-system/coredns-66bff467f8-z8czk"
    assert names.endpoint_services["10.244.0.3"] == ["kube-system/kube-dns"]
    assert names.service("10.96.0.10", 53, "udp") == "kube-system/kube-dns:dns"
    assert names.service("10.96.0.10", 53, "tcp") == "kube-system/kube-dns:dns-tcp"
    assert names.service("10.96.0.10", 80, "tcp") is None


def test_names_are_cached_until_the_refresh_interval(api: Api, tmp_path: Path) -> None:
    kube = KubeApi(_kubeconfig(tmp_path / "config", api.url), refresh_every=3600)
    first = kube.names()
    calls = len(api.paths)
    assert kube.names() is first and len(api.paths) == calls


def test_an_unreachable_api_is_one_warning_and_no_names(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a loopback port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    warnings: list[str] = []
    kube = KubeApi(_kubeconfig(tmp_path / "config", f"http://127.0.0.1:{port}"), refresh_every=0,
                   warn=warnings.append)
    assert kube.names() is None and kube.names() is None
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"podtrace: Kubernetes API at http://127.0.0.1:{port} unreachable (")
    assert warnings[0].endswith("): pod names from the node only") and "\n" not in warnings[0]


def test_an_api_that_does_not_answer_is_given_up_after_the_timeout(tmp_path: Path) -> None:
    hanging = Api(hang=True)
    try:
        warnings: list[str] = []
        kube = KubeApi(_kubeconfig(tmp_path / "config", hanging.url), timeout=0.3, warn=warnings.append)
        assert kube.names() is None
        assert len(warnings) == 1 and "unreachable" in warnings[0] and "timed out" in warnings[0].lower(), warnings
    finally:
        hanging.close()


def test_an_unreadable_kubeconfig_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "config"
    bad.write_text("clusters: [")
    with pytest.raises(UsageError, match="cannot use .*config for the Kubernetes API"):
        KubeApi(str(bad))
    with pytest.raises(UsageError):
        KubeApi(str(tmp_path / "missing"))


def test_a_deployment_is_inferred_from_its_replicaset_name_when_replicasets_cannot_be_read() -> None:
    pods = json.loads((FIXTURES / "pods-minikube.json").read_text())
    pod = pods["items"][1]
    pod["metadata"]["labels"]["pod-template-hash"] = "5bc7b56845"
    pod["metadata"]["ownerReferences"][0]["name"] = "queue-5bc7b56845"
    names = api_names(pods, {}, {}, {})
    assert names.owner("172.17.0.6") == "Deployment/queue (inferred)"
    assert names.pods["172.17.0.6"].owner_how.startswith("inferred")
    listed = {"items": [{"metadata": {"namespace": "default", "name": "queue-5bc7b56845", "ownerReferences": [
        {"kind": "Deployment", "name": "queue", "controller": True}]}}]}
    assert api_names(pods, {}, {}, {}, replicasets=listed).pods["172.17.0.6"].owner_how == \
        "ownerReferences of its ReplicaSet"
