"""A ruleset that changes during a session: kube-proxy's own iptables-save dump (the lab's node2 with its faults,
tests/unit/fixtures/kubeproxy) loaded with iptables-restore on a forwarding namespace the test builds, then restored
again mid-run, edited as a resync or an operator would edit it. A drop matched to a rule that is the same at both
ends (only renumbered) names it by its number at the end; one whose rule changed says the rule is not known,
in `drops` and in `report` on a `record --node` made beside it; on the lab, a foreign rule deleted mid-run is named
by neither `flows` nor `drops` (with or without --netns). The drop's reason and identity stay observed."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.dnat import Dnat, dnat_namespaces  # noqa: F401 (the fixture "dnat")
from support.lab import faults_cleared, iptables_lab  # noqa: F401 (fixtures)
from support.netns import send_udp
from support.podtrace import run, start

pytestmark = pytest.mark.root

DUMP = (Path(__file__).parents[1] / "unit" / "fixtures" / "kubeproxy" / "lab-iptables-node2-faults.save").read_text()
FAULT = '-A FORWARD -d 10.244.1.2/32 -p tcp -m tcp --dport 8080 -m comment --comment "podtrace-lab fault ' \
        'drop-backend" -j DROP\n'
SPORT = 41999


def _drop_rule(dnat: Dnat, comment: str) -> str:
    return f'-A FORWARD -d {dnat.backend_addr}/32 -p udp -m udp --dport 8080 -m comment --comment "{comment}" -j DROP\n'


def _restore(dnat: Dnat, rules: str) -> None:
    assert FAULT in DUMP
    subprocess.run(["ip", "netns", "exec", dnat.node, "iptables-restore"], input=DUMP.replace(FAULT, rules),
                   text=True, check=True)


def _session(dnat: Dnat, tmp_path: Path, middle: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """5 datagrams dropped with the start's rules, 5 after the mid-run restore: (drops' row, report's row)."""
    first = _drop_rule(dnat, "podtrace-lab fault drop-backend")
    _restore(dnat, first)
    path = tmp_path / "resync.ptrec"
    drops = start("drops", "--json", "--netns", dnat.node, "udp")
    record = start("record", "-o", str(path), "--node", dnat.node, "udp")
    send_udp(dnat.client, dnat.backend_addr, 8080, 5, src_port=SPORT)
    time.sleep(0.3)
    _restore(dnat, middle)
    send_udp(dnat.client, dnat.backend_addr, 8080, 5, src_port=SPORT)
    time.sleep(0.5)
    live, recorded = drops.stop(), record.stop()
    assert live.returncode == 0 and recorded.returncode == 0, (live.stderr, recorded.stderr)
    report = run("report", "--json", str(path))
    assert report.returncode == 0, report.stderr
    rows = [json.loads(line) for line in report.stdout.splitlines() if line.startswith("{")]

    def mine(found: list[dict[str, Any]]) -> dict[str, Any]:
        [row] = [row for row in found if row.get("reason") == "NETFILTER_DROP" and row.get("dport") == 8080
                 and not row.get("service_drop") and row.get("netns") == dnat.node]
        assert row["count"] == 10, row
        return row

    return mine(live.rows), mine(rows)


def test_a_rule_renumbered_by_a_resync_is_still_named_by_its_number_at_the_end(dnat: Dnat, tmp_path: Path) -> None:
    first = _drop_rule(dnat, "podtrace-lab fault drop-backend")
    live, reported = _session(dnat, tmp_path, "-A FORWARD -s 192.0.2.1/32 -j ACCEPT\n" + first)
    for row, state in ((live, None), (reported, "rules recorded at the end of the recording")):
        cause = row["cause"]
        assert (cause["kind"], cause["known"], cause.get("state")) == ("rule", "matched", state), cause
        assert cause["text"] == (f"a DROP rule not written by kube-proxy: filter FORWARD #2 `{first.strip()}`"), cause


def test_a_rule_replaced_during_the_session_is_not_known_never_the_ends_guess(dnat: Dnat, tmp_path: Path) -> None:
    first, other = _drop_rule(dnat, "podtrace-lab fault drop-backend"), _drop_rule(dnat, "ops maintenance")
    live, reported = _session(dnat, tmp_path, other)
    want = (f"the ruleset changed during the session: this packet matches filter FORWARD #1 `{first.strip()}` in the "
            f"rules read at the start and filter FORWARD #1 `{other.strip()}` in those read at the end; which one "
            "dropped it is not known")
    for row in (live, reported):
        assert row["cause"] == {"kind": "rules-changed", "text": want, "fix": "", "known": "unknown"}, row["cause"]
        assert row["reason"] == "NETFILTER_DROP" and row["src"] == dnat.client_addr  # the kernel's, unchanged
    text = " ".join(run("report", str(tmp_path / "resync.ptrec")).stdout.split())
    assert f"cause: {want}" in text and "fix:" not in text.split(f"cause: {want}")[1][:10], text


@pytest.mark.usefixtures("iptables_lab", "faults_cleared")
def test_a_foreign_rule_removed_mid_session_is_not_named_by_flows_or_drops() -> None:
    # The lab's drop-backend rule is there when the sessions start and gone when they end (someone deleted it):
    # its drops are still web-2's (the conntrack identity is observed), but which rule dropped them is not known.
    from tracer.lab import faults, traffic

    faults.set_fault("drop-backend", True)
    flows = start("flows", "--json", "--node", "pt-node1", "--node", "pt-node2", "tcp port 80 or tcp port 8080")
    drops = start("drops", "--json", "--netns", "pt-node2", "tcp")
    everywhere = start("drops", "--json", "tcp")  # no --netns: the rules of the host and the lab's nodes
    sent = traffic.probe("default/web:http", count=20, timeout=0.5)
    faults.set_fault("drop-backend", False)
    time.sleep(0.5)
    flowed, dropped, unscoped = flows.stop(), drops.stop(), everywhere.stop()
    assert flowed.returncode == 0 and dropped.returncode == 0 and unscoped.returncode == 0, (
        flowed.stderr, dropped.stderr, unscoped.stderr)
    assert sent.per_target["default/web:http"].failed > 0, sent
    web2 = [row for row in flowed.rows if row.get("backend_pod") == "web-2" and row.get("drops")]
    labels = [label for row in web2 for label in row["drops"] if label.startswith("NETFILTER_DROP")]
    assert labels, flowed.rows
    for label in labels:
        assert "by filter FORWARD #1" not in label and "a DROP rule not written by kube-proxy" not in label, label
        assert "the ruleset changed during the session: this packet matches filter FORWARD #1 `-A FORWARD -d " \
               "10.244.1.2/32 -p tcp" in label and "no DROP/REJECT rule in those read at the end" in label, label
    mine = [row for row in dropped.rows if row.get("reason") == "NETFILTER_DROP" and row.get("dport") == 8080]
    assert mine and {row["cause"]["kind"] for row in mine} == {"rules-changed"}, mine
    node2 = [row for row in unscoped.rows if row.get("reason") == "NETFILTER_DROP" and row.get("dport") == 8080
             and row.get("netns") == "pt-node2"]
    assert node2 and {row["cause"]["kind"] for row in node2} == {"rules-changed"}, unscoped.rows
