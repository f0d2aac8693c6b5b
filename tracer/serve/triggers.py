"""What opens a flight-recorder incident: a drop matching reason, severity, Service or a pcap filter; a rate of
such drops; a conntrack table filling up. Parsed from one line each (flags and the config file alike):

    drop [reason=NAME] [severity=loss|policy|benign] [service=NS/NAME[:PORT]] [filter='PCAP EXPRESSION']
    drop-rate per_second=N [the drop keys]      N or more matching drops per second over one refresh
    conntrack-fill ratio=R                      a node's table at least R full (0 < R <= 1)

Pure apart from libpcap for filters, which run in user space on the drop's packet snapshot (it starts at the IP
header, as the kernel-side filters see it).
"""

from __future__ import annotations

import ctypes
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field

from tracer.analysis.severity import SEVERITIES
from tracer.events.decode import EVENT_SNAP
from tracer.output.errors import UsageError
from tracer.serve.attribution import Charge

KINDS = ("drop", "drop-rate", "conntrack-fill")
DROP_KEYS = ("reason", "severity", "service", "filter")
HINT = "see `podtrace serve --help` for the trigger syntax"


class PacketMatcher:
    """A compiled pcap filter run on packet bytes with libpcap's bpf_filter()."""

    def __init__(self, expression: str) -> None:
        from tracer.probes.pcapfilter import BpfInsn, compile_filter, libpcap  # only with filter=

        compiled = compile_filter(expression)
        self.expression = expression
        self._program = (BpfInsn * len(compiled.instructions))(
            *(BpfInsn(code, jt, jf, k) for code, jt, jf, k in compiled.instructions))
        lib = libpcap()
        lib.bpf_filter.restype = ctypes.c_uint
        lib.bpf_filter.argtypes = [ctypes.POINTER(BpfInsn), ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint]
        self._filter = lib.bpf_filter

    def __call__(self, packet: bytes, wire_len: int) -> bool:
        if not packet:
            return False
        return bool(self._filter(self._program, packet, max(wire_len, len(packet)), len(packet)))


@dataclass
class Trigger:
    kind: str
    text: str  # as written: the label of its metrics and the incident's name
    reason: str = ""
    severity: str = ""
    service: str = ""
    filter: str = ""
    per_second: float = 0.0
    ratio: float = 0.0
    matcher: PacketMatcher | None = field(default=None, repr=False)

    def matches(self, charge: Charge) -> bool:
        """reason, severity and Service conditions (a filter is applied to the events before attribution)."""
        if self.reason and charge.reason != self.reason:
            return False
        if self.severity and charge.severity != self.severity:
            return False
        return not self.service or _service_matches(self.service, charge.service)

    def fired(self, charges: Iterable[Charge], seconds: float, fills: dict[str, float]) -> str | None:
        """What fired, in words, or None. `charges` are this refresh's (for filter triggers: of the drops that
        passed the filter), `fills` each node's conntrack fill ratio."""
        if self.kind == "conntrack-fill":
            full = sorted(node for node, fill in fills.items() if fill >= self.ratio)
            return f"conntrack {', '.join(full)} at {max(fills[n] for n in full):.0%} full" if full else None
        matched = [charge for charge in charges if self.matches(charge)]
        count = sum(charge.count for charge in matched)
        if self.kind == "drop":
            if not matched:
                return None
            first = matched[0]
            service = f" {first.service}" if first.service else ""
            return f"{count} drops {first.reason}{service}"
        rate = count / seconds if seconds > 0 else 0.0
        return f"{rate:.1f} drops/s >= {self.per_second:g}/s" if count and rate >= self.per_second else None


def _service_matches(wanted: str, service: str) -> bool:
    """`default/web` matches every port of it (`default/web:http`); with a port, only that one."""
    return service == wanted or (":" not in wanted and service.startswith(wanted + ":"))


def _number(kind: str, key: str, value: str, low: float, high: float | None) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not (number >= low and (high is None or number <= high)):
        span = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise UsageError(f"trigger {kind}: {key}={value!r} must be a number {span}", HINT)
    return number


def parse_trigger(text: str) -> Trigger:
    """One trigger line (see the module docstring); UsageError with one line saying what is wrong."""
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise UsageError(f"trigger {text!r}: {err}", HINT) from None
    if not words:
        raise UsageError("an empty trigger", HINT)
    kind, *pairs = words
    if kind not in KINDS:
        raise UsageError(f"trigger {text!r}: unknown kind {kind!r} (one of {', '.join(KINDS)})", HINT)
    allowed = {"drop": DROP_KEYS, "drop-rate": (*DROP_KEYS, "per_second"), "conntrack-fill": ("ratio",)}[kind]
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not value:
            raise UsageError(f"trigger {text!r}: {pair!r} is not KEY=VALUE", HINT)
        if key not in allowed:
            raise UsageError(f"trigger {text!r}: {kind} takes {', '.join(allowed)}, not {key!r}", HINT)
        values[key] = value
    trigger = Trigger(kind, text.strip(), reason=values.get("reason", "").removeprefix("SKB_DROP_REASON_"),
                      severity=values.get("severity", ""), service=values.get("service", ""),
                      filter=values.get("filter", ""))
    if trigger.severity and trigger.severity not in SEVERITIES:
        raise UsageError(f"trigger {text!r}: severity must be one of {', '.join(SEVERITIES)}", HINT)
    if kind == "drop-rate":
        if "per_second" not in values:
            raise UsageError(f"trigger {text!r}: drop-rate needs per_second=N", HINT)
        trigger.per_second = _number(kind, "per_second", values["per_second"], 0.001, None)
    if kind == "conntrack-fill":
        if "ratio" not in values:
            raise UsageError(f"trigger {text!r}: conntrack-fill needs ratio=R (e.g. 0.9)", HINT)
        trigger.ratio = _number(kind, "ratio", values["ratio"], 0.000001, 1.0)
    if trigger.filter:
        trigger.matcher = PacketMatcher(trigger.filter)  # a bad expression is a UsageError naming it
    return trigger


def snapshot_of(raw: bytes) -> tuple[bytes, int]:
    """A raw packet event's snapshot bytes (from the IP header) and the packet's length (tracer/events/decode.py)."""
    from tracer.events.decode import decode

    event = decode(raw)
    return event.snap[:EVENT_SNAP], event.len
