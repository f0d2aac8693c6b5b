"""Names for what the kernel reports as numbers: netns inodes, drop reasons, kernel addresses."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from tracer.kernel.ksyms import KernelSymbols
from tracer.output.errors import UsageError

NETNS_DIR = "/run/netns"


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def named_netns() -> dict[str, int]:
    """`ip netns` names -> inode."""
    names: dict[str, int] = {}
    try:
        entries = sorted(os.listdir(NETNS_DIR))
    except OSError:
        return names
    for name in entries:
        inode = _inode(os.path.join(NETNS_DIR, name))
        if inode is not None:
            names[name] = inode
    return names


def netns_inode(name: str) -> int:
    """The inode of an `ip netns` name (or "host" for podtrace's own); a clear error when unknown."""
    if name == "host":
        inode = _inode("/proc/self/ns/net")
        if inode is not None:
            return inode
    if name.isdigit():
        return int(name)
    known = named_netns()
    if name in known:
        return known[name]
    listing = ", ".join(known) or "none"
    raise UsageError(f"no network namespace named {name!r}", f"known: host, {listing}")


def _process_netns() -> dict[int, str]:
    """inode -> "pid 1234 (comm)" for namespaces that only processes hold (containers)."""
    found: dict[int, str] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        inode = _inode(f"/proc/{pid}/ns/net")
        if inode is None or inode in found:
            continue
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
                comm = handle.read().strip()
        except OSError:
            continue
        found[inode] = f"pid {pid} ({comm})"
    return found


class NetnsNames:
    """inode -> readable name: "host", `ip netns` names (lab pods by their pod name), or a process in it."""

    def __init__(self, extra: Callable[[], dict[int, str]] | None = None, refresh_every: float = 2.0) -> None:
        self._extra = extra
        self._refresh_every = refresh_every
        self._names: dict[int, str] = {}
        self._loaded_at = 0.0
        self.refresh()

    def refresh(self) -> None:
        names = _process_netns()
        names.update({inode: name for name, inode in named_netns().items()})
        own = _inode("/proc/self/ns/net")
        if own is not None:
            names[own] = "host"
        if self._extra:
            names.update(self._extra())
        self._names = names
        self._loaded_at = time.monotonic()

    def name(self, inode: int) -> str:
        if inode == 0:
            return "-"
        found = self._names.get(inode)
        if found is None and time.monotonic() - self._loaded_at > self._refresh_every:
            self.refresh()  # a namespace created after start
            found = self._names.get(inode)
        return found or f"netns:{inode}"


class Symbolizer:
    """Kernel address -> "function+0xoff", loaded once."""

    def __init__(self, symbols: KernelSymbols | None = None) -> None:
        self._symbols = symbols

    def _get(self) -> KernelSymbols:
        if self._symbols is None:
            self._symbols = KernelSymbols.load()
        return self._symbols

    def __call__(self, address: int) -> str:
        if address == 0:
            return "-"
        return self._get().symbolize(address)
