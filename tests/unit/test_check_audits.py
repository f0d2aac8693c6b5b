"""check's audits of what drops pod and Service traffic: foreign DROP/REJECT rules, Services without endpoints,
refusing routes, receive steered to one CPU. States are the lab's recorded ones (fixtures/check/README.md), with
the one input each test is about set on top (said in each test)."""

from __future__ import annotations

import json
from pathlib import Path

from tracer.check import evaluate, routes, rules, softirq
from tracer.check.model import Finding, NodeState

CHECK = Path(__file__).parent / "fixtures" / "check"
KUBEPROXY = Path(__file__).parent / "fixtures" / "kubeproxy"


def _state(name: str) -> NodeState:
    return NodeState.from_dict(json.loads((CHECK / name).read_text()))


def _one(findings: list[Finding], check: str) -> Finding:
    [found] = [f for f in findings if f.check == check]
    return found


def test_the_healthy_lab_has_no_foreign_rule_no_refusing_route_and_only_its_empty_service() -> None:
    for name in ("state-lab-node1-ok.json", "state-lab-node2-ok.json"):
        state = _state(name)
        found = rules.check(state) + routes.check(state)
        assert _one(found, "foreign drop rules").severity == "ok", found
        assert _one(found, "refusing routes").severity == "ok", found
        # The lab's manifest has one Service without endpoints by design (default/empty): it is named, alone.
        empty = _one(found, "no endpoints")
        assert (empty.severity, empty.value) == ("warn", "default/empty:http"), empty


def test_a_drop_rule_on_an_endpoint_is_a_foreign_rule_with_its_delete_command() -> None:
    state = _state("state-lab-node2-ok.json")
    # node2's rules with drop-backend and no-endpoints on (kubeproxy fixtures README: a real iptables-save).
    state.iptables_save = (KUBEPROXY / "lab-iptables-node2-faults.save").read_text()
    found = rules.check(state)
    rule = _one(found, "foreign drop rules")
    assert rule.severity == "fail"
    assert rule.value.startswith("1: filter FORWARD #1 `-A FORWARD -d 10.244.1.2/32 -p tcp -m tcp --dport 8080 ")
    assert rule.value.endswith("hits pods 10.244.1.2/32 (endpoint of default/web-nodeport:http)") or \
        rule.value.endswith("hits pods 10.244.1.2/32 (endpoint of default/web:http)"), rule.value
    assert rule.fix.startswith("ip netns exec pt-node2 iptables -t filter -D FORWARD 1")
    empty = _one(found, "no endpoints")
    assert empty.value == "default/empty:http, default/web:dns, default/web:http"
    assert empty.fix.startswith("kubectl -n default get endpointslices -l kubernetes.io/service-name=empty")


def test_a_drop_rule_on_addresses_no_pod_or_service_has_is_not_claimed() -> None:
    state = _state("state-lab-node2-ok.json")
    assert state.iptables_save is not None
    state.iptables_save = state.iptables_save.replace("COMMIT", "-A INPUT -s 192.0.2.7/32 -j DROP\nCOMMIT", 1)
    assert "-A INPUT -s 192.0.2.7/32 -j DROP" in state.iptables_save
    assert _one(rules.check(state), "foreign drop rules").severity == "ok"


def test_a_blackhole_route_to_a_pod_fails_and_one_elsewhere_does_not() -> None:
    state = _state("state-lab-node1-ok.json")
    # As `ip -j route show table all` prints them (seen on this kernel with iproute2 6.1).
    state.routes = [{"type": "blackhole", "dst": "10.244.1.3", "flags": []},
                    {"type": "unreachable", "dst": "192.0.2.0/24", "flags": []}]
    found = _one(routes.check(state), "refusing routes")
    assert found.severity == "fail"
    assert found.value.startswith("blackhole 10.244.1.3 covers pods 10.244.1.3/32 (endpoint of default/web")
    assert found.fix == "ip -n pt-node1 route del blackhole 10.244.1.3  # if nobody meant it"
    state.routes = state.routes[1:]
    assert _one(routes.check(state), "refusing routes").severity == "ok"


def test_a_prohibit_route_over_the_cluster_ip_range_in_another_table() -> None:
    state = _state("state-lab-node1-ok.json")
    state.routes = [{"type": "prohibit", "dst": "10.96.0.0/16", "table": "100", "flags": []}]
    found = _one(routes.check(state), "refusing routes")
    assert found.severity == "fail" and found.value.startswith("prohibit 10.96.0.0/16 table 100 covers Services")


def test_pod_subnets_come_from_the_routes_to_the_bridge_and_the_overlay() -> None:
    state = _state("state-lab-node1-ok.json")
    state.iptables_save, state.nft_ruleset = "", None  # no endpoints known: only the routes say where pods are
    state.routes = [{"dst": "10.244.0.0/24", "dev": "cni0", "flags": []},
                    {"dst": "10.244.1.0/24", "dev": "flannel.1", "gateway": "10.244.1.0", "flags": ["onlink"]},
                    {"type": "blackhole", "dst": "10.244.1.77", "flags": []}]
    found = _one(routes.check(state), "refusing routes")
    assert found.value == "blackhole 10.244.1.77 covers pods 10.244.1.0/24 (routed to flannel.1)", found


def test_rps_on_the_underlay_to_one_cpu_is_named_with_the_mask_that_spreads_it() -> None:
    state = _state("state-lab-node2-ok.json")
    # What softirq-load writes: /sys/class/net/eth0/queues/rx-0/rps_cpus = 00000002 in pt-node2.
    state.rps, state.cpus = {"eth0/rx-0": "00000002", "lo/rx-0": "00000000"}, 2
    found = _one(softirq.check(state), "receive steering")
    assert (found.severity, found.value) == ("warn", "RPS sends all of eth0's receive to CPU 1 of 2")
    assert found.fix == "ip netns exec pt-node2 sh -c 'echo 3 > /sys/class/net/eth0/queues/rx-0/rps_cpus'  # all CPUs"
    state.rps = {"eth0/rx-0": "00000003"}
    assert _one(softirq.check(state), "receive steering").severity == "ok"
    state.rps = {"cni0/rx-0": "00000001"}  # not the underlay
    assert _one(softirq.check(state), "receive steering").value == "underlay eth0: not steered to one CPU"


def test_irq_affinity_of_the_underlay_nic_to_one_cpu() -> None:
    state = NodeState(default_routes=[{"dst": "default", "dev": "ens5"}], cpus=4,
                      irq_affinity={"ens5-Tx-Rx-0": "4", "ens5-Tx-Rx-1": "4", "nvme0q1": "1"})
    found = _one(softirq.check(state), "receive steering")
    assert (found.severity, found.value) == ("warn", "IRQ affinity sends all of ens5's receive to CPU 2 of 4")
    state.irq_affinity["ens5-Tx-Rx-1"] = "8"
    assert _one(softirq.check(state), "receive steering").severity == "ok"


def test_every_family_runs_on_a_recorded_state() -> None:
    areas = {f.area for f in evaluate(_state("state-lab-node1-ok.json"))}
    assert {"rules", "routes", "softirq"} <= areas
