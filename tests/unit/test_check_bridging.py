"""bridge-nf-call-iptables, ip_forward and rp_filter on recorded lab node states."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from tracer.check import bridging
from tracer.check.model import Finding, NodeState

FIXTURES = Path(__file__).parent / "fixtures" / "check"


def _state(name: str) -> NodeState:
    return NodeState.from_dict(json.loads((FIXTURES / name).read_text()))


def _one(findings: list[Finding], check: str) -> Finding:
    found = [f for f in findings if f.check == check]
    assert len(found) == 1, [f.check for f in findings]
    return found[0]


def test_lab_node_is_ok() -> None:
    findings = bridging.check(_state("state-lab-node1-ok.json"))
    assert {f.severity for f in findings} == {"ok"}
    assert _one(findings, "bridge-nf-call-iptables").value == "1 (cni0)"
    assert [f.check for f in findings if f.check.startswith("rp_filter")] == [
        "rp_filter eth0", "rp_filter flannel.1", "rp_filter cni0", "rp_filter pod veths"]


def test_bridge_nf_off_with_kube_proxy_fails() -> None:
    state = _state("state-lab-node1-ok.json")
    state.sysctls["net.bridge.bridge-nf-call-iptables"] = "0"
    finding = _one(bridging.check(state), "bridge-nf-call-iptables")
    assert finding.severity == "fail" and finding.value == "0 (cni0)"
    assert finding.fix == "sysctl -w net.bridge.bridge-nf-call-iptables=1"
    state.iptables_save = ""  # no kube-proxy: only a warning
    assert _one(bridging.check(state), "bridge-nf-call-iptables").severity == "warn"


def test_br_netfilter_not_loaded() -> None:
    state = _state("state-lab-node1-ok.json")
    del state.sysctls["net.bridge.bridge-nf-call-iptables"]
    finding = _one(bridging.check(state), "bridge-nf-call-iptables")
    assert finding.severity == "fail" and finding.fix.startswith("modprobe br_netfilter")


def test_ip_forward_off_with_pods_fails() -> None:
    state = _state("state-lab-node1-ok.json")
    state.sysctls["net.ipv4.ip_forward"] = "0"
    finding = _one(bridging.check(state), "ip_forward")
    assert finding.severity == "fail" and finding.value == "0 (2 pod veths)"


def test_ip_forward_off_on_a_plain_host_is_fine() -> None:
    assert _one(bridging.check(_state("state-host.json")), "ip_forward").severity == "ok"


def test_recorded_rp_filter_fault_warns_on_eth0() -> None:
    """`lab fault rp-filter` sets conf.all and conf.eth0 to 1 on node2: every checked interface becomes strict."""
    findings = bridging.check(_state("state-lab-node2-rp-filter.json"))
    eth0 = _one(findings, "rp_filter eth0")
    assert eth0.severity == "warn" and eth0.value == "eth0 (underlay) = 1"
    assert eth0.fix == "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0.rp_filter=2"
    overlay = _one(findings, "rp_filter flannel.1")
    assert overlay.severity == "warn" and overlay.value == "flannel.1 (overlay) = 1 (from conf.all)"
    assert overlay.fix == "sysctl -w net.ipv4.conf.all.rp_filter=2"
    assert _one(findings, "rp_filter pod veths").severity == "warn"
    assert not [f for f in findings if f.severity == "fail"]


def test_rp_filter_on_one_interface_only() -> None:
    state = copy.deepcopy(_state("state-lab-node1-ok.json"))
    state.ipv4_conf["flannel.1"]["rp_filter"] = "1"
    findings = bridging.check(state)
    overlay = _one(findings, "rp_filter flannel.1")
    assert overlay.severity == "warn" and overlay.fix == "sysctl -w net.ipv4.conf.flannel/1.rp_filter=2"
    assert _one(findings, "rp_filter eth0").severity == "ok"
    state.ipv4_conf["flannel.1"]["rp_filter"] = "2"  # loose mode is what CNIs recommend
    assert _one(bridging.check(state), "rp_filter flannel.1").severity == "ok"


def test_effective_rp_filter_is_the_max() -> None:
    state = NodeState(ipv4_conf={"all": {"rp_filter": "2"}, "eth0": {"rp_filter": "1"}, "cni0": {"rp_filter": "0"}})
    assert bridging.effective_rp_filter(state, "eth0") == (2, "all")
    assert bridging.effective_rp_filter(state, "cni0") == (2, "all")
    assert bridging.conf_key("flannel.1", "rp_filter") == "net.ipv4.conf.flannel/1.rp_filter"
