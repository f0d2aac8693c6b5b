"""Struct offsets of kernel modules (x_tables, nf_tables, vxlan) from their split BTF, for the kprobe programs.

A module's BTF under /sys/kernel/btf/<module> is *split* BTF: its type ids continue after the base (vmlinux)
BTF's last id and its string offsets continue after the base string section (Documentation/bpf/btf.rst,
"BTF split"). Appending its types and strings to the base's therefore gives one ordinary BTF blob that
tracer/kernel/btf.py reads as is.

Where a structure is built into the kernel, vmlinux BTF has it and no module is needed.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from tracer.kernel.btf import DEFAULT_PATH, Btf
from tracer.output.errors import KernelError

MODULE_BTF_DIR = "/sys/kernel/btf"
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len


def _sections(data: bytes, where: str) -> tuple[bytes, bytes]:
    if len(data) < _HEADER.size:
        raise KernelError(f"BTF at {where} is too short")
    magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
    if magic != 0xEB9F or version != 1:
        raise KernelError(f"BTF at {where} is not little-endian BTF version 1")
    body = data[hdr_len:]
    return body[type_off:type_off + type_len], body[str_off:str_off + str_len]


def merge_split(base: bytes, split: bytes) -> bytes:
    """One BTF blob equivalent to `split` read on top of `base`."""
    base_types, base_strs = _sections(base, "base")
    types, strs = _sections(split, "module")
    merged_types = base_types + types
    header = _HEADER.pack(0xEB9F, 1, 0, _HEADER.size, 0, len(merged_types), len(merged_types),
                          len(base_strs) + len(strs))
    return header + merged_types + base_strs + strs


@dataclass(frozen=True)
class ModuleOffset:
    macro: str
    struct: str
    member: str
    size: int  # bytes the C code reads there (0: not checked)
    modules: tuple[str, ...]  # where the struct is defined when it is not built in


# The kprobe programs read these members; each group of macros is all-or-nothing (a program that lacks one
# of them leaves out what it would have read, e.g. table names).
NF_OFFSETS = (
    ModuleOffset("PT_OFF_NF_HOOK_STATE_HOOK", "nf_hook_state", "hook", 1, ()),
    ModuleOffset("PT_OFF_NF_HOOK_STATE_PF", "nf_hook_state", "pf", 1, ()),
)
IPT_OFFSETS = (ModuleOffset("PT_OFF_XT_TABLE_NAME", "xt_table", "name", 32, ("ip_tables", "x_tables")),)
NFT_OFFSETS = (
    ModuleOffset("PT_OFF_NFT_PKTINFO_SKB", "nft_pktinfo", "skb", 8, ("nf_tables",)),
    ModuleOffset("PT_OFF_NFT_CHAIN_NAME", "nft_chain", "name", 8, ("nf_tables",)),
    ModuleOffset("PT_OFF_NFT_CHAIN_TABLE", "nft_chain", "table", 8, ("nf_tables",)),
    ModuleOffset("PT_OFF_NFT_TABLE_NAME", "nft_table", "name", 8, ("nf_tables",)),
)
VXLAN_OFFSETS = (
    ModuleOffset("PT_OFF_VXLAN_RDST_REMOTE_IP", "vxlan_rdst", "remote_ip", 0, ("vxlan",)),
    ModuleOffset("PT_OFF_VXLAN_RDST_REMOTE_PORT", "vxlan_rdst", "remote_port", 2, ("vxlan",)),
    ModuleOffset("PT_OFF_VXLAN_RDST_REMOTE_VNI", "vxlan_rdst", "remote_vni", 4, ("vxlan",)),
    ModuleOffset("PT_OFF_VXLAN_DEV_SADDR", "vxlan_dev", "cfg.saddr", 0, ("vxlan",)),
)
FRAG_OFFSETS = (ModuleOffset("PT_KP_OFF_NET_DEVICE_MTU", "net_device", "mtu", 4, ()),)
# bpf/ipvs.c: the connection IPVS scheduled (include/net/ip_vs.h) and its netns (netns_ipvs.net).
IPVS_OFFSETS = (
    *(ModuleOffset(f"PT_OFF_IP_VS_CONN_{member.upper()}", "ip_vs_conn", member, size, ("ip_vs",))
      for member, size in (("af", 2), ("protocol", 2), ("cport", 2), ("vport", 2), ("dport", 2), ("caddr", 16),
                           ("vaddr", 16), ("daddr", 16), ("ipvs", 8))),
    ModuleOffset("PT_OFF_NETNS_IPVS_NET", "netns_ipvs", "net", 8, ("ip_vs",)),
)
NETDEV_ALIGN = 32  # include/linux/netdevice.h: netdev_priv() is this far past the aligned struct net_device


class ModuleBtf:
    """vmlinux BTF plus, on demand, each module's BTF merged onto it; caches what it loaded."""

    def __init__(self, base: Btf, base_path: str | None = None, module_dir: str = MODULE_BTF_DIR) -> None:
        self.base = base
        self.base_path = base_path or DEFAULT_PATH
        self.module_dir = module_dir
        self._merged: dict[str, Btf | None] = {}
        self._base_bytes: bytes | None = None

    def module(self, name: str) -> Btf | None:
        """The module's types on top of vmlinux, or None when the module is not loaded (or has no BTF)."""
        if name not in self._merged:
            path = os.path.join(self.module_dir, name)
            try:
                with open(path, "rb") as handle:
                    split = handle.read()
                if self._base_bytes is None:
                    with open(self.base_path, "rb") as handle:
                        self._base_bytes = handle.read()
                self._merged[name] = Btf.from_bytes(merge_split(self._base_bytes, split), path)
            except (OSError, KernelError):
                self._merged[name] = None
        return self._merged[name]

    def find(self, wanted: ModuleOffset) -> Btf | None:
        """The BTF that defines the struct: vmlinux when built in, else the first loaded module that has it."""
        if self.base.has_struct(wanted.struct):
            return self.base
        for name in wanted.modules:
            btf = self.module(name)
            if btf is not None and btf.has_struct(wanted.struct):
                return btf
        return None

    def cflags(self, group: tuple[ModuleOffset, ...], have: str) -> list[str]:
        """-D flags for every offset in the group plus -D<have>=1, or [] when one of them is not known."""
        flags = []
        for wanted in group:
            btf = self.find(wanted)
            if btf is None or not btf.has_member(wanted.struct, wanted.member):
                return []
            if wanted.size and btf.member_size(wanted.struct, wanted.member) != wanted.size:
                return []
            flags.append(f"-D{wanted.macro}={btf.member_offset(wanted.struct, wanted.member)}")
        return [*flags, f"-D{have}=1"]

    def netdev_priv_offset(self) -> int:
        size = self.base.struct_size("net_device")
        return (size + NETDEV_ALIGN - 1) // NETDEV_ALIGN * NETDEV_ALIGN


def kprobe_cflags(mods: ModuleBtf, concerns: tuple[str, ...]) -> list[str]:
    """The offsets the kprobe programs of these concerns need, with PT_HAVE_* for the optional parts."""
    flags: list[str] = []
    if "netfilter" in concerns:
        flags += ["-DPT_NFKPROBE=1", *mods.cflags(NF_OFFSETS, "PT_HAVE_NF_STATE")]
        flags += mods.cflags(IPT_OFFSETS, "PT_HAVE_XT_TABLE")
        flags += mods.cflags(NFT_OFFSETS, "PT_HAVE_NFT_CHAIN")
    if "vxlan" in concerns:
        flags.append("-DPT_KP_VXLAN=1")
        vxlan = mods.cflags(VXLAN_OFFSETS, "PT_HAVE_VXLAN_RDST")
        if vxlan:
            flags += [*vxlan, f"-DPT_NETDEV_PRIV={mods.netdev_priv_offset()}"]
    if "fragmentation" in concerns:
        flags += ["-DPT_KP_FRAG=1", *mods.cflags(FRAG_OFFSETS, "PT_HAVE_DEV_MTU")]
    if "ipvs" in concerns:  # without the ip_vs module's BTF bpf/ipvs.c compiles to nothing
        flags += mods.cflags(IPVS_OFFSETS, "PT_HAVE_IPVS_CONN")
    return flags
