"""BPF netfilter links (kernel >= 6.4): attach a BPF_PROG_TYPE_NETFILTER program at a hook and priority.

BCC 0.26 loads the program (prog type 32, expected attach type BPF_NETFILTER) but cannot create the link,
so BPF_LINK_CREATE is issued here through the bpf(2) syscall. A link lives in the network namespace of the
process that creates it and is removed when its fd is closed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import socket
from dataclasses import dataclass

BPF_PROG_TYPE_NETFILTER = 32
BPF_NETFILTER = 45  # enum bpf_attach_type
BPF_LINK_CREATE = 28  # enum bpf_cmd
NFPROTO_IPV4 = socket.AF_INET
NFPROTO_IPV6 = socket.AF_INET6
SYS_BPF = {"x86_64": 321, "aarch64": 280}

# enum nf_inet_hooks
HOOKS = {"PREROUTING": 0, "INPUT": 1, "FORWARD": 2, "OUTPUT": 3, "POSTROUTING": 4}
HOOK_NAMES = {number: name for name, number in HOOKS.items()}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _LinkCreateNetfilter(ctypes.Structure):
    # union bpf_attr, BPF_LINK_CREATE member with its netfilter sub-struct (include/uapi/linux/bpf.h)
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("pf", ctypes.c_uint32),
        ("hooknum", ctypes.c_uint32),
        ("priority", ctypes.c_int32),
        ("nf_flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint8 * 96),
    ]


@dataclass
class NetfilterLink:
    fd: int
    family: int
    hook: str
    priority: int

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def attach(prog_fd: int, hook: str, priority: int, family: int = NFPROTO_IPV4) -> NetfilterLink:
    """Create a netfilter link in the caller's network namespace; raises OSError with the kernel's errno."""
    syscall_number = SYS_BPF.get(platform.machine())
    if syscall_number is None:
        raise OSError(0, f"unsupported architecture {platform.machine()}")
    attr = _LinkCreateNetfilter(
        prog_fd=prog_fd, attach_type=BPF_NETFILTER, pf=family, hooknum=HOOKS[hook], priority=priority
    )
    fd = _libc.syscall(syscall_number, BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return NetfilterLink(fd, family, hook, priority)
