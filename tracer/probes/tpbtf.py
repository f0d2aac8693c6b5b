"""BTF-typed raw tracepoints (tp_btf, kernel >= 5.5): load a BCC-compiled function as BPF_TRACE_RAW_TP and attach it.

The program's arguments are typed by the kernel's BTF (`btf_trace_<name>`, a typedef of the tracepoint's
prototype), so the verifier lets it load the fields of the tracepoint's structs directly, where a raw tracepoint's
untyped u64 arguments need one bpf_probe_read_kernel call per field. BCC 0.26 has no macro for this program type:
BCC compiles the function (its map fds are already in the bytecode) and the load and attach are issued here
through bpf(2), as tracer/probes/nflink.py does for netfilter links. The link is removed when its fd is closed.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

from tracer.kernel.btf import Btf
from tracer.probes.nflink import SYS_BPF, _libc

BPF_PROG_LOAD = 5  # enum bpf_cmd
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_RAW_TP = 23  # enum bpf_attach_type
LOG_SIZE = 1 << 16


class _ProgLoad(ctypes.Structure):
    # union bpf_attr, BPF_PROG_LOAD member up to attach_btf_obj_fd (include/uapi/linux/bpf.h); the tail is zero
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("prog_btf_fd", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("func_info_cnt", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("line_info_cnt", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
        ("attach_btf_obj_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint8 * 64),
    ]


class _RawTracepointOpen(ctypes.Structure):
    # union bpf_attr, BPF_RAW_TRACEPOINT_OPEN member: name NULL takes the program's attach_btf_id
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("cookie", ctypes.c_uint64), ("_pad2", ctypes.c_uint8 * 32)]


@dataclass
class TpBtfLink:
    prog_fd: int
    link_fd: int
    tracepoint: str

    def close(self) -> None:
        for name in ("link_fd", "prog_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    number = SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(0, f"unsupported architecture {platform.machine()}")
    return int(_libc.syscall(number, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))


def _verifier_error(log: ctypes.Array[ctypes.c_char]) -> str:
    """The verifier's last meaningful line: what a user (or a bug report) needs."""
    lines = [line for line in log.value.decode(errors="replace").splitlines() if line.strip()]
    tail = [line for line in lines if not line.startswith(("processed ", "verification time"))]
    return tail[-1].strip()[:200] if tail else ""


def attach(bytecode: bytes, tracepoint: str, btf: Btf, name: str = "") -> TpBtfLink:
    """Load `bytecode` (BPF.dump_func of a BCC module) on tp_btf/`tracepoint` and attach it.

    Raises OSError with the kernel's errno and, when the verifier refused it, its last line."""
    type_id = btf.typedef_id(f"btf_trace_{tracepoint}")
    if not type_id:
        raise OSError(2, f"no btf_trace_{tracepoint} in the kernel's BTF")
    insns = ctypes.create_string_buffer(bytecode, len(bytecode))
    license_text = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(LOG_SIZE)
    attr = _ProgLoad(prog_type=BPF_PROG_TYPE_TRACING, insn_cnt=len(bytecode) // 8,
                     insns=ctypes.addressof(insns), license=ctypes.addressof(license_text),
                     log_level=0, log_size=0, log_buf=0, prog_name=(name or tracepoint).encode()[:15],
                     expected_attach_type=BPF_TRACE_RAW_TP, attach_btf_id=type_id)
    prog_fd = _bpf(BPF_PROG_LOAD, attr)
    if prog_fd < 0:
        errno = ctypes.get_errno()
        # Loaded again with the verifier's log only on failure: the log costs time and memory.
        attr.log_level, attr.log_size, attr.log_buf = 1, LOG_SIZE, ctypes.addressof(log)
        _bpf(BPF_PROG_LOAD, attr)
        detail = _verifier_error(log)
        raise OSError(errno, f"{os.strerror(errno)}{': ' + detail if detail else ''}")
    link_fd = _bpf(BPF_RAW_TRACEPOINT_OPEN, _RawTracepointOpen(prog_fd=prog_fd))
    if link_fd < 0:
        errno = ctypes.get_errno()
        os.close(prog_fd)
        raise OSError(errno, os.strerror(errno))
    return TpBtfLink(prog_fd, link_fd, tracepoint)
