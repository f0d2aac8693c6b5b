"""serve's shipped deployment files: the manifests against Kubernetes' own schemas (kubernetes-validate), the
Grafana dashboard against the metrics serve really exports, the Dockerfile against the tree it copies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tracer.serve.metrics import BY_NAME, METRICS

DEPLOY = Path(__file__).resolve().parents[2] / "tracer" / "serve" / "deploy"
ROOT = DEPLOY.parents[2]
KUBERNETES_VERSION = "1.30.0"
# Labels Prometheus adds to every scraped series, and the process_* metrics of prometheus_client's ProcessCollector.
TARGET_LABELS = {"job", "instance"}
PROCESS_METRICS = {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
                   "process_open_fds", "process_start_time_seconds", "process_max_fds"}
PROMQL_WORDS = {"sum", "max", "min", "count", "avg", "by", "without", "rate", "increase", "or", "and", "unless",
                "label_values", "histogram_quantile", "irate", "topk", "on", "ignoring"}


def _documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


@pytest.mark.parametrize("name", ["namespace.yaml", "daemonset.yaml"])
def test_manifests_validate_against_the_kubernetes_schemas(name: str) -> None:
    for document in _documents(name):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_invalid_manifests_are_refused_by_the_same_validator() -> None:
    """The check can fail: a field Kubernetes does not know is refused."""
    daemonset = _documents("daemonset.yaml")[0]
    daemonset["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)


def test_daemonset_has_the_node_access_serve_needs_and_no_more() -> None:
    daemonset = _documents("daemonset.yaml")[0]
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] and pod["hostPID"] and pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    security = container["securityContext"]
    assert not security["privileged"] and security["capabilities"]["drop"] == ["ALL"]
    added = set(security["capabilities"]["add"])
    assert added == {"BPF", "PERFMON", "NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_RESOURCE", "SYSLOG"}
    for capability in added:  # each one is explained in the file
        assert re.search(rf"^#\s+{capability}\s", (DEPLOY / "daemonset.yaml").read_text(), re.M), capability
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    for path, read_only in (("/sys/kernel/btf", True), ("/sys/fs/bpf", False), ("/run/netns", True),
                            ("/lib/modules", True), ("/usr/src", True), ("/var/log/pods", True),
                            ("/var/lib/podtrace", False)):
        assert mounts.get(path) is read_only, (path, mounts)
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    port = container["ports"][0]["containerPort"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
    assert f"--listen=$(POD_IP):{port}" in container["args"]


def test_podmonitor_selects_the_daemonset_pods_and_port() -> None:
    monitor = _documents("operator/podmonitor.yaml")[0]
    daemonset = _documents("daemonset.yaml")[0]
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in daemonset["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]} <= ports


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names it is selected or grouped by) for each metric named in a PromQL expression."""
    found = []
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", expr):
        name, braces = match.group(1), match.group(2) or ""
        if name in PROMQL_WORDS or not (name.startswith("podtrace_") or name.startswith("process_")):
            continue
        found.append((name, set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", braces))))
    return found


def test_every_dashboard_expression_names_metrics_and_labels_serve_exports() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "podtrace-dashboard.json").read_text())
    exported = {metric.exported: metric for metric in METRICS}
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= 10
    named = set()
    for expr in expressions:
        selectors = _selectors(expr)
        assert selectors, expr
        groups = {label.strip() for found in re.findall(r"by \(([^)]*)\)", expr) for label in found.split(",")}
        for name, labels in selectors:
            named.add(name)
            if name in PROCESS_METRICS:
                assert labels <= TARGET_LABELS, expr
                continue
            assert name in exported, f"{name} in {expr!r} is not exported by serve"
            allowed = set(exported[name].labels) | TARGET_LABELS
            assert labels <= allowed and groups <= allowed, (expr, labels, groups)
    # The headline metrics all have a panel.
    for metric in ("podtrace_drops", "podtrace_service_packets", "podtrace_conntrack_fill_ratio",
                   "podtrace_softirq_wait_p99_seconds", "podtrace_probe_events_lost", "podtrace_probe_attached"):
        assert BY_NAME[metric].exported in named, metric


def test_the_dashboard_check_catches_a_metric_serve_does_not_export() -> None:
    assert _selectors('rate(podtrace_drop_total{node="a"}[5m])') == [("podtrace_drop_total", {"node"})]
    assert "podtrace_drop_total" not in {metric.exported for metric in METRICS}


def test_dockerfile_uses_debian_bcc_and_copies_what_exists() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM debian:", text, re.M) and "python3-bpfcc" in text
    for source in re.findall(r"^COPY (.+) /src/?\S*$", text, re.M):
        for part in source.split():
            assert (ROOT / part).exists(), part


def test_docs_list_every_metric_and_no_other() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"^\| `(podtrace_[a-z0-9_]+)` \|", text, re.M))
    assert documented == {metric.exported for metric in METRICS}
    for metric in METRICS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{metric.exported}` |"))
        assert row.split("|")[2].strip() == ", ".join(metric.labels), metric.name


def test_the_daemonset_args_are_valid_serve_flags() -> None:
    import argparse

    from tracer.cli.serve import add_parser
    from tracer.serve.options import from_args

    container = _documents("daemonset.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    argv = [arg.replace("$(POD_IP)", "10.0.0.1") for arg in container["args"]]
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    options = from_args(parser.parse_args(argv))
    assert (options.address, options.port) == ("10.0.0.1", container["ports"][0]["containerPort"])
    assert [trigger.kind for trigger in options.triggers] == ["drop-rate", "conntrack-fill"]
