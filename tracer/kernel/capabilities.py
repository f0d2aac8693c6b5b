"""What the running kernel allows, decided by trying for real: load and attach a tiny program per candidate.

Each trial records why it failed in words a user can act on ("kprobes not in this kernel", "fentry refused
(EPERM)", "function not in this kernel", "kernel too old for netfilter links"). tracer/kernel/ladder.py turns the
trials into the attach plan.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tracer.kernel import bccenv, kernelfs
from tracer.kernel.btf import Btf
from tracer.kernel.hookpoints import HOOK_POINTS, HookPoint, Mechanism
from tracer.kernel.kernelhints import modules_loadable
from tracer.kernel.ksyms import KernelSymbols
from tracer.kernel.ladder import AttachPlan, Trial, make_plan
from tracer.output.errors import KernelError
from tracer.probes import nflink, tpbtf

NOP_PROGRAMS = r"""
// One function per program type: BCC caches a loaded function by name with its first type.
int pt_nop_kprobe(void *ctx) { return 0; }
int pt_nop_raw_tp(void *ctx) { return 0; }
int pt_nop_tp_btf(void *ctx) { return 0; }
int pt_nop_tp(void *ctx) { return 0; }
int pt_nf_accept(void *ctx) { return 1; /* NF_ACCEPT */ }
int pt_tc_ok(void *ctx) { return 0; /* TC_ACT_OK */ }
"""


def kernel_version(release: str | None = None) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def kprobes_available() -> bool:
    tracefs = kernelfs.tracefs_path()
    return bool(tracefs and os.path.exists(os.path.join(tracefs, "kprobe_events"))) or os.path.isdir(
        "/sys/bus/event_source/devices/kprobe"
    )


EPERM_REFUSAL = "refused by the kernel (EPERM: lockdown, an LSM or a kernel built to refuse it)"


def _first_error(lines: list[str], fallback: str) -> str:
    for line in lines:
        if "Operation not permitted" in line:
            return EPERM_REFUSAL
    for line in lines:
        if line.strip() and "modprobe" not in line:
            return line.strip()[:160]
    return fallback


@contextlib.contextmanager
def _throwaway_netns() -> Iterator[str]:
    name = f"pt-doctor-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@dataclass
class Prober:
    """Runs trials against the live kernel and caches results shared by several hook points."""

    symbols: KernelSymbols

    def __post_init__(self) -> None:
        self.bcc = bccenv.bcc_module()
        self.trials: dict[str, Trial] = {}
        self.release = platform.release()
        with bccenv.captured_stderr():
            self.module = self.bcc.BPF(text=NOP_PROGRAMS)
        self._fentry_refusal: str | None = None

    # -- one method per mechanism, each returns a Trial for one target --

    def _function_missing(self, function: str) -> str | None:
        if self.symbols.has(function):
            return None
        return f"{function} is not in this kernel (not in /proc/kallsyms: compiled out or its module not loaded)"

    def kprobe(self, function: str) -> Trial:
        if not kprobes_available():
            return Trial(False, "kprobes are not in this kernel (CONFIG_KPROBES off)")
        missing = self._function_missing(function)
        if missing:
            return Trial(False, missing)
        with bccenv.captured_stderr() as lines:
            try:
                self.module.attach_kprobe(event=function, fn_name="pt_nop_kprobe")
                self.module.detach_kprobe(event=function)
                return Trial(True)
            except Exception:  # BCC raises bare Exception
                pass
        return Trial(False, _first_error(lines, f"{function} is not traceable (inlined or notrace)"))

    def fentry(self, function: str) -> Trial:
        if self._fentry_refusal:
            return Trial(False, self._fentry_refusal)
        missing = self._function_missing(function)
        if missing:
            return Trial(False, missing)
        if not self.bcc.BPF.support_kfunc():
            return Trial(False, "fentry is not supported by this kernel or BCC")
        with bccenv.captured_stderr() as lines:
            try:
                probe = self.bcc.BPF(text=f"KFUNC_PROBE({function}) {{ return 0; }}")
                probe.cleanup()
                return Trial(True)
            except Exception:
                pass
        reason = _first_error(lines, f"fentry on {function} failed")
        if "EPERM" in reason:
            self._fentry_refusal = f"fentry {reason}"
            return Trial(False, self._fentry_refusal)
        return Trial(False, reason)

    @staticmethod
    def _attach_and_detach(attach: Callable[[], object], detach: Callable[[], object], failed: str) -> Trial:
        """Attach a nop program and detach it again; the failure is BCC's first error line, or `failed`."""
        with bccenv.captured_stderr() as lines:
            try:
                attach()
                detach()
                return Trial(True)
            except Exception:
                pass
        return Trial(False, _first_error(lines, failed))

    def raw_tracepoint(self, name: str) -> Trial:
        return self._attach_and_detach(lambda: self.module.attach_raw_tracepoint(tp=name, fn_name="pt_nop_raw_tp"),
                                       lambda: self.module.detach_raw_tracepoint(tp=name),
                                       f"raw tracepoint {name} is not in this kernel")

    def tp_btf(self, name: str) -> Trial:
        if kernel_version(self.release) < (5, 5):
            return Trial(False, f"kernel {self.release} is too old for tp_btf programs (needs 5.5)")
        try:
            btf = Btf.load()
        except KernelError as err:
            return Trial(False, f"tp_btf needs the kernel's BTF: {err.message}")
        try:
            tpbtf.attach(self.module.dump_func("pt_nop_tp_btf"), name, btf, "pt_nop_tp_btf").close()
        except OSError as err:
            if err.errno == 1:  # EPERM
                return Trial(False, EPERM_REFUSAL)
            return Trial(False, f"tp_btf {name} failed: {err.strerror}")
        return Trial(True)

    def tracepoint(self, name: str) -> Trial:
        category, _, event = name.partition(":")
        if not self.bcc.BPF.tracepoint_exists(category, event):
            return Trial(False, f"tracepoint {name} is not in this kernel")
        return self._attach_and_detach(lambda: self.module.attach_tracepoint(tp=name, fn_name="pt_nop_tp"),
                                       lambda: self.module.detach_tracepoint(tp=name),
                                       f"tracepoint {name} failed to attach")

    def netfilter_link(self, _target: str) -> Trial:
        if kernel_version(self.release) < (6, 4):
            return Trial(False, f"kernel {self.release} is too old for BPF netfilter links (needs 6.4)")
        with bccenv.captured_stderr() as lines:
            try:
                function = self.module.load_func(
                    "pt_nf_accept", nflink.BPF_PROG_TYPE_NETFILTER, attach_type=nflink.BPF_NETFILTER
                )
            except Exception:
                return Trial(False, _first_error(lines, "netfilter programs cannot be loaded"))
        # An ACCEPT-only program at a priority no rule uses: attaching it for an instant changes nothing.
        try:
            nflink.attach(function.fd, "PREROUTING", -399).close()
        except OSError as err:
            return Trial(False, f"netfilter link refused: {err.strerror}")
        return Trial(True)

    def tc(self, _target: str) -> Trial:
        with bccenv.captured_stderr() as lines:
            try:
                function = self.module.load_func("pt_tc_ok", self.bcc.BPF.SCHED_CLS)
            except Exception:
                return Trial(False, _first_error(lines, "tc programs cannot be loaded"))
        try:
            from pyroute2 import IPRoute, netns  # only needed for this trial

            with _throwaway_netns() as name:
                netns.pushns(name)
                try:
                    with IPRoute() as ipr:
                        index = ipr.link_lookup(ifname="lo")[0]
                        ipr.tc("add", "clsact", index)
                        ipr.tc(
                            "add-filter", "bpf", index, ":1", fd=function.fd, name=function.name,
                            parent="ffff:fff2", classid=1, direct_action=True,
                        )
                finally:
                    netns.popns()
        except Exception as err:  # pyroute2 raises NetlinkError and OSError
            return Trial(False, f"tc attach failed: {err}")
        return Trial(True)

    def symbol(self, name: str) -> Trial:
        if self.symbols.has(name):
            return Trial(True)
        module_hint = _module_on_disk(name)
        return Trial(False, module_hint or "not in this kernel")

    def run(self, key: str) -> Trial:
        if key not in self.trials:
            kind, _, target = key.partition(":")
            method = getattr(self, kind)
            self.trials[key] = method(target)
        return self.trials[key]


MODULE_OF_SYMBOL = {"ip_vs_conn_new": "ip_vs", "vxlan_xmit_one": "vxlan"}


def _module_on_disk(symbol: str) -> str:
    module = MODULE_OF_SYMBOL.get(symbol)
    if not module:
        return ""
    if not modules_loadable():  # no modprobe to suggest: the module's file cannot be loaded here
        return "not in this kernel (not built in, and this kernel loads no modules: /proc/modules is absent)"
    tree = f"/lib/modules/{platform.release()}"
    if os.path.isdir(tree):
        for _dirpath, _dirs, files in os.walk(tree):
            if any(name.split(".ko")[0] == module for name in files):
                return f"module {module} is not loaded (modprobe {module})"
    return "not in this kernel (not built in and no module for it)"


# Tried by doctor even when no ladder needs them, so it can say what each mechanism does on this kernel.
MECHANISM_PROBES = ("tp_btf:kfree_skb", "raw_tracepoint:kfree_skb", "tracepoint:net:netif_receive_skb", "tc:clsact",
                    "netfilter_link:netfilter:ipv4", "kprobe:nf_hook_slow", "fentry:nf_hook_slow")


def probe_kernel(
    points: tuple[HookPoint, ...] = HOOK_POINTS, every_mechanism: bool = False
) -> tuple[AttachPlan, dict[str, Trial]]:
    """Try every candidate the ladder may need, in ladder order, stopping at the first that works."""
    prober = Prober(KernelSymbols.load())
    for point in points:
        for symbol in point.requires_symbols:
            if not prober.run(f"symbol:{symbol}").ok:
                break
        else:
            for candidate in point.candidates:
                results = [prober.run(key) for key in candidate.keys]
                if all(trial.ok for trial in results):
                    break
    if every_mechanism:
        for key in MECHANISM_PROBES:
            prober.run(key)
    prober.module.cleanup()
    return make_plan(prober.release, prober.trials, points), prober.trials


def describe_mechanisms(trials: dict[str, Trial]) -> dict[str, Any]:
    """Per mechanism: available or the first reason it failed (for doctor's summary lines)."""
    summary: dict[str, Any] = {}
    for mechanism in Mechanism:
        results = [trial for key, trial in trials.items() if key.startswith(mechanism.value + ":")]
        if not results:
            continue
        if any(trial.ok for trial in results):
            summary[mechanism.value] = {"available": True, "reason": ""}
        else:
            summary[mechanism.value] = {"available": False, "reason": results[0].reason}
    return summary
