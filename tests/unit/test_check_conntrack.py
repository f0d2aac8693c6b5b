"""conntrack fill and counters on recorded /proc/net/stat/nf_conntrack and `conntrack -S` output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracer.check import conntrack
from tracer.check.model import NodeState

FIXTURES = Path(__file__).parent / "fixtures" / "check"


def _text(name: str) -> str:
    return (FIXTURES / name).read_text()


def _state(count: int, limit: int = 262144, stat: str = "lab-node1-conntrack-S.txt") -> NodeState:
    return NodeState(sysctls={"net.netfilter.nf_conntrack_count": str(count),
                              "net.netfilter.nf_conntrack_max": str(limit),
                              "net.netfilter.nf_conntrack_buckets": "65536"},
                     conntrack_stat=_text(stat))


def test_parse_both_formats() -> None:
    assert conntrack.parse_stats(_text("lab-node1-conntrack-S-full.txt"))["drop"] == 20  # 10 on each of 2 CPUs
    proc = conntrack.parse_stats(_text("lab-node1-proc-net-stat-nf_conntrack.txt"))
    assert "entries" not in proc and proc["insert_failed"] == 0 and "early_drop" in proc
    text = ("entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n"
            "00000019  00000000 00000000 00000000 00000003 00000000 00000000 00000000 00000000 00000002 0000000a 0\n"
            "00000019  00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000000 00000001 00000010 0\n")
    assert conntrack.parse_stats(text) == {"clashres": 0, "found": 0, "new": 0, "invalid": 4, "ignore": 0,
                                           "delete": 0, "chainlength": 0, "insert": 0, "insert_failed": 3,
                                           "drop": 26, "early_drop": 0}


@pytest.mark.parametrize(("count", "severity"), [(25, "ok"), (196607, "ok"), (196608, "warn"), (235929, "warn"),
                                                 (235930, "fail"), (262144, "fail")])
def test_thresholds(count: int, severity: str) -> None:
    table = conntrack.check(_state(count))[0]
    assert table.check == "table" and table.severity == severity


def test_full_table_names_the_figures() -> None:
    findings = conntrack.check(_state(262144, stat="lab-node1-conntrack-S-full.txt"))
    table, counters = findings
    assert table.value == "262144/262144 entries (100% full)"
    assert "table full" in table.why and table.fix.startswith("sysctl -w net.netfilter.nf_conntrack_max=524288")
    assert counters.severity == "warn" and counters.value == "insert_failed=0 drop=20 early_drop=0"


def test_recorded_conntrack_full_fault() -> None:
    state = NodeState.from_dict(json.loads(_text("state-lab-node1-conntrack-full.json")))
    table = conntrack.check(state)[0]
    assert table.severity == "fail" and "100% full" in table.value


def test_insert_failed_points_at_dns() -> None:
    state = _state(10)
    state.conntrack_stat = "cpu=0 found=0 insert_failed=7 drop=0 early_drop=0\n"
    counters = conntrack.check(state)[1]
    assert counters.severity == "warn" and "DNS" in counters.why and counters.value.startswith("insert_failed=7")


def test_not_loaded() -> None:
    assert conntrack.check(NodeState())[0].value == "nf_conntrack not loaded"
