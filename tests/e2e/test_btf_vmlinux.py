"""tracer/kernel/btf.py on the running kernel's /sys/kernel/btf/vmlinux, cross-checked against bpftool's raw dump."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.bpftool_btf import parse_bpftool_raw

from tracer.kernel.btf import DEFAULT_PATH, Btf

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not Path(DEFAULT_PATH).exists(), reason=f"no {DEFAULT_PATH} on this kernel"),
    pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed"),
]

# What podtrace reads, as (struct, member path).
MEMBERS = [
    ("sk_buff", "len"),
    ("sk_buff", "head"),
    ("sk_buff", "data"),
    ("sk_buff", "network_header"),
    ("sk_buff", "transport_header"),
    ("sk_buff", "mac_header"),
    ("sk_buff", "dev"),
    ("sk_buff", "mark"),
    ("net_device", "name"),
    ("net_device", "ifindex"),
    ("net_device", "mtu"),
    ("net_device", "nd_net"),
    ("net", "ns.inum"),
]

_ALIASES = ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG")


class Oracle:
    """Offsets, sizes and enums computed from bpftool's dump, independently of tracer/kernel/btf.py."""

    def __init__(self, types: dict[int, dict[str, Any]]) -> None:
        self.types = types
        self.by_name: dict[tuple[str, str], int] = {}
        for tid, t in types.items():
            self.by_name.setdefault((t["kind"], t["name"]), tid)

    def strip(self, tid: int) -> int:
        while tid and self.types[tid]["kind"] in _ALIASES:
            tid = int(self.types[tid]["attrs"]["type_id"])
        return tid

    def find(self, tid: int, name: str) -> tuple[int, int] | None:
        """(bit offset, type id) of `name` in struct/union `tid`, through anonymous members."""
        for mname, attrs in self.types[tid]["members"]:
            bits, mtype = int(attrs["bits_offset"]), int(attrs["type_id"])
            if mname == name:
                return bits, mtype
            inner = self.strip(mtype)
            if mname == "(anon)" and self.types[inner]["kind"] in ("STRUCT", "UNION"):
                hit = self.find(inner, name)
                if hit:
                    return bits + hit[0], hit[1]
        return None

    def member(self, struct: str, path: str) -> tuple[int, int]:
        tid = self.by_name[("STRUCT", struct)]
        total, mtype = 0, 0
        for part in path.split("."):
            hit = self.find(tid, part)
            assert hit is not None, (struct, path)
            total += hit[0]
            mtype = hit[1]
            tid = self.strip(mtype)
        assert total % 8 == 0
        return total // 8, mtype

    def size(self, tid: int) -> int:
        t = self.types[self.strip(tid)]
        if t["kind"] == "PTR":
            return self.long_size()  # BTF has no pointer size; `long` is one on Linux
        if t["kind"] == "ARRAY":
            return int(t["attrs"]["nr_elems"]) * self.size(int(t["attrs"]["type_id"]))
        return int(t["attrs"]["size"])

    def long_size(self) -> int:
        return int(self.types[self.by_name[("INT", "long int")]]["attrs"]["size"])

    def enum(self, name: str) -> dict[str, int]:
        tid = self.by_name.get(("ENUM", name)) or self.by_name[("ENUM64", name)]
        return {n: int(a["val"]) for n, a in self.types[tid]["members"]}


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    cmd = ["bpftool", "btf", "dump", "file", DEFAULT_PATH, "format", "raw"]
    return Oracle(parse_bpftool_raw(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.load()


def test_type_count_matches(btf: Btf, oracle: Oracle) -> None:
    assert btf.type_count == len(oracle.types)


@pytest.mark.parametrize(("struct", "path"), MEMBERS)
def test_member_offsets_and_sizes(btf: Btf, oracle: Oracle, struct: str, path: str) -> None:
    offset, mtype = oracle.member(struct, path)
    assert btf.member_offset(struct, path) == offset
    assert btf.member_size(struct, path) == oracle.size(mtype)
    assert btf.has_member(struct, path)


def test_struct_sizes(btf: Btf, oracle: Oracle) -> None:
    for name in ("sk_buff", "net_device", "net"):
        assert btf.struct_size(name) == int(oracle.types[oracle.by_name[("STRUCT", name)]]["attrs"]["size"])


def test_net_device_name_is_ifnamsiz(btf: Btf) -> None:
    assert btf.member_size("net_device", "name") == 16


def test_skb_drop_reason(btf: Btf, oracle: Oracle) -> None:
    reasons = btf.enum("skb_drop_reason")
    assert reasons == oracle.enum("skb_drop_reason")
    for name in ("NOT_SPECIFIED", "NO_SOCKET", "NETFILTER_DROP"):
        assert f"SKB_DROP_REASON_{name}" in reasons
    assert reasons["SKB_NOT_DROPPED_YET"] == 0


def test_functions(btf: Btf, oracle: Oracle) -> None:
    for name in ("ip_rcv", "__dev_queue_xmit", "nf_hook_slow"):
        assert btf.has_function(name) == (("FUNC", name) in oracle.by_name)
    assert not btf.has_function("podtrace_no_such_function")
    proto = int(oracle.types[oracle.by_name[("FUNC", "ip_rcv")]]["attrs"]["type_id"])
    assert btf.func_params("ip_rcv") == [n for n, _ in oracle.types[proto]["members"]]


def test_load_is_fast() -> None:
    # The lead's budget: load + a dozen lookups + one enum well under a second.
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        b = Btf.load()
        for struct, path in MEMBERS:
            b.member_offset(struct, path)
        b.enum("skb_drop_reason")
        best = min(best, time.perf_counter() - start)
    assert best < 1.0, f"load and lookups took {best:.3f}s"
