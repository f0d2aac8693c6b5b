"""Every BPF program podtrace loads, declared once: its bpf/ source, the counter slot it counts under, the event
kinds it emits, and what attaches it. The build (which sources go into a session), the attach code (which
tracepoints BCC attaches by itself), the per-probe counters (PT_PROBE_* order) and the hook points' candidates
(tracer/kernel/hookpoints.py: a candidate must name a registered program's source) all read this table;
tests/unit/test_probe_registry.py checks it against bpf/podtrace.h and the sources. Pure data."""

from __future__ import annotations

from dataclasses import dataclass

# PT_PROBE_* of bpf/podtrace.h, in order: the counters array holds CNT_MAX counters per slot. Code outside a
# program, or a program that declares no slot of its own, counts under "other".
COUNTER_SLOTS = ("other", "drops", "path", "netfilter", "tc", "icmp", "nf_kprobe", "overlay_kprobe", "ipvs_kprobe")


@dataclass(frozen=True)
class Program:
    name: str  # what a session's build lists ("drops"), and the probe's name in counters and the Probes view
    source: str  # the file in bpf/
    counter: str  # its slot in COUNTER_SLOTS
    emits: tuple[str, ...]  # ring-buffer event kinds (bpf/podtrace.h PT_EVENT_*), lower case
    maps: tuple[str, ...]  # maps it fills that userspace reads (besides the shared events and counters)
    attached_by: str  # what attaches it: "bcc" (BCC auto-attaches the tracepoints below) or the module that does
    tracepoints: tuple[str, ...] = ()  # for "bcc": "tracepoint net:netif_receive_skb", "raw tracepoint net_dev_xmit"

    def __post_init__(self) -> None:
        if self.counter not in COUNTER_SLOTS:
            raise ValueError(f"program {self.name}: no counter slot {self.counter!r}")


PROGRAMS: tuple[Program, ...] = (
    # the drop probe also emits the drop's conntrack entry and, for a drop inside a table call, the verdict
    Program("drops", "drops.c", "drops", ("drop", "ct", "nf_verdict"), (),
            "tracer.probes.tpbtf, else BCC's raw tracepoint"),
    Program("path", "path.c", "path", ("path",), (), "bcc",
            ("tracepoint net:netif_receive_skb", "tracepoint net:net_dev_queue", "raw tracepoint net_dev_xmit")),
    Program("netfilter", "netfilter.c", "netfilter", ("nat",), ("nat_flows", "nf_hist"),
            "tracer.probes.netfilter (links)"),
    # flows' conntrack mode: the same concern as the per-packet links, so the same counter slot
    Program("nfct", "nfct.c", "netfilter", (), ("nat_flows", "ct_flows"), "tracer.probes.netfilter (links)"),
    Program("tc", "tc.c", "tc", ("path",), (), "tracer.probes.tc"),
    Program("icmp", "icmp.c", "icmp", ("icmp",), (), "bcc", ("tracepoint icmp:icmp_send",)),
    Program("nf_kprobe", "nfkprobe.c", "nf_kprobe", ("nf_verdict",), ("nfk_hist",), "tracer.probes.kprobes"),
    Program("overlay_kprobe", "overlay.c", "overlay_kprobe", ("path",), (), "tracer.probes.kprobes"),
    Program("ipvs_kprobe", "ipvs.c", "ipvs_kprobe", (), ("ipvs_flows",), "tracer.probes.kprobes"),
    # loaded on its own by tracer/probes/softirq_probe.py: in-kernel histograms, no events, no counters
    Program("softirq", "softirq.c", "other", (), ("sirq_hists", "napi_stats"), "bcc",
            ("tracepoint irq:softirq_raise", "tracepoint irq:softirq_entry", "tracepoint irq:softirq_exit",
             "tracepoint napi:napi_poll")),
)
# The program behind each kprobe concern's kprobes (tracer/probes/kprobes.py): overlay.c serves two.
KPROBE_PROGRAMS = {"netfilter": "nf_kprobe", "vxlan": "overlay_kprobe", "fragmentation": "overlay_kprobe",
                   "ipvs": "ipvs_kprobe"}
BY_NAME = {program.name: program for program in PROGRAMS}
SOURCES = frozenset(program.source for program in PROGRAMS)


def program(name: str) -> Program:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"no BPF program {name!r} is registered (tracer/probes/registry.py)") from None


def auto_attached(name: str) -> list[str]:
    """What BCC attaches by itself when the program loads ("tracepoint net:net_dev_queue"); [] for the rest."""
    found = program(name)
    return list(found.tracepoints) if found.attached_by == "bcc" else []


def counter_slot(name: str) -> int:
    """PT_PROBE_* index the program's pt_count() calls count under."""
    return COUNTER_SLOTS.index(program(name).counter)
