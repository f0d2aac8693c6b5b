"""A small, pure-Python reader of kernel BTF: struct member offsets, sizes, enums and functions.

podtrace takes struct layouts from BTF, never from headers (see DESIGN.md "Kernel portability"), and passes
them to the BPF C code as -D macros. This reader answers only those questions, quickly:

- `load()` makes one pass over the type section, recording where each type starts and indexing the types
  that can be looked up by name (structs, unions, enums, typedefs, functions, ints). Names stay undecoded:
  a lookup finds its name in the string section and maps the string offset to type ids.
- Members, enum values and parameters are decoded only for the types asked about.

Format: the kernel's Documentation/bpf/btf.rst (struct btf_header, struct btf_type and the per-kind trailing
records). Both byte orders are read; the magic tells which. Split BTF (kernel modules under /sys/kernel/btf/)
is not supported: it needs the base vmlinux BTF.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from typing import BinaryIO

from tracer.output.errors import KernelError

DEFAULT_PATH = "/sys/kernel/btf/vmlinux"

BTF_MAGIC = 0xEB9F
_HDR_LEN_MIN = 24

# enum btf_kind (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MAX_KIND = ENUM64

# Trailing data after the 3-word btf_type header, in 32-bit words: a fixed part plus a part per vlen entry.
# Getting one wrong desyncs the whole walk, so both tables are spelled out for every kind.
_FIXED_WORDS = [0] * 32
_VLEN_WORDS = [0] * 32
_FIXED_WORDS[INT] = 1  # u32 encoding
_FIXED_WORDS[ARRAY] = 3  # struct btf_array {type, index_type, nelems}
_VLEN_WORDS[STRUCT] = 3  # struct btf_member {name_off, type, offset}
_VLEN_WORDS[UNION] = 3
_VLEN_WORDS[ENUM] = 2  # struct btf_enum {name_off, s32 val}
_VLEN_WORDS[FUNC_PROTO] = 2  # struct btf_param {name_off, type}
_FIXED_WORDS[VAR] = 1  # struct btf_var {linkage}
_VLEN_WORDS[DATASEC] = 3  # struct btf_var_secinfo {type, offset, size}
_FIXED_WORDS[DECL_TAG] = 1  # struct btf_decl_tag {s32 component_idx}
_VLEN_WORDS[ENUM64] = 3  # struct btf_enum64 {name_off, val_lo32, val_hi32}

# Only these kinds are looked up by name; indexing fewer kinds keeps load() fast.
_INDEXED = frozenset({INT, STRUCT, UNION, ENUM, TYPEDEF, FUNC, ENUM64})
# Kinds that only qualify or rename another type.
_ALIASES = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})
# Kinds whose btf_type.size_or_type is a size in bytes.
_SIZED = frozenset({INT, STRUCT, UNION, ENUM, FLOAT, ENUM64})

_KIND_NAMES = {
    INT: "int",
    PTR: "pointer",
    ARRAY: "array",
    STRUCT: "struct",
    UNION: "union",
    ENUM: "enum",
    FWD: "forward declaration",
    TYPEDEF: "typedef",
    VOLATILE: "volatile",
    CONST: "const",
    RESTRICT: "restrict",
    FUNC: "function",
    FUNC_PROTO: "function prototype",
    VAR: "variable",
    DATASEC: "data section",
    FLOAT: "float",
    DECL_TAG: "decl tag",
    TYPE_TAG: "type tag",
    ENUM64: "enum",
}

# Chains of typedefs/qualifiers and nesting of anonymous members are short in real BTF; a bound turns a
# corrupt, cyclic file into an error instead of a hang.
_MAX_DEPTH = 64

_HINT_NO_BTF = "the kernel needs CONFIG_DEBUG_INFO_BTF=y; pass --btf FILE with a vmlinux BTF"
_HINT_CORRUPT = "pass --btf FILE with an intact vmlinux BTF (raw .btf, or an ELF vmlinux with a .BTF section)"
_HINT_LAYOUT = "this kernel's layout differs; check it with: bpftool btf dump file {path} format c"


def _hint_missing(path: str, name: str) -> str:
    return f"this kernel does not define it; check with: bpftool btf dump file {path} | grep -w {name}"


class Btf:
    """Parsed BTF type information of one kernel (or one object file)."""

    def __init__(self, data: bytes, path: str = "<bytes>") -> None:
        self.path = path
        self._parse(data)
        self._struct_cache: dict[str, int] = {}
        self._ptr_size: int | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Btf:
        """Read BTF from `path`: default /sys/kernel/btf/vmlinux, a raw .btf file, or an ELF with .BTF."""
        where = DEFAULT_PATH if path is None else os.fspath(path)
        try:
            with open(where, "rb") as f:
                data = _read_btf_bytes(f, where)
        except FileNotFoundError:
            raise KernelError(f"no BTF at {where}", _HINT_NO_BTF) from None
        except PermissionError:
            raise KernelError(f"cannot read BTF at {where}: permission denied", "run it with sudo") from None
        except IsADirectoryError:
            raise KernelError(f"BTF path {where} is a directory", _HINT_NO_BTF) from None
        except OSError as e:
            raise KernelError(f"cannot read BTF at {where}: {e.strerror or e}", _HINT_NO_BTF) from None
        return cls(data, where)

    @classmethod
    def from_bytes(cls, data: bytes, path: str = "<bytes>") -> Btf:
        """Parse raw BTF bytes (the .BTF section of an object, or /sys/kernel/btf/vmlinux contents)."""
        return cls(data, path)

    # -- parsing -------------------------------------------------------------------------------------

    def _corrupt(self, detail: str) -> KernelError:
        return KernelError(f"BTF at {self.path} is corrupt: {detail}", _HINT_CORRUPT)

    def _parse(self, data: bytes) -> None:
        if len(data) < _HDR_LEN_MIN:
            raise self._corrupt(f"only {len(data)} bytes, shorter than the {_HDR_LEN_MIN}-byte header")
        magic_le = int.from_bytes(data[:2], "little")
        if magic_le == BTF_MAGIC:
            order = "<"
        elif magic_le == 0x9FEB:
            order = ">"
        else:
            raise self._corrupt(f"bad magic 0x{magic_le:04x}, not a BTF file")
        version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            order + "BBIIIII", data, 2
        )
        if version != 1:
            raise self._corrupt(f"unsupported BTF version {version}")
        if hdr_len < _HDR_LEN_MIN or hdr_len > len(data):
            raise self._corrupt(f"header length {hdr_len} out of range")
        body = len(data) - hdr_len
        if type_off + type_len > body or str_off + str_len > body:
            raise self._corrupt(
                f"sections end past the data ({len(data)} bytes; the file is probably truncated)"
            )
        if type_len % 4 or type_off % 4:
            raise self._corrupt("type section is not 4-byte aligned")
        if str_len == 0 or data[hdr_len + str_off + str_len - 1] != 0:
            raise self._corrupt("string section is empty or not NUL-terminated")

        # One u32 array over the type section: every BTF record is a sequence of u32s.
        words = array("I")
        if words.itemsize != 4:  # pragma: no cover - every CPython platform podtrace runs on has 4-byte I
            raise KernelError("this Python has no 4-byte unsigned int array type")
        start = hdr_len + type_off
        words.frombytes(data[start : start + type_len])
        if (order == "<") != (sys.byteorder == "little"):
            words.byteswap()
        self._words = words
        self._strs = data[hdr_len + str_off : hdr_len + str_off + str_len]

        # The walk: remember where each type starts; index named types of the kinds we look up.
        # Type id N (N >= 1) starts at word offs[N - 1]; id 0 is void.
        offs = array("I")
        append = offs.append
        # First id per name offset, and the rare further ones apart: plain ints allocate no GC-tracked
        # objects, so a big caller heap does not make the walk pay for garbage collections.
        index: dict[int, int] = {}
        more: dict[int, list[int]] = {}
        fixed, per_vlen, indexed = _FIXED_WORDS, _VLEN_WORDS, _INDEXED
        n = len(words)
        i = 0
        tid = 0
        while i < n:
            if i + 3 > n:
                raise self._corrupt(f"type {tid + 1} header runs past the type section")
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            if kind == 0 or kind > _MAX_KIND:
                raise self._corrupt(f"type {tid + 1} has unknown kind {kind}")
            tid += 1
            append(i)
            name_off = words[i]
            if name_off and kind in indexed:
                if name_off in index:
                    more.setdefault(name_off, []).append(tid)
                else:
                    index[name_off] = tid
            i += 3 + fixed[kind] + per_vlen[kind] * (info & 0xFFFF)
        if i != n:
            raise self._corrupt(f"type {tid} runs past the end of the type section")
        self._offs = offs
        self._index = index
        self._more = more

    # -- low-level access ----------------------------------------------------------------------------

    @property
    def type_count(self) -> int:
        """Number of types, not counting void (id 0)."""
        return len(self._offs)

    def _at(self, tid: int) -> int:
        """Word offset of type `tid`'s record."""
        if tid < 1 or tid > len(self._offs):
            raise self._corrupt(f"reference to type id {tid}, but there are {len(self._offs)} types")
        return self._offs[tid - 1]

    def _kind(self, tid: int) -> int:
        return (self._words[self._at(tid) + 1] >> 24) & 0x1F

    def _str(self, off: int) -> str:
        strs = self._strs
        if off >= len(strs):
            raise self._corrupt(f"string offset {off} past the string section")
        end = strs.index(b"\0", off)  # the section ends in NUL (checked in _parse)
        return strs[off:end].decode("utf-8", "replace")

    def _ids_named(self, name: str) -> list[int]:
        """Ids of indexed types called `name`, in id order."""
        needle = b"\0" + name.encode() + b"\0"
        strs = self._strs
        ids: list[int] = []
        pos = strs.find(needle)
        # Strings are usually deduplicated, but nothing requires it: collect every copy.
        while pos >= 0:
            first = self._index.get(pos + 1)
            if first is not None:
                ids.append(first)
                ids.extend(self._more.get(pos + 1, ()))
            pos = strs.find(needle, pos + 1)
        ids.sort()
        return ids

    def _skip_aliases(self, tid: int) -> int:
        """Follow typedefs and qualifiers to the underlying type id (0 for void)."""
        for _ in range(_MAX_DEPTH):
            if tid == 0:
                return 0
            at = self._at(tid)
            if (self._words[at + 1] >> 24) & 0x1F not in _ALIASES:
                return tid
            tid = self._words[at + 2]
        raise self._corrupt(f"typedef/qualifier chain deeper than {_MAX_DEPTH} at type {tid}")

    def _pointer_size(self) -> int:
        # BTF does not record the pointer size; libbpf takes it from `long`, and so do we.
        if self._ptr_size is None:
            self._ptr_size = 8
            for name in ("long", "long int", "long unsigned int", "unsigned long"):
                for tid in self._ids_named(name):
                    if self._kind(tid) == INT:
                        self._ptr_size = self._words[self._at(tid) + 2]
                        return self._ptr_size
        return self._ptr_size

    def _type_size(self, tid: int) -> int:
        # Iterative so a corrupt, cyclic array chain ends in an error, not a RecursionError.
        count = 1
        for _ in range(_MAX_DEPTH):
            tid = self._skip_aliases(tid)
            if tid == 0:
                raise KernelError(f"type void in BTF {self.path} has no size", _HINT_CORRUPT)
            at = self._at(tid)
            kind = (self._words[at + 1] >> 24) & 0x1F
            if kind in _SIZED:
                return count * self._words[at + 2]
            if kind == PTR:
                return count * self._pointer_size()
            if kind != ARRAY:
                raise KernelError(
                    f"{self._describe(tid)} in BTF {self.path} has no size", "only complete types have a size"
                )
            count *= self._words[at + 5]
            tid = self._words[at + 3]
        raise self._corrupt(f"arrays nested deeper than {_MAX_DEPTH}")

    def _describe(self, tid: int) -> str:
        at = self._at(tid)
        kind = _KIND_NAMES.get((self._words[at + 1] >> 24) & 0x1F, "type")
        name = self._str(self._words[at])
        return f"{kind} {name}" if name else f"anonymous {kind}"

    def _struct_id(self, name: str) -> int:
        cached = self._struct_cache.get(name)
        if cached is not None:
            return cached
        ids = self._ids_named(name)
        found = 0
        for tid in ids:
            if self._kind(tid) in (STRUCT, UNION):
                found = tid
                break
        else:
            # Accept a typedef of a struct too (e.g. "sk_buff_data_t"-style names in other objects).
            for tid in ids:
                if self._kind(tid) == TYPEDEF:
                    target = self._skip_aliases(tid)
                    if target and self._kind(target) in (STRUCT, UNION):
                        found = target
                        break
        if not found:
            raise KernelError(f"struct {name} not found in BTF {self.path}", _hint_missing(self.path, name))
        self._struct_cache[name] = found
        return found

    def _find_in(self, sid: int, member: str, seen: tuple[int, ...] = ()) -> tuple[int, int, int] | None:
        """Find `member` in struct/union `sid`, descending into anonymous members.

        Returns (bit offset from the start of `sid`, member type id, bitfield size or 0), or None.
        """
        if sid in seen or len(seen) > _MAX_DEPTH:
            raise self._corrupt(f"{self._describe(sid)} contains itself through anonymous members")
        words = self._words
        at = self._at(sid)
        info = words[at + 1]
        kflag = info >> 31
        want = member.encode()
        strs = self._strs
        p = at + 3
        for _ in range(info & 0xFFFF):
            name_off, mtype, moff = words[p], words[p + 1], words[p + 2]
            p += 3
            if kflag:
                # kind_flag: low 24 bits are the bit offset, high 8 bits the bitfield size.
                bit_off, bitfield = moff & 0xFFFFFF, moff >> 24
            else:
                bit_off, bitfield = moff, 0
            if name_off:
                # Compare bytes in place instead of decoding every member name.
                end = name_off + len(want)
                if strs[name_off:end] == want and end < len(strs) and strs[end] == 0:
                    return bit_off, mtype, bitfield
                continue
            inner = self._skip_aliases(mtype)
            if inner and self._kind(inner) in (STRUCT, UNION):
                hit = self._find_in(inner, member, (*seen, sid))
                if hit is not None:
                    return bit_off + hit[0], hit[1], hit[2]
        return None

    def _resolve(self, struct_name: str, member_path: str) -> tuple[int, int, int] | None:
        """(bit offset, type id, bitfield size) of a dotted member path, or None if a part is missing."""
        sid = self._struct_id(struct_name)
        parts = member_path.split(".")
        total = 0
        where = struct_name
        hit: tuple[int, int, int] | None = None
        for n, part in enumerate(parts):
            if n:
                inner = self._skip_aliases(hit[1]) if hit else 0
                if not inner or self._kind(inner) not in (STRUCT, UNION):
                    what = self._describe(inner) if inner else "void"
                    raise KernelError(
                        f"cannot reach {struct_name}.{member_path}: {struct_name}.{'.'.join(parts[:n])} "
                        f"is not a struct or union ({what})",
                        "dotted paths only descend into embedded structs and unions, not through pointers",
                    )
                sid = inner
                where = f"{struct_name}.{'.'.join(parts[:n])}"
            if not part:
                raise KernelError(f"bad member path {member_path!r} for struct {struct_name}", "")
            hit = self._find_in(sid, part)
            if hit is None:
                return None
            total += hit[0]
            if hit[2] and n + 1 < len(parts):
                raise KernelError(f"{where}.{part} is a bitfield, not a struct", "")
        assert hit is not None
        return total, hit[1], hit[2]

    def _resolve_required(self, struct_name: str, member_path: str) -> tuple[int, int]:
        hit = self._resolve(struct_name, member_path)
        if hit is None:
            raise KernelError(
                f"struct {struct_name} has no member {member_path} in BTF {self.path}",
                _HINT_LAYOUT.format(path=self.path),
            )
        bit_off, mtype, bitfield = hit
        if bitfield or bit_off % 8 or self._is_int_bitfield(mtype):
            raise KernelError(
                f"{struct_name}.{member_path} is a bitfield; podtrace only reads whole members",
                "read the containing word and mask it instead",
            )
        return bit_off // 8, mtype

    def _is_int_bitfield(self, tid: int) -> bool:
        # Without kind_flag, old encoders mark bitfields in the INT encoding: bits 0-7 nr_bits,
        # bits 16-23 bit offset.
        tid = self._skip_aliases(tid)
        if not tid or self._kind(tid) != INT:
            return False
        at = self._at(tid)
        enc = self._words[at + 3]
        return bool((enc >> 16) & 0xFF) or (enc & 0xFF) != self._words[at + 2] * 8

    # -- the API -------------------------------------------------------------------------------------

    def member_offset(self, struct: str, member_path: str) -> int:
        """Byte offset of `member_path` ("len", "ns.inum") in `struct`, through anonymous structs/unions."""
        return self._resolve_required(struct, member_path)[0]

    def member_size(self, struct: str, member_path: str) -> int:
        """Size in bytes of a member, through typedefs and qualifiers; arrays are nelems * element size."""
        return self._type_size(self._resolve_required(struct, member_path)[1])

    def struct_size(self, name: str) -> int:
        """Size in bytes of struct or union `name`."""
        return self._words[self._at(self._struct_id(name)) + 2]

    def has_struct(self, name: str) -> bool:
        try:
            self._struct_id(name)
        except KernelError:
            return False
        return True

    def has_member(self, struct: str, member_path: str) -> bool:
        """Whether `struct` has `member_path` (a bitfield member counts as present)."""
        try:
            return self._resolve(struct, member_path) is not None
        except KernelError:
            return False

    def enum(self, name: str) -> dict[str, int]:
        """Values of enum `name` (ENUM or ENUM64), signed or unsigned as kind_flag says."""
        for tid in self._ids_named(name):
            at = self._at(tid)
            info = self._words[at + 1]
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            # An ENUM with no values is a forward declaration; keep looking for the definition.
            if kind not in (ENUM, ENUM64) or vlen == 0:
                continue
            return self._enum_values(at, kind, vlen, signed=bool(info >> 31))
        raise KernelError(f"enum {name} not found in BTF {self.path}", _hint_missing(self.path, name))

    def _enum_values(self, at: int, kind: int, vlen: int, signed: bool) -> dict[str, int]:
        words = self._words
        out: dict[str, int] = {}
        p = at + 3
        if kind == ENUM:
            for _ in range(vlen):
                val = words[p + 1]
                if signed and val & 0x80000000:
                    val -= 1 << 32
                out[self._str(words[p])] = val
                p += 2
        else:
            for _ in range(vlen):
                val = words[p + 1] | (words[p + 2] << 32)
                if signed and val & (1 << 63):
                    val -= 1 << 64
                out[self._str(words[p])] = val
                p += 3
        return out

    def _func_id(self, name: str) -> int:
        for tid in self._ids_named(name):
            if self._kind(tid) == FUNC:
                return tid
        return 0

    def typedef_id(self, name: str) -> int:
        """Type id of typedef `name` (0 when absent): tp_btf programs attach to `btf_trace_<tracepoint>`."""
        return next((tid for tid in self._ids_named(name) if self._kind(tid) == TYPEDEF), 0)

    def has_function(self, name: str) -> bool:
        """Whether BTF has a FUNC `name`; a missing one was compiled out, renamed or inlined everywhere."""
        return self._func_id(name) != 0

    def func_params(self, name: str) -> list[str]:
        """Parameter names of function `name`, in order; "" for an unnamed one, "..." for varargs."""
        tid = self._func_id(name)
        if not tid:
            raise KernelError(
                f"function {name} not found in BTF {self.path}",
                "it may be inlined, renamed or compiled out in this kernel",
            )
        proto = self._words[self._at(tid) + 2]
        at = self._at(proto)
        info = self._words[at + 1]
        if (info >> 24) & 0x1F != FUNC_PROTO:
            raise self._corrupt(f"function {name} points at a {self._describe(proto)}, not a prototype")
        names: list[str] = []
        p = at + 3
        for _ in range(info & 0xFFFF):
            name_off, ptype = self._words[p], self._words[p + 1]
            names.append("..." if name_off == 0 and ptype == 0 else self._str(name_off))
            p += 2
        return names


def _read_btf_bytes(f: BinaryIO, where: str) -> bytes:
    """The raw BTF bytes of an open file: the whole file, or the .BTF section of an ELF."""
    head = f.read(64)
    if head[:4] != b"\x7fELF":
        return head + f.read()
    btf = _elf_btf_section(f, head, where)
    if btf is None:
        raise KernelError(f"ELF file {where} has no .BTF section", _HINT_NO_BTF)
    return btf


def _elf_btf_section(f: BinaryIO, head: bytes, where: str) -> bytes | None:
    def bad(detail: str) -> KernelError:
        return KernelError(f"ELF file {where} is corrupt: {detail}", _HINT_CORRUPT)

    if len(head) < 52:
        raise bad("truncated ELF header")
    cls, data = head[4], head[5]
    if data not in (1, 2) or cls not in (1, 2):
        raise bad("unknown ELF class or byte order")
    e = "<" if data == 1 else ">"
    if cls == 2:
        if len(head) < 64:
            raise bad("truncated ELF header")
        (shoff,) = struct.unpack_from(e + "Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", head, 0x3A)
        sh_fmt = e + "II16xQQI"  # name, type, (flags, addr), offset, size, link
    else:
        (shoff,) = struct.unpack_from(e + "I", head, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", head, 0x2E)
        sh_fmt = e + "II8xIII"
    need = struct.calcsize(sh_fmt)
    if shoff == 0:
        return None
    if shentsize < need:
        raise bad(f"section header size {shentsize} too small")

    file_size = f.seek(0, os.SEEK_END)

    def read_at(off: int, size: int) -> bytes:
        # Check against the file size first: a corrupt header could ask for exabytes.
        if off + size > file_size:
            raise bad(f"{size} bytes at offset {off} run past the end of the file")
        f.seek(off)
        buf = f.read(size)
        if len(buf) != size:
            raise bad(f"{size} bytes at offset {off} run past the end of the file")
        return buf

    def section(i: int) -> tuple[int, int, int, int]:
        # (name, offset, size, link); sh_fmt reads name, type, offset, size, link.
        name, _type, off, size, link = struct.unpack_from(sh_fmt, read_at(shoff + i * shentsize, need))
        return name, off, size, link

    # Extended numbering: more than 0xff00 sections keep the real counts in section 0.
    if shnum == 0 or shstrndx == 0xFFFF:
        _, _, size0, link0 = section(0)
        shnum = shnum or size0
        if shstrndx == 0xFFFF:
            shstrndx = link0
    if shnum > 1_000_000 or shstrndx >= shnum:
        raise bad("section header table out of range")
    table = read_at(shoff, shnum * shentsize)
    _, str_off, str_size, _ = section(shstrndx)
    names = read_at(str_off, str_size)
    for i in range(shnum):
        name, _type, off, size, _link = struct.unpack_from(sh_fmt, table, i * shentsize)
        if names[name : name + 5] == b".BTF\0":
            return read_at(off, size)
    return None
