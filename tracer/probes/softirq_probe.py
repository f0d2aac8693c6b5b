"""bpf/softirq.c loaded with BCC (its own module, independent of the drops pipeline): `SoftirqProbe` reads its
per-CPU histograms and NAPI counters with /proc/net/softnet_stat into a `SoftirqSnapshot`."""

from __future__ import annotations

import time
from typing import Any

from bpf import BPF_DIR
from tracer.analysis.softirq import (
    HISTS,
    NAPI_FIELDS,
    SLOTS,
    SOFTNET_STAT,
    HistKey,
    Log2Hist,
    SoftirqSnapshot,
    read_softnet_stat,
)
from tracer.kernel import bccenv
from tracer.output.errors import KernelError
from tracer.output.progress import Progress

TRACEPOINTS = ("irq:softirq_raise", "irq:softirq_entry", "irq:softirq_exit", "napi:napi_poll")


def _hist_from_c(value: Any) -> Log2Hist:
    return Log2Hist(tuple(int(value.slots[i]) for i in range(SLOTS)), int(value.count), int(value.sum_ns),
                    int(value.max_ns))


class SoftirqProbe:
    """bpf/softirq.c loaded with BCC. Use as a context manager; `snapshot()` reads every counter once."""

    def __init__(self, softnet_path: str = SOFTNET_STAT) -> None:
        self.softnet_path = softnet_path
        self._bpf: Any = None
        self.text = (BPF_DIR / "softirq.c").read_text()

    def start(self, progress: bool = True) -> None:
        bcc = bccenv.bcc_module()
        missing = [tp for tp in TRACEPOINTS if not bcc.BPF.tracepoint_exists(*tp.split(":"))]
        if missing:
            raise KernelError(f"this kernel has no tracepoint {', '.join(missing)}",
                              "softirq latency needs the irq and napi tracepoints (CONFIG_TRACEPOINTS)")
        step: Any = Progress("compiling and attaching softirq probes") if progress else None
        if step:
            step.__enter__()
        failure: BaseException | None = None
        try:
            with bccenv.captured_stderr() as errors:
                try:
                    self._bpf = bcc.BPF(text=self.text)
                except Exception as err:  # BCC raises bare Exception
                    detail = next((line for line in errors if "error" in line), str(err))
                    failure = err
                    raise KernelError(f"the softirq probes failed to load: {detail.strip()}",
                                      "run `podtrace doctor` to see what this kernel allows") from err
            if step:
                step.done(", ".join(TRACEPOINTS))
        finally:
            if step:
                step.__exit__(type(failure) if failure else None, failure, None)

    def snapshot(self) -> SoftirqSnapshot:
        if self._bpf is None:
            raise KernelError("the softirq probes are not loaded")
        hists: dict[int, dict[HistKey, Log2Hist]] = {}
        table = self._bpf["sirq_hists"]
        for index, key in enumerate(HISTS):
            for cpu, value in enumerate(table.getvalue(table.Key(index))):
                hists.setdefault(cpu, {})[key] = _hist_from_c(value)
        napi: dict[int, dict[str, int]] = {}
        ntable = self._bpf["napi_stats"]
        for index, name in enumerate(NAPI_FIELDS):
            for cpu, value in enumerate(ntable.getvalue(ntable.Key(index))):
                napi.setdefault(cpu, {})[name] = int(value)
        try:
            softnet = read_softnet_stat(self.softnet_path)
        except (OSError, ValueError):
            softnet = {}
        # Per-CPU maps have a slot for every possible CPU; keep the CPUs that exist in softnet_stat or saw work.
        online = set(softnet) or {cpu for cpu, h in hists.items() if any(x.count for x in h.values())}
        hists = {cpu: h for cpu, h in hists.items() if cpu in online or any(x.count for x in h.values())}
        napi = {cpu: n for cpu, n in napi.items() if cpu in hists}
        return SoftirqSnapshot(time.monotonic(), hists, napi, softnet)

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> SoftirqProbe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
