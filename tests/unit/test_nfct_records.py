"""The conntrack flows mode's maps read as nat_flows pairs: live (connection, direction) entries summed per
translation, with the counts the kernel folded into nat_flows when an nf_conn was recycled."""

from __future__ import annotations

import ctypes

from tracer.sources.live import nfct_records


class Key(ctypes.Structure):  # stands for struct pt_nat_key: any fixed bytes work, the merge keys on them
    _fields_ = [("netns", ctypes.c_uint32), ("point", ctypes.c_uint32)]


class Leaf(ctypes.Structure):  # struct pt_nat_stats
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("packets", "bytes", "first_ns", "last_ns", "hook_ns_sum", "hook_ns_max")]


class Flow(ctypes.Structure):  # struct pt_ct_flow
    _fields_ = [("key", Key), ("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64),
                ("first_ns", ctypes.c_uint64), ("wanted", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class Table:
    Key = Key
    Leaf = Leaf


def test_live_entries_and_folded_counts_sum_per_translation() -> None:
    dnat, reply = Key(7, 1), Key(7, 10)
    folded = [(Key(7, 1), Leaf(5, 300, 10, 10, 0, 0))]  # a recycled nf_conn's counts, same translation
    live = [(1, Flow(dnat, 2, 120, 40, 1)), (2, Flow(dnat, 3, 180, 20, 1)), (3, Flow(reply, 4, 240, 50, 1)),
            (4, Flow(Key(7, 7), 9, 900, 60, 0))]  # not wanted by the filter: never a record
    records = {(key.netns, key.point): stats for key, stats in nfct_records(Table, folded, live)}
    assert set(records) == {(7, 1), (7, 10)}
    assert (records[(7, 1)].packets, records[(7, 1)].bytes) == (10, 600)
    assert (records[(7, 1)].first_ns, records[(7, 1)].last_ns) == (10, 40)
    assert (records[(7, 10)].packets, records[(7, 10)].hook_ns_sum) == (4, 0)  # untimed
