"""softnet_stat drops and time_squeeze, and CPU steal, as deltas over a window of recorded samples."""

from __future__ import annotations

from pathlib import Path

from tracer.check import softirq
from tracer.check.model import NodeState

FIXTURES = Path(__file__).parent / "fixtures" / "check"
SOFTNET = Path(__file__).parent / "fixtures" / "softnet"


def _text(name: str) -> str:
    return (FIXTURES / name).read_text()


def _state(before: str, after: str, stat_before: str = "proc-stat-steal-before.txt",
           stat_after: str = "proc-stat-steal-before.txt") -> NodeState:
    return NodeState(softnet_before=_text(before), softnet_after=_text(after), stat_before=_text(stat_before),
                     stat_after=_text(stat_after), window=1.0, sysctls={"net.core.netdev_max_backlog": "1000"})


def test_parse_softnet_uses_the_cpu_column() -> None:
    rows = softirq.parse_softnet(_text("softnet-drops-after.txt"))
    assert sorted(rows) == [0, 1]
    assert rows[0].dropped == 0x78 and rows[0].time_squeeze == 9
    # 9 columns, before 5.10: no CPU id column, so the row index.
    old = "0000abcd 00000001 00000002 0 0 0 0 0 0\n0000abcd 00000000 00000000 0 0 0 0 0 0\n"
    assert sorted(softirq.parse_softnet(old)) == [0, 1]


def test_drops_in_the_window_fail_with_the_cpu_and_figure() -> None:
    findings = softirq.check(_state("softnet-drops-before.txt", "softnet-drops-after.txt"))
    dropped = next(f for f in findings if f.check == "dropped")
    assert dropped.severity == "fail"
    assert dropped.value == "120 in 1.0 s (cpu0 120); 120 since boot"
    assert dropped.fix.startswith("sysctl -w net.core.netdev_max_backlog=2000")
    squeeze = next(f for f in findings if f.check == "time_squeeze")
    assert squeeze.severity == "warn" and squeeze.value.startswith("7 in 1.0 s (cpu0 7)")


def test_quiet_window_is_ok_even_with_old_drops() -> None:
    findings = softirq.check(_state("softnet-drops-after.txt", "softnet-drops-after.txt"))
    dropped = next(f for f in findings if f.check == "dropped")
    assert dropped.severity == "ok" and dropped.value == "0 in 1.0 s on 2 CPUs; 120 since boot"


def test_recorded_flood_samples() -> None:
    """The softirq recording of a 50000-datagram veth flood (fixtures/softnet/README.md): no drops, no squeeze."""
    state = NodeState(softnet_before=(SOFTNET / "host-6.18-before.txt").read_text(),
                      softnet_after=(SOFTNET / "host-6.18-after.txt").read_text(), window=1.0,
                      stat_before=_text("proc-stat-steal-before.txt"), stat_after=_text("proc-stat-steal-before.txt"))
    before = softirq.parse_softnet(state.softnet_before or "")
    after = softirq.parse_softnet(state.softnet_after or "")
    assert sum(r.processed for r in after.values()) > sum(r.processed for r in before.values())
    verdicts = {f.check: (f.severity, f.value) for f in softirq.check(state)}
    assert verdicts["dropped"] == ("ok", "0 in 1.0 s on 2 CPUs; 0 since boot")
    assert verdicts["time_squeeze"] == ("ok", "0 in 1.0 s on 2 CPUs; 1 since boot")


def test_steal() -> None:
    findings = softirq.check(_state("softnet-drops-after.txt", "softnet-drops-after.txt",
                                    "proc-stat-steal-before.txt", "proc-stat-steal-after.txt"))
    steal = next(f for f in findings if f.check == "cpu steal")
    assert steal.severity == "fail" and steal.value == "15.0% over 1.0 s (highest cpu1 25.0%)"
    assert softirq.steal_percent([0] * 8, [80, 0, 20, 60, 0, 0, 10, 30]) == 15.0


def test_unreadable() -> None:
    findings = softirq.check(NodeState())
    assert [(f.check, f.severity) for f in findings] == [("softnet", "warn"), ("cpu steal", "warn"),
                                                         ("receive steering", "ok")]
