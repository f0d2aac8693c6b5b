"""Kernel symbols from /proc/kallsyms: presence checks and address -> "function+0xoff" for drop locations."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

CLONES = ("part", "constprop", "isra", "cold")  # GCC's suffixes on a function's clones and split-off parts


class KernelSymbols:
    def __init__(self, entries: Iterable[tuple[int, str, str]]) -> None:
        """entries: (address, type letter, name) as in /proc/kallsyms (module suffix removed)."""
        entries = list(entries)
        text = sorted((addr, name) for addr, kind, name in entries if kind in "tTwW" and addr)
        self._addresses = [addr for addr, _ in text]
        self._names = [name for _, name in text]
        self._all_names = {name for _, _, name in entries}

    @classmethod
    def parse(cls, text: str) -> KernelSymbols:
        entries = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            entries.append((int(fields[0], 16), fields[1], fields[2]))
        return cls(entries)

    @classmethod
    def load(cls, path: str = "/proc/kallsyms") -> KernelSymbols:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return cls.parse(handle.read())

    @property
    def addresses_visible(self) -> bool:
        """False when kptr_restrict hides addresses (all zero): locations cannot be symbolized."""
        return bool(self._addresses)

    def has(self, name: str) -> bool:
        return name in self._all_names

    def symbolize(self, address: int) -> str:
        """ "nf_hook_slow+0x8a", or the hex address when it falls outside kernel text."""
        index = bisect.bisect_right(self._addresses, address) - 1
        if index < 0 or address == 0:
            return f"0x{address:x}"
        offset = address - self._addresses[index]
        if offset > 0x100000:  # beyond any real function: not a kernel text address
            return f"0x{address:x}"
        return f"{self._names[index]}+0x{offset:x}"

    def ranges_of(self, name: str) -> list[tuple[int, int]]:
        """[start, end) of a text function and of its compiler clones (name.part.0, .constprop.0, .isra.0, .cold):
        each to the next symbol's address; [] when absent, hidden or not unique (two static functions of one
        name: which one is meant is unknown)."""
        exact = [i for i, known in enumerate(self._names) if known == name]
        if len(exact) > 1:
            return []
        found = exact + [i for i, known in enumerate(self._names)
                         if known.startswith(name + ".") and known.split(".", 1)[1].split(".")[0] in CLONES]
        ranges = []
        for index in found:
            start = self._addresses[index]
            after = bisect.bisect_right(self._addresses, start)  # past aliases at the same address
            if start and after < len(self._addresses):
                ranges.append((start, self._addresses[after]))
        return ranges

    def function_of(self, address: int) -> str:
        return self.symbolize(address).split("+", 1)[0]
