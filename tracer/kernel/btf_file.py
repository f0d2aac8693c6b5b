"""The raw BTF bytes of a file: a raw .btf (such as /sys/kernel/btf/vmlinux) or the .BTF section of an ELF
vmlinux, read for tracer/kernel/btf.py."""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from tracer.output.errors import KernelError

HINT_NO_BTF = "the kernel needs CONFIG_DEBUG_INFO_BTF=y; pass --btf FILE with a vmlinux BTF"
HINT_CORRUPT = "pass --btf FILE with an intact vmlinux BTF (raw .btf, or an ELF vmlinux with a .BTF section)"
HINT_LAYOUT = "this kernel's layout differs; check it with: bpftool btf dump file {path} format c"


def read_path(where: str) -> bytes:
    """The raw BTF bytes at `where`, every way of failing to read them said in one line with what to do."""
    try:
        with open(where, "rb") as f:
            return read_btf_bytes(f, where)
    except FileNotFoundError:
        raise KernelError(f"no BTF at {where}", HINT_NO_BTF) from None
    except PermissionError:
        raise KernelError(f"cannot read BTF at {where}: permission denied", "run it with sudo") from None
    except IsADirectoryError:
        raise KernelError(f"BTF path {where} is a directory", HINT_NO_BTF) from None
    except OSError as e:
        raise KernelError(f"cannot read BTF at {where}: {e.strerror or e}", HINT_NO_BTF) from None


def read_btf_bytes(f: BinaryIO, where: str) -> bytes:
    """The raw BTF bytes of an open file: the whole file, or the .BTF section of an ELF."""
    head = f.read(64)
    if head[:4] != b"\x7fELF":
        return head + f.read()
    btf = _elf_btf_section(f, head, where)
    if btf is None:
        raise KernelError(f"ELF file {where} has no .BTF section", HINT_NO_BTF)
    return btf


def _elf_btf_section(f: BinaryIO, head: bytes, where: str) -> bytes | None:
    def bad(detail: str) -> KernelError:
        return KernelError(f"ELF file {where} is corrupt: {detail}", HINT_CORRUPT)

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
