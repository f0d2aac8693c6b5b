"""serve's per-refresh drop attribution on the iptables-save output of the lab's kube-proxy rules (fixtures captured
from real nodes, tests/unit/fixtures/kubeproxy/README.md): observed, matched, ambiguous and none."""

from __future__ import annotations

from pathlib import Path

from test_flows import PODS, _nat, _t

from tracer.analysis.flows import NodeConntrack
from tracer.node.conntrack import Health
from tracer.node.kubeproxy.iptables import parse_iptables_save
from tracer.serve.attribution import attribute

FIXTURES = Path(__file__).parent / "fixtures" / "kubeproxy"
SERVICES = parse_iptables_save((FIXTURES / "lab-iptables-node1.save").read_text())


def _row(dst: str, dport: int, count: int = 1, reason: str = "NETFILTER_DROP", hook: str = "FORWARD first",
         src: str = "10.244.0.2", netns: str = "pt-node1") -> dict:
    return {"reason": reason, "location": "nft_do_chain+0x46f", "proto": "tcp", "src": src, "dst": dst,
            "dport": dport, "count": count, "hook": hook, "netns": netns}


def _attribute(rows: list[dict], nat: list | None = None, conntrack: list | None = None) -> list:
    return attribute(rows, SERVICES, nat or [], conntrack or [], lambda ip: PODS.get(ip, "-"))


def test_a_drop_on_the_flow_the_kernel_nated_here_is_observed() -> None:
    nat = [_nat(1, _t("10.244.0.2", 41000, "10.96.0.10", 80, 6), _t("10.244.0.2", 41000, "10.244.1.2", 8080, 6))]
    [charge] = _attribute([_row("10.244.1.2", 8080, 3)], nat)
    assert (charge.service, charge.backend, charge.attribution, charge.count) == ("default/web:http", "web-2",
                                                                                  "observed", 3)
    assert charge.severity == "policy"


def test_a_backend_of_two_services_dropped_where_no_dnat_was_seen_is_ambiguous() -> None:
    """web-2:8080 backs web:http and web-nodeport:http; this node did not choose it, so it cannot say which."""
    charges = _attribute([_row("10.244.1.2", 8080, 5)])
    assert sorted((c.service, c.backend, c.attribution, c.count) for c in charges) == [
        ("default/web-nodeport:http", "web-2", "ambiguous", 5), ("default/web:http", "web-2", "ambiguous", 5)]


def test_a_vip_drop_is_matched_with_its_rule_and_a_full_table_is_the_cause() -> None:
    [reject] = _attribute([_row("10.96.0.30", 80, 2)])
    assert (reject.service, reject.backend, reject.attribution, reject.cause) == ("default/empty:http", "", "matched",
                                                                                  "rule")
    full = NodeConntrack("pt-node1", Health(262144, 262144), 10)
    [refused] = _attribute([_row("10.96.0.10", 80, 10, hook="PREROUTING before conntrack")], conntrack=[full])
    assert (refused.service, refused.cause, refused.severity) == ("default/web:http", "conntrack", "loss")


def test_drops_of_no_service_still_count() -> None:
    [charge] = _attribute([_row("127.0.0.1", 9, 7, reason="NO_SOCKET", hook="-")])
    assert (charge.service, charge.backend, charge.attribution, charge.count, charge.severity) == (
        "", "", "none", 7, "loss")
