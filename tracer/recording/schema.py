"""What a recording's JSON records may hold: types, sizes, depth and ranges, checked before anything uses them.

A recording is a file from someone else's machine. Each JSON record is parsed with bounded depth and integer size
(`load`) and checked against the schema of its kind (`check`): a wrong type, an out-of-range number or an oversized
list is one RecordingError naming the record's byte offset and the field, never a TypeError three modules later.
Keys a schema does not name are allowed (a later format minor may add them) but still bounded in depth.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tracer.output.errors import RecordingError

MAX_DEPTH = 32  # the deepest the writer nests is 7 (links.nodes[].links[].peer.addresses[])
MAX_INT_DIGITS = 20  # u64 has 20 digits: a longer integer is not a counter, an inode or a timestamp
MAX_LIST = 1 << 20  # entries of one list (nat_flows snapshots are the longest: one per NATed flow)
MAX_STR = 64 << 20  # bytes of one string (iptables-save of a large cluster is a few MiB)
U64 = (0, (1 << 64) - 1)
S64 = (-(1 << 63), (1 << 63) - 1)


class SchemaError(Exception):
    def __init__(self, where: str, expected: str, value: object) -> None:
        super().__init__(f"{where or 'the record'} should be {expected}, not {_describe(value)}")


class Missing(SchemaError):
    def __init__(self, where: str) -> None:
        Exception.__init__(self, f"{where} is missing")


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        text = repr(value)
        return f"{text[:24]}..." if len(text) > 24 else text
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


class Schema:
    expected = "anything"

    def check(self, value: object, where: str) -> None:
        return None


ANY = Schema()


@dataclass(frozen=True)
class Int(Schema):
    low: int = S64[0]
    high: int = S64[1]

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"an integer in [{self.low}, {self.high}]"

    def check(self, value: object, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise SchemaError(where, self.expected, value)


@dataclass(frozen=True)
class Num(Schema):
    expected = "a finite number"

    def check(self, value: object, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(where, self.expected, value)


@dataclass(frozen=True)
class Str(Schema):
    max_len: int = MAX_STR

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"a string of at most {self.max_len} characters"

    def check(self, value: object, where: str) -> None:
        if not isinstance(value, str) or len(value) > self.max_len:
            raise SchemaError(where, self.expected, value)


@dataclass(frozen=True)
class Bool(Schema):
    expected = "a boolean"

    def check(self, value: object, where: str) -> None:
        if not isinstance(value, bool):
            raise SchemaError(where, self.expected, value)


@dataclass(frozen=True)
class Opt(Schema):
    inner: Schema

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"null or {self.inner.expected}"

    def check(self, value: object, where: str) -> None:
        if value is not None:
            self.inner.check(value, where)


@dataclass(frozen=True)
class OneOf(Schema):
    choices: tuple[Schema, ...]

    @property
    def expected(self) -> str:  # type: ignore[override]
        return " or ".join(choice.expected for choice in self.choices)

    def check(self, value: object, where: str) -> None:
        for choice in self.choices:
            try:
                choice.check(value, where)
                return
            except SchemaError:
                continue
        raise SchemaError(where, self.expected, value)


@dataclass(frozen=True)
class List(Schema):
    item: Schema
    max_len: int = MAX_LIST
    length: int | None = None  # exactly this many
    min_len: int = 0

    @property
    def expected(self) -> str:  # type: ignore[override]
        if self.length is not None:
            return f"a list of {self.length}"
        return f"a list of {self.min_len} to {self.max_len}" if self.min_len else f"a list of at most {self.max_len}"

    def check(self, value: object, where: str) -> None:
        if not isinstance(value, list) or not self.min_len <= len(value) <= self.max_len or (
                self.length is not None and len(value) != self.length):
            raise SchemaError(where, self.expected, value)
        for index, item in enumerate(value):
            self.item.check(item, f"{where}[{index}]")


@dataclass(frozen=True)
class Map(Schema):
    """An object used as a dictionary; `int_keys`: keys are decimal integers in the u64 range (inodes, addresses)."""

    value: Schema
    int_keys: bool = False
    max_len: int = MAX_LIST

    @property
    def expected(self) -> str:  # type: ignore[override]
        return "an object keyed by integers" if self.int_keys else "an object"

    def check(self, value: object, where: str) -> None:
        if not isinstance(value, dict) or len(value) > self.max_len:
            raise SchemaError(where, self.expected, value)
        for key, item in value.items():
            if self.int_keys and not (key.isdigit() and len(key) <= MAX_INT_DIGITS and int(key) <= U64[1]):
                raise SchemaError(f"{where} key {key[:24]!r}", "a decimal integer", key)
            self.value.check(item, f"{where}.{key[:40]}")


@dataclass(frozen=True)
class Obj(Schema):
    fields: Mapping[str, Schema]
    required: tuple[str, ...] = ()
    expected = "an object"

    def check(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise SchemaError(where, self.expected, value)
        for name in self.required:
            if name not in value:
                raise Missing(f"{where}.{name}" if where else name)
        for name, schema in self.fields.items():
            if name in value:
                schema.check(value[name], f"{where}.{name}" if where else name)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _parse_constant(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def _depth(value: object) -> int:
    """Nesting depth, without recursion (a hostile file must not decide how deep Python's stack goes)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return depth
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack += [(child, depth + 1) for child in item.values()]
        elif isinstance(item, list):
            stack += [(child, depth + 1) for child in item]
    return deepest


def load(payload: bytes, what: str) -> dict[str, Any]:
    """A JSON object parsed with integers of at most MAX_INT_DIGITS digits, no NaN, and depth at most MAX_DEPTH.

    json's C scanner guards its own recursion (RecursionError, caught here), so a 100,000-deep file fails in
    bounded stack; the depth walk then refuses anything deeper than a recording ever nests.
    """
    try:
        data = json.loads(payload, parse_int=_parse_int, parse_constant=_parse_constant)
    except RecursionError as err:
        raise RecordingError(f"{what} nests deeper than {MAX_DEPTH} levels") from err
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise RecordingError(f"{what} holds invalid JSON: {err}") from err
    if not isinstance(data, dict):
        raise RecordingError(f"{what} is not a JSON object")
    if _depth(data) > MAX_DEPTH:
        raise RecordingError(f"{what} nests deeper than {MAX_DEPTH} levels")
    return data


def check(data: dict[str, Any], schema: Schema, what: str) -> None:
    try:
        schema.check(data, "")
    except SchemaError as err:
        raise RecordingError(f"{what}: {err}") from err


# --- the schemas of each record kind (docs/recording-format.md) ----------------------------------------------

INT = Int()
UINT = Int(*U64)
COUNTERS = Map(Int(*S64), max_len=256)  # counter name -> value (deltas may be negative only in corrupt files)
PROBE_COUNTERS = Map(COUNTERS, max_len=256)
NAME_MAP = Map(Str(4096), int_keys=True)  # inode or address -> name

TUPLE = Obj({"saddr": Str(32), "daddr": Str(32), "sport": Int(0, 65535), "dport": Int(0, 65535),
             "family": Int(0, 255), "proto": Int(0, 255), "icmp_type": Int(0, 255), "icmp_code": Int(0, 255),
             "frag": Int(0, 65535), "ip_len": Int(0, 65535)},
            required=("saddr", "daddr", "sport", "dport", "family", "proto", "icmp_type", "icmp_code", "frag",
                      "ip_len"))
NAT_FLOW = Obj({"before": TUPLE, "after": TUPLE, **{name: UINT for name in (
    "point", "netns", "packets", "bytes", "first_ns", "last_ns", "hook_ns_sum", "hook_ns_max")}},
    required=("before", "after", "point", "netns", "packets", "bytes", "first_ns", "last_ns", "hook_ns_sum",
              "hook_ns_max"))

CPU_STATS = Map(UINT, max_len=64)
HEALTH = Obj({"count": UINT, "max": UINT, "cpus": List(CPU_STATS, 65536)}, required=("count", "max"))
CONNTRACK = Obj({"nodes": List(Obj({"netns": Opt(Str(4096)), "error": Str(4096), "health": Opt(HEALTH)}), 4096)})

PEER = Obj({"netns": Opt(Str(4096)), "inode": UINT, "name": Str(64), "ifindex": UINT, "mtu": UINT,
            "addresses": List(Str(64), 4096)}, required=("name", "mtu"))
LINK = Obj({"name": Str(64), "ifindex": UINT, "mtu": UINT, "kind": Str(64), "master": Str(64), "lower": Str(64),
            "family": Int(0, 255), "peer": Opt(PEER)}, required=("name", "mtu"))
LINKS = Obj({"flannel_env": Opt(Str(1 << 20)),
             "nodes": List(Obj({"netns": Opt(Str(4096)), "inode": UINT, "default_dev": Str(64), "error": Str(4096),
                                "links": List(LINK, 65536)}), 4096)})

POD = Obj({"ip": Opt(Str(64)), "namespace": Str(4096)})
LAB_SERVICE = Obj({"vip": Opt(Str(64)), "port": Opt(Int(0, 65535)), "node_port": Opt(Int(0, 65535))})
LAB = Obj({"pods": Map(POD), "services": Map(LAB_SERVICE), "node_ips": Map(Str(64))})

HOOK_PLAN = Obj({"name": Str(256), "concern": Str(4096), "core": Bool(), "chosen": Opt(Str(256)),
                 "targets": List(Str(4096), 4096), "gives": Str(4096), "unseen": Str(4096),
                 "rejected": List(Map(Str(4096)), 4096), "fallback": Bool()},
                required=("name", "concern", "core", "chosen", "targets", "gives", "unseen"))
ATTACH_PLAN = Obj({"kernel": Str(4096), "hooks": List(HOOK_PLAN, 4096)}, required=("kernel", "hooks"))

FINDING = Obj({name: Str(1 << 16) for name in ("area", "check", "severity", "value", "why", "fix")})
NODE_CHECKS = OneOf((List(FINDING, 4096), Obj({"error": Str(4096)})))

SERVICES = Obj({"nodes": List(Obj({"netns": Opt(Str(4096)), "error": Str(4096),
                                   "commands": Map(Opt(Str()), max_len=64)}), 4096)})

# `podtrace merge -o` (format minor 5): the nodes merged, how their clocks were aligned, the journeys found
HOP = Obj({"node": Str(4096), "at": Str(4096), "t_us": Num()}, required=("node", "at", "t_us"))
SEGMENT = Obj({"from": Str(4096), "to": Str(4096), "packets": UINT, "one_way_us": Num(), "one_way": Str(64)},
              required=("from", "to", "one_way_us", "one_way"))
MERGED_MAX_NODES = 256
JOURNEY = Obj({"journey": Bool(), "flow": Str(4096), "src": Str(64), "dst": Str(64), "packets": UINT,
               "path": List(HOP, 4096), "segments": List(SEGMENT, MERGED_MAX_NODES * MERGED_MAX_NODES),
               "one_way_us": Opt(Num()), "one_way": Str(64),
               "died": Opt(Obj({"node": Str(4096), "reason": Str(256), "netns": Str(4096), "packets": UINT},
                               required=("node", "reason", "netns", "packets"))),
               # minor 7: the DNAT the journey was joined through, or why a flow stayed apart
               "dnat": Opt(Obj({"node": Str(4096), "dialled": Str(64), "backend": Str(64), "how": Str(64),
                                "observed": Bool(), "text": Str(4096)},
                               required=("node", "dialled", "backend", "how", "observed"))),
               "unjoined": Opt(Str(1 << 16))},
              required=("flow", "packets", "path", "one_way_us", "one_way", "died"))
MERGED_NODE = Obj({"name": Str(4096), "file": Str(4096), "hostname": Str(256), "kernel_release": Str(256),
                   "run_id": Str(256), "events": UINT, "truncated": Bool(), "netns": List(UINT, 1 << 16),
                   "renamed": Map(Str(4096), max_len=1 << 16), "offset_ns": INT, "aligned": Bool()},
                  required=("name", "netns"))
CLOCK_LINK = Obj({"from": Str(4096), "to": Str(4096), "offset_ns": INT, "pairs": UINT, "both_ways": Bool(),
                  "same_clock": Bool()},
                 required=("from", "to", "offset_ns", "pairs", "both_ways"))
MERGED = Obj({"nodes": List(MERGED_NODE, MERGED_MAX_NODES, min_len=2),
              "clock": Obj({"offset_ns": INT, "pairs": UINT, "both_ways": Bool(), "aligned": Bool(),
                            "same_clock": Bool(), "text": Str(4096), "links": List(CLOCK_LINK, MERGED_MAX_NODES)},
                           required=("offset_ns", "pairs", "both_ways", "aligned", "text")),
              "matched_packets": UINT, "journeys": List(JOURNEY)},
             required=("nodes", "clock", "matched_packets", "journeys"))

HEADER = Obj({
    "format_version": UINT, "format_minor": UINT, "podtrace_version": Str(256), "kernel_release": Str(256),
    "machine": Str(256), "hostname": Str(256), "boot_id": Opt(Str(64)),
    "clock": Obj({"wall_ns": INT, "monotonic_ns": INT, "wall_offset_ns": INT}),
    "attach_plan": Opt(ATTACH_PLAN), "attach_plan_error": Str(1 << 16),
    "attached": List(Str(4096), 4096), "programs": List(Str(256), 256),
    "drop_reasons": Map(Str(256), int_keys=True, max_len=65536),
    "filter": Obj({"expression": Str(1 << 20), "netns": Opt(Str(4096)), "netns_inode": Opt(UINT),
                   "ifname": Opt(Str(64))}),
    "event_size": Int(4, 65535),
    "names": Obj({"netns": NAME_MAP, "symbols": NAME_MAP, "lab": Opt(LAB), "pods": Opt(Map(Str(4096)))}),
    "node_checks": NODE_CHECKS,
    "services": Opt(SERVICES),
    "part": Obj({"index": Int(0, 1 << 20), "first": Str(4096), "run_id": Str(64)}, required=("index",)),
    "counters_at_start": COUNTERS, "probe_counters_at_start": Opt(PROBE_COUNTERS),
    "links": Opt(LINKS), "conntrack": Opt(CONNTRACK),
    "merged": Opt(MERGED),
})
# the node state behind the drops' causes, read at the end (format minor 6, tracer/recording/recorded_causes.py)
COUNTS = Map(INT, max_len=4096)  # sysctl, counter or device -> value
CPU_LISTS = Map(List(Int(0, 1 << 20), 1 << 16), max_len=65536)  # device -> CPUs
ROUTE = Obj({"dst": Str(64), "error": Str(4096), "dev": Str(64),
             "route": Opt(Map(OneOf((Str(4096), INT)), max_len=16))}, required=("dst",))
CAUSE_NODE = Obj({"netns": Str(4096), "cpus": Int(0, 1 << 20), "routes": List(ROUTE, 4096), "rp_filter": COUNTS,
                  "icmp_before": Opt(COUNTS), "icmp_after": Opt(COUNTS), "rps": CPU_LISTS, "irqs": CPU_LISTS,
                  "mtus": Map(INT, max_len=65536), "sysctls": COUNTS, "errors": Map(Str(4096), max_len=64)},
                 required=("netns",))
CAUSE_STATE = Obj({"nodes": List(CAUSE_NODE, 1 << 16), "error": Str(4096)})
TRAILER = Obj({"counters": COUNTERS, "probe_counters": Opt(PROBE_COUNTERS), "events": UINT, "total_events": UINT,
               "next": Opt(Str(4096)), "end_wall_ns": Opt(INT), "conntrack": Opt(CONNTRACK),
               "cause_state": Opt(CAUSE_STATE)})
NAMES = Obj({"netns": NAME_MAP, "symbols": NAME_MAP})
COUNTERS_RECORD = Obj({"counters": COUNTERS, "monotonic_ns": INT, "probe_counters": Opt(PROBE_COUNTERS)})
NAT_FLOWS = Obj({"nat_flows": List(NAT_FLOW), "monotonic_ns": INT}, required=("nat_flows",))
HIST = Obj({"slots": List(List(UINT, length=2), 48), "count": UINT, "sum_ns": UINT, "max_ns": UINT},
           required=("count", "sum_ns", "max_ns"))
SOFTIRQ = Obj({"ts": Num(), "hists": Map(Map(HIST, max_len=16), int_keys=True, max_len=4096),
               "napi": Map(Map(UINT, max_len=16), int_keys=True, max_len=4096),
               "softnet": Map(List(UINT, length=5), int_keys=True, max_len=4096)}, required=("ts",))


def schema_of(kind: int) -> Schema:
    """The schema of a JSON record kind (tracer.recording.fileformat.KIND_*); ANY for kinds this reader does not
    know."""
    from tracer.recording import fileformat as recording  # the kind numbers live with the format

    return {recording.KIND_HEADER: HEADER, recording.KIND_TRAILER: TRAILER, recording.KIND_NAMES: NAMES,
            recording.KIND_COUNTERS: COUNTERS_RECORD, recording.KIND_NAT_FLOWS: NAT_FLOWS,
            recording.KIND_SOFTIRQ: SOFTIRQ}.get(kind, ANY)
