"""Turning decoded events and tables into what people and scripts read: table rows, lines, JSON objects.

Formatters take their names (a Resolver) and a writer; no IO of their own.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from tracer.analysis.aggregate import DropTable
from tracer.analysis.attribution import knowledge
from tracer.analysis.causes import Cause
from tracer.analysis.identity import NOT_TRACED, ConnIdentities, Identity
from tracer.analysis.nfverdict import NfAttribution, hook_label
from tracer.analysis.nfverdict import describe as describe_verdict
from tracer.analysis.severity import classify, rank
from tracer.analysis.softirq import format_us
from tracer.events.decode import POINT_NAMES, PacketEvent, Tuple
from tracer.output.layout import cut, fit_columns


@dataclass
class Resolver:
    """Everything that turns kernel numbers into names. Live it reads the node; replayed, a recording."""

    reasons: dict[int, str]
    netns: Callable[[int], str]
    symbol: Callable[[int], str]
    # monotonic ns (bpf_ktime_get_ns) -> wall-clock seconds
    wall_offset_ns: int = field(default_factory=lambda: time.time_ns() - time.monotonic_ns())
    # pod IP -> "namespace/name": live from the node (tracer/node/podnames.py), replayed from the recording's map
    pod: Callable[[str], str | None] = field(default=lambda _ip: None)
    # pod IP -> its owner workload ("Deployment/web"), from the Kubernetes API when it is used
    owner: Callable[[str], str | None] = field(default=lambda _ip: None)

    def reason(self, value: int) -> str:
        return self.reasons.get(value, f"reason {value}")

    def wall(self, ts_ns: int) -> float:
        return (ts_ns + self.wall_offset_ns) / 1e9


def _endpoint(t: Tuple, addr: str, port: int) -> str:
    if t.proto in (6, 17, 132):
        return f"{addr}:{port}" if t.family == 4 else f"[{addr}]:{port}"
    return addr


def drop_rows(table: DropTable, names: Resolver, verdicts: NfAttribution | None = None,
              identities: ConnIdentities | None = None) -> list[dict[str, Any]]:
    """One row per drop group; `verdicts` (kprobe kernels) adds the netfilter table and chain that dropped it,
    `identities` the conntrack entry of the group's latest drop (client, dialled address, backend)."""
    rows = []
    for key, row in table.sorted_groups():
        event = row.last_event
        outer = event.outer
        rows.append({
            "reason": names.reason(key[0]),
            "location": names.symbol(key[1]),
            "count": row.count,
            "bytes": row.bytes,
            "proto": outer.proto_name,
            "src": outer.src,
            "sport": row.last_sport,
            "dst": outer.dst,
            "dport": outer.dport,
            "netns": names.netns(key[2]),
            "netns_inode": key[2],
            "ifname": row.ifname or "-",
            "hook": hook_label(event.nf_point),
            "last_cpu": event.cpu,  # of the group's latest drop: a backlog drop's CPU
            "first_seen": round(names.wall(row.first_ns), 6),
            "last_seen": round(names.wall(row.last_ns), 6),
            "inner": event.inner.describe() if event.inner else None,
            "vni": event.vni if event.inner else None,
            # a VXLAN packet's pods are those of its inner packet
            "src_pod": names.pod((event.inner or outer).src),
            "dst_pod": names.pod((event.inner or outer).dst),
            "src_owner": names.owner((event.inner or outer).src),
            "dst_owner": names.owner((event.inner or outer).dst),
        })
        verdict = verdicts.for_drop(event) if verdicts else None
        if verdict is not None:
            rows[-1].update(describe_verdict(verdict))
        rows[-1]["severity"] = classify(names.reason(key[0]), names.symbol(key[1]))
        rows[-1].update((identities.for_drop(event) if identities else NOT_TRACED).as_json())
        rows[-1].update(knowledge(rows[-1]))
    # Benign rows last, apart (stable: by count otherwise; a policy drop is often the culprit, so it is not
    # ranked under loss here).
    rows.sort(key=lambda item: rank(str(item["severity"])) == rank("benign"))
    return rows


def _flow(row: dict[str, Any]) -> str:
    if row["proto"] in ("tcp", "udp", "sctp"):
        src, dst = (f"[{addr}]" if ":" in addr else addr for addr in (row["src"], row["dst"]))
        return f"{row['proto']} {src}:{row['sport']} > {dst}:{row['dport']}"
    return f"{row['proto']} {row['src']} > {row['dst']}"


def write_drop_table(rows: list[dict[str, Any]], out: TextIO, width: int | None = None) -> None:
    """Count, reason, location, where, flow: each column as wide as its widest value.

    `width` (the terminal's columns, see tracer.output.layout): the widest of reason, location and where gives way
    first, down to a floor, and a shortened value ends in CUT. None (a pipe, a file, --wide): nothing is shortened.
    """
    if not rows:
        out.write("no drops seen\n")
        return
    wheres = [f"{row['netns']}/{row['ifname']}" for row in rows]
    flows = [_flow(row) for row in rows]
    natural = [
        max(len("REASON"), *(len(row["reason"]) for row in rows)),
        max(len("LOCATION"), *(len(row["location"]) for row in rows)),
        max(len("NETNS/IF"), *(len(where) for where in wheres)),
    ]
    # The flow is never cut (it is what the user greps for next): the other columns give way to it.
    rw, lw, ww = fit_columns(natural, [14, 20, 13], 8 + 3 + max(len(flow) for flow in flows), width)
    out.write(f"{'COUNT':>7} {'REASON':<{rw}} {'LOCATION':<{lw}} {'NETNS/IF':<{ww}} FLOW\n")
    benign_shown = False
    for row, where, flow in zip(rows, wheres, flows):
        if row.get("severity") == "benign" and not benign_shown:  # rows come ranked: benign ones last
            out.write("benign (normal kernel frees, not network loss):\n")
            benign_shown = True
        out.write(f"{row['count']:>7} {cut(row['reason'], rw):<{rw}} {cut(row['location'], lw):<{lw}} "
                  f"{cut(where, ww):<{ww}} {flow}\n")
        if row["inner"]:
            out.write(f"{'':>7} {'':<{rw}} inner (VNI {row['vni']}): {row['inner']}\n")
        if row.get("src_pod") or row.get("dst_pod"):
            out.write(f"{'':>7} pods {row.get('src_pod') or '-'} > {row.get('dst_pod') or '-'}\n")
        if row.get("ct_dialled"):
            line = f"dialled {row['ct_dialled']} from {row['ct_client']}"
            if row.get("ct_dnat"):
                line += f", backend {row['ct_backend']}"
            out.write(f"{'':>7} {line} (conntrack, observed)\n")
        elif row.get("ct_identity") == "no-conntrack":
            out.write(f"{'':>7} no conntrack entry ({row['ct_state']}): dialled address not known\n")
        cause = row.get("cause")
        if cause and row.get("severity") != "benign":
            found = Cause(**cause)
            for line in found.lines():
                out.write(textwrap.fill(line, 99, initial_indent=" " * 8, subsequent_indent=" " * 10,
                                        break_on_hyphens=False) + "\n")


def event_json(event: PacketEvent, names: Resolver, identity: Identity | None = None) -> dict[str, Any]:
    outer = event.outer
    data: dict[str, Any] = {
        "time": round(names.wall(event.ts_ns), 6),
        "kind": "drop" if event.is_drop else "path",
        "proto": outer.proto_name,
        "src": outer.src,
        "sport": outer.sport,
        "dst": outer.dst,
        "dport": outer.dport,
        "len": event.len,
        "netns": names.netns(event.netns),
        "ifname": event.ifname or "-",
        "cpu": event.cpu,
        "skb": f"0x{event.skb:x}",
    }
    if event.is_drop:
        data["reason"] = names.reason(event.reason)
        data["location"] = names.symbol(event.location)
        data["severity"] = classify(data["reason"], data["location"])
        data.update((identity or NOT_TRACED).as_json())
    else:
        data["point"] = POINT_NAMES.get(event.reason, str(event.reason))
        if event.is_xmit:
            data["qdisc_ns"], data["xmit"] = event.queued_ns, event.xmit_result
    if event.mark:  # e.g. kube-proxy's masquerade mark 0x4000, or a CNI's policy marks
        data["mark"] = f"0x{event.mark:x}"
    if outer.proto in (1, 58):
        data["icmp_type"], data["icmp_code"] = outer.icmp_type, outer.icmp_code
    if event.inner:
        data["inner"] = event.inner.describe()
        data["vni"] = event.vni
    return data


def xmit_detail(event: PacketEvent) -> str:
    """An xmit event's time in the qdisc and the driver's answer: "qdisc 4.1ms driver ok"."""
    return f"qdisc {format_us(event.queued_ns)} driver {event.xmit_result}"


def describe_point(event: PacketEvent) -> str:
    """A path event's point, with the xmit detail for xmit: "xmit qdisc 4.1ms driver ok"."""
    point = POINT_NAMES.get(event.reason, str(event.reason))
    return f"{point} {xmit_detail(event)}" if event.is_xmit else point


def event_line(event: PacketEvent, names: Resolver, identity: Identity | None = None) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(names.wall(event.ts_ns)))
    micros = int(names.wall(event.ts_ns) * 1e6) % 1_000_000
    where = f"{names.netns(event.netns)}/{event.ifname or '-'}"
    if event.is_drop:
        what = f"DROP {names.reason(event.reason)} at {names.symbol(event.location)}"
    else:
        what = f"{POINT_NAMES.get(event.reason, '?'):>5}"
    line = f"{stamp}.{micros:06d} {what} {where} {event.outer.describe()} len {event.len}"
    if event.is_xmit:
        line += f" {xmit_detail(event)}"
    if event.mark:
        line += f" mark 0x{event.mark:x}"
    if event.inner:
        line += f" [vxlan {event.vni}: {event.inner.describe()}]"
    if event.is_drop and identity is not None:
        line += f" [{identity.describe()}]"
    return line


def summary_json(events: int, counters: dict[str, int], evicted: int = 0) -> dict[str, Any]:
    out = {"summary": True, "events": events, "lost": counters.get("lost", 0),
           "sampled": counters.get("sampled", 0), "filtered": counters.get("filtered", 0), "evicted": evicted}
    if "ct_retired" in counters:  # flows' conntrack mode (tracer/sources/ct_sweep.py)
        out["ct_retired"] = counters["ct_retired"]
        out["ct_table_full"] = counters.get("ct_table_full", 0)
    return out


def summary_line(events: int, counters: dict[str, int], evicted: int = 0) -> str:
    lost = counters.get("lost", 0)
    text = f"{events} events, {lost} lost"
    if lost:
        text += " (ring buffer full: raise --ringbuf-pages or narrow the filter)"
    if counters.get("sampled"):
        text += f", {counters['sampled']} path packets skipped by the rate limit (before the filter)"
    if evicted:
        text += f", {evicted} drop groups evicted (table full)"
    if counters.get("ct_retired"):
        text += f", {counters['ct_retired']} idle connection entries taken out of the kernel's table (counts kept)"
    if counters.get("ct_table_full"):
        text += (f", {counters['ct_table_full']} packets of connections not counted (the per-connection table was "
                 "full: raise --ct-flows-max or lower --ct-idle)")
    return text
