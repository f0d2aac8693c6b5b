"""`podtrace check`: audit a worker node's networking set-up against the known failure modes, no BPF needed.

`run_checks(netns)` reads the node and returns Findings; `evaluate(state)` is the pure part, for recorded inputs.
"""

from __future__ import annotations

from tracer.check import bridging, conntrack, kubeproxy, mtu, routes, rules, sockets, softirq
from tracer.check.model import AREAS, Finding, NodeState, summary

__all__ = ["AREAS", "Finding", "NodeState", "evaluate", "run_checks", "summary"]

FAMILIES = (kubeproxy, rules, routes, conntrack, mtu, bridging, softirq, sockets)


def evaluate(state: NodeState) -> list[Finding]:
    """Every check family on collected inputs, in AREAS order."""
    return [finding for family in FAMILIES for finding in family.check(state)]


def run_checks(netns: str | None = None, window: float = 1.0) -> list[Finding]:
    """Read the node (inside `netns` when given) and judge it. Raises PodtraceError for an unknown netns."""
    from tracer.check.collect import collect

    return evaluate(collect(netns, window))
