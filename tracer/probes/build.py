"""Build the probes' C source and compiler flags: BTF offsets, drop-reason constants, filters.

Pure apart from reading BTF: the result is a ProbeBuild that tracer/sources/live.py hands to BCC, and that
`--dump-bpf` prints.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from bpf import BPF_DIR
from tracer.events.decode import DROP_RECORD_SIZE
from tracer.kernel.btf import Btf
from tracer.kernel.modbtf import ModuleBtf, ModuleOffset, kprobe_cflags
from tracer.output.errors import KernelError, UsageError
from tracer.probes import registry
from tracer.probes.pcapfilter import CompiledFilter, match_all
from tracer.probes.scope import Scope

# -D macro, struct, member path, the size the C code reads.
BTF_OFFSETS: tuple[tuple[str, str, str, int], ...] = (
    ("PT_OFF_SK_BUFF_LEN", "sk_buff", "len", 4),
    ("PT_OFF_SK_BUFF_HEAD", "sk_buff", "head", 8),
    ("PT_OFF_SK_BUFF_DATA", "sk_buff", "data", 8),
    ("PT_OFF_SK_BUFF_TAIL", "sk_buff", "tail", 4),
    ("PT_OFF_SK_BUFF_NETWORK_HEADER", "sk_buff", "network_header", 2),
    ("PT_OFF_SK_BUFF_PROTOCOL", "sk_buff", "protocol", 2),
    ("PT_OFF_SK_BUFF_MARK", "sk_buff", "mark", 4),
    ("PT_OFF_SK_BUFF_DEV", "sk_buff", "dev", 8),
    ("PT_OFF_SK_BUFF_SK", "sk_buff", "sk", 8),
    ("PT_OFF_NET_DEVICE_NAME", "net_device", "name", 16),
    ("PT_OFF_NET_DEVICE_IFINDEX", "net_device", "ifindex", 4),
    ("PT_OFF_NET_DEVICE_ND_NET", "net_device", "nd_net.net", 8),
    ("PT_OFF_NET_NS_INUM", "net", "ns.inum", 4),
    ("PT_OFF_SOCK_SKC_NET", "sock", "__sk_common.skc_net.net", 8),
)

# Read only by bpf/netfilter.c, with direct (BTF-checked) loads: the hook's network namespace.
NF_BTF_OFFSETS: tuple[tuple[str, str, str, int], ...] = (("PT_OFF_NF_HOOK_STATE_NET", "nf_hook_state", "net", 8),)

SCOPE_MAX = 4096  # namespaces one session can scope to: a node with thousands of pods
DROP_REASON_ENUM = "skb_drop_reason"
DROP_REASON_PREFIX = "SKB_DROP_REASON_"
# Read only by bpf/icmp.c (the MTU a frag-needed quotes): the dst of the offending packet.
ICMP_BTF_OFFSETS: tuple[tuple[str, str, str, int], ...] = (
    ("PT_OFF_SK_BUFF_SKB_REFDST", "sk_buff", "_skb_refdst", 8),
    ("PT_OFF_DST_ENTRY_DEV", "dst_entry", "dev", 8),
    ("PT_OFF_DST_ENTRY_METRICS", "dst_entry", "_metrics", 8),
    ("PT_OFF_NET_DEVICE_MTU", "net_device", "mtu", 4),
)

# Read by the drop probe's conntrack event (bpf/skb.h pt_ct_emit_in): all or nothing. nf_conn lives in
# nf_conntrack (a module on Debian's 6.1, built in on the CI kernel); skb->_nfct exists with CONFIG_NF_CONNTRACK.
CT_OFFSETS = (
    ModuleOffset("PT_OFF_SK_BUFF_NFCT", "sk_buff", "_nfct", 8, ()),
    ModuleOffset("PT_OFF_NF_CONN_STATUS", "nf_conn", "status", 8, ("nf_conntrack",)),
    ModuleOffset("PT_OFF_NF_CONN_TUPLEHASH", "nf_conn", "tuplehash", 0, ("nf_conntrack",)),
    ModuleOffset("PT_OFF_NF_CT_HASH_TUPLE", "nf_conntrack_tuple_hash", "tuple", 40, ("nf_conntrack",)),
    ModuleOffset("PT_OFF_NF_CT_TUPLE_SRC_U3", "nf_conntrack_tuple", "src.u3", 16, ("nf_conntrack",)),
    ModuleOffset("PT_OFF_NF_CT_TUPLE_SRC_U", "nf_conntrack_tuple", "src.u", 2, ("nf_conntrack",)),
    ModuleOffset("PT_OFF_NF_CT_TUPLE_SRC_L3NUM", "nf_conntrack_tuple", "src.l3num", 2, ("nf_conntrack",)),
    ModuleOffset("PT_OFF_NF_CT_TUPLE_DST_U3", "nf_conntrack_tuple", "dst.u3", 16, ("nf_conntrack",)),
    ModuleOffset("PT_OFF_NF_CT_TUPLE_DST_U", "nf_conntrack_tuple", "dst.u", 2, ("nf_conntrack",)),
    ModuleOffset("PT_OFF_NF_CT_TUPLE_DST_PROTONUM", "nf_conntrack_tuple", "dst.protonum", 1, ("nf_conntrack",)),
)


CT_COPY = 128  # PT_CT_COPY in bpf/podtrace.h: bytes of nf_conn the drop probe copies in one helper call


def conntrack_cflags(mods: ModuleBtf) -> list[str]:
    """-DPT_CT=1 and the nf_conn offsets, or [] when this kernel's BTF lacks one (drops then carry no conntrack)."""
    flags = mods.cflags(CT_OFFSETS, "PT_CT")
    btf = mods.find(CT_OFFSETS[3])
    if not flags or btf is None:
        return []
    # tuplehash[IP_CT_DIR_REPLY] is one struct nf_conntrack_tuple_hash after tuplehash[IP_CT_DIR_ORIGINAL].
    hash_size = btf.struct_size("nf_conntrack_tuple_hash")
    if 2 * hash_size > CT_COPY:
        return []  # a layout the probe's one-copy read does not hold: drops then carry no conntrack
    flags.append(f"-DPT_NF_CT_HASH_SIZE={hash_size}")
    # Where status follows the tuples closely (16 + 112 -> 128 on 6.x), one copy reads both.
    tuples = btf.member_offset("nf_conn", "tuplehash")
    status = btf.member_offset("nf_conn", "status")
    if tuples <= status and status + 8 - tuples <= CT_COPY:
        flags += [f"-DPT_CT_STATUS_AT={status - tuples}", f"-DPT_CT_SPAN={status + 8 - tuples}"]
    return flags


@dataclass
class ProbeConfig:
    filter: CompiledFilter = field(default_factory=match_all)
    netns_inode: int | None = None
    # --node/--netns in sessions with several namespaces: the inodes live in a map (tracer/probes/scope.py)
    scope: Scope | None = None
    ifname: str | None = None
    drops: bool = True
    path: bool = False
    netfilter: bool = False  # BPF netfilter link programs (attached by tracer/probes/netfilter.py)
    # Service flows from conntrack entries (bpf/nfct.c: a few programs per packet, counts per connection) rather
    # than every packet copied and parsed at every point (bpf/netfilter.c, which also times each hook)
    netfilter_conntrack: bool = False
    # with netfilter_conntrack: tracer/probes/nf_callers.py's flags, the hook a netfilter drop died in from its stack
    nf_caller_cflags: tuple[str, ...] = ()
    # with netfilter_conntrack: (connection, direction) entries the kernel keeps, and how long one may sit idle
    # before the reader takes it out, keeping its counts (tracer/sources/ct_sweep.py)
    ct_flows_max: int = 65536
    ct_idle_s: float = 30.0
    tc_interfaces: tuple[str, ...] = ()  # "IF" or "NETNS/IF": tc ingress+egress path programs (tracer/probes/tc.py)
    # `ip netns` names the links are created in (None: podtrace's own namespace, the node on a real worker)
    netfilter_netns: tuple[str | None, ...] = (None,)
    ringbuf_pages: int = 256  # 1 MiB: about 3500 events of headroom per poll
    path_rate: int = 20000  # path events per second per CPU
    # concerns whose kprobe programs are loaded ("netfilter", "vxlan", "fragmentation"; tracer/probes/kprobes.py)
    kprobes: tuple[str, ...] = ()
    # bpf/overlay.c's kprobe events skip the pcap filter (`podtrace overlay`: its filter is written for the outer
    # packets, while vxlan_xmit_one sees the inner one and ip_do_fragment a packet not yet cut)
    overlay_kprobes_unfiltered: bool = False
    icmp: bool = False  # icmp:icmp_send: frag-needed and reassembly time-exceeded the node sends (bpf/icmp.c)
    conntrack: bool = True  # a conntrack event (struct pt_ct_event) before each drop event, where BTF allows


@dataclass
class ProbeBuild:
    text: str
    cflags: list[str]
    programs: list[str]  # program names (tracer/probes/registry.py), in load order
    conntrack: bool = False  # drop events are preceded by their conntrack event (PT_CT)
    # why the conntrack-driven netfilter mode was asked for but not built (the per-packet links are used instead)
    nfct_refusal: str = ""

    def dump(self) -> str:
        flags = "\n".join(f"//   {flag}" for flag in self.cflags)
        return f"// podtrace probe source; compiled with:\n{flags}\n{self.text}"


def drop_reasons(btf: Btf) -> dict[int, str]:
    """enum skb_drop_reason value -> short name ("NETFILTER_DROP"), from this kernel's BTF."""
    try:
        values = btf.enum(DROP_REASON_ENUM)
    except KernelError:
        return {}
    names: dict[int, str] = {}
    for name, value in values.items():
        short = name.removeprefix(DROP_REASON_PREFIX).removeprefix("SKB_")
        names.setdefault(value, short)
    return names


def _ifname_words(name: str) -> tuple[int, int]:
    """The name as the two words the probe compares with net_device.name; the kernel's dev_valid_name() rules."""
    raw = name.encode()
    if not raw or len(raw) >= 16 or name in (".", "..") or any(c in "/:\0 \t\n\v\f\r" for c in name):
        raise UsageError(f"interface name {name!r} is not a valid Linux interface name",
                         "at most 15 bytes, without '/', ':' or spaces")
    low, high = struct.unpack("<QQ", raw.ljust(16, b"\0"))
    return low, high


def btf_cflags(btf: Btf, extra: tuple[tuple[str, str, str, int], ...] = ()) -> list[str]:
    flags = []
    for macro, struct_name, member, size in (*BTF_OFFSETS, *extra):
        actual = btf.member_size(struct_name, member)
        if actual != size:
            raise KernelError(
                f"{struct_name}.{member} is {actual} bytes on this kernel, podtrace reads {size}",
                "this kernel's layout is not supported yet; please report it with `podtrace doctor --json`",
            )
        flags.append(f"-D{macro}={btf.member_offset(struct_name, member)}")
    try:
        reasons = btf.enum(DROP_REASON_ENUM)
    except KernelError:  # before 5.17 the tracepoint has no reason argument
        reasons = {}
    flags.append(f"-DPT_HAVE_DROP_REASON={1 if reasons else 0}")
    consumed = reasons.get("SKB_CONSUMED", 0xFFFFFFFF)
    flags.append(f"-DPT_REASON_CONSUMED={consumed}U")
    flags.append(f"-DPT_REASON_NETFILTER_DROP={reasons.get('SKB_DROP_REASON_NETFILTER_DROP', 0xFFFFFFFF)}U")
    return flags


RB_RECORD_MAX = DROP_RECORD_SIZE + 8  # the largest record (a drop and its conntrack event) and its ring header
RB_WAKE_MAX = 256  # fewer wakeups save little more per event (bpf/skb.h pt_wakeup) and delay the reader


def rb_wake_every(pages: int, cpus: int) -> int:
    """Events per CPU between two reader wakeups (PT_RB_WAKE_EVERY): what every CPU may hold unwoken stays under
    half the ring, so a node with many CPUs wakes its reader sooner (a wakeup cost a drop ~300 ns on a VM)."""
    records = pages * 4096 // RB_RECORD_MAX
    return max(1, min(RB_WAKE_MAX, records // (2 * max(1, cpus))))


def build(btf: Btf, config: ProbeConfig) -> ProbeBuild:
    extra = (*(ICMP_BTF_OFFSETS if config.icmp else ()), *(NF_BTF_OFFSETS if config.netfilter else ()))
    cflags = [f"-I{BPF_DIR}", *btf_cflags(btf, extra)]
    cflags.append(f"-DPT_PATH_RATE={config.path_rate}")
    cflags.append(f"-DPT_RB_WAKE_EVERY={rb_wake_every(config.ringbuf_pages, os.cpu_count() or 1)}")
    if config.netns_inode is not None:
        cflags.append(f"-DPT_FILTER_NETNS={config.netns_inode}U")
    if config.scope is not None:
        cflags.append("-DPT_SCOPE=1")
    if config.ifname:
        low, high = _ifname_words(config.ifname)
        cflags += [f"-DPT_FILTER_IFNAME_LO={low}ULL", f"-DPT_FILTER_IFNAME_HI={high}ULL"]
    mods = ModuleBtf(btf, btf.path)
    all_ct_flags = conntrack_cflags(mods) if (config.conntrack and config.drops) or config.netfilter_conntrack else []
    nfct = config.netfilter and config.netfilter_conntrack
    refusal = ""
    if nfct and not all_ct_flags:
        nfct, refusal = False, "this kernel's BTF gives no nf_conn layout (nf_conntrack's BTF) podtrace can read"
    wanted = (("drops", config.drops), ("path", config.path), ("netfilter", config.netfilter and not nfct),
              ("nfct", nfct), ("tc", bool(config.tc_interfaces)), ("icmp", config.icmp))
    programs = [name for name, enabled in wanted if enabled]
    if config.netfilter:
        cflags.append("-DPT_NFCT=1" if nfct else "-DPT_NETFILTER=1")
    if nfct:
        cflags += config.nf_caller_cflags
        cflags.append(f"-DPT_CT_FLOWS_MAX={config.ct_flows_max}")
    if config.path:
        cflags.append("-DPT_PATH_XMIT=1")
    ct_flags = all_ct_flags if (config.conntrack and config.drops) or nfct else []
    cflags += ct_flags
    if config.kprobes:
        cflags += kprobe_cflags(mods, config.kprobes)
        if config.overlay_kprobes_unfiltered:
            cflags.append("-DPT_KP_OVERLAY_UNFILTERED=1")
        # each program once, in the order of its first concern (overlay.c serves vxlan and fragmentation)
        programs += list(dict.fromkeys(registry.KPROBE_PROGRAMS[concern] for concern in registry.KPROBE_PROGRAMS
                                       if concern in config.kprobes))
    parts = [
        '#include "podtrace.h"',
        f"BPF_RINGBUF_OUTPUT(events, {config.ringbuf_pages});",
        "BPF_PERCPU_ARRAY(counters, __u64, PT_CNT_SLOTS);",
        "BPF_PERCPU_ARRAY(scratch, struct pt_scratch, 1);",
        # The scope's netns inodes (tracer/probes/scope.py), filled before the first event and refreshed while tracing.
        f"BPF_HASH(scope, __u32, __u8, {SCOPE_MAX});" if config.scope is not None else "",
        'BPF_TABLE("lru_hash", __u64, struct pt_nf_state, nf_state, 65536);' if "netfilter" in programs else "",
        "BPF_PERCPU_ARRAY(nf_last, struct pt_nf_last, 1);" if nfct else "",
        # Queued traced packets until net_dev_xmit (bpf/path.c); an LRU forgets those a qdisc dropped.
        'BPF_TABLE("lru_hash", struct pt_xmit_key, struct pt_packet_event, xmit_pending, 4096);\n'
        "BPF_PERCPU_ARRAY(xmit_scratch, struct pt_packet_event, 1);" if config.path else "",
        "BPF_HASH(nfk_calls, __u64, struct pt_nfk_call, 4096);\n"
        "BPF_HASH(nfk_tables, __u64, struct pt_nfk_table, 4096);" if "netfilter" in config.kprobes else "",
        f"// filter: {config.filter.expression or '(none)'}",
        config.filter.c_source,
        # Inlined, not #included: BCC rewrites map calls (counters.lookup) only in the main source text.
        (BPF_DIR / "skb.h").read_text(),
        (BPF_DIR / "nfhook.h").read_text() if config.netfilter else "",
    ]
    # Each program's pt_count() calls count under its own slot (PT_PROBE_* in podtrace.h, the registry's counter).
    parts += [f"#undef PT_PROBE\n#define PT_PROBE {registry.counter_slot(name)}\n"
              f"{(BPF_DIR / registry.program(name).source).read_text()}" for name in programs]
    return ProbeBuild("\n".join(parts) + "\n", cflags, programs, bool(ct_flags) and config.drops, refusal)
