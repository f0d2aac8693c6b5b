"""Compile a tcpdump (pcap-filter) expression into C that BCC builds into the probes.

Filters run in the kernel, before an event is built. pwru does the same: libpcap compiles the expression to
classic BPF and the cBPF is rewritten as eBPF. BCC compiles C, so tracer/probes/cbpf.py turns each cBPF
instruction into one labelled C statement and every jump into a forward `goto`: a loop-free DAG the verifier
accepts, with libpcap's reference interpreter's semantics (bpf_filter.c).

The probes copy a packet snapshot starting at the network header (IPv4 or IPv6, no link layer), so the
expression is compiled for DLT_RAW, where libpcap tells `ip` from `ip6` by the version nibble. The C side sees

    const __u8 *pkt   PT_SNAP_LEN + 8 readable bytes (PT_SNAP_LEN: a power of two, from the probe header)
    __u32 len         valid bytes in pkt: min(packet length, PT_SNAP_LEN)
    __u32 wirelen     the packet's real length, for `len`, `greater` and `less`

"""

from __future__ import annotations

import ctypes
import ctypes.util
import difflib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tracer.events.decode import SNAP_LEN
from tracer.output.errors import PodtraceError, UsageError
from tracer.probes.cbpf import (
    BPF_ABS,
    BPF_B,
    BPF_H,
    BPF_IMM,
    BPF_IND,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_MSH,
    BPF_RET,
    BPF_W,
    Insn,
    to_c,
)

DLT_RAW = 12  # raw IPv4/IPv6 on Linux (pcap/dlt.h; BSD/OS uses 14)
SNAPLEN = 262144  # libpcap's MAXIMUM_SNAPLEN: `ret #262144` means "accept"
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
HINT = "filters use tcpdump syntax, e.g. 'tcp port 80'"

MATCH_ALL_INSNS: list[Insn] = [(BPF_RET | BPF_K, 0, 0, SNAPLEN)]



# Linux BPF extensions (linux/filter.h: SKF_AD_OFF = -0x1000, then SKF_AD_PROTOCOL 0, SKF_AD_PKTTYPE 4,
# SKF_AD_IFINDEX 8, ...). libpcap emits them for `inbound`, `outbound` and `ifindex` even on a DLT_RAW handle; they
# read the skb, which the probes' snapshot does not carry, so such a filter would silently match nothing.
SKF_AD_OFF = 0xFFFFF000
_EXTENSIONS = {4: ("the packet's direction (skb pkt_type)", "inbound/outbound"),
               8: ("the receiving interface (skb->dev ifindex)", "ifindex")}
# Link-layer byte accesses: the snapshot starts at the IP header, so ether[12:2] or link[0] would read IP header
# bytes (libpcap's link-layer offset on DLT_RAW is 0). `ether proto` is fine: libpcap tests the IP version for it.
_LINK_INDEX = re.compile(r"(?<![\w.:-])(ether|link|ppp|slip|fddi|tr|wlan)\s*\[|(?<![\w.:-])(byte)(?![\w.:-])")


@dataclass(frozen=True)
class CompiledFilter:
    """A filter ready for the probes: paste c_source before the code that calls pt_filter_match."""

    expression: str  # "" means match everything
    instructions: list[Insn]  # (code, jt, jf, k) as libpcap produced them
    c_source: str  # static __always_inline int pt_filter_match(const __u8 *pkt, __u32 len, __u32 wirelen)


# --- libpcap through ctypes -------------------------------------------------------------------------------


class BpfInsn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(BpfInsn))]


_LIB_NAMES = ("libpcap.so.0.8", "libpcap.so.1", "libpcap.so")
_lock = threading.Lock()  # bpf_image() returns a static buffer; older pcap_compile is not reentrant
_lib: ctypes.CDLL | None = None


def libpcap() -> ctypes.CDLL:
    """libpcap, loaded once, with the prototypes used here declared."""
    global _lib
    if _lib is not None:
        return _lib
    names = list(_LIB_NAMES)
    found = ctypes.util.find_library("pcap")
    if found:
        names.insert(0, found)
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise PodtraceError(
            "filters need libpcap, which is not installed",
            "install libpcap0.8 (Debian/Ubuntu) or libpcap (Fedora/RHEL)",
        )
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_close.restype = None
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    ]
    lib.pcap_freecode.restype = None
    lib.pcap_freecode.argtypes = [ctypes.POINTER(BpfProgram)]
    lib.bpf_image.restype = ctypes.c_char_p
    lib.bpf_image.argtypes = [ctypes.POINTER(BpfInsn), ctypes.c_int]
    _lib = lib
    return lib


def disassemble(instructions: Sequence[Insn]) -> list[str]:
    """libpcap's own disassembly (as `tcpdump -d` prints it), one line per instruction."""
    lib = libpcap()
    lines = []
    with _lock:
        for pc, (code, jt, jf, k) in enumerate(instructions):
            insn = BpfInsn(code, jt, jf, k)
            lines.append((lib.bpf_image(ctypes.byref(insn), pc) or b"").decode(errors="replace"))
    return lines


# --- public API -------------------------------------------------------------------------------------------


def match_all() -> CompiledFilter:
    """The empty filter; needs no libpcap."""
    return CompiledFilter("", list(MATCH_ALL_INSNS), to_c(MATCH_ALL_INSNS, ["(000) ret      #262144"]))


def compile_filter(expression: str) -> CompiledFilter:
    """Compile a pcap-filter expression for packets that start at the network header."""
    if not expression.strip():
        return match_all()
    _refuse_link_layer(expression)
    lib = libpcap()
    with _lock:
        handle = lib.pcap_open_dead(DLT_RAW, SNAPLEN)
        if not handle:
            raise PodtraceError("libpcap could not open a dead handle for DLT_RAW", "")
        try:
            prog = BpfProgram()
            rc = lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1, PCAP_NETMASK_UNKNOWN)
            if rc != 0:
                message = (lib.pcap_geterr(handle) or b"").decode(errors="replace").strip()
                if "syntax error" in message:
                    message = locate_syntax_error(expression, lambda text: _pcap_error(lib, handle, text))
                raise UsageError(f"bad filter {expression!r}: {message or 'libpcap rejected it'}", HINT)
            try:
                instructions = [
                    (prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf, prog.bf_insns[i].k)
                    for i in range(prog.bf_len)
                ]
            finally:
                lib.pcap_freecode(ctypes.byref(prog))
        finally:
            lib.pcap_close(handle)
    _refuse_extensions(expression, instructions)
    _refuse_loads_past_the_snapshot(expression, instructions)
    try:
        c_source = to_c(instructions, disassemble(instructions))
    except UsageError as err:
        raise UsageError(f"bad filter {expression!r}: {err.message}", err.hint) from None
    return CompiledFilter(expression, instructions, c_source)


def _refuse_link_layer(expression: str) -> None:
    m = _LINK_INDEX.search(expression)
    if m:
        word = m.group(1) or m.group(2)
        raise UsageError(
            f"bad filter {expression!r}: '{word}' reads link-layer bytes, but podtrace's packets start at their IP "
            "header (there is no link layer to read)",
            "use ip[...], ip6[...], tcp[...] or udp[...] offsets, or 'ether proto' for the IP version")


def _refuse_extensions(expression: str, instructions: Sequence[Insn]) -> None:
    for code, _jt, _jf, k in instructions:
        if code & 0x07 in (BPF_LD, BPF_LDX) and code & 0xE0 == BPF_ABS and k >= SKF_AD_OFF:
            what, words = _EXTENSIONS.get(k - SKF_AD_OFF, ("skb metadata (a Linux BPF extension)", "this word"))
            raise UsageError(f"bad filter {expression!r}: {words} needs {what}, which podtrace's in-kernel filter "
                             "does not see", "filter on addresses and ports instead, e.g. 'dst host 10.0.0.1'")


MIN_IPV4_HEADER = 20  # what `ldx 4*([0]&0xf)` gives at least on a valid IPv4 packet (IHL >= 5)


def _refuse_loads_past_the_snapshot(expression: str, instructions: Sequence[Insn]) -> None:
    """A load past the bytes the probes copy could never match (the load rejects the packet): said, not run."""
    sizes = {BPF_W: 4, BPF_H: 2, BPF_B: 1}
    x_min = 0  # the least X can be at this point, as far as this straight scan can tell
    for code, _jt, _jf, k in instructions:
        cls, mode = code & 0x07, code & 0xE0
        if cls == BPF_LDX:
            x_min = MIN_IPV4_HEADER if mode == BPF_MSH else k if mode == BPF_IMM else 0
            continue
        if cls != BPF_LD or mode not in (BPF_ABS, BPF_IND) or k >= SKF_AD_OFF:  # extensions: refused above
            continue
        end = k + sizes[code & 0x18] + (x_min if mode == BPF_IND else 0)
        if end > SNAP_LEN:
            least = "at least " if mode == BPF_IND else ""  # after a header of variable length
            raise UsageError(
                f"bad filter {expression!r}: it reads {least}offset {end - 1} of the packet, past the {SNAP_LEN} "
                "bytes the probes copy from its IP header: it could never match",
                f"filter on fields within the first {SNAP_LEN} bytes of the packet")


# --- pointing at a syntax error ---------------------------------------------------------------------------

# libpcap only says "syntax error". To say where, prefixes of the expression are tried with a few endings (and the
# parentheses they leave open closed): the first prefix no ending can complete holds the offending word; when
# every prefix can be completed, the expression stops too early.
_TOKEN = re.compile(r"[A-Za-z0-9_.:/\-]+|&&|\|\||[!=<>]=|<<|>>|\S")
_ENDINGS = ("", "1", " 1", " 1.2.3.4", " tcp", "1]", "1] = 0", "] = 0", ":1] = 0", " = 0", " 1 = 0")
# pcap-filter(7) words, for "did you mean" on a misspelt one.
_KEYWORD_TEXT = (
    "and arp atalk broadcast byte decnet dir dst ether gateway greater host icmp icmp6 igmp igrp inbound ip ip6 "
    "ipx iso len less link mpls multicast net not or outbound pim port portrange proto protochain rarp sctp src "
    "tcp udp vlan geneve mask ifname on rulenum reason rset ruleset action esp ah vrrp carp stp netbeui lat moprc "
    "mopdl l1 l2 iih lsp snp csnp psnp isis clnp esis ppp slip fddi tr wlan type subtype addr1 addr2 addr3 addr4 "
    "ra ta pppoed pppoes tcpflags icmptype icmpcode tcp-fin tcp-syn tcp-rst tcp-push tcp-ack tcp-urg tcp-ece "
    "tcp-cwr icmp-echoreply icmp-unreach icmp-sourcequench icmp-redirect icmp-echo icmp-routeradvert "
    "icmp-routersolicit icmp-timxceed icmp-paramprob icmp-tstamp icmp-tstampreply icmp-ireq icmp-ireqreply "
    "icmp-maskreq icmp-maskreply icmp6type icmp6code"
)
KEYWORDS = tuple(_KEYWORD_TEXT.split())


def _pcap_error(lib: ctypes.CDLL, handle: int, text: str) -> str:
    """libpcap's error for `text` ("" when it compiles); the caller holds _lock."""
    prog = BpfProgram()
    if lib.pcap_compile(handle, ctypes.byref(prog), text.encode(), 1, PCAP_NETMASK_UNKNOWN) == 0:
        lib.pcap_freecode(ctypes.byref(prog))
        return ""
    return (lib.pcap_geterr(handle) or b"").decode(errors="replace")


def locate_syntax_error(expression: str, error_of: Callable[[str], str]) -> str:
    """A message naming the word where `expression` stops parsing; error_of(text) is libpcap's error or ""."""
    tokens = list(_TOKEN.finditer(expression))
    ends = [match.end() for match in tokens]
    words = [match.group() for match in tokens]

    def completes(count: int) -> bool:  # can the first `count` tokens start a valid expression?
        prefix = expression[: ends[count - 1]]
        closers = ")" * max(0, prefix.count("(") - prefix.count(")"))  # parentheses still open
        return any("syntax error" not in error_of(prefix + ending + closers) for ending in _ENDINGS)

    low, high = 0, len(words)  # completes(low) holds (0 tokens: trivially); find the last count that does
    while low < high:
        middle = (low + high + 1) // 2
        if completes(middle):
            low = middle
        else:
            high = middle - 1
    if low == len(words):
        where = f"after {words[-1]!r}" if words else "empty"
        if expression.count("(") > expression.count(")"):
            where += ", a '(' is never closed"
        return f"syntax error: the expression ends too early ({where}){_did_you_mean(words)}"
    bad = words[low]
    column = ends[low] - len(bad) + 1
    return f"syntax error at {bad!r} (character {column}){_did_you_mean(words[: low + 1])}"


def _did_you_mean(words: Sequence[str]) -> str:
    """A misspelt keyword among the words up to the error: "; 'portt' is not a filter keyword (did you mean ...)"."""
    for word in reversed(words):
        if not word[0].isalpha() or word.lower() in KEYWORDS or "." in word or ":" in word:
            continue
        close = difflib.get_close_matches(word.lower(), KEYWORDS, n=1, cutoff=0.75)
        if close:
            return f"; {word!r} is not a filter keyword (did you mean {close[0]!r}?)"
    return ""
