"""Socket limits: listen backlog cap (somaxconn), the ephemeral port range against sockets holding ports, and
TIME_WAIT reuse. Exhausted ports or backlogs show up as drops with socket-level reasons.
"""

from __future__ import annotations

from tracer.check.model import Finding, NodeState

AREA = "sockets"
SOMAXCONN_MIN = 1024  # kernels before 5.4 default to 128
PORTS_WARN = 50.0  # percent of the ephemeral range held by TCP sockets (in use + TIME_WAIT)
PORTS_FAIL = 90.0
NARROW_RANGE = 10000


def parse_sockstat(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/sockstat: `TCP: inuse 3 orphan 0 tw 1 alloc 5 mem 1` -> {"TCP": {"inuse": 3, ...}}."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        words = rest.split()
        if sep:
            out[name.strip()] = {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)
                                 if words[i + 1].isdigit()}
    return out


def _somaxconn(state: NodeState) -> Finding:
    raw = state.sysctls.get("net.core.somaxconn")
    if raw is None:
        return Finding("warn", "somaxconn", "unreadable", area=AREA)
    if int(raw) < SOMAXCONN_MIN:
        return Finding("warn", "somaxconn", raw, area=AREA,
                       why="listen backlogs are capped at this: bursts of connections to busy pods are dropped "
                           "(ListenOverflows)",
                       fix="sysctl -w net.core.somaxconn=4096")
    return Finding("ok", "somaxconn", raw, area=AREA)


def _ports(state: NodeState, stats: dict[str, dict[str, int]]) -> Finding:
    raw = state.sysctls.get("net.ipv4.ip_local_port_range")
    if raw is None:
        return Finding("warn", "ephemeral ports", "unreadable", area=AREA)
    low, high = (int(x) for x in raw.split()[:2])
    width = high - low + 1
    tcp = stats.get("TCP", {})
    held = tcp.get("inuse", 0) + tcp.get("tw", 0)
    percent = 100.0 * held / width if width > 0 else 100.0
    value = f"{low}-{high} ({width} ports), {held} TCP sockets in use or TIME_WAIT ({percent:.0f}%)"
    fix = "sysctl -w net.ipv4.ip_local_port_range='1024 65535'"
    if percent >= PORTS_FAIL:
        return Finding("fail", "ephemeral ports", value, area=AREA, fix=fix,
                       why="outgoing connections (and SNAT to one destination) run out of source ports: "
                           "connect() fails with EADDRNOTAVAIL")
    if percent >= PORTS_WARN or width < NARROW_RANGE:
        return Finding("warn", "ephemeral ports", value, area=AREA, fix=fix,
                       why="a narrow or busy range runs out under connection churn (EADDRNOTAVAIL)")
    return Finding("ok", "ephemeral ports", value, area=AREA)


def _tw_reuse(state: NodeState, stats: dict[str, dict[str, int]]) -> Finding:
    raw = state.sysctls.get("net.ipv4.tcp_tw_reuse")
    if raw is None:
        return Finding("warn", "tcp_tw_reuse", "unreadable", area=AREA)
    meaning = {"0": "off", "1": "on", "2": "loopback only"}.get(raw, raw)
    tw = stats.get("TCP", {}).get("tw", 0)
    value = f"{raw} ({meaning}), {tw} sockets in TIME_WAIT"
    if raw != "1" and tw >= 1000:
        return Finding("warn", "tcp_tw_reuse", value, area=AREA,
                       why="TIME_WAIT sockets hold their ports for 60 s; reuse for outgoing connections frees them",
                       fix="sysctl -w net.ipv4.tcp_tw_reuse=1")
    return Finding("ok", "tcp_tw_reuse", value, area=AREA)


def check(state: NodeState) -> list[Finding]:
    stats = parse_sockstat(state.sockstat) if state.sockstat else {}
    return [_somaxconn(state), _ports(state, stats), _tw_reuse(state, stats)]
