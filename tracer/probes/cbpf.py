"""Classic BPF (cBPF) as libpcap compiles it, rewritten as C that BCC builds: each instruction becomes one
labelled C statement and every jump a forward `goto`, so the result is a loop-free DAG the verifier accepts.

The C side sees `const __u8 *pkt` (PT_SNAP_LEN + 8 readable bytes), `__u32 len` (valid bytes in pkt) and `__u32
wirelen` (the packet's real length). Semantics follow libpcap's reference interpreter (bpf_filter.c): loads are
big-endian, a load past `len` rejects the packet, division by zero rejects it, shifts by 32 or more give 0. Every
packet index is masked with `PT_SNAP_LEN - 1` so the verifier can prove the access stays in the buffer. Pure:
tracer/probes/pcapfilter.py compiles expressions with libpcap and calls to_c."""

from __future__ import annotations

import re
from collections.abc import Sequence

from tracer.output.errors import PodtraceError, UsageError

Insn = tuple[int, int, int, int]  # (code, jt, jf, k), as struct bpf_insn
FUNCTION = "pt_filter_match"

# Opcode fields, from pcap/bpf.h.
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = range(8)
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
BPF_K, BPF_X, BPF_A = 0x00, 0x08, 0x10
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
BPF_LSH, BPF_RSH, BPF_NEG, BPF_MOD, BPF_XOR = 0x60, 0x70, 0x80, 0x90, 0xA0
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET = 0x00, 0x10, 0x20, 0x30, 0x40
BPF_TAX, BPF_TXA = 0x00, 0x80
BPF_MEMWORDS = 16

_SIZES = {BPF_W: 4, BPF_H: 2, BPF_B: 1}
_ALU_OPS = {BPF_ADD: "+", BPF_SUB: "-", BPF_MUL: "*", BPF_OR: "|", BPF_AND: "&", BPF_XOR: "^"}
_JMP_OPS = {BPF_JEQ: "{a} == {v}", BPF_JGT: "{a} > {v}", BPF_JGE: "{a} >= {v}", BPF_JSET: "({a} & {v}) != 0"}


_VALUES = {  # big-endian, from the masked index i
    1: "pkt[i]",
    2: "((__u32)pkt[i] << 8) | pkt[i + 1]",
    4: "((__u32)pkt[i] << 24) | ((__u32)pkt[i + 1] << 16) | ((__u32)pkt[i + 2] << 8) | pkt[i + 3]",
}


def _ind_load(size: int, k: int) -> list[str]:
    # 64-bit sums, so X + k + size cannot wrap past len as it could in 32 bits
    return [
        f"off = (__u64)X + {k}U;",
        f"if (off + {size} > len) return 0;",
        "i = off & (PT_SNAP_LEN - 1);",
        f"A = {_VALUES[size]};",
    ]


def _abs_load(size: int, k: int, dst: str) -> list[str]:
    if k + size > 0xFFFFFFFF:
        return ["return 0;"]  # no packet is that long
    return [
        f"if (len < {k + size}U) return 0;",
        f"i = {k}U & (PT_SNAP_LEN - 1);",
        f"{dst} = {_VALUES[size]};",
    ]


def _branch(pc: int, cond: str, jt: int, jf: int) -> list[str]:
    t, f = pc + 1 + jt, pc + 1 + jf
    if t == f:
        return [] if jt == 0 else [f"goto insn_{t};"]
    if jf == 0:
        return [f"if ({cond}) goto insn_{t};"]
    if jt == 0:
        return [f"if (!({cond})) goto insn_{f};"]
    return [f"if ({cond}) goto insn_{t};", f"goto insn_{f};"]


def translate(pc: int, insn: Insn) -> list[str]:
    """The C statements for one cBPF instruction (without its label)."""
    code, jt, jf, k = insn
    cls = code & 0x07
    size, mode, src, op = code & 0x18, code & 0xE0, code & 0x08, code & 0xF0
    if cls in (BPF_LD, BPF_LDX):
        dst = "A" if cls == BPF_LD else "X"
        if mode == BPF_IMM:
            return [f"{dst} = {k}U;"]
        if mode == BPF_LEN:
            return [f"{dst} = wirelen;"]
        if mode == BPF_MEM:
            _check_mem(pc, k)
            return [f"{dst} = M{k};"]
        if cls == BPF_LD and mode == BPF_ABS and size in _SIZES:
            return _abs_load(_SIZES[size], k, "A")
        if cls == BPF_LD and mode == BPF_IND and size in _SIZES:
            return _ind_load(_SIZES[size], k)
        if cls == BPF_LDX and mode == BPF_MSH and size == BPF_B:
            # X = 4 * (pkt[k] & 0xf): the IPv4 header length
            return [*_abs_load(1, k, "X"), "X = (X & 0xf) << 2;"]
    elif cls in (BPF_ST, BPF_STX):
        _check_mem(pc, k)
        return [f"M{k} = {'A' if cls == BPF_ST else 'X'};"]
    elif cls == BPF_ALU:
        if op == BPF_NEG:
            return ["A = 0U - A;"]
        operand = "X" if src == BPF_X else f"{k}U"
        if op in _ALU_OPS:
            return [f"A {_ALU_OPS[op]}= {operand};"]
        if op in (BPF_DIV, BPF_MOD):
            sym = "/" if op == BPF_DIV else "%"
            if src == BPF_K:
                return ["return 0;"] if k == 0 else [f"A {sym}= {k}U;"]
            return ["if (X == 0) return 0;", f"A {sym}= X;"]
        if op in (BPF_LSH, BPF_RSH):
            sym = "<<" if op == BPF_LSH else ">>"
            if src == BPF_K:
                return ["A = 0;"] if k >= 32 else [f"A {sym}= {k}U;"]
            return [f"A = X < 32 ? A {sym} X : 0;"]
    elif cls == BPF_JMP:
        if op == BPF_JA:
            return [] if k == 0 else [f"goto insn_{pc + 1 + k};"]
        if op in _JMP_OPS:
            cond = _JMP_OPS[op].format(a="A", v="X" if src == BPF_X else f"{k}U")
            return _branch(pc, cond, jt, jf)
    elif cls == BPF_RET:
        rval = code & 0x18
        if rval == BPF_K:
            return [f"return {1 if k else 0};"]
        if rval == BPF_A:
            return ["return A != 0;"]
        if rval == BPF_X:
            return ["return X != 0;"]
    elif cls == BPF_MISC:
        if code & 0xF8 == BPF_TAX:
            return ["X = A;"]
        if code & 0xF8 == BPF_TXA:
            return ["A = X;"]
    raise PodtraceError(f"cannot translate cBPF instruction {pc} {insn}", "report this filter as a bug")


def _check_mem(pc: int, k: int) -> None:
    if k >= BPF_MEMWORDS:
        raise PodtraceError(f"cBPF instruction {pc} uses scratch word {k}", "report this filter as a bug")


def _targets(pc: int, insn: Insn) -> list[int]:
    code, jt, jf, k = insn
    if code & 0x07 != BPF_JMP:
        return []
    if code & 0xF0 == BPF_JA:
        return [pc + 1 + k]
    return [pc + 1 + jt, pc + 1 + jf]


def to_c(instructions: Sequence[Insn], comments: Sequence[str] | None = None) -> str:
    """The C function for a cBPF program: one labelled statement per instruction, jumps as forward gotos."""
    n = len(instructions)
    if n == 0:
        raise PodtraceError("empty cBPF program", "report this filter as a bug")
    jumped_to: set[int] = set()
    for pc, insn in enumerate(instructions):
        for target in _targets(pc, insn):
            if target > 0xFFFFFFFF:
                # libpcap's interpreter wraps pc + k: `protochain` loops back this way
                raise UsageError(
                    "it needs a loop, which an in-kernel filter cannot run",
                    "protochain walks IPv6 extension headers in a loop; use 'ip proto N' or 'ip6 proto N'",
                )
            if target >= n:
                raise PodtraceError(f"cBPF jump from {pc} to {target} leaves the program", "")
            if target != pc + 1:  # a fall-through needs no label
                jumped_to.add(target)
    bodies = [translate(pc, insn) for pc, insn in enumerate(instructions)]
    text = "\n".join(line for body in bodies for line in body)

    # Declare only what the code touches, so -Wall stays quiet.
    candidates = ["A", "X", *(f"M{m}" for m in range(BPF_MEMWORDS))]
    names = [name for name in candidates if re.search(rf"\b{name}\b", text)]
    out = [f"static __always_inline int {FUNCTION}(const __u8 *pkt, __u32 len, __u32 wirelen)", "{"]
    if names:
        out.append("\t__u32 " + ", ".join(f"{name} = 0" for name in names) + ";")
    locals_ = [name for name in ("off", "i") if re.search(rf"\b{name} = ", text)]
    if locals_:
        out.append("\t__u64 " + ", ".join(locals_) + ";")
    out.append("\t(void)pkt; (void)len; (void)wirelen;" + "".join(f" (void){name};" for name in names))
    out.append("")
    for pc, body in enumerate(bodies):
        if pc in jumped_to:
            # A label needs a statement after it, even when the instruction compiles to nothing.
            out.append(f"insn_{pc}:" + ("" if body else " ;"))
        if comments is not None and pc < len(comments):
            out.append("\t/* " + " ".join(comments[pc].replace("*/", "* /").split()) + " */")
        out.extend(f"\t{line}" for line in body)
    if instructions[-1][0] & 0x07 != BPF_RET:
        out.append("\treturn 0; /* cBPF never falls off the end; reject if it would */")
    out.append("}")
    return "\n".join(out) + "\n"
