"""tracer/sources/ct_sweep.py: which per-connection entries are idle, read after read, and what retiring them keeps."""

from __future__ import annotations

import ctypes

from tracer.sources.ct_sweep import CtSweeper


class Key(ctypes.Structure):
    _fields_ = [("ct", ctypes.c_uint64), ("dir", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class Flow(ctypes.Structure):
    # struct pt_ct_flow's fields the sweeper reads; `key` stands for struct pt_nat_key (bytes are what matter)
    _fields_ = [("key", ctypes.c_uint8 * 8), ("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64),
                ("first_ns", ctypes.c_uint64), ("wanted", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


def _flow(nat: int, packets: int, first_ns: int = 100, wanted: int = 1) -> Flow:
    return Flow((ctypes.c_uint8 * 8)(*nat.to_bytes(8, "little")), packets, packets * 60, first_ns, wanted, 0)


def test_an_entry_is_idle_only_after_its_counts_stood_still_for_idle_s() -> None:
    sweeper = CtSweeper(idle_s=10)
    busy, still = Key(1, 0), Key(2, 0)
    assert sweeper.idle([(busy, _flow(7, 1)), (still, _flow(8, 5))], now=0) == []
    assert sweeper.idle([(busy, _flow(7, 2)), (still, _flow(8, 5))], now=9) == []
    idle = sweeper.idle([(busy, _flow(7, 3)), (still, _flow(8, 5))], now=10)
    assert [bytes(key) for key in idle] == [bytes(still)]


def test_retired_counts_sum_per_translation_and_a_vanished_entry_is_skipped() -> None:
    sweeper = CtSweeper(idle_s=1)
    table = {bytes(Key(1, 0)): _flow(7, 3, first_ns=50), bytes(Key(2, 0)): _flow(7, 2, first_ns=40),
             bytes(Key(3, 1)): _flow(9, 4, wanted=0)}
    taken = sweeper.retire([Key(1, 0), Key(2, 0), Key(3, 1), Key(4, 0)], lambda key: table.pop(bytes(key), None))
    assert taken == 3 and sweeper.retired_entries == 3 and table == {}
    (nat, counts), = sweeper.retired.items()  # the unwanted entry leaves the table but counts nothing
    assert nat == (7).to_bytes(8, "little")
    assert (counts.packets, counts.bytes, counts.first_ns, counts.last_ns) == (5, 300, 40, 50)
