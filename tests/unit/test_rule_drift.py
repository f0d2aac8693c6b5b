"""A ruleset that changed during a session (tracer/analysis/rule_drift.py): a drop whose matched rule is the same at
both ends stays matched, renumbered or not; one whose rule or Service changed says the rule is not known. On the
lab's own iptables-save dumps (tests/unit/fixtures/kubeproxy: node1 healthy, node2 with the drop-backend and
no-endpoints faults on), edited as kube-proxy or an operator would between two reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tracer.analysis.causes import UNKNOWN, NetnsState, explain
from tracer.analysis.rule_drift import drift
from tracer.node.kubeproxy.iptables import parse_iptables_save
from tracer.node.kubeproxy.model import ServiceMap

FIX = Path(__file__).parent / "fixtures" / "kubeproxy"
FAULTS = (FIX / "lab-iptables-node2-faults.save").read_text()
HEALTHY = (FIX / "lab-iptables-node1.save").read_text()
FOREIGN = '-A FORWARD -d 10.244.1.2/32 -p tcp -m tcp --dport 8080 -m comment --comment "podtrace-lab fault ' \
          'drop-backend" -j DROP\n'


def _rules(text: str) -> ServiceMap:
    return parse_iptables_save(text)


def _backend_drop(**extra: Any) -> dict[str, Any]:
    """web-2's port dropped at FORWARD after DNAT (dialled as web-nodeport), as tracer/report.drop_rows gives it."""
    return {"reason": "NETFILTER_DROP", "location": "nft_do_chain+0x46f", "netns": "pt-node2", "proto": "tcp",
            "src": "10.244.0.2", "dst": "10.244.1.2", "dport": 8080, "count": 3, "ct_identity": "conntrack",
            "ct_dialled": "10.96.0.20:80", "ct_dnat": True, **extra}  # web-nodeport:http


def _vip_drop() -> dict[str, Any]:
    return {"reason": "NETFILTER_DROP", "location": "nft_do_chain+0x46f", "netns": "pt-node2", "proto": "tcp",
            "src": "10.244.0.2", "dst": "10.96.0.10", "dport": 80, "count": 5}


def test_the_same_rules_at_both_ends_change_nothing() -> None:
    assert FOREIGN in FAULTS
    assert drift(_backend_drop(), _rules(FAULTS), _rules(FAULTS)) == ""
    assert drift(_backend_drop(), None, _rules(FAULTS)) == ""  # one end only: as before, matched


def test_a_rule_only_renumbered_is_the_same_rule_named_by_its_number_at_the_end() -> None:
    inserted = FAULTS.replace(FOREIGN, "-A FORWARD -s 192.0.2.1/32 -j ACCEPT\n" + FOREIGN)
    assert drift(_backend_drop(), _rules(FAULTS), _rules(inserted)) == ""
    state = NetnsState("pt-node2", services=_rules(inserted), services_start=_rules(FAULTS))
    cause = explain(_backend_drop(), state)
    assert (cause.kind, cause.known) == ("rule", "matched")
    assert cause.text.startswith("a DROP rule not written by kube-proxy: filter FORWARD #2 `-A FORWARD -d "
                                 "10.244.1.2/32"), cause.text


def test_a_rule_deleted_during_the_session_is_not_known_never_the_ends_guess() -> None:
    removed = FAULTS.replace(FOREIGN, "")
    text = drift(_backend_drop(), _rules(FAULTS), _rules(removed))
    assert text.startswith("the ruleset changed during the session: this packet matches filter FORWARD #1 `-A FORWARD "
                           "-d 10.244.1.2/32 -p tcp -m tcp --dport 8080"), text
    assert text.endswith("in the rules read at the start and no DROP/REJECT rule in those read at the end; which one "
                         "dropped it is not known"), text
    cause = explain(_backend_drop(), NetnsState("pt-node2", services=_rules(removed), services_start=_rules(FAULTS)))
    assert (cause.kind, cause.text, cause.known, cause.fix) == ("rules-changed", text, UNKNOWN, "")


def test_a_rule_inserted_during_the_session_is_not_known_either() -> None:
    # The end's rule would be named (the lab's fault rule), but the drops before it was inserted met none.
    cause = explain(_backend_drop(), NetnsState("pt-node2", services=_rules(FAULTS),
                                                services_start=_rules(FAULTS.replace(FOREIGN, ""))))
    assert (cause.kind, cause.known) == ("rules-changed", UNKNOWN), cause
    assert "no DROP/REJECT rule in the rules read at the start and filter FORWARD #1 `-A FORWARD" in cause.text


def test_a_service_whose_endpoints_went_away_during_the_session_is_not_called_endpointless() -> None:
    # The end's rules say web:http has no endpoints (kube-proxy's REJECT); at the start it had three.
    end_only = explain(_vip_drop(), NetnsState("pt-node2", services=_rules(FAULTS)))
    assert end_only.kind == "no-endpoints"
    cause = explain(_vip_drop(), NetnsState("pt-node2", services=_rules(FAULTS), services_start=_rules(HEALTHY)))
    assert (cause.kind, cause.known) == ("rules-changed", UNKNOWN), cause
    assert "no DROP/REJECT rule in the rules read at the start and filter KUBE-SERVICES #" in cause.text, cause.text


def test_flows_charge_the_drop_to_its_flow_without_naming_a_rule_that_changed() -> None:
    import socket

    from tracer.analysis.flows import FlowTable, NatRecord
    from tracer.events.decode import Tuple

    def t(src: str, sport: int, dst: str, dport: int) -> Tuple:
        pad = bytes(12)
        return Tuple(socket.inet_aton(src) + pad, socket.inet_aton(dst) + pad, sport, dport, 4, 6, 0, 0, 0, 0)

    start, end = _rules(FAULTS.replace(FOREIGN, "")), _rules(FAULTS)
    row = _backend_drop(hook="FORWARD first", ct_client="10.244.0.2:41000", ct_backend="10.244.1.2:8080")
    for drift_rules, named in (({}, True), ({"pt-node2": (start, end)}, False)):
        table = FlowTable(end, lambda ip: "-")
        table.drift_rules = drift_rules
        table.add_nat([NatRecord(1, 4026532000, t("10.244.0.2", 41000, "10.96.0.20", 80),
                                 t("10.244.0.2", 41000, "10.244.1.2", 8080), 1, 60, 1, 2, 5000, 9000)])
        table.add_drops([{**row, "cause": explain(row, NetnsState("pt-node2", services=end,
                                                                  services_start=start if not named else None)
                                                  ).to_json()}])
        [flow] = table.rows()
        [label] = flow.drops
        assert flow.service == "default/web-nodeport:http" and flow.drops[label] == 3
        if named:  # one end read: the rule the end's ruleset matches, said to be matched
            assert "a DROP rule not written by kube-proxy: filter FORWARD #1" in label and "(matched)" in label, label
        else:
            assert "by filter FORWARD" not in label and "the ruleset changed during the session: this packet " \
                "matches no DROP/REJECT rule in the rules read at the start and filter FORWARD #1" in label, label
            assert label.endswith("which one dropped it is not known (unknown) (conntrack)"), label
