"""The rule-count benchmark's BPF accounting: per-program deltas, per-request figures and the flat verdict."""

from __future__ import annotations

from tracer.benchmarks.probecost import ProgramCost, program_deltas
from tracer.benchmarks.rulecount import (
    FLAT_PERCENT,
    MIN_RUNS,
    CountResult,
    bpf_table,
    flat_verdict,
    per_packet_verdict,
    round_noise,
    shared_shift,
)


def prog(name: str, runs: int, ns: int) -> dict[str, object]:
    return {"name": name, "run_cnt": runs, "run_time_ns": ns}


def test_program_deltas_sum_by_name_and_skip_unloaded_programs() -> None:
    before = {1: prog("kfree_skb", 10, 1_000), 2: prog("pt_nf_pre_first", 0, 0), 3: prog("pt_nf_pre_first", 5, 50),
              4: prog("gone", 1, 1)}
    after = {1: prog("kfree_skb", 30, 5_000), 2: prog("pt_nf_pre_first", 100, 30_000),
             3: prog("pt_nf_pre_first", 105, 20_050), 9: prog("new", 7, 7)}
    costs = program_deltas(before, after)
    assert costs == {"kfree_skb": ProgramCost(20, 4_000), "pt_nf_pre_first": ProgramCost(200, 50_000)}
    assert costs["pt_nf_pre_first"].ns_per_run == 250.0
    assert ProgramCost().ns_per_run == 0.0


def test_count_result_medians_and_per_request_figures() -> None:
    result = CountResult([
        ({"a": ProgramCost(1_000, 300_000), "b": ProgramCost(2_000, 200_000)}, 500),
        ({"a": ProgramCost(1_000, 500_000), "b": ProgramCost(2_000, 400_000)}, 500),
        ({"a": ProgramCost(1_000, 400_000)}, 1_000),
    ])
    assert result.ns_per_run("a") == 400.0
    assert result.ns_per_run("b") == 150.0  # median of the rounds it ran in
    assert result.min_runs("b") == 0
    assert result.runs_per_request("a") == 1.5  # 3,000 runs over 2,000 requests
    assert result.ns_per_request() == 1_000.0  # per round: 1,000, 1,800, 400
    assert result.names() == {"a", "b"}


def test_flat_verdict_is_the_spread_of_ns_per_run_against_the_limit() -> None:
    assert flat_verdict("p", [300.0, 310.0, 320.0]) is None  # 6.5%
    message = flat_verdict("p", [300.0, 300.0, 600.0], noise=10.0)
    assert message is not None and "spreads over 100% of its median" in message
    assert f"within {FLAT_PERCENT:g}%" in message and "2.00x with the most Services" in message
    assert message.endswith("more than the 10% repeated rounds at one rule count spread")
    assert flat_verdict("p", [100.0, 130.0], limit=50) is None


def test_flat_verdict_calls_a_spread_within_the_round_noise_inconclusive() -> None:
    message = flat_verdict("p", [400.0, 300.0], noise=40.0)  # 29% across counts, rounds alone spread 40%
    assert message is not None and "0.75x" in message and message.endswith("within the noise, inconclusive")


def _result(ns_per_run: dict[str, float], runs: int = MIN_RUNS, requests: int = 1_000) -> CountResult:
    return CountResult([({name: ProgramCost(runs, int(ns * runs)) for name, ns in ns_per_run.items()}, requests)])


def _packets(result: CountResult, ns_per_packet: float, packets: int = MIN_RUNS) -> CountResult:
    """Adds the first PREROUTING link (it counts packets) to every round, at `ns_per_packet` each."""
    for costs, _ in result.rounds:
        costs["pt_nf_pre_first"] = ProgramCost(packets, int(ns_per_packet * packets))
    return result


def test_bpf_table_judges_programs_with_enough_runs_only() -> None:
    results = {10: _packets(_result({"nf": 300.0}), 300.0), 1000: _packets(_result({"nf": 310.0}), 300.0)}
    results[10].rounds[0][0]["rare"] = ProgramCost(3, 3_000)
    results[1000].rounds[0][0]["rare"] = ProgramCost(2, 9_000)
    rows, notes, missed = bpf_table((10, 1000), results)
    # one round per count: no measure of the rounds' spread
    assert rows[0] == ["nf", "300", "310", "3%", "-", "1.03x", "1.00 / 1.00"]
    assert rows[2][0] == "rare" and rows[2][3].endswith("too few runs)")
    # (310,000 + 300,000 + 9,000) ns / 1,000 requests
    assert rows[-2] == ["all programs, ns per request", "603", "619", "3%", "-", "1.03x", "-"]
    assert missed == [] and any("rare: fewer than" in note for note in notes)


def test_the_verdict_is_the_cost_per_packet_growing_with_rules_and_one_program_is_a_note() -> None:
    _, notes, missed = bpf_table((10, 1000), {10: _packets(_result({"nf": 300.0}), 300.0),
                                              1000: _packets(_result({"nf": 900.0}), 300.0)})
    assert any(note.startswith("One program: nf: ns/run 300, 900") for note in notes)
    assert len(missed) == 1 and missed[0].startswith("BPF time per packet 600 ns, 1,200 ns at 10, 1,000 Services")
    assert "2.00x with the most vs the fewest" in missed[0] and missed[0].endswith("no measure of the noise")
    _, _, missed = bpf_table((10, 1000), {10: _result({"nf": 300.0}), 1000: _result({"nf": 300.0})})
    assert missed and missed[0].startswith("no packets counted")


def test_a_middle_bump_is_not_a_trend_and_the_noise_is_the_largest_spread_of_rounds() -> None:
    def rounds(*ns: float) -> CountResult:
        return _packets(CountResult([({"nf": ProgramCost(MIN_RUNS, int(v * MIN_RUNS))}, 1_000) for v in ns]), 100)

    rows, notes, missed = bpf_table((10, 1000, 10_000), {10: rounds(300, 400, 500), 1000: rounds(600, 600, 600),
                                                         10_000: rounds(290, 300, 310)})
    assert rows[0][:7] == ["nf", "400", "600", "300", "75%", "50%", "0.75x"]  # rounds at 10 Services: 200 / 400
    assert any("One program: nf" in note and "more than the 50%" in note for note in notes)
    assert missed == []  # per packet: 500, 700, 400 ns: 0.80x, within 20%
    assert per_packet_verdict((10, 1000), [500.0, 610.0], 5.0) is not None
    assert per_packet_verdict((10, 1000), [500.0, 590.0], None) is None


def test_ns_per_packet_counts_packets_from_the_first_prerouting_and_output_links() -> None:
    costs = {"pt_nf_pre_first": ProgramCost(200, 100_000), "pt_nf_out_first": ProgramCost(20, 10_000),
             "pt_nf_fwd_first": ProgramCost(200, 80_000), "kfree_skb": ProgramCost(1, 30_000)}
    result = CountResult([(costs, 100)])
    assert result.ns_per_packet() == 1_000.0  # 220,000 ns over 220 packets
    assert result.ns_per_request() == 2_200.0
    assert CountResult([({"kfree_skb": ProgramCost(1, 5)}, 10)]).ns_per_packet() == 0.0
    rows, notes, _ = bpf_table((10,), {10: result})
    assert rows[-1] == ["all programs, ns per packet", "1,000", "0%", "-", "1.00x", "2.20 packets"]
    assert any("packets per request" in note for note in notes)


def test_round_noise_needs_repeated_rounds_at_every_count() -> None:
    assert round_noise([[90.0, 110.0], [100.0, 100.0, 100.0]]) == 20.0
    assert round_noise([[90.0, 110.0], [100.0]]) is None


def test_shared_shift_says_when_every_program_moved_the_same_way() -> None:
    assert shared_shift([1.2, 1.3, 1.25]).startswith("from 1.20x to 1.30x (median 1.25x); every program moved")
    assert shared_shift([0.8, 0.9]).startswith("from 0.80x to 0.90x (median 0.85x); every program moved")
    assert shared_shift([0.9, 1.1]) == "from 0.90x to 1.10x (median 1.00x)"
    assert shared_shift([]) == ""
