"""Names from the Kubernetes API, optional (`--kubeconfig FILE`, or a pod's in-cluster credentials).

Pods (with their owner workload), Services, EndpointSlices and nodes, listed once and cached; re-listed when the
cache is older than `refresh_every`. Every call has a timeout; an API that cannot be reached is said in one line
and the names then come from the node alone (tracer/node/podnames.py). Never required.

The lists are read as the API's own JSON (`_preload_content=False`), so `api_names()` is pure and is tested on
recorded API responses.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tracer.output.errors import UsageError

API_TIMEOUT_S = 3.0
IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclass(frozen=True)
class ApiPod:
    namespace: str
    name: str
    node: str
    owner: str  # "Deployment/web", "ReplicaSet/queue", "Node/m01", "" for none
    owner_how: str  # "ownerReferences", or how it was inferred

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class ApiNames:
    pods: dict[str, ApiPod] = field(default_factory=dict)  # pod IP -> pod (hostNetwork pods left out)
    endpoint_pods: dict[str, str] = field(default_factory=dict)  # endpoint IP -> targetRef "ns/name"
    endpoint_services: dict[str, list[str]] = field(default_factory=dict)  # endpoint IP -> "ns/service"
    services: dict[tuple[str, int, str], str] = field(default_factory=dict)  # (VIP, port, proto) -> ns/name:port
    nodes: dict[str, str] = field(default_factory=dict)  # node address -> node name

    def pod_label(self, ip: str) -> str | None:
        pod = self.pods.get(ip)
        return pod.label if pod is not None else self.endpoint_pods.get(ip)

    def owner(self, ip: str) -> str | None:
        """The pod's workload, with "(inferred)" when no ownerReference said it."""
        pod = self.pods.get(ip)
        if pod is None or not pod.owner:
            return None
        return f"{pod.owner} (inferred)" if pod.owner_how.startswith("inferred") else pod.owner

    def service(self, vip: str, port: int, proto: str) -> str | None:
        return self.services.get((vip, port, proto.upper()))

    def node(self, ip: str) -> str | None:
        return self.nodes.get(ip)


def _items(data: Any) -> list[dict[str, Any]]:
    items = data.get("items") if isinstance(data, dict) else None
    return [item for item in items or [] if isinstance(item, dict)]


def _controller(meta: dict[str, Any]) -> dict[str, Any] | None:
    refs = [ref for ref in meta.get("ownerReferences") or [] if isinstance(ref, dict)]
    return next((ref for ref in refs if ref.get("controller")), refs[0] if refs else None)


def _owner(meta: dict[str, Any], replicasets: dict[tuple[str, str], dict[str, Any]] | None) -> tuple[str, str]:
    ref = _controller(meta)
    if ref is None:
        return "", ""
    kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
    if kind != "ReplicaSet":
        return f"{kind}/{name}", "ownerReferences"
    if replicasets is not None:
        rs = replicasets.get((meta.get("namespace", ""), name))
        parent = _controller(rs.get("metadata") or {}) if rs else None
        if parent is not None:
            return f"{parent.get('kind')}/{parent.get('name')}", "ownerReferences of its ReplicaSet"
        return f"ReplicaSet/{name}", "ownerReferences"
    # ReplicaSets not readable: a Deployment names its ReplicaSets <deployment>-<pod-template-hash>
    template_hash = (meta.get("labels") or {}).get("pod-template-hash")
    if template_hash and name.endswith(f"-{template_hash}"):
        return f"Deployment/{name[:-len(template_hash) - 1]}", "inferred: ReplicaSet name less pod-template-hash"
    return f"ReplicaSet/{name}", "ownerReferences"


def api_names(pods: Any, services: Any, slices: Any, nodes: Any, replicasets: Any | None = None) -> ApiNames:
    """The name maps from the API's list responses (PodList, ServiceList, EndpointSliceList, NodeList and, when
    readable, ReplicaSetList) as JSON."""
    out = ApiNames()
    by_rs = None if replicasets is None else {
        ((rs.get("metadata") or {}).get("namespace", ""), (rs.get("metadata") or {}).get("name", "")): rs
        for rs in _items(replicasets)}
    for pod in _items(pods):
        meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
        if spec.get("hostNetwork"):  # its IP is the node's: naming that address after the pod would be wrong
            continue
        owner, how = _owner(meta, by_rs)
        found = ApiPod(meta.get("namespace", ""), meta.get("name", ""), spec.get("nodeName", ""), owner, how)
        ips = [entry.get("ip") for entry in status.get("podIPs") or [] if isinstance(entry, dict)]
        for ip in ips or [status.get("podIP")]:
            if ip:
                out.pods[ip] = found
    for svc in _items(services):
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        vips = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip and ip != "None"]
        for port in spec.get("ports") or []:
            label = f"{meta.get('namespace')}/{meta.get('name')}:{port.get('name') or port.get('port')}"
            for vip in vips:
                out.services[(vip, int(port.get("port", 0)), str(port.get("protocol", "TCP")).upper())] = label
    for eps in _items(slices):
        meta = eps.get("metadata") or {}
        service = (meta.get("labels") or {}).get("kubernetes.io/service-name")
        for endpoint in eps.get("endpoints") or []:
            ref = endpoint.get("targetRef") or {}
            for ip in endpoint.get("addresses") or []:
                if service:
                    out.endpoint_services.setdefault(ip, []).append(f"{meta.get('namespace')}/{service}")
                if ref.get("kind") == "Pod" and ref.get("name"):
                    out.endpoint_pods[ip] = f"{ref.get('namespace', meta.get('namespace'))}/{ref['name']}"
    for node in _items(nodes):
        name = (node.get("metadata") or {}).get("name", "")
        for address in (node.get("status") or {}).get("addresses") or []:
            if address.get("type") in ("InternalIP", "ExternalIP") and address.get("address"):
                out.nodes[address["address"]] = name
    return out


def _one_line(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    text = str(reason if reason is not None else err) or type(err).__name__
    return " ".join(text.split())[:200]


class KubeApi:
    """The API's names, cached; `names()` is None (after one warning) while the API cannot be reached."""

    def __init__(self, kubeconfig: str | None, timeout: float = API_TIMEOUT_S, refresh_every: float = 30.0,
                 warn: Callable[[str], None] | None = None) -> None:
        self.timeout = timeout
        self.refresh_every = refresh_every
        self._warn = warn or (lambda line: sys.stderr.write(line + "\n"))
        self._warned = False
        self._names: ApiNames | None = None
        self._loaded_at: float | None = None
        self.error = ""
        self._client = self._connect(kubeconfig)

    @staticmethod
    def _connect(kubeconfig: str | None) -> Any:
        try:
            from kubernetes import client, config  # only with --kubeconfig or in a pod
        except ImportError as err:
            raise UsageError("the Kubernetes API needs the `kubernetes` Python client", "run `make setup`") from err

        configuration = client.Configuration()
        try:
            if kubeconfig:
                config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            else:
                config.load_incluster_config(client_configuration=configuration)
        except Exception as err:  # the client raises ConfigException, OSError, YAML errors
            where = kubeconfig or "in-cluster credentials"
            raise UsageError(f"cannot use {where} for the Kubernetes API: {_one_line(err)}",
                             "give a readable kubeconfig, or leave --kubeconfig out (names from the node)") from err
        configuration.retries = 0  # one attempt: the timeout is the whole wait
        return client.ApiClient(configuration)

    @property
    def server(self) -> str:
        return str(self._client.configuration.host)

    def _list(self, call: Callable[..., Any]) -> Any:
        response = call(_preload_content=False, _request_timeout=self.timeout)
        return json.loads(response.data)

    def _load(self) -> ApiNames:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core, discovery = client.CoreV1Api(self._client), client.DiscoveryV1Api(self._client)
        lists = [self._list(call) for call in (core.list_pod_for_all_namespaces, core.list_service_for_all_namespaces,
                                               discovery.list_endpoint_slice_for_all_namespaces, core.list_node)]
        try:
            replicasets = self._list(client.AppsV1Api(self._client).list_replica_set_for_all_namespaces)
        except ApiException as err:
            if err.status not in (403, 404):  # not allowed to list them, or no such API: owners are inferred
                raise
            replicasets = None
        pods, services, slices, nodes = lists
        return api_names(pods, services, slices, nodes, replicasets=replicasets)

    def names(self) -> ApiNames | None:
        fresh = self._loaded_at is not None and time.monotonic() - self._loaded_at < self.refresh_every
        if fresh:
            return self._names
        self._loaded_at = time.monotonic()
        try:
            self._names = self._load()
            self.error = ""
        except Exception as err:  # urllib3 and the client raise many kinds; all mean "unreachable"
            self.error = _one_line(err)
            if not self._warned:
                self._warn(f"podtrace: Kubernetes API at {self.server} unreachable ({self.error}): pod names from "
                           "the node only")
                self._warned = True
        return self._names


def from_args(kubeconfig: str | None) -> KubeApi | None:
    """The API when asked for (--kubeconfig) or when running in a pod with a service account; else None."""
    if kubeconfig:
        return KubeApi(kubeconfig)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(IN_CLUSTER_TOKEN):
        return KubeApi(None)
    return None
