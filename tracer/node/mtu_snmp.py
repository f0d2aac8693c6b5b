"""IPv4 fragmentation counters of /proc/net/snmp, per namespace: read at the start and end of a probe."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping

from tracer.analysis.mtu import LiveCounts

# net/ipv4/proc.c snmp4_ipstats_list: ReasmTimeout counts queues ip_expire gave up on; ReasmFails counts them
# too, plus queues that failed for other reasons (overlaps, too big, out of memory).
SNMP_FIELDS = ("ReasmTimeout", "ReasmReqds", "ReasmOKs", "ReasmFails", "FragOKs", "FragFails", "FragCreates")


def parse_snmp(text: str) -> dict[str, int]:
    """The `Ip:` counters of /proc/net/snmp (a header line of names, then a line of values)."""
    lines = [line.split() for line in text.splitlines() if line.startswith("Ip:")]
    if len(lines) < 2 or len(lines[0]) != len(lines[1]):
        raise ValueError("no `Ip:` header and value lines in /proc/net/snmp")
    names, values = lines[0][1:], lines[1][1:]
    return {name: int(value) for name, value in zip(names, values) if name in SNMP_FIELDS}


def read_snmp(netns: str) -> dict[str, int] | None:
    """The counters inside `netns` ("" or "host": this namespace; a name in /run/netns; a namespace file)."""
    if netns in ("", "host"):
        command = ["cat", "/proc/net/snmp"]
    elif netns.startswith("/"):
        command = ["nsenter", f"--net={netns}", "cat", "/proc/net/snmp"]
    else:
        command = ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        return parse_snmp(result.stdout) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None  # a namespace that vanished meanwhile


class SnmpWatch:
    """Counters in the namespaces a probe crosses, read at start and at the end: deltas and end totals."""

    def __init__(self, namespaces: Iterable[str]) -> None:
        self.namespaces = list(dict.fromkeys(ns for ns in namespaces if ns is not None))
        self.start = {ns: found for ns in self.namespaces if (found := read_snmp(ns)) is not None}

    def finish(self, counts: LiveCounts) -> None:
        for ns, before in self.start.items():
            after = read_snmp(ns)
            if after is None:
                continue
            counts.snmp[ns] = snmp_delta(before, after)
            counts.snmp_total[ns] = after


def snmp_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    return {name: max(0, after.get(name, 0) - before.get(name, 0)) for name in SNMP_FIELDS}
