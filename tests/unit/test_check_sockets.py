"""somaxconn, ephemeral port range vs sockets holding ports, tcp_tw_reuse, on recorded sockstat."""

from __future__ import annotations

from pathlib import Path

from tracer.check import sockets
from tracer.check.model import Finding, NodeState

FIXTURES = Path(__file__).parent / "fixtures" / "check"


def _state() -> NodeState:
    """The lab node's recorded sockstat with the sysctl values recorded in the same namespace."""
    values = {"net.core.somaxconn": "4096", "net.ipv4.ip_local_port_range": "32768 60999",
              "net.ipv4.tcp_tw_reuse": "2"}
    return NodeState(sysctls=values, sockstat=(FIXTURES / "lab-node1-sockstat.txt").read_text())


def _one(findings: list[Finding], check: str) -> Finding:
    return next(f for f in findings if f.check == check)


def test_parse_sockstat() -> None:
    stats = sockets.parse_sockstat((FIXTURES / "lab-node1-sockstat.txt").read_text())
    assert stats["TCP"] == {"inuse": 0, "orphan": 0, "tw": 0, "alloc": 4, "mem": 0}
    assert stats["sockets"] == {"used": 3}


def test_lab_defaults_are_ok() -> None:
    findings = sockets.check(_state())
    assert {f.severity for f in findings} == {"ok"}
    assert _one(findings, "ephemeral ports").value.startswith("32768-60999 (28232 ports), 0 TCP sockets")
    assert _one(findings, "tcp_tw_reuse").value == "2 (loopback only), 0 sockets in TIME_WAIT"


def test_small_somaxconn() -> None:
    state = _state()
    state.sysctls["net.core.somaxconn"] = "128"
    finding = _one(sockets.check(state), "somaxconn")
    assert finding.severity == "warn" and finding.fix == "sysctl -w net.core.somaxconn=4096"


def test_ports_nearly_exhausted_and_time_wait() -> None:
    state = _state()
    state.sockstat = "TCP: inuse 3000 orphan 0 tw 23000 alloc 3100 mem 40\n"
    findings = sockets.check(state)
    ports = _one(findings, "ephemeral ports")
    assert ports.severity == "fail"
    assert ports.value == "32768-60999 (28232 ports), 26000 TCP sockets in use or TIME_WAIT (92%)"
    state.sockstat = "TCP: inuse 3000 orphan 0 tw 13000 alloc 3100 mem 40\n"
    assert _one(sockets.check(state), "ephemeral ports").severity == "warn"  # 57%
    tw = _one(findings, "tcp_tw_reuse")
    assert tw.severity == "warn" and tw.fix == "sysctl -w net.ipv4.tcp_tw_reuse=1"


def test_narrow_range_warns() -> None:
    state = _state()
    state.sysctls["net.ipv4.ip_local_port_range"] = "60000 61000"
    assert _one(sockets.check(state), "ephemeral ports").severity == "warn"
