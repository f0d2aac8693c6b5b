"""tracer.probes.pcapfilter: the generated C must give libpcap's own verdict on every packet.

Differential testing: each expression is compiled by tracer.probes.pcapfilter, the C is built with gcc into a shared
library, and its verdict on scapy-built packets (whole, cut short, longer than the snapshot) is compared with
libpcap's reference interpreter, pcap_offline_filter, on the same bytes with the same caplen and wirelen.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.packet import Raw

from tracer.output.errors import UsageError
from tracer.probes import pcapfilter
from tracer.probes.pcapfilter import BpfInsn, BpfProgram, Insn

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

PRELUDE = """
typedef unsigned char __u8;
typedef unsigned int __u32;
typedef unsigned long long __u64;
#define __always_inline inline __attribute__((always_inline))
"""

EXPRESSIONS = [
    "ip",
    "ip6",
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "not icmp",
    "tcp or udp or icmp6",
    "tcp port 80",
    "udp port 53",
    "port 53",
    "src port 1234",
    "dst port 443",
    "portrange 1000-2000",
    "tcp dst portrange 8000-8100",
    "host 10.244.1.5",
    "src host 10.96.0.10",
    "dst net 10.96.0.0/12",
    "src net 10.244.0.0/16 and dst port 53",
    "net 192.168.0.0/16 or net 172.16.0.0/12",
    "not (tcp port 22 or udp port 53)",
    "host fd00::1",
    "ip6 net fd00:10:244::/48",
    "ip6 and tcp dst port 8080",
    "ip6 and udp port 53",
    "tcp[tcpflags] & tcp-syn != 0",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
    "tcp[13] = 18",
    "ip[6:2] & 0x1fff != 0",
    "ip[6] & 0x20 != 0",
    "ip[0] & 0xf > 5",
    "len > 100",
    "greater 200",
    "less 60",
    "icmp[icmptype] == icmp-echo",
    "icmp6 and ip6[40] == 128",
    "ip proto 47",
    "ip6 proto 44",
    "ip multicast",
    "ip6 multicast",
    "dst host 255.255.255.255",
    "udp and udp[8:2] > 0x1000",
    "tcp[4:4] > 1000",
    "ip[12:4] & 0xffff0000 == 0x0af40000",
    "ip[2:2] * 4 / 2 > 100",
    "ip[8] % 3 == 1",
    "ip[8] ^ 0xff == 0xc0",
    "ip[1] << 2 > 10",
    "ip[1] >> (ip[0] & 0x3) == 0",
    "ip[8] << (ip[8] - 40) == 0",
    "-ip[8] & 0xff == 1",
    "ip[8] / (ip[9] - 6) > 0",
    "ip[8] % (ip[9] & 0x7) == 0",
    "ip[2:2] - (ip[0] & 0xf) > 40",
    "ip6[4:2] + 40 == len",
    "ip[ip[0] & 0xf] > 0",
    "len - 20 > ip[2:2] / 2",
    "ip[200] == 0x78",
    "ip[250:4] != 7",
    "ip and (ip[3] | ip[2]) & 1 == 1",
]


def _ipv4_packets() -> list[bytes]:
    payload = Raw(b"x" * 300)
    pkts = [
        IP(src="10.244.1.5", dst="10.96.0.10") / TCP(sport=1234, dport=80, flags="S"),
        IP(src="10.96.0.10", dst="10.244.1.5") / TCP(sport=80, dport=1234, flags="SA"),
        IP(src="10.244.1.5", dst="10.96.0.10", tos=0x10)
        / TCP(sport=1234, dport=80, flags="PA", seq=5000)
        / payload,
        IP(src="10.244.2.3", dst="10.96.0.10") / UDP(sport=5353, dport=53) / Raw(b"\x12\x34" * 10),
        IP(src="10.245.2.3", dst="10.96.0.10") / UDP(sport=40000, dport=53) / Raw(b"q" * 30),
        IP(src="192.168.1.1", dst="172.16.5.5") / UDP(sport=1500, dport=8053) / Raw(b"\x20\x00" * 4),
        IP(src="10.244.1.5", dst="10.244.2.7") / ICMP(type=8) / Raw(b"ping" * 20),
        IP(src="10.244.2.7", dst="10.244.1.5") / ICMP(type=0) / Raw(b"ping" * 20),
        IP(src="10.244.1.5", dst="8.8.8.8", options=[IPOption_RR()]) / TCP(sport=2222, dport=443, flags="S"),
        IP(src="172.16.0.9", dst="10.0.0.1", proto=47) / GRE() / Raw(b"g" * 40),
        IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(b"d" * 200),
        IP(src="10.244.1.5", dst="224.0.0.251") / UDP(sport=5353, dport=5353),
        IP(src="10.1.1.1", dst="10.2.2.2", ttl=63) / TCP(sport=22, dport=1022, flags="A", seq=999),
        IP(src="10.1.1.1", dst="10.2.2.2", ttl=255) / TCP(sport=8050, dport=1500, flags="R", seq=1001),
        IP(src="10.1.1.1", dst="10.2.2.2", ttl=1) / TCP(sport=22, dport=1022, flags="A"),
    ]
    out = [bytes(p) for p in pkts]
    # Fragments: the first with MF, a later one with an offset (no L4 header in it).
    big = IP(src="10.244.1.5", dst="10.96.0.10", id=77) / UDP(sport=1234, dport=53) / Raw(b"f" * 600)
    out += [bytes(frag) for frag in big.fragment(fragsize=256)]
    return out


def _ipv6_packets() -> list[bytes]:
    pkts = [
        IPv6(src="fd00:10:244:1::5", dst="fd00::1") / TCP(sport=40000, dport=8080, flags="S"),
        IPv6(src="fd00::1", dst="fd00:10:244:1::5")
        / TCP(sport=8080, dport=40000, flags="SA")
        / Raw(b"y" * 300),
        IPv6(src="fd00:10:244:2::3", dst="fd00::a") / UDP(sport=5353, dport=53) / Raw(b"dns" * 5),
        IPv6(src="fd00:10:245::3", dst="fd00::a") / UDP(sport=1111, dport=1999),
        IPv6(src="fd00:10:244:1::5", dst="fd00::1") / ICMPv6EchoRequest(data=b"p" * 56),
        IPv6(src="fe80::1", dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt="fe80::2"),
        IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / UDP(sport=53, dport=53),
        IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(m=1, offset=0, id=5) / TCP(dport=80),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=22, dport=2222, flags="A"),
    ]
    return [bytes(p) for p in pkts]


def _odd_packets() -> list[bytes]:
    return [b"", b"\x45", b"\x50" + b"\x00" * 40, b"\xff" * 64, bytes(range(256)) * 2]


CUTS = [1, 2, 8, 9, 10, 13, 20, 21, 22, 24, 30, 34, 40, 41, 42, 47, 54, 60]


def _cases() -> list[tuple[bytes, int]]:
    """(bytes the probe copied, the packet's real length): whole packets, then cut-short copies of them."""
    whole = _ipv4_packets() + _ipv6_packets() + _odd_packets()
    cases = [(pkt, len(pkt)) for pkt in whole]
    for pkt in whole:
        cases += [(pkt[:cut], len(pkt)) for cut in CUTS if cut < len(pkt)]
    # a packet that is itself short (wirelen == bytes), not merely a short snapshot
    cases += [(pkt[:cut], cut) for pkt in whole[:6] for cut in (20, 28, 41)]
    return cases


CASES = _cases()


# --- building the C and asking libpcap -------------------------------------------------------------------


Matcher = Callable[[bytes, int], int]


class Built:
    """A gcc-built shared library holding one matcher per C function, for one PT_SNAP_LEN."""

    def __init__(self, tmp: Path, snap: int, sources: Sequence[str]) -> None:
        self.snap = snap
        parts = [PRELUDE, f"#define PT_SNAP_LEN {snap}"]
        for n, source in enumerate(sources):
            parts += [
                f"#define pt_filter_match pt_filter_match_{n}",
                source,
                "#undef pt_filter_match",
                f"int match_{n}(const __u8 *pkt, __u32 len, __u32 wirelen)"
                f" {{ return pt_filter_match_{n}(pkt, len, wirelen); }}",
            ]
        c_file = tmp / f"filters_{snap}.c"
        c_file.write_text("\n".join(parts) + "\n")
        so = tmp / f"filters_{snap}.so"
        # -Werror: the generated code must compile without warnings (unused labels, variables, ...)
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", str(so), str(c_file)],
            check=True,
            capture_output=True,
            text=True,
        )
        self.lib = ctypes.CDLL(str(so))
        self.funcs = []
        for n in range(len(sources)):
            func = getattr(self.lib, f"match_{n}")
            func.restype = ctypes.c_int
            func.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32]
            self.funcs.append(func)

    def verdict(self, n: int, data: bytes, wirelen: int) -> bool:
        caplen = min(len(data), self.snap)
        # Bytes past len are garbage in a real probe buffer: a load that skipped its bounds check would show.
        buf = data[:caplen] + b"\xa5" * (self.snap + 8 - caplen)
        return self.funcs[n](buf, caplen, wirelen) != 0


class PcapHdr(ctypes.Structure):
    _fields_ = [
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("caplen", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    ]


def _program(instructions: Sequence[Insn]) -> tuple[BpfProgram, ctypes.Array[BpfInsn]]:
    array = (BpfInsn * len(instructions))(*(BpfInsn(*insn) for insn in instructions))
    return BpfProgram(len(instructions), ctypes.cast(array, ctypes.POINTER(BpfInsn))), array


def reference(instructions: Sequence[Insn], data: bytes, wirelen: int, snap: int) -> bool:
    """libpcap's interpreter (bpf_filter via pcap_offline_filter) on what the probe would have copied."""
    lib = pcapfilter.libpcap()
    lib.pcap_offline_filter.restype = ctypes.c_int
    lib.pcap_offline_filter.argtypes = [ctypes.POINTER(BpfProgram), ctypes.POINTER(PcapHdr), ctypes.c_char_p]
    prog, _keep = _program(instructions)
    caplen = min(len(data), snap)
    hdr = PcapHdr(0, 0, caplen, wirelen)
    return lib.pcap_offline_filter(ctypes.byref(prog), ctypes.byref(hdr), data[:caplen] + b"\0") != 0


def libpcap_compile(expression: str) -> list[Insn]:
    """pcap_compile for DLT_RAW, independently of tracer.probes.pcapfilter's wrapper."""
    lib = pcapfilter.libpcap()
    handle = lib.pcap_open_dead(12, 262144)
    prog = BpfProgram()
    assert lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1, 0xFFFFFFFF) == 0
    insns = [(i.code, i.jt, i.jf, i.k) for i in prog.bf_insns[: prog.bf_len]]
    lib.pcap_freecode(ctypes.byref(prog))
    lib.pcap_close(handle)
    return insns


# --- differential tests over expressions ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled() -> list[pcapfilter.CompiledFilter]:
    return [pcapfilter.compile_filter(expr) for expr in EXPRESSIONS]


@pytest.fixture(scope="module", params=[256, 64])
def built(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    compiled: list[pcapfilter.CompiledFilter],
) -> Built:
    return Built(tmp_path_factory.mktemp("pcapfilter"), request.param, [f.c_source for f in compiled])


def test_instructions_are_libpcaps(compiled: list[pcapfilter.CompiledFilter]) -> None:
    for flt in compiled:
        assert flt.instructions == libpcap_compile(flt.expression), flt.expression


def test_generated_c_matches_libpcap(built: Built, compiled: list[pcapfilter.CompiledFilter]) -> None:
    checked = 0
    matched = 0
    mismatches = []
    for n, flt in enumerate(compiled):
        for data, wirelen in CASES:
            want = reference(flt.instructions, data, wirelen, built.snap)
            got = built.verdict(n, data, wirelen)
            checked += 1
            matched += want
            if got != want:
                mismatches.append((flt.expression, data[:48].hex(), len(data), wirelen, want, got))
    assert not mismatches, f"{len(mismatches)} of {checked} differ, first: {mismatches[:5]}"
    # The corpus must exercise both verdicts, or agreement proves little.
    assert checked > 5000
    assert 0.05 * checked < matched < 0.8 * checked


def test_every_expression_matches_some_and_rejects_some(compiled: list[pcapfilter.CompiledFilter]) -> None:
    # Meaningful only if each filter sees both outcomes on whole packets.
    dull = []
    whole = [(data, wirelen) for data, wirelen in CASES if len(data) == wirelen]
    for flt in compiled:
        verdicts = {reference(flt.instructions, data, wirelen, 256) for data, wirelen in whole}
        if verdicts != {True, False}:
            dull.append(flt.expression)
    assert not dull


def test_known_verdicts(tmp_path: Path) -> None:
    """A few verdicts stated outright, not only relative to libpcap."""
    syn = bytes(IP(src="10.244.1.5", dst="10.96.0.10") / TCP(sport=1234, dport=80, flags="S"))
    dns6 = bytes(IPv6(src="fd00::5", dst="fd00::a") / UDP(sport=5353, dport=53))
    exprs = ["tcp port 80", "tcp[tcpflags] & tcp-syn != 0", "udp port 53", "ip6", "len > 100", ""]
    flts = [pcapfilter.compile_filter(e) for e in exprs]
    lib = Built(tmp_path, 256, [f.c_source for f in flts])
    assert [lib.verdict(n, syn, len(syn)) for n in range(len(exprs))] == [1, 1, 0, 0, 0, 1]
    assert [lib.verdict(n, dns6, len(dns6)) for n in range(len(exprs))] == [0, 0, 1, 1, 0, 1]
    # the snapshot stops before the TCP ports: no match, as libpcap
    assert lib.verdict(0, syn[:21], len(syn)) is False
    assert lib.verdict(4, syn[:20], 1500) is True  # `len` is the wire length, not the snapshot's


# --- every instruction class, on hand-written cBPF -------------------------------------------------------

LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, LEN, MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
K, X, A = 0x00, 0x08, 0x10
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR = (
    0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xA0
)  # fmt: skip
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
TAX, TXA = 0x00, 0x80


def _alu_x_program(op: int, x_from: int) -> list[Insn]:
    """A = pkt[0], X = pkt[x_from], A op= X; match if A == pkt[2] (so the result itself is checked)."""
    return [
        (LDX | B | MSH, 0, 0, x_from),  # X = 4 * (pkt[x_from] & 0xf), small shifts and zero divisors
        (LD | B | ABS, 0, 0, 0),
        (ALU | op | X, 0, 0, 0),
        (ST, 0, 0, 3),
        (LD | B | ABS, 0, 0, 2),
        (TAX, 0, 0, 0),
        (LD | MEM, 0, 0, 3),
        (JMP | JEQ | X, 0, 1, 0),
        (RET | K, 0, 0, 1),
        (RET | A, 0, 0, 0),  # A is nonzero unless the result was 0
    ]


HAND_PROGRAMS: list[list[Insn]] = [
    *[_alu_x_program(op, 1) for op in (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, MOD, XOR)],
    # constants (a k = 0 divisor would crash the reference, which relies on bpf_validate)
    *[[(LD | W | ABS, 0, 0, 0), (ALU | op | K, 0, 0, k), (RET | A, 0, 0, 0)]
      for op in (ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, MOD, XOR) for k in (1, 7, 31, 0xFFFF0000)
      if op not in (LSH, RSH) or k < 32],  # a constant shift >= 32 is undefined in libpcap's C; never emitted
    [(LD | W | ABS, 0, 0, 0), (ALU | NEG, 0, 0, 0), (ALU | AND | K, 0, 0, 0x80000001), (RET | A, 0, 0, 0)],
    # shifts by X >= 32 give 0 in libpcap's interpreter
    [(LDX | IMM, 0, 0, 40), (LD | B | ABS, 0, 0, 0), (ALU | LSH | X, 0, 0, 0), (RET | A, 0, 0, 0)],
    [(LDX | IMM, 0, 0, 32), (LD | IMM, 0, 0, 0xFFFFFFFF), (ALU | RSH | X, 0, 0, 0), (RET | A, 0, 0, 0)],
    # loads: W/H/B at ABS and IND (X near and past len), LEN into A and X, IMM into X, MEM round trips
    *[[(LDX | IMM, 0, 0, x), (LD | size | IND, 0, 0, k), (RET | A, 0, 0, 0)]
      for size in (W, H, B) for x in (0, 3, 17, 0xFFFFFFFF) for k in (0, 1, 19, 0xFFFFFFFE)],
    *[[(LD | size | ABS, 0, 0, k), (RET | A, 0, 0, 0)]
      for size in (W, H, B) for k in (0, 16, 19, 39, 0xFFFFFFFF)],
    [(LDX | W | LEN, 0, 0, 0), (TXA, 0, 0, 0), (ALU | SUB | K, 0, 0, 40), (RET | A, 0, 0, 0)],
    [(LD | W | LEN, 0, 0, 0), (JMP | JGE | K, 1, 0, 60), (RET | K, 0, 0, 0), (RET | K, 0, 0, 7)],
    [(LDX | B | MSH, 0, 0, 0), (STX, 0, 0, 15), (LD | IMM, 0, 0, 0), (LDX | MEM, 0, 0, 15), (TXA, 0, 0, 0),
     (RET | A, 0, 0, 0)],
    # jumps: JA over instructions, JGT/JGE/JSET against X, both jt and jf nonzero
    [(LD | B | ABS, 0, 0, 9), (LDX | IMM, 0, 0, 6), (JMP | JGT | X, 2, 0, 0), (JMP | JA, 0, 0, 2),
     (RET | K, 0, 0, 0), (RET | K, 0, 0, 0), (JMP | JGE | X, 1, 2, 0), (RET | K, 0, 0, 0),
     (RET | K, 0, 0, 5), (JMP | JSET | X, 1, 0, 0), (RET | K, 0, 0, 9), (RET | K, 0, 0, 0)],
    [(LD | B | ABS, 0, 0, 1), (JMP | JSET | K, 0, 0, 0x10), (JMP | JEQ | K, 2, 1, 0), (RET | K, 0, 0, 1),
     (RET | K, 0, 0, 0), (RET | K, 0, 0, 3)],
]  # fmt: skip


def test_hand_written_programs_match_libpcap(tmp_path: Path) -> None:
    built = Built(tmp_path, 64, [pcapfilter.to_c(prog) for prog in HAND_PROGRAMS])
    mismatches = []
    checked = 0
    for n, prog in enumerate(HAND_PROGRAMS):
        for data, wirelen in CASES:
            want = reference(prog, data, wirelen, built.snap)
            got = built.verdict(n, data, wirelen)
            checked += 1
            if got != want:
                mismatches.append((n, prog, data[:24].hex(), len(data), wirelen, want, got))
    assert not mismatches, f"{len(mismatches)} of {checked} differ, first: {mismatches[:3]}"


def test_single_instruction_translations() -> None:
    tr = pcapfilter.translate
    assert tr(0, (ALU | DIV | X, 0, 0, 0)) == ["if (X == 0) return 0;", "A /= X;"]
    assert tr(0, (ALU | MOD | K, 0, 0, 0)) == ["return 0;"]
    assert tr(0, (ALU | LSH | K, 0, 0, 32)) == ["A = 0;"]
    assert tr(0, (ALU | RSH | X, 0, 0, 0)) == ["A = X < 32 ? A >> X : 0;"]
    assert tr(0, (ALU | NEG, 0, 0, 0)) == ["A = 0U - A;"]
    assert tr(0, (ST, 0, 0, 4)) == ["M4 = A;"]
    assert tr(0, (LDX | MEM, 0, 0, 4)) == ["X = M4;"]
    assert tr(0, (LD | W | LEN, 0, 0, 0)) == ["A = wirelen;"]
    assert tr(0, (MISC | TAX, 0, 0, 0)) == ["X = A;"]
    assert tr(0, (RET | K, 0, 0, 262144)) == ["return 1;"]
    assert tr(0, (RET | A, 0, 0, 0)) == ["return A != 0;"]
    assert tr(3, (JMP | JA, 0, 0, 2)) == ["goto insn_6;"]
    assert tr(3, (JMP | JEQ | K, 0, 2, 6)) == ["if (!(A == 6U)) goto insn_6;"]
    assert tr(3, (JMP | JSET | K, 1, 0, 0x1FFF)) == ["if ((A & 8191U) != 0) goto insn_5;"]
    assert tr(3, (JMP | JGT | X, 1, 2, 0)) == ["if (A > X) goto insn_5;", "goto insn_6;"]
    assert tr(0, (LD | H | ABS, 0, 0, 40)) == [
        "if (len < 42U) return 0;",
        "i = 40U & (PT_SNAP_LEN - 1);",
        "A = ((__u32)pkt[i] << 8) | pkt[i + 1];",
    ]
    ind = tr(0, (LD | B | IND, 0, 0, 13))
    assert ind[0] == "off = (__u64)X + 13U;" and "& (PT_SNAP_LEN - 1)" in ind[2]


def test_only_jump_targets_get_labels() -> None:
    flt = pcapfilter.compile_filter("tcp port 80")
    labels = {line.rstrip(":; ") for line in flt.c_source.splitlines() if line.startswith("insn_")}
    gotos = {line.split("goto ")[1].rstrip(";") for line in flt.c_source.splitlines() if "goto " in line}
    assert labels == gotos
    assert "/* (000) ldb [0] */" in flt.c_source  # libpcap's disassembly as comments


# --- the API around it -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("tcp prot 80", "bad filter 'tcp prot 80': syntax error at 'prot' (character 5)"),
        ("host 10.0.0.300", "bad filter 'host 10.0.0.300': "),
        ("ether host 1:2:3:4:5:6", "bad filter 'ether host 1:2:3:4:5:6': ethernet addresses supported only"),
        ("vlan", "bad filter 'vlan': no VLAN support for Raw IP"),
        ("ip6 and ip[40:4] = 1", "bad filter 'ip6 and ip[40:4] = 1': expression rejects all packets"),
        ("ip6 protochain 6", "bad filter 'ip6 protochain 6': it needs a loop"),
    ],
)
def test_malformed_filters_raise_usage_error(expression: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        pcapfilter.compile_filter(expression)
    assert info.value.message.startswith(message)
    assert "\n" not in info.value.one_line()
    assert info.value.exit_code == 2
    assert info.value.hint


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("ip[300] = 1", "it reads offset 300 of the packet, past the 256 bytes the probes copy from its IP header"),
        ("ip[255:2] = 1", "it reads offset 256 of the packet"),
        ("ip6[253:4] = 1", "it reads offset 256 of the packet"),
        # tcp[] is indexed from the transport header: at least 20 bytes of IPv4 header come first
        ("tcp[236] = 1", "it reads at least offset 256 of the packet"),
        ("udp and udp[240:2] = 1", "it reads at least offset 261 of the packet"),
    ],
)
def test_loads_past_the_copied_snapshot_are_refused_not_left_to_match_nothing(expression: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        pcapfilter.compile_filter(expression)
    assert info.value.message.startswith(f"bad filter {expression!r}: {message}"), info.value.message
    assert info.value.message.endswith("it could never match") and info.value.exit_code == 2
    assert "256 bytes" in info.value.hint


@pytest.mark.parametrize("expression", ["ip[255] = 1", "ip[254:2] = 1", "ip6[252:4] = 1", "tcp[235] = 1",
                                        "tcp[tcpflags] & tcp-syn != 0", "icmp6 and ip6[40] = 2", "len > 2000"])
def test_loads_within_the_snapshot_compile(expression: str) -> None:
    assert pcapfilter.compile_filter(expression).instructions


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("tcp port", "syntax error: the expression ends too early (after 'port')"),
        ("udp and", "syntax error: the expression ends too early (after 'and')"),
        ("(udp", "syntax error: the expression ends too early (after 'udp', a '(' is never closed)"),
        ("tcp[", "syntax error: the expression ends too early (after '[')"),
        ("tcp portt 80",
         "syntax error at 'portt' (character 5); 'portt' is not a filter keyword (did you mean 'port'?)"),
        ("udpp port 53", "syntax error at 'udpp' (character 1); 'udpp' is not a filter keyword (did you mean 'udp'?)"),
        ("tcp port 80 annd udp", "syntax error at 'annd' (character 13); 'annd' is not a filter keyword"),
        ("tcp port 80)", "syntax error at ')' (character 12)"),
        ("tcp dst port 80 80", "syntax error at '80' (character 17)"),
        ("(udp and (tcp port)", "syntax error at ')' (character 19)"),
        ("ip[2:2] > > 3", "syntax error at '>' (character 11)"),
    ],
)
def test_syntax_errors_point_at_the_word_or_the_missing_end(expression: str, message: str) -> None:
    """libpcap only says "syntax error": the message names where the expression stops parsing."""
    with pytest.raises(UsageError) as info:
        pcapfilter.compile_filter(expression)
    assert info.value.message.startswith(f"bad filter {expression!r}: {message}"), info.value.message
    assert "\n" not in info.value.one_line() and info.value.exit_code == 2


def test_syntax_error_search_asks_few_compilations() -> None:
    """A long expression is searched by bisection over its prefixes, not one compile per word per ending."""
    expression = " or ".join(f"tcp port {port}" for port in range(1000, 1100)) + " or tcp portt 80"
    asked: list[str] = []

    def error_of(text: str) -> str:
        asked.append(text)
        handle = pcapfilter.libpcap().pcap_open_dead(pcapfilter.DLT_RAW, pcapfilter.SNAPLEN)
        try:
            return pcapfilter._pcap_error(pcapfilter.libpcap(), handle, text)
        finally:
            pcapfilter.libpcap().pcap_close(handle)

    message = pcapfilter.locate_syntax_error(expression, error_of)
    assert message.startswith(f"syntax error at 'portt' (character {expression.index('portt') + 1})"), message
    assert len(asked) < 10 * len(pcapfilter._ENDINGS), len(asked)


@pytest.mark.parametrize("expression", ["", "   "])
def test_empty_expression_matches_everything(expression: str, tmp_path: Path) -> None:
    flt = pcapfilter.compile_filter(expression)
    assert flt == pcapfilter.match_all()
    assert flt.expression == ""
    assert flt.instructions == libpcap_compile("")
    built = Built(tmp_path, 256, [flt.c_source])
    assert all(built.verdict(0, data, wirelen) for data, wirelen in CASES)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        # libpcap compiles these to Linux BPF extension loads ([type], [ifidx]) that the snapshot cannot answer
        ("inbound", "inbound/outbound needs the packet's direction (skb pkt_type)"),
        ("outbound", "inbound/outbound needs the packet's direction (skb pkt_type)"),
        ("not inbound", "inbound/outbound needs the packet's direction (skb pkt_type)"),
        ("tcp port 80 and (inbound or udp)", "inbound/outbound needs the packet's direction (skb pkt_type)"),
        ("ifindex 3", "ifindex needs the receiving interface (skb->dev ifindex)"),
        # link-layer offsets: libpcap's link header on DLT_RAW is 0 bytes, these would read the IP header
        ("ether[12:2] = 0x800", "'ether' reads link-layer bytes"),
        ("link[0] = 0x45", "'link' reads link-layer bytes"),
        ("ppp [0] = 1", "'ppp' reads link-layer bytes"),
        ("udp and byte 0 = 0x45", "'byte' reads link-layer bytes"),
    ],
)
def test_filters_the_snapshot_cannot_answer_are_refused(expression: str, says: str) -> None:
    with pytest.raises(UsageError) as info:
        pcapfilter.compile_filter(expression)
    assert info.value.message.startswith(f"bad filter {expression!r}: {says}"), info.value.message
    assert "\n" not in info.value.one_line() and info.value.exit_code == 2 and info.value.hint


def test_link_words_that_do_not_read_the_link_layer_still_compile() -> None:
    """`ether proto` is the IP version test on DLT_RAW; `ip[0]` reads the IP header, as meant."""
    for expression in ("ether proto 0x800", "ip[0] & 0xf0 = 0x40", "tcp[13] & 2 != 0", "len > 100"):
        assert pcapfilter.compile_filter(expression).instructions
