"""The TUI model's raw fast path (Model.add_raw): the same answers as decoding every event, on real captured bytes.

events.bin is what capture.py read from a real ring buffer (tests/unit/fixtures/tui/meta.json "provenance")."""

from __future__ import annotations

import heapq
import importlib.util
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from tracer.benchmarks.pipeline import drop_event
from tracer.events.decode import EVENT_SIZE, FLAG_INNER, encode
from tracer.output.report import Resolver
from tui.model import Model, key_id
from tui.overlay import OverlayTable
from tui.pyfilter import ViewFilter

FIXTURE = Path(__file__).parent / "fixtures" / "tui" / "replay_fixture.py"
_spec = importlib.util.spec_from_file_location("tui_replay_fixture_fast", FIXTURE)
assert _spec and _spec.loader
replay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(replay)


def raw_events() -> list[bytes]:
    data = (replay.HERE / "events.bin").read_bytes()
    return [data[i:i + EVENT_SIZE] for i in range(0, len(data), EVENT_SIZE)]


def seen(model: Model) -> dict[str, Any]:
    """What the screens get from a model: the snapshot's figures and rows, and every drop group's timeline."""
    snap = model.snapshot({"lost": 0})
    return {
        "figures": (snap.events, snap.received, snap.drop_total, snap.drop_groups, snap.path_events, snap.rate,
                    snap.probe_events),
        "drops": snap.drops,
        "timelines": {row["key"]: model.timeline(row["key"]) for row in snap.drops},
        "overlay": snap.tables.get("overlay"),
    }


def with_overlay(model: Model) -> Model:
    model.tables["overlay"] = OverlayTable(model.names.netns, model.names.reasons)
    return model


def test_raw_bytes_give_the_same_snapshot_and_timelines_as_decoded_events_with_and_without_a_filter() -> None:
    decoded, raw = with_overlay(Model(replay.resolver())), with_overlay(Model(replay.resolver()))
    decoded.add(replay.events())
    raw.add_raw(raw_events())
    assert seen(raw) == seen(decoded)
    assert sum(isinstance(kept, bytes) for kept in raw.history) == 25  # the 25 drops took the fast path
    assert seen(raw)["figures"][:3] == (55, 55, 25)
    for expression in ("udp port 5002", "tcp", ""):
        decoded.set_filter(expression, ViewFilter(expression) if expression else None)
        raw.set_filter(expression, ViewFilter(expression) if expression else None)
        assert seen(raw) == seen(decoded), expression
    assert [(row["reason"], row["count"]) for row in seen(raw)["drops"]] == [
        ("NETFILTER_DROP", 13), ("NO_SOCKET", 7), ("NO_SOCKET", 5)]


REASONS = {6: "NO_SOCKET", 30: "PKT_TOO_BIG", 41: "FRAG_REASM_TIMEOUT"}


def test_the_overlay_table_says_from_the_bytes_exactly_which_drops_it_counts() -> None:
    plain = drop_event(1, 10)
    inner = replace(plain.outer, sport=5, dport=6)
    cases = {
        "plain": plain,
        "tunnelled": replace(plain, flags=plain.flags | FLAG_INNER, inner=inner, vni=1),
        "fragment": replace(plain, outer=replace(plain.outer, frag=0x2000)),  # MF
        "fragment offset": replace(plain, outer=replace(plain.outer, frag=0x0010)),
        "DF only": replace(plain, outer=replace(plain.outer, frag=0x4000)),
        "too big": replace(plain, reason=30),
        "reassembly timeout": replace(plain, reason=41),
    }
    wanted = {}
    for name, event in cases.items():
        table = OverlayTable(lambda inode: str(inode), REASONS)
        table.add(event)
        assert table.wants_raw(encode(event)) == bool(table.rows()), name
        wanted[name] = bool(table.rows())
    assert wanted == {"plain": False, "tunnelled": True, "fragment": True, "fragment offset": True,
                      "DF only": False, "too big": True, "reassembly timeout": True}
    # and the model decodes those, so the Overlay view counts them off the fast path too
    model = with_overlay(Model(Resolver(REASONS, str, hex)))
    model.add_raw([encode(event) for event in cases.values()])
    # five counted: the tunnelled one in its VNI row, the other four on the device
    assert [row["packets"] for row in model.snapshot({}).tables["overlay"]] == [4, 1]
    assert sum(isinstance(kept, bytes) for kept in model.history) == 2  # plain and DF only stayed raw


def full_ranking(model: Model) -> set[str]:
    """The top groups ranked from every group the model holds (what the incremental ranking must equal)."""
    model.drops.fold()
    top = heapq.nsmallest(model.max_rows, model.drops.groups.items(),
                          key=lambda item: (-item[1].count, -item[1].last_ns))
    return {key_id(key) for key, _row in top}


def test_the_top_groups_ranked_from_the_last_top_and_the_touched_groups_are_those_of_a_full_ranking() -> None:
    flows = 300
    picks = [flow for flow in range(flows) for _ in range(flow % 17 + 1)]
    random.Random(7).shuffle(picks)
    repeat = [0] * flows
    events = []
    for flow in picks:
        events.append(encode(drop_event(flow + flows * repeat[flow], flows)))
        repeat[flow] += 1
    names = Resolver({6: "NO_SOCKET"}, str, hex)
    for max_groups in (100_000, 120):  # 120: groups are evicted as they come, top ones among them
        model = Model(names, max_rows=10, max_groups=max_groups)
        for start in range(0, len(events), 97):
            model.add_raw(events[start:start + 97])
            shown = {row["key"] for row in model.snapshot({}).drops}
            assert shown == full_ranking(model), (max_groups, start)
        assert model.drops.total == len(events)
        assert (model.drops.evicted > 0) == (max_groups < flows)


def test_a_top_group_evicted_since_the_last_snapshot_makes_way_for_an_untouched_one() -> None:
    """A, B, C, D fill a table of 4 (top two: A and B); a new group E evicts A, the oldest: the next top is B and
    C, which no event touched since the last ranking."""
    names = Resolver({6: "NO_SOCKET"}, str, hex)
    model = Model(names, max_rows=2, max_groups=4)
    flows = 5
    counts = {0: 5, 1: 4, 2: 3, 3: 1}
    model.add_raw([encode(drop_event(flow + flows * n, flows)) for flow, count in counts.items()
                   for n in range(count)])
    assert [row["count"] for row in model.snapshot({}).drops] == [5, 4]
    model.add_raw([encode(drop_event(4, flows))])
    assert model.drops.evicted == 1
    assert [row["count"] for row in model.snapshot({}).drops] == [4, 3]
