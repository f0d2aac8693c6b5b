"""tracer/kernel/btf.py on checked-in BTF fixtures (see fixtures/btf/README.md) and on small hand-built blobs."""

from __future__ import annotations

import contextlib
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.bpftool_btf import parse_bpftool_raw

from tracer.cli.doctor import btf_facts, layout_problems
from tracer.kernel.btf import ARRAY, ENUM, FWD, INT, PTR, STRUCT, TYPEDEF, Btf
from tracer.output.errors import KernelError
from tracer.probes.build import BTF_OFFSETS

FIXTURES = Path(__file__).parent / "fixtures" / "btf"
LE = FIXTURES / "fixture.btf"


@pytest.fixture(scope="module", params=["fixture.btf", "fixture_be.btf", "fixture.o"])
def btf(request: pytest.FixtureRequest) -> Btf:
    """The same C source read as raw little-endian BTF, raw big-endian BTF and an ELF object."""
    return Btf.load(FIXTURES / request.param)


# -- offsets and sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "offset"),
    [
        ("next", 0),  # anonymous union > anonymous struct
        ("prev", 8),
        ("dev", 16),  # anonymous union > anonymous struct > anonymous union
        ("dev_scratch", 16),
        ("rbnode", 0),  # anonymous union, second member
        ("cb", 24),
        ("len", 72),  # the second anonymous union, like sk_buff.len
        ("data_len", 76),
        ("len_word", 72),
        ("mac_len", 80),
        ("flags", 83),
        ("mark", 84),
        ("transport_header", 88),
        ("network_header", 90),
        ("mac_header", 92),
        ("hash", 96),
        ("ns_net", 128),
        ("head", 168),
        ("data", 176),
        ("tail", 184),
        ("uptr", 192),
        ("tagged", 200),
    ],
)
def test_member_offset_through_anonymous_members(btf: Btf, member: str, offset: int) -> None:
    assert btf.member_offset("pkt", member) == offset
    assert btf.has_member("pkt", member)


def test_dotted_paths_descend_into_named_members(btf: Btf) -> None:
    assert btf.member_offset("net", "ns") == 8
    assert btf.member_offset("net", "ns.inum") == 16
    assert btf.member_offset("pkt", "ns_net.ns.inum") == 128 + 8 + 8
    assert btf.member_offset("pkt", "ns_net.dev_base") == 128 + 24
    assert btf.member_size("net", "ns.inum") == 4


@pytest.mark.parametrize(
    ("member", "size"),
    [
        ("len", 4),  # typedef u32 -> unsigned int
        ("mark", 4),  # typedef cv_u32 -> const -> volatile -> typedef my_u32 -> typedef u32 -> int
        ("transport_header", 2),
        ("flags", 1),
        ("cb", 48),  # char[48]
        ("hash", 32),  # my_u32[4][2]
        ("rbnode", 24),
        ("ns_net", 32),
        ("ratio", 4),  # float
        ("head", 8),  # pointer: the size of `long`
        ("tail", 8),  # restrict pointer
        ("uptr", 8),  # pointer to a type-tagged int
        ("dev", 8),  # pointer to a forward-declared struct
    ],
)
def test_member_size(btf: Btf, member: str, size: int) -> None:
    assert btf.member_size("pkt", member) == size


def test_struct_and_union_sizes(btf: Btf) -> None:
    assert btf.struct_size("pkt") == 208
    assert btf.struct_size("net") == 32
    assert btf.struct_size("ns_common") == 16
    assert btf.struct_size("addr") == 16  # a union
    assert btf.member_size("addr", "v6") == 16
    assert btf.has_struct("pkt")
    assert not btf.has_struct("net_device")  # only forward-declared


# -- enums and functions -------------------------------------------------------------------------------


def test_enum_values(btf: Btf) -> None:
    assert btf.enum("drop_reason") == {
        "NOT_DROPPED_YET": 0,
        "CONSUMED": 1,
        "DROP_NOT_SPECIFIED": 2,
        "DROP_NO_SOCKET": 3,
        "DROP_NETFILTER_DROP": 7,
        "DROP_MAX": 8,
    }
    assert btf.enum("signed_vals") == {"SV_NEG": -2, "SV_MINUS_ONE": -1, "SV_ZERO": 0, "SV_INT_MIN": -(2**31)}
    assert btf.enum("big_unsigned") == {"BU_HIGH": 0xFFFFFFF0, "BU_LOW": 1}


def test_enum64_values(btf: Btf) -> None:
    assert btf.enum("wide") == {"W_SMALL": 1, "W_MASK": 0xFFFFF << 32, "W_MAX": 2**64 - 1}
    assert btf.enum("wide_signed") == {"WS_NEG": -5_000_000_000, "WS_POS": 5_000_000_000}


def test_functions(btf: Btf) -> None:
    assert btf.has_function("pkt_rcv")
    assert btf.has_function("helper")  # static
    assert not btf.has_function("counters")  # a VAR, not a FUNC
    assert not btf.has_function("pkt")
    assert not btf.has_function("no_such_function")
    assert btf.func_params("pkt_rcv") == ["skb", "dev", "proto"]
    assert btf.func_params("outer") == ["net"]
    with pytest.raises(KernelError, match="function no_such_function not found"):
        btf.func_params("no_such_function")


# -- what is not there ---------------------------------------------------------------------------------


def test_missing_struct(btf: Btf) -> None:
    with pytest.raises(KernelError, match="struct sk_buff not found") as e:
        btf.member_offset("sk_buff", "len")
    assert "bpftool" in e.value.hint
    with pytest.raises(KernelError, match="struct nope not found"):
        btf.struct_size("nope")
    with pytest.raises(KernelError, match="struct net_device not found"):  # FWD is not a definition
        btf.struct_size("net_device")
    assert not btf.has_member("sk_buff", "len")


def test_missing_member_names_struct_and_member(btf: Btf) -> None:
    with pytest.raises(KernelError, match=r"struct pkt has no member nope in BTF .*fixture"):
        btf.member_offset("pkt", "nope")
    with pytest.raises(KernelError, match="struct pkt has no member ns_net.ns.nope"):
        btf.member_size("pkt", "ns_net.ns.nope")
    assert not btf.has_member("pkt", "nope")
    assert not btf.has_member("pkt", "ns_net.nope")
    # A member name that is a prefix or a suffix of a real one is not a match.
    assert not btf.has_member("pkt", "le")
    assert not btf.has_member("pkt", "en")


def test_dotted_path_does_not_follow_pointers(btf: Btf) -> None:
    with pytest.raises(KernelError, match=r"pkt\.next is not a struct or union \(anonymous pointer\)"):
        btf.member_offset("pkt", "next.len")
    assert not btf.has_member("pkt", "ns_net.dev_base.name")
    with pytest.raises(KernelError, match="bad member path"):
        btf.member_offset("pkt", "ns_net..ns")


def test_missing_enum(btf: Btf) -> None:
    with pytest.raises(KernelError, match="enum skb_drop_reason not found"):
        btf.enum("skb_drop_reason")
    with pytest.raises(KernelError, match="enum pkt not found"):  # a struct, not an enum
        btf.enum("pkt")


@pytest.mark.parametrize("member", ["pkt_type", "ignore_df", "nohdrcsum"])
def test_bitfields_are_refused(btf: Btf, member: str) -> None:
    with pytest.raises(KernelError, match=f"pkt.{member} is a bitfield") as e:
        btf.member_offset("pkt", member)
    assert e.value.hint
    with pytest.raises(KernelError, match="bitfield"):
        btf.member_size("pkt", member)
    assert btf.has_member("pkt", member)  # present, just not readable as a whole member


# -- files that are not BTF ----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match=f"no BTF at {tmp_path}/absent") as e:
        Btf.load(tmp_path / "absent")
    assert "CONFIG_DEBUG_INFO_BTF=y" in e.value.hint
    assert "--btf" in e.value.hint


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="is a directory"):
        Btf.load(tmp_path)


def test_not_btf(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="bad magic"):
        Btf.load(FIXTURES / "fixture.c")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(KernelError, match="corrupt: only 0 bytes"):
        Btf.load(empty)


def test_elf_without_btf_section() -> None:
    with pytest.raises(KernelError, match="has no .BTF section"):
        Btf.load(FIXTURES / "no_btf.o")


@pytest.mark.parametrize("name", ["fixture.btf", "fixture_be.btf"])
def test_every_truncation_is_one_kernel_error(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    for n in range(len(data)):
        with pytest.raises(KernelError, match="corrupt"):
            Btf.from_bytes(data[:n], "cut")


def test_every_truncated_elf_is_one_kernel_error(tmp_path: Path) -> None:
    data = (FIXTURES / "fixture.o").read_bytes()
    cut = tmp_path / "cut.o"
    for n in range(len(data)):
        cut.write_bytes(data[:n])
        with pytest.raises(KernelError, match="corrupt|bad magic|no .BTF section"):
            Btf.load(cut)


def _exercise(b: Btf) -> None:
    """Every public call on a fixture-shaped Btf; each may fail, but only with KernelError."""
    calls: list[tuple[Any, tuple[str, ...]]] = [
        (b.member_offset, ("pkt", "len")),
        (b.member_offset, ("pkt", "dev")),
        (b.member_offset, ("pkt", "ns_net.ns.inum")),
        (b.member_size, ("pkt", "hash")),
        (b.member_size, ("pkt", "mark")),
        (b.member_size, ("pkt", "head")),
        (b.struct_size, ("net",)),
        (b.has_member, ("pkt", "tagged")),
        (b.enum, ("wide_signed",)),
        (b.enum, ("drop_reason",)),
        (b.has_function, ("pkt_rcv",)),
        (b.func_params, ("pkt_rcv",)),
    ]
    for fn, args in calls:
        with contextlib.suppress(KernelError):
            fn(*args)


def test_random_corruption_raises_only_kernel_error() -> None:
    data = LE.read_bytes()
    rng = random.Random(0xEB9F)
    for _ in range(2000):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        try:
            b = Btf.from_bytes(bytes(buf), "mutated")
        except KernelError:
            continue
        _exercise(b)


# -- hand-built BTF for what clang does not emit ------------------------------------------------------


class _Builder:
    """Assembles a raw BTF blob from btf_type records; ids are handed out in order from 1."""

    def __init__(self) -> None:
        self.words: list[int] = []
        self.strs = bytearray(b"\0")
        self.count = 0

    def name(self, s: str) -> int:
        if not s:
            return 0
        off = len(self.strs)
        self.strs += s.encode() + b"\0"
        return off

    def add(
        self,
        kind: int,
        name: str = "",
        size_or_type: int = 0,
        extra: tuple[int, ...] = (),
        vlen: int = 0,
        kflag: bool = False,
    ) -> int:
        self.words += [self.name(name), (int(kflag) << 31) | (kind << 24) | vlen, size_or_type, *extra]
        self.count += 1
        return self.count

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], kflag: bool = False) -> int:
        extra: list[int] = []
        for mname, mtype, moff in members:
            extra += [self.name(mname), mtype, moff]
        return self.add(STRUCT, name, size, tuple(extra), vlen=len(members), kflag=kflag)

    def blob(self, order: str = "<", version: int = 1) -> bytes:
        types = struct.pack(f"{order}{len(self.words)}I", *self.words)
        # btf_header: magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
        hdr = struct.pack(
            f"{order}HBBIIIII", 0xEB9F, version, 0, 24, 0, len(types), len(types), len(self.strs)
        )
        return hdr + types + bytes(self.strs)


def _int(b: _Builder, name: str, size: int, bits: int | None = None, bit_off: int = 0) -> int:
    return b.add(INT, name, size, ((bit_off << 16) | (size * 8 if bits is None else bits),))


def test_bitfield_without_kind_flag_is_refused() -> None:
    # Older encoders put a bitfield's width in its INT type and its position in the bit offset.
    b = _Builder()
    i32 = _int(b, "int", 4)
    u3 = _int(b, "", 1, bits=3)
    b.struct("s", 8, [("a", i32, 0), ("b", u3, 32), ("c", i32, 36)])
    btf = Btf.from_bytes(b.blob())
    assert btf.member_offset("s", "a") == 0
    with pytest.raises(KernelError, match="s.b is a bitfield"):
        btf.member_offset("s", "b")
    with pytest.raises(KernelError, match="s.c is a bitfield"):  # not byte-aligned
        btf.member_offset("s", "c")


def test_pointer_size_follows_long() -> None:
    b = _Builder()
    lng = _int(b, "long", 4)
    ptr = b.add(PTR, "", lng)
    b.struct("s", 8, [("p", ptr, 0), ("l", lng, 32)])
    assert Btf.from_bytes(b.blob()).member_size("s", "p") == 4


def test_enum_skips_forward_declaration_and_finds_duplicate_strings() -> None:
    b = _Builder()
    b.add(ENUM, "e", 4)  # vlen 0: a forward declaration
    v = b.name("V")
    b.add(ENUM, "e", 4, (v, 42), vlen=1)  # "e" stored twice: strings need not be deduplicated
    assert Btf.from_bytes(b.blob()).enum("e") == {"V": 42}


def test_typedef_of_struct_is_accepted_as_struct_name() -> None:
    b = _Builder()
    i32 = _int(b, "int", 4)
    s = b.struct("", 4, [("x", i32, 0)])
    b.add(TYPEDEF, "s_t", s)
    assert Btf.from_bytes(b.blob()).member_offset("s_t", "x") == 0


def test_big_endian_hand_built() -> None:
    b = _Builder()
    i32 = _int(b, "int", 4)
    b.struct("s", 8, [("x", i32, 0), ("y", i32, 32)])
    assert Btf.from_bytes(b.blob(">")).member_offset("s", "y") == 4


def _broken_cases() -> dict[str, tuple[bytes, str]]:
    cases: dict[str, tuple[bytes, str]] = {}

    b = _Builder()
    _int(b, "int", 4)
    cases["version 2"] = (b.blob(version=2), "unsupported BTF version 2")

    b = _Builder()
    b.add(25, "x")
    cases["unknown kind"] = (b.blob(), "unknown kind 25")

    b = _Builder()
    b.add(STRUCT, "s", 4, vlen=5)  # says 5 members, has none
    cases["short record"] = (b.blob(), "runs past the end")

    b = _Builder()
    b.add(ARRAY, "", 0, (1, 1, 4))  # array of itself
    b.struct("s", 4, [("x", 1, 0)])
    cases["array cycle"] = (b.blob(), "arrays nested deeper")

    b = _Builder()
    b.add(TYPEDEF, "t1", 2)
    b.add(TYPEDEF, "t2", 1)
    b.struct("s", 4, [("x", 1, 0)])
    cases["typedef cycle"] = (b.blob(), "chain deeper")

    b = _Builder()
    b.struct("s", 4, [("", 1, 0)])  # anonymous member of its own type
    cases["anonymous cycle"] = (b.blob(), "contains itself")

    b = _Builder()
    b.struct("s", 4, [("x", 99, 0)])
    cases["dangling type id"] = (b.blob(), "type id 99")

    b = _Builder()
    b.add(FWD, "f")
    b.struct("s", 4, [("x", 1, 0)])
    cases["size of a forward declaration"] = (b.blob(), "forward declaration f in BTF .* has no size")
    return cases


@pytest.mark.parametrize("case", sorted(_broken_cases()))
def test_broken_hand_built(case: str) -> None:
    blob, message = _broken_cases()[case]
    with pytest.raises(KernelError, match=message):
        Btf.from_bytes(blob).member_size("s", "x")


# -- cross-check against bpftool ------------------------------------------------------------------------


def oracle_members(types: dict[int, dict[str, Any]], tid: int, base: int = 0) -> dict[str, tuple[int, int]]:
    """Members reachable by name from struct `tid` through anonymous members: {name: (bits, bitfield)}."""
    out: dict[str, tuple[int, int]] = {}
    for name, attrs in types[tid]["members"]:
        bits = base + int(attrs["bits_offset"])
        if name != "(anon)":
            out[name] = (bits, int(attrs.get("bitfield_size", 0)))
            continue
        inner = int(attrs["type_id"])
        while types[inner]["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            inner = int(types[inner]["attrs"]["type_id"])
        if types[inner]["kind"] in ("STRUCT", "UNION"):
            out.update(oracle_members(types, inner, bits))
    return out


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
@pytest.mark.parametrize("name", ["fixture.btf", "fixture_be.btf"])
def test_matches_bpftool(name: str) -> None:
    path = FIXTURES / name
    cmd = ["bpftool", "btf", "dump", "file", str(path), "format", "raw"]
    raw = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    types = parse_bpftool_raw(raw)
    btf = Btf.load(path)
    assert btf.type_count == len(types)
    checked = 0
    for tid, t in types.items():
        if t["kind"] in ("STRUCT", "UNION") and t["name"] != "(anon)":
            assert btf.struct_size(t["name"]) == int(t["attrs"]["size"])
            for member, (bits, bitfield) in oracle_members(types, tid).items():
                if bitfield or bits % 8:
                    assert not _readable(btf, t["name"], member)
                else:
                    assert btf.member_offset(t["name"], member) == bits // 8, (t["name"], member)
                    checked += 1
        elif t["kind"] in ("ENUM", "ENUM64") and t["name"] != "(anon)":
            assert btf.enum(t["name"]) == {n: int(a["val"]) for n, a in t["members"]}
            checked += 1
        elif t["kind"] == "FUNC":
            assert btf.has_function(t["name"])
    assert checked >= 35


def _readable(btf: Btf, struct_name: str, member: str) -> bool:
    try:
        btf.member_offset(struct_name, member)
    except KernelError:
        return False
    return True


# -- what doctor reports about a BTF: the core probes' layout and the drop reasons ------------------------


def _kernel_like(sizes: dict[tuple[str, str], int] | None = None) -> bytes:
    """A BTF holding every member in tracer/probes/build.py BTF_OFFSETS, dotted paths as nested named structs."""
    sizes = sizes or {}
    b = _Builder()
    ints = {n: _int(b, f"u{n * 8}", n) for n in (1, 2, 4, 8)}
    tree: dict[str, Any] = {}
    for _macro, struct_name, path, size in BTF_OFFSETS:
        node = tree.setdefault(struct_name, {})
        *outer, last = path.split(".")
        for part in outer:
            node = node.setdefault(part, {})
        node[last] = sizes.get((struct_name, path), size)

    def emit(name: str, node: dict[str, Any]) -> tuple[int, int]:
        members: list[tuple[str, int, int]] = []
        offset = 0
        for member, spec in node.items():
            if isinstance(spec, dict):
                tid, size = emit(f"{name}_{member}", spec)
            elif spec in ints:
                tid, size = ints[spec], spec
            else:  # char name[16]
                tid, size = b.add(ARRAY, "", 0, (ints[1], ints[4], spec)), spec
            members.append((member, tid, offset * 8))
            offset += size
        return b.struct(name, offset, members), offset

    for struct_name, node in tree.items():
        emit(struct_name, node)
    return b.blob()


def test_layout_of_the_core_probes_is_complete() -> None:
    assert layout_problems(Btf.from_bytes(_kernel_like())) == []


def test_layout_names_a_member_of_another_size() -> None:
    btf = Btf.from_bytes(_kernel_like({("sk_buff", "len"): 2, ("net", "ns.inum"): 8}))
    assert layout_problems(btf) == [
        "sk_buff.len is 2 bytes, podtrace reads 4",
        "net.ns.inum is 8 bytes, podtrace reads 4",
    ]


def test_layout_names_each_missing_struct_once() -> None:
    problems = layout_problems(Btf.load(LE))
    missing = {struct_name for _macro, struct_name, _path, _size in BTF_OFFSETS} - {"net"}
    assert sorted(problems) == sorted(f"struct {name} not found in BTF {LE}" for name in missing)
    # fixture.c's struct net has ns.inum: the one core member it does define is not reported
    assert not any("net.ns.inum" in problem for problem in problems)


def test_btf_facts_without_drop_reasons() -> None:
    """A kernel before 5.17 has no enum skb_drop_reason: doctor reports 0 reasons instead of failing."""
    facts = btf_facts(str(LE))
    assert facts["drop_reasons"] == 0
    assert facts["types"] == Btf.load(LE).type_count
    assert facts["bytes"] == LE.stat().st_size
    assert 0 <= facts["load_ms"] < 1000
    assert facts["layout_problems"] == layout_problems(Btf.load(LE))


def test_btf_facts_counts_drop_reasons(tmp_path: Path) -> None:
    b = _Builder()
    values: list[int] = []
    for value, name in enumerate(["SKB_NOT_DROPPED_YET", "SKB_CONSUMED", "SKB_DROP_REASON_NOT_SPECIFIED"]):
        values += [b.name(name), value]
    b.add(ENUM, "skb_drop_reason", 4, tuple(values), vlen=3)
    path = tmp_path / "reasons.btf"
    path.write_bytes(b.blob())
    facts = btf_facts(str(path))
    assert facts["drop_reasons"] == 3
    structs = {struct_name for _macro, struct_name, _path, _size in BTF_OFFSETS}
    assert sorted(facts["layout_problems"]) == sorted(f"struct {name} not found in BTF {path}" for name in structs)
