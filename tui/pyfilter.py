"""The view filter: the same tcpdump syntax as the kernel filter, run on events already decoded.

Changing it re-filters what the TUI shows without reattaching probes. libpcap compiles the expression (for
DLT_RAW, as the probes' snapshot starts at the network header) and `pcap_offline_filter` runs it on `event.snap`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from tracer.events.decode import PacketEvent
from tracer.probes.pcapfilter import BpfInsn, BpfProgram, compile_filter, libpcap


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _PktHdr(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


Predicate = Callable[[PacketEvent], bool]


class ViewFilter:
    """`ViewFilter("udp port 53")(event) -> bool`; raises UsageError (with libpcap's message) on a bad expression."""

    def __init__(self, expression: str) -> None:
        self.expression = expression.strip()
        compiled = compile_filter(self.expression)
        self._match_all = not self.expression
        self._insns = (BpfInsn * len(compiled.instructions))(*(BpfInsn(*insn) for insn in compiled.instructions))
        self._program = BpfProgram(len(compiled.instructions), ctypes.cast(self._insns, ctypes.POINTER(BpfInsn)))
        self._run: Callable[..., int] | None = None
        if not self._match_all:
            lib = libpcap()
            run = lib.pcap_offline_filter
            run.restype = ctypes.c_int
            run.argtypes = [ctypes.POINTER(BpfProgram), ctypes.POINTER(_PktHdr), ctypes.c_char_p]
            self._run = run

    def __call__(self, event: PacketEvent) -> bool:
        if self._run is None:
            return True
        snap = event.snap
        wirelen = event.outer.ip_len or event.len or len(snap)
        header = _PktHdr(_Timeval(0, 0), len(snap), max(wirelen, len(snap)))
        return self._run(ctypes.byref(self._program), ctypes.byref(header), snap) != 0
