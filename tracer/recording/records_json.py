"""The JSON forms of what a recording's NAT_FLOWS and SOFTIRQ records list: tuples, NAT translation records and
softirq snapshots, written by the recorder and read back by replay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracer.events.decode import Tuple
from tracer.output.errors import RecordingError

if TYPE_CHECKING:
    from tracer.analysis.flows import NatRecord
    from tracer.analysis.softirq import SoftirqSnapshot


_TUPLE_FIELDS = ("sport", "dport", "family", "proto", "icmp_type", "icmp_code", "frag", "ip_len")
_NAT_FIELDS = ("point", "netns", "packets", "bytes", "first_ns", "last_ns", "hook_ns_sum", "hook_ns_max")


def tuple_to_json(t: Tuple) -> dict[str, Any]:
    return {"saddr": t.saddr.hex(), "daddr": t.daddr.hex(), **{name: getattr(t, name) for name in _TUPLE_FIELDS}}


def tuple_from_json(data: dict[str, Any]) -> Tuple:
    return Tuple(bytes.fromhex(data["saddr"]), bytes.fromhex(data["daddr"]),
                 *(int(data[name]) for name in _TUPLE_FIELDS))


def nat_to_json(record: NatRecord) -> dict[str, Any]:
    """A tracer.analysis.flows.NatRecord as the JSON object a NAT_FLOWS record lists."""
    return {"before": tuple_to_json(record.before), "after": tuple_to_json(record.after),
            **{name: getattr(record, name) for name in _NAT_FIELDS}}


def nat_from_json(data: dict[str, Any]) -> NatRecord:
    """The NatRecord of a NAT_FLOWS list entry (RecordingError when it is not one)."""
    from tracer.analysis import flows  # keeps this module free of the flow/kube-proxy code

    try:
        return flows.NatRecord(before=tuple_from_json(data["before"]), after=tuple_from_json(data["after"]),
                         **{name: int(data[name]) for name in _NAT_FIELDS})
    except (KeyError, TypeError, ValueError) as err:
        raise RecordingError(f"a nat_flows entry is malformed: {err!r}") from err


def softirq_to_json(snapshot: SoftirqSnapshot) -> dict[str, Any]:
    """A tracer.analysis.softirq.SoftirqSnapshot as a SOFTIRQ record's JSON (histogram slots sparse: [[slot, n],
    ...])."""
    return {
        "ts": snapshot.ts,
        "hists": {str(cpu): {f"{softirq}/{phase}": {"slots": [[i, n] for i, n in enumerate(hist.slots) if n],
                                                    "count": hist.count, "sum_ns": hist.sum_ns,
                                                    "max_ns": hist.max_ns}
                             for (softirq, phase), hist in hists.items()}
                  for cpu, hists in snapshot.hists.items()},
        "napi": {str(cpu): dict(counts) for cpu, counts in snapshot.napi.items()},
        "softnet": {str(cpu): [row.processed, row.dropped, row.time_squeeze, row.received_rps, row.flow_limit]
                    for cpu, row in snapshot.softnet.items()},
    }


def softirq_from_json(data: dict[str, Any]) -> SoftirqSnapshot:
    from tracer.analysis import softirq  # only for recordings that hold softirq snapshots

    def hist(item: dict[str, Any]) -> softirq.Log2Hist:
        slots = [0] * softirq.SLOTS
        for index, count in item.get("slots", []):
            slots[int(index)] = int(count)
        return softirq.Log2Hist(tuple(slots), int(item["count"]), int(item["sum_ns"]), int(item["max_ns"]))

    try:
        hists = {int(cpu): {tuple(key.split("/", 1)): hist(item) for key, item in per_cpu.items()}
                 for cpu, per_cpu in data.get("hists", {}).items()}
        napi = {int(cpu): {name: int(n) for name, n in counts.items()} for cpu, counts in data.get("napi", {}).items()}
        softnet = {int(cpu): softirq.SoftnetRow(int(cpu), *(int(v) for v in row))
                   for cpu, row in data.get("softnet", {}).items()}
        return softirq.SoftirqSnapshot(float(data["ts"]), hists, napi, softnet)  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise RecordingError(f"a softirq record is malformed: {err!r}") from err
