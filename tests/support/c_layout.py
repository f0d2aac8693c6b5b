"""Member offsets of a struct in bpf/podtrace.h by the C layout rules (natural alignment, padded to the widest
member), computed from the header's text: an account of the layout that does not go through tracer/events/decode.py."""

from __future__ import annotations

import re
from pathlib import Path

HEADER = (Path(__file__).resolve().parents[2] / "bpf" / "podtrace.h").read_text()
_SIZES = {"__u8": 1, "char": 1, "__u16": 2, "__u32": 4, "__u64": 8}
_MEMBER = re.compile(r"^\s*(__u8|__u16|__u32|__u64|char|struct pt_tuple)\s+(\w+)(?:\[(\w+)\])?;", re.M)


def define(name: str) -> int:
    found = re.search(rf"#define {name} (0x[0-9a-fA-F]+|\d+)", HEADER)
    assert found, name
    return int(found.group(1), 0)


def c_struct(name: str) -> tuple[dict[str, int], int]:
    """(member -> offset, sizeof) of `struct name`."""
    body = re.search(rf"struct {name} \{{(.*?)\n\}};", HEADER, re.S)
    assert body, name
    position, offsets, widest = 0, {}, 1
    for kind, member, count in _MEMBER.findall(body.group(1)):
        align = 2 if kind == "struct pt_tuple" else _SIZES[kind]  # pt_tuple's widest member is a __u16
        widest = max(widest, align)
        position = (position + align - 1) // align * align
        offsets[member] = position
        if kind == "struct pt_tuple":
            position += c_struct("pt_tuple")[1]
        else:
            position += align * (int(count) if count.isdigit() else define(count) if count else 1)
    return offsets, (position + widest - 1) // widest * widest
