"""An oracle for tracer/kernel/btf.py: BTF types as bpftool reads them, parsed from its raw dump (independent code)."""

from __future__ import annotations

import re
from typing import Any


def parse_bpftool_raw(text: str) -> dict[int, dict[str, Any]]:
    """`bpftool btf dump ... format raw` as {id: {kind, name, attrs, members: [(name, attrs)]}}."""
    types: dict[int, dict[str, Any]] = {}
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        m = re.match(r"\[(\d+)\] (\w+) '([^']*)'(.*)", line)
        if m:
            cur = {"kind": m[2], "name": m[3], "attrs": dict(re.findall(r"(\w+)=(\S+)", m[4])), "members": []}
            types[int(m[1])] = cur
        elif line.startswith("\t'") and cur is not None:
            mm = re.match(r"\t'([^']*)' (.*)", line)
            assert mm, line
            cur["members"].append((mm[1], dict(re.findall(r"(\w+)=(-?\d+)", mm[2]))))
    return types
