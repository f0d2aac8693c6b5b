"""The node state behind a recording's drop causes (tracer/analysis/causes.py): what `podtrace record` reads when it
ends, for the drops it recorded, and the NetnsState `podtrace report` explains them from (docs/recording-format.md: the
last trailer's `cause_state`, format minor 6).

The reading is tracer/node/cause_state.py's, the one live `drops` does when it ends: the route for each destination of
a route failure, the rp_filter sysctls, RPS masks and IRQ steering, link MTUs, net.core sysctls, and the ICMP
counters at the start and at the end. kube-proxy's rules (header `services`) and the conntrack tables (header and
trailer `conntrack`) are recorded apart. The (de)serialisation here is pure; only `record_end` reads the node.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from tracer.analysis.causes import RECORDED_END, NetnsState, RouteAnswer

ORIGIN = RECORDED_END  # what a cause from this state says of it
RECORDED = ("routes", "rp_filter", "rps", "icmp")  # the sources only the trailer's cause_state holds
ROUTE_KEYS = ("dst", "type", "table", "dev", "gateway", "prefsrc", "protocol", "scope")
MIN_MINOR = 6  # the format minor that added it


def _route_to_json(answer: RouteAnswer) -> dict[str, Any]:
    route = {k: v for k, v in (answer.route or {}).items() if k in ROUTE_KEYS and isinstance(v, (str, int))}
    return {"dst": answer.dst, "error": answer.error, "dev": answer.dev, "route": route if answer.route else None}


def state_to_json(state: NetnsState, ifnames: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """One namespace's state; of its rp_filter sysctls only "all", "default" and the drops' own `ifnames`."""
    keep = {"all", "default", *ifnames}
    return {
        "netns": state.netns, "cpus": state.cpus,
        "routes": [_route_to_json(answer) for answer in state.routes.values()],
        "rp_filter": {iface: value for iface, value in state.rp_filter.items() if iface in keep},
        "icmp_before": state.icmp_before, "icmp_after": state.icmp_after,
        "rps": state.rps, "irqs": state.irqs, "mtus": state.mtus, "sysctls": state.sysctls,
        "errors": state.errors,
    }


def state_from_json(data: Mapping[str, Any]) -> NetnsState:
    """The NetnsState of one checked `cause_state.nodes` entry (tracer/recording_schema.CAUSE_STATE)."""
    routes = {}
    for item in data.get("routes", []):
        routes[str(item["dst"])] = RouteAnswer(str(item["dst"]), str(item.get("error", "")), str(item.get("dev", "")),
                                               dict(item["route"]) if item.get("route") is not None else None)

    def ints(key: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in (data.get(key) or {}).items()}

    def cpus(key: str) -> dict[str, list[int]]:
        return {str(k): [int(c) for c in v] for k, v in (data.get(key) or {}).items()}

    return NetnsState(
        str(data["netns"]), rp_filter=ints("rp_filter"),
        icmp_before=ints("icmp_before") if data.get("icmp_before") is not None else None,
        icmp_after=ints("icmp_after") if data.get("icmp_after") is not None else None,
        routes=routes, rps=cpus("rps"), irqs=cpus("irqs"), mtus=ints("mtus"), sysctls=ints("sysctls"),
        cpus=int(data.get("cpus", 0)), errors={str(k): str(v) for k, v in (data.get("errors") or {}).items()},
        recorded=True)


def to_json(states: Mapping[str, NetnsState], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The trailer's `cause_state`: each namespace's state, rp_filter kept for the interfaces its drops came in by."""
    ifnames: dict[str, set[str]] = {}
    for row in rows:
        if row.get("reason") == "IP_RPFILTER":
            ifnames.setdefault(str(row.get("netns", "")), set()).add(str(row.get("ifname", "")))
    return {"nodes": [state_to_json(state, ifnames.get(netns, set())) for netns, state in sorted(states.items())],
            "error": ""}


def from_json(data: Mapping[str, Any]) -> dict[str, NetnsState]:
    return {str(node["netns"]): state_from_json(node) for node in data.get("nodes", [])}


def record_end(rows: list[dict[str, Any]], icmp_before: dict[str, dict[str, int]]) -> dict[str, Any]:
    """What the causes of the recorded drops need, read now (the probes are detached: `ip route get` builds a
    packet). Never raises: a recording keeps its trailer whatever this reading meets."""
    from tracer.node import cause_state  # reads the node: only where a recording is made

    try:
        return to_json(cause_state.collect(rows, icmp_before, rules=False), rows)
    except Exception as err:  # the trailer must still be written; the report then says why the state is unknown
        return {"nodes": [], "error": f"node state not read: {err or type(err).__name__}"}


def missing_reason(header: Mapping[str, Any], trailer: Mapping[str, Any] | None, finished: bool,
                   truncated: bool) -> str:
    """Why a recording holds no cause state (when its last trailer has none)."""
    minor = int(header.get("format_minor", 0) or 0)
    if minor < MIN_MINOR:
        return f"not in the recording: format minor {minor}, made before podtrace recorded it"
    if not finished:
        return "recorded at the end of the recording, not read yet"
    if trailer is None or truncated:
        return "not in the recording: it ends before its trailer (cut short), where this is recorded"
    if trailer.get("next") is not None:
        return "not in this part: the recording's last part holds it"
    return "not in the recording"


class RecordedStates(Mapping[str, NetnsState]):
    """A recording's states by netns name. A namespace it holds nothing for still gets a state, one that says why
    each source is unknown, so its causes say "not in the recording" instead of naming a culprit."""

    def __init__(self, states: dict[str, NetnsState], missing: str, rules_missing: str) -> None:
        self.states = states
        self.missing = missing
        self.rules_missing = rules_missing

    def __getitem__(self, netns: str) -> NetnsState:
        return self.states[netns]

    def __iter__(self) -> Iterator[str]:
        return iter(self.states)

    def __len__(self) -> int:
        return len(self.states)

    def get(self, netns: str, default: Any = None) -> NetnsState:  # type: ignore[override]
        found = self.states.get(netns)
        if found is not None:
            return found
        return NetnsState(netns, errors={**dict.fromkeys(RECORDED, self.missing), "rules": self.rules_missing},
                          recorded=True)
