"""LiveSource: compile and attach the probes with BCC, then stream decoded events from the ring buffer."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import time
from typing import Any

from tracer.events.decode import (
    CNT_MAX,
    COUNTERS,
    EVENT_SIZE,
    EVENT_SIZES,
    CtEvent,
    NatEvent,
    NfVerdictEvent,
    PacketEvent,
    decode,
    decode_any,
    split_records,
)
from tracer.kernel import bccenv, kernelfs
from tracer.kernel.btf import Btf
from tracer.kernel.ksyms import KernelSymbols
from tracer.output.errors import KernelError
from tracer.output.progress import Progress
from tracer.probes import netfilter, nf_callers, nf_points, nflink, registry, tc, tpbtf
from tracer.probes.build import ProbeBuild, ProbeConfig, build, drop_reasons
from tracer.probes.kprobes import attach_list
from tracer.probes.scope import ScopeWatch
from tracer.sources import ringbuf
from tracer.sources.ct_sweep import CtSweeper, Retired, take

# Set (to anything) to skip tp_btf and attach the drop probe on the raw tracepoint, as on kernels that refuse tp_btf:
# the fallback stays tested, and the benchmark measures both side by side.
RAW_TP_DROPS_ENV = "PODTRACE_RAW_TP_DROPS"
SCOPE_REFRESH_S = 1.0  # how often /run/netns is looked at for pods added to a scoped node
ICMP_TRACEPOINT_ABSENT = ("no tracepoint icmp:icmp_send on this kernel (6.13+): frag-needed is seen only as ICMP "
                          "packets on the path, without the offending packet")


class LiveSource:
    """Events from the running kernel. Use as a context manager; `poll()` returns what arrived."""

    def __init__(self, config: ProbeConfig, btf_path: str | None = None) -> None:
        self.warnings: list[str] = []  # what was asked for but not attached, and what that loses
        if config.icmp and not _tracepoint_exists("icmp", "icmp_send"):
            config = dataclasses.replace(config, icmp=False)  # the ladder's fallback: path events only
            self.warnings.append(ICMP_TRACEPOINT_ABSENT)
        if config.netfilter and config.netfilter_conntrack:
            config = dataclasses.replace(config, nf_caller_cflags=tuple(nf_callers.caller_cflags(KernelSymbols.load())))
        self.config = config
        self.btf = Btf.load(btf_path)
        self.reasons = drop_reasons(self.btf)
        self.build: ProbeBuild = build(self.btf, config)
        if self.build.nfct_refusal:
            self.warnings.append(f"Service flows from every packet instead of conntrack: {self.build.nfct_refusal}")
        self._bpf: Any = None
        self._pending: list[bytes] = []
        self.decode_errors = 0
        self.attached: list[str] = []
        self.final_counters: dict[str, int] = {}
        self.final_probe_counters: dict[str, dict[str, int]] = {}
        self._links: list[nflink.NetfilterLink] = []
        self._tp_btf: list[tpbtf.TpBtfLink] = []
        self.drops_refusal = ""  # why tp_btf was not used for drops, when it was not
        self._tc: list[tc.TcAttachment] = []
        self._scope = ScopeWatch(config.scope) if config.scope is not None else None
        self._scope_checked = 0.0
        self._sweeper = CtSweeper(idle_s=config.ct_idle_s)
        self._swept = time.monotonic()
        self._ring: ringbuf.RingReader | None = None

    def start(self, progress: bool = True) -> None:
        bcc = bccenv.bcc_module()
        what = f"compiling and attaching probes ({', '.join(self.build.programs)})"
        with Progress(what) if progress else _Quiet() as step, bccenv.captured_stderr() as errors:
            try:
                self._bpf = bcc.BPF(text=self.build.text, cflags=self.build.cflags)
            except Exception as err:  # BCC raises bare Exception
                detail = next((line for line in errors if "error" in line), str(err))
                raise KernelError(f"the probes failed to load: {detail.strip()}",
                                  "run `podtrace doctor` to see what this kernel allows") from err
            step.done(f"{len(self.build.programs)} programs")
        self._refresh_scope()
        if "drops" in self.build.programs:
            self._attach_drops()
        for program in self.build.programs:
            self.attached += registry.auto_attached(program)
        if self.config.netfilter:
            self._attach_netfilter()
        if self.config.tc_interfaces:
            self._attach_tc()
        if self.config.kprobes:
            self._attach_kprobes()
        self._open_ring()

    def _attach_drops(self) -> None:
        """kfree_skb on tp_btf (typed arguments: direct loads), else on the raw tracepoint (the drops ladder)."""
        if os.environ.get(RAW_TP_DROPS_ENV):
            self.drops_refusal = f"tp_btf not tried ({RAW_TP_DROPS_ENV} is set)"
        else:
            try:
                self._tp_btf.append(tpbtf.attach(self._bpf.dump_func("pt_drop_btf"), "kfree_skb", self.btf))
                self.attached.append("tp_btf kfree_skb")
                return
            except OSError as err:
                self.drops_refusal = f"tp_btf kfree_skb refused: {err.strerror}"
        with bccenv.captured_stderr() as errors:
            try:
                self._bpf.attach_raw_tracepoint(tp="kfree_skb", fn_name="pt_drop_raw_tp")
            except Exception as err:  # BCC raises bare Exception
                detail = next((line for line in errors if line.strip()), str(err))
                raise KernelError(f"the drop probe failed to attach ({self.drops_refusal}; raw tracepoint: "
                                  f"{detail.strip()})", "run `podtrace doctor` to see what this kernel allows") from err
        self.attached.append("raw tracepoint kfree_skb")

    def _open_ring(self) -> None:
        """Our own mmap reader where it is safe (tracer/sources/ringbuf.py), else BCC's callback per event."""
        table = self._bpf["events"]
        if ringbuf.supported() and not os.environ.get("PODTRACE_BCC_RINGBUF"):
            try:
                self._ring = ringbuf.RingReader(table.map_fd, int(table.max_entries))
                return
            except (OSError, ValueError):
                self._ring = None
        table.open_ring_buffer(self._on_event)

    def _attach_kprobes(self) -> None:
        """The kprobe programs of config.kprobes whose function is in this kernel (tracer/probes/kprobes.py)."""
        for probe in attach_list(self.config.kprobes, self.build.cflags, KernelSymbols.load()):
            with bccenv.captured_stderr() as errors:
                try:
                    if probe.ret:
                        self._bpf.attach_kretprobe(event=probe.function, fn_name=probe.program)
                    else:
                        self._bpf.attach_kprobe(event=probe.function, fn_name=probe.program)
                except Exception as err:  # BCC raises bare Exception
                    detail = next((line for line in errors if line.strip()), str(err))
                    raise KernelError(f"kprobe on {probe.function} failed: {detail.strip()}",
                                      "run `podtrace doctor` to see what this kernel allows") from err
            self.attached.append(f"{'kretprobe' if probe.ret else 'kprobe'} {probe.function}")

    def nfk_histograms(self) -> dict[tuple[int, int], list[int]]:
        """(family row 0 IPv4 / 1 IPv6 / 2 other, hook) -> log2-ns histogram of time in nf_hook_slow (kprobes)."""
        if self._bpf is None or "netfilter" not in self.config.kprobes:
            return {}
        table = self._bpf["nfk_hist"]
        result: dict[tuple[int, int], list[int]] = {}
        for row in range(3):
            for hook in range(5):
                base = (row * 5 + hook) * nf_points.HIST_SLOTS
                buckets = [int(sum(table.getvalue(table.Key(base + slot)))) for slot in range(nf_points.HIST_SLOTS)]
                if any(buckets):
                    result[(row, hook)] = buckets
        return result

    def _attach_tc(self) -> None:
        bcc = bccenv.bcc_module()
        fds = {"ingress": self._bpf.load_func("pt_tc_ingress", bcc.BPF.SCHED_CLS).fd,
               "egress": self._bpf.load_func("pt_tc_egress", bcc.BPF.SCHED_CLS).fd}
        for target in self.config.tc_interfaces:
            self._tc.append(tc.attach(target, fds))
            self.attached.append(f"tc ingress+egress on {target}")

    def _attach_netfilter(self) -> None:
        fds = {}
        with bccenv.captured_stderr() as errors:
            try:
                for point in self.netfilter_points:
                    function = self._bpf.load_func(
                        point.program, nflink.BPF_PROG_TYPE_NETFILTER, attach_type=nflink.BPF_NETFILTER
                    )
                    fds[point.program] = function.fd
            except Exception as err:  # BCC raises bare Exception
                detail = next((line for line in errors if line.strip()), str(err))
                raise KernelError(f"the netfilter programs failed to load: {detail.strip()}",
                                  "run `podtrace doctor` to see what this kernel allows") from err
        for netns in self.config.netfilter_netns:
            links, v6_refused = netfilter.attach_all(fds, netns, self.netfilter_points)
            self._links += links
            families = "IPv4 only: " + v6_refused if v6_refused else "IPv4 and IPv6"
            self.attached.append(f"netfilter links at {len(nf_points.POINTS)} points in {netns or 'this namespace'}"
                                 f" ({families})")

    @property
    def conntrack_flows(self) -> bool:
        """Service flows are counted per conntrack entry (bpf/nfct.c), not timed per packet (bpf/netfilter.c)."""
        return "nfct" in self.build.programs

    @property
    def netfilter_points(self) -> tuple[nf_points.NfPoint, ...]:
        return nf_points.CONNTRACK_POINTS if self.conntrack_flows else nf_points.POINTS

    def nat_flows(self) -> list[tuple[Any, Any]]:
        """(struct pt_nat_key, struct pt_nat_stats) pairs of every NAT rewrite seen so far, IPVS's included."""
        if self._bpf is None:
            return []
        links = list(self._bpf["nat_flows"].items()) if self.config.netfilter else []
        if self.conntrack_flows:
            links = nfct_records(self._bpf["nat_flows"], links, self._bpf["ct_flows"].items(),
                                 self._sweeper.retired)
        return links + self.ipvs_flows()

    def sweep_ct_flows(self, now: float) -> int:
        """Take the conntrack mode's idle per-connection entries out of the kernel's map, keeping their counts
        (tracer/sources/ct_sweep.py): the map stays free for new connections in a long session. Returns how many."""
        if self._bpf is None or not self.conntrack_flows:
            return 0
        table = self._bpf["ct_flows"]
        idle = self._sweeper.idle(table.items(), now)
        return self._sweeper.retire(idle, lambda key: take(table, key)) if idle else 0

    def forget_nat_flows(self, idle_before_ns: int) -> int:
        """Delete nat_flows entries last seen before `idle_before_ns` (monotonic): the map holds 16384 flows, and
        a long-running reader (`podtrace serve`) that has counted an idle one frees its slot for new ones."""
        if self._bpf is None or not self.config.netfilter:
            return 0
        table = self._bpf["nat_flows"]
        idle = [key for key, stats in table.items() if stats.last_ns < idle_before_ns]
        for key in idle:
            with contextlib.suppress(KeyError):
                del table[key]
        return len(idle)

    def ipvs_flows(self) -> list[tuple[Any, Any]]:
        """IPVS records from bpf/ipvs.c, keyed like nat_flows: connections, NAT transmits, replies (kprobes)."""
        if self._bpf is None or "ipvs_kprobe" not in self.build.programs:
            return []
        try:
            table = self._bpf["ipvs_flows"]
        except KeyError:  # compiled without the ip_vs module's BTF (module not loaded): nothing was traced
            return []
        return list(table.items())

    def nf_histograms(self) -> dict[int, list[int]]:
        """Closing netfilter point -> log2-ns histogram of time spent in that hook, summed over CPUs."""
        if self._bpf is None or not self.config.netfilter or self.conntrack_flows:
            return {}
        table = self._bpf["nf_hist"]
        result: dict[int, list[int]] = {}
        for point in nf_points.POINTS:
            buckets = [int(sum(table.getvalue(table.Key(point.index * nf_points.HIST_SLOTS + slot))))
                       for slot in range(nf_points.HIST_SLOTS)]
            if any(buckets):
                result[point.index] = buckets
        return result

    def _on_event(self, _ctx: Any, data: Any, size: int) -> int:
        self._pending.append(ctypes.string_at(data, size))
        return 0  # returning None costs BCC's wrapper a conversion per event

    @property
    def scope_inodes(self) -> set[int]:
        """The netns inodes the kernel side traces now (empty: no scope, every namespace)."""
        return set(self._scope.current) if self._scope is not None else set()

    def _refresh_scope(self) -> None:
        """Bring the scope map up to date with the node's namespaces (pods come and go during a session)."""
        if self._scope is None or self._bpf is None:
            return
        change = self._scope.changed()
        if change is None:
            return
        table = self._bpf["scope"]
        added, removed = change
        for inode in removed:
            with contextlib.suppress(KeyError):
                del table[table.Key(inode)]
        for inode in added:
            table[table.Key(inode)] = table.Leaf(1)

    def poll_raw(self, timeout_ms: int = 100) -> list[bytes]:
        """Raw event bytes that arrived (the fast path: aggregate without decoding every event)."""
        now = time.monotonic()
        if now - self._scope_checked >= SCOPE_REFRESH_S:
            self._scope_checked = now
            self._refresh_scope()
        if self.conntrack_flows and now - self._swept >= self._sweeper.idle_s / 3:
            self._swept = now
            self.sweep_ct_flows(now)
        # The probes wake the reader only every 64 events per CPU (bpf/skb.h pt_wakeup): what arrived quietly
        # is drained here, so a poll's timeout is also the longest an event waits.
        if self._ring is not None:
            self._ring.wait(timeout_ms)
            self._ring.drain(self._pending)
        else:
            self._bpf.ring_buffer_poll(timeout_ms)
            self._bpf.ring_buffer_consume()
        batch, self._pending = split_records(self._pending), []
        complete = [raw for raw in batch if len(raw) >= EVENT_SIZES.get(raw[0], EVENT_SIZE)]
        self.decode_errors += len(batch) - len(complete)
        return complete

    def poll(self, timeout_ms: int = 100) -> list[PacketEvent]:
        """Drop and path events (NAT events, when netfilter is traced, come from poll_all)."""
        return [decode(raw) for raw in self.poll_raw(timeout_ms) if EVENT_SIZES.get(raw[0], EVENT_SIZE) == EVENT_SIZE]

    def poll_all(self, timeout_ms: int = 100) -> list[PacketEvent | NatEvent | NfVerdictEvent | CtEvent]:
        return [decode_any(raw) for raw in self.poll_raw(timeout_ms)]

    def counters(self) -> dict[str, int]:
        """Each counter summed over probes and CPUs."""
        totals = dict.fromkeys(COUNTERS, 0)
        per_probe_counters = self.probe_counters()
        for per_probe in per_probe_counters.values():
            for name, value in per_probe.items():
                totals[name] += value
        if self.conntrack_flows:  # connection entries the reader took out of the kernel's map, their counts kept
            totals["ct_retired"] = self._sweeper.retired_entries
            # bpf/nfct.c emits no events: what its slot counts lost are connections its full table could not
            # hold, not ring-buffer losses, and the fix differs (--ct-flows-max, not --ringbuf-pages)
            full = per_probe_counters.get("netfilter", {}).get("lost", 0)
            totals["lost"] -= full
            totals["ct_table_full"] = full
        return totals

    def probe_counters(self) -> dict[str, dict[str, int]]:
        """Probe (registry.COUNTER_SLOTS) -> counter -> value summed over CPUs; probes with all counters at 0 are
        left out."""
        if self._bpf is None:
            return dict(self.final_probe_counters)
        table = self._bpf["counters"]
        result: dict[str, dict[str, int]] = {}
        for probe_index, probe in enumerate(registry.COUNTER_SLOTS):
            values = {name: int(sum(table.getvalue(table.Key(probe_index * CNT_MAX + index))))
                      for index, name in enumerate(COUNTERS)}
            if any(values.values()):
                result[probe] = values
        return result

    def close(self) -> None:
        for attachment in self._tc:
            tc.detach(attachment)
        self._tc = []
        for link in self._links:
            link.close()
        self._links = []
        for tp_link in self._tp_btf:
            tp_link.close()
        self._tp_btf = []
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._bpf is not None:
            self.final_probe_counters = self.probe_counters()
            self.final_counters = self.counters()
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> LiveSource:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def nfct_records(table: Any, folded: list[tuple[Any, Any]], live: Any,
                 retired: dict[bytes, Retired] | None = None) -> list[tuple[Any, Any]]:
    """nat_flows pairs from the conntrack mode's maps: translations whose nf_conn was recycled (folded into
    nat_flows by the kernel), the entries the reader retired when idle (tracer/sources/ct_sweep.py), plus every live
    (connection, direction) entry, summed per translation."""
    merged: dict[bytes, tuple[Any, Any]] = {bytes(key): (key, stats) for key, stats in folded}
    for raw, counts in (retired or {}).items():
        if raw not in merged:
            merged[raw] = (table.Key.from_buffer_copy(raw), table.Leaf(0, 0, counts.first_ns, counts.last_ns, 0, 0))
        stats = merged[raw][1]
        stats.packets += counts.packets
        stats.bytes += counts.bytes
        stats.first_ns = min(stats.first_ns, counts.first_ns) if stats.first_ns else counts.first_ns
        stats.last_ns = max(stats.last_ns, counts.last_ns)
    for _ct, flow in live:
        if not flow.wanted:
            continue
        raw = bytes(flow.key)
        if raw not in merged:
            key = table.Key.from_buffer_copy(raw)
            merged[raw] = (key, table.Leaf(0, 0, flow.first_ns, flow.first_ns, 0, 0))
        stats = merged[raw][1]
        stats.packets += flow.packets
        stats.bytes += flow.bytes
        stats.first_ns = min(stats.first_ns, flow.first_ns)
        stats.last_ns = max(stats.last_ns, flow.first_ns)
    return list(merged.values())


def _tracepoint_exists(category: str, event: str) -> bool:
    root = kernelfs.tracefs_path()
    return root is not None and os.path.isdir(os.path.join(root, "events", category, event))


class _Quiet:
    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def done(self, _result: str) -> None:
        return None

