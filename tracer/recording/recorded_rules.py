"""kube-proxy's rules in a recording: what `record` keeps of them and when, and the rule sets `report` reads back.

Rules are kept as the output of the commands tracer.node.kubeproxy.collect runs (iptables-save, nft -j ...), so the
report parses them with the same code and names come out exactly as live `flows` and `drops` give them:
- at the start, in the header's `services`, for the `--node` namespaces (the flow table's names);
- at the end, in the last trailer's `cause_state.rules` (format minor 8), for every namespace with netfilter drops,
  read when `drops` reads them: a plain `record` names a no-endpoints Service or a foreign DROP rule as `drops` does.
With both ends a drop whose matched rule changed in between says so (tracer/analysis/rule_drift.py).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tracer.output.errors import PodtraceError

if TYPE_CHECKING:
    from tracer.node.kubeproxy.model import ServiceMap

MIN_MINOR = 8  # the format minor that added the end's rules


def capture(nodes: Iterable[str | None]) -> dict[str, Any]:
    """Each namespace's rules as {"nodes": [{"netns", "commands", "error"}]} (None: podtrace's own namespace)."""
    from tracer.node.kubeproxy.collect import collect, command_runner  # runs the commands: only where one records

    result = []
    for node in nodes:
        commands: dict[str, str | None] = {}
        run = command_runner(node)

        def remember(argv: Sequence[str], run: Any = run, commands: dict[str, str | None] = commands) -> str | None:
            output = run(argv)
            commands[shlex.join(argv)] = output
            return output

        try:
            collect(node, runner=remember)
            result.append({"netns": node, "commands": commands, "error": ""})
        except PodtraceError as err:
            result.append({"netns": node, "commands": commands, "error": err.one_line()})
    return {"nodes": result}


def capture_end(netns_names: Iterable[str]) -> dict[str, Any]:
    """The end's rules of the namespaces (names as drop rows give them, "host" for our own) with netfilter drops."""
    return capture(None if name == "host" else name for name in sorted(set(netns_names)))


def end_rules(cause_state: Mapping[str, Any] | None) -> dict[str, ServiceMap]:
    """netns -> the rules the last trailer kept (empty for recordings before minor 8 or without netfilter drops)."""
    from tracer.sources.replay import recorded_services  # the header's reader: the same format

    held = (cause_state or {}).get("rules")
    found: dict[str, ServiceMap] = {}
    if held:
        recorded_services({"services": held}, found)
    return found


def both_ends(start: Mapping[str, ServiceMap], end: Mapping[str, ServiceMap]) -> dict[str, tuple[ServiceMap,
                                                                                              ServiceMap]]:
    """netns -> (start, end) for the namespaces whose rules were read at both ends (FlowTable.drift_rules)."""
    return {netns: (start[netns], rules) for netns, rules in end.items() if netns in start}
