"""The attach ladder on recorded capability sets (tests/unit/fixtures/capabilities, see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracer.cli.doctor import cannot_see, fixes_for
from tracer.kernel import capabilities as kernel
from tracer.kernel.hookpoints import HOOK_POINTS, Candidate, HookPoint, Mechanism, hook_point
from tracer.kernel.ladder import AttachPlan, HookPlan, Trial, make_plan, plan_hook, trials_from_json, trials_to_json

FIXTURES = Path(__file__).parent / "fixtures" / "capabilities"

EPERM_FENTRY = "fentry refused by the kernel (EPERM: lockdown, an LSM or a kernel built to refuse it)"
EPERM = "refused by the kernel (EPERM: lockdown, an LSM or a kernel built to refuse it)"
NO_KPROBES = "kprobes are not in this kernel (CONFIG_KPROBES off)"
NO_FENTRY = "fentry is not supported by this kernel or BCC"


def load(name: str) -> tuple[str, dict[str, Trial]]:
    data = json.loads((FIXTURES / name).read_text())
    return data["kernel"], trials_from_json(data["trials"])


def plan_of(name: str) -> AttachPlan:
    release, trials = load(name)
    return make_plan(release, trials)


def rejections(plan: AttachPlan, hook: str) -> list[tuple[str, str]]:
    return [(r["candidate"], r["reason"]) for r in plan.hook(hook).rejected]


# -- hookpoints: the static ladder --


def test_hook_points_are_unique_and_named() -> None:
    names = [point.name for point in HOOK_POINTS]
    assert len(names) == len(set(names))
    assert names == ["drops", "path", "netfilter", "nat", "ipvs", "vxlan", "fragmentation", "icmp", "softirq"]
    assert [point.name for point in HOOK_POINTS if point.core] == ["drops", "path"]
    for point in HOOK_POINTS:
        assert point.candidates, point.name
        assert point.unseen, point.name
        assert bool(point.subsystem) == bool(point.requires_symbols), point.name


def test_candidate_keys_and_label() -> None:
    candidate = hook_point("netfilter").candidates[0]
    assert candidate.mechanism is Mechanism.KPROBE
    assert candidate.keys == ("kprobe:nf_hook_slow", "kprobe:ipt_do_table", "kprobe:nft_do_chain")
    assert candidate.label() == "kprobe nf_hook_slow, ipt_do_table, nft_do_chain"
    assert hook_point("path").candidates[0].keys == ("tracepoint:net:netif_receive_skb", "tracepoint:net:net_dev_queue")
    assert hook_point("nat").candidates[0].keys == ("netfilter_link:netfilter:ipv4",)


ATTACH_FORMS = {
    Mechanism.TP_BTF: lambda target: [f"tp_btf/{target}"],
    Mechanism.RAW_TRACEPOINT: lambda target: [f"RAW_TRACEPOINT_PROBE({target})", f"raw_tracepoint/{target}"],
    Mechanism.TRACEPOINT: lambda target: ["TRACEPOINT_PROBE({}, {})".format(*target.split(":", 1))],
    Mechanism.NETFILTER_LINK: lambda _target: ["SEC(\"netfilter\")", "pt_nf_"],
    Mechanism.TC: lambda _target: ["pt_tc_ingress", "pt_tc_egress"],
}


def test_every_candidate_is_a_program_podtrace_has() -> None:
    """Doctor reports only what a session can load: each candidate's program declares each of its targets."""
    from bpf import BPF_DIR
    from tracer.probes.kprobes import KPROBES

    kprobe_programs = {probe.function: probe.program for probes in KPROBES.values() for probe in probes}
    for point in HOOK_POINTS:
        for candidate in point.candidates:
            text = (BPF_DIR / candidate.program).read_text()
            for target in candidate.targets:
                if candidate.mechanism is Mechanism.KPROBE:
                    assert target in kprobe_programs, (point.name, target)
                    assert f"int {kprobe_programs[target]}(" in text, (point.name, target, candidate.program)
                else:
                    forms = ATTACH_FORMS[candidate.mechanism](target)
                    assert any(form in text for form in forms), (point.name, candidate.label(), candidate.program)
    assert not any(c.mechanism is Mechanism.FENTRY for p in HOOK_POINTS for c in p.candidates), \
        "podtrace has no fentry programs: no hook point may offer fentry"


def test_a_candidate_without_a_program_cannot_be_declared() -> None:
    with pytest.raises(ValueError, match="bpf/nowhere.c is no registered program"):
        Candidate(Mechanism.KPROBE, ("f",), "nowhere.c")


def test_unknown_hook_point() -> None:
    with pytest.raises(KeyError):
        hook_point("nope")


def test_every_trial_key_is_something_the_prober_runs() -> None:
    """Keys split at the first colon into a Prober method name and its target."""
    methods = {"fentry", "tp_btf", "kprobe", "raw_tracepoint", "tracepoint", "netfilter_link", "tc", "symbol"}
    for name in ("6.18-ci.json", "6.1-debian-ipvs.json", "5.4-ubuntu-kprobes.json", "locked-down.json"):
        _release, trials = load(name)
        for key in trials:
            kind, _, target = key.partition(":")
            assert kind in methods and target, (name, key)
            assert callable(getattr(kernel.Prober, kind)), key


# -- the CI machine, recorded --


def test_ci_kernel_recorded() -> None:
    plan = plan_of("6.18-ci.json")
    assert plan.kernel == "6.18.44-fc-v1300"
    chosen = {hook.name: (hook.chosen, hook.fallback) for hook in plan.hooks}
    assert chosen == {
        "drops": ("tp_btf", False),
        "path": ("tracepoint", False),
        "netfilter": ("netfilter_link", True),
        "nat": ("netfilter_link", False),
        "ipvs": (None, False),
        "vxlan": ("tracepoint", True),
        "fragmentation": ("tracepoint", True),
        "icmp": ("tracepoint", False),
        "softirq": ("tracepoint", False),
    }
    assert plan.core_ok()
    assert plan.summary() == "8 of 9 hook points (missing: ipvs)"

    path = plan.hook("path")
    assert path.targets == ["net:netif_receive_skb", "net:net_dev_queue"]
    assert path.gives == "device receive, transmit queue and driver transmit"
    assert path.unseen == ""
    assert rejections(plan, "path") == []
    assert rejections(plan, "netfilter") == [("kprobe nf_hook_slow, ipt_do_table, nft_do_chain", NO_KPROBES)]
    assert rejections(plan, "fragmentation") == [("kprobe ip_do_fragment", NO_KPROBES)]
    assert plan.hook("fragmentation").targets == ["net:net_dev_queue"]
    assert plan.hook("icmp").targets == ["icmp:icmp_send"]
    assert rejections(plan, "drops") == []
    assert plan.hook("drops").targets == ["kfree_skb"]
    assert plan.hook("softirq").targets == ["irq:softirq_raise", "irq:softirq_entry", "irq:softirq_exit",
                                            "napi:napi_poll"]


def test_ci_kernel_ipvs_is_a_missing_subsystem() -> None:
    plan = plan_of("6.18-ci.json")
    ipvs = plan.hook("ipvs")
    assert ipvs.chosen is None and ipvs.targets == [] and ipvs.gives == ""
    assert ipvs.unseen == hook_point("ipvs").unseen
    reason = "IPVS: not in this kernel (not built in and no module for it)"
    assert rejections(plan, "ipvs") == [("kprobe ip_vs_conn_new, ip_vs_nat_xmit", reason)]


def test_ci_kernel_mechanisms_and_fixes() -> None:
    release, trials = load("6.18-ci.json")
    plan = make_plan(release, trials)
    mechanisms = kernel.describe_mechanisms(trials)
    assert mechanisms == {
        "fentry": {"available": False, "reason": EPERM_FENTRY},
        "tp_btf": {"available": True, "reason": ""},
        "kprobe": {"available": False, "reason": NO_KPROBES},
        "raw_tracepoint": {"available": True, "reason": ""},
        "tracepoint": {"available": True, "reason": ""},
        "netfilter_link": {"available": True, "reason": ""},
        "tc": {"available": True, "reason": ""},
    }
    fixes = fixes_for(plan, trials)
    assert [fix.split(":", 1)[0] for fix in fixes] == ["kprobes", "IPVS"]


def test_ci_kernel_cannot_see_names_the_missing_hook_and_what_each_fallback_loses() -> None:
    """doctor's "what you cannot see": IPVS is absent, and four hook points run on a fallback that shows less."""
    assert cannot_see(plan_of("6.18-ci.json")) == [
        "netfilter: verdicts with table and chain (needs kprobe)",
        "ipvs: IPVS Service flows (iptables and nftables modes are unaffected)",
        "vxlan: encap/decap with VNI from the driver (needs kprobe)",
        "fragmentation: every local fragmentation (needs kprobe)",
    ]


def test_cannot_see_is_silent_when_the_fallback_shows_the_same() -> None:
    """On 5.4 the kprobes are every hook's first choice: what is missing is NAT (no netfilter links) and IPVS."""
    assert cannot_see(plan_of("5.4-ubuntu-kprobes.json")) == [
        "nat: Service flows fall back to conntrack tables only (no per-packet NAT)",
        "ipvs: IPVS Service flows (iptables and nftables modes are unaffected)",
        "icmp: frag-needed only as ICMP packets on the path, without the offending packet",
    ]
    assert cannot_see(plan_of("6.1-debian-ipvs.json")) == [
        "nat: Service flows fall back to conntrack tables only (no per-packet NAT)",
        "vxlan: overlay tunnels and inner/outer correlation",
    ]


def test_cannot_see_a_plan_from_another_version() -> None:
    plan = AttachPlan("k", [HookPlan("retired", "c", False, "tc", ["clsact"], "", "", fallback=True)])
    assert cannot_see(plan) == []


# -- hand-written sets --


def test_debian_6_1_with_ipvs_loaded() -> None:
    plan = plan_of("6.1-debian-ipvs.json")
    chosen = {hook.name: (hook.chosen, hook.fallback) for hook in plan.hooks}
    assert chosen == {
        "drops": ("tp_btf", False),
        "path": ("tracepoint", False),
        "netfilter": ("kprobe", False),
        "nat": (None, False),
        "ipvs": ("kprobe", False),
        "vxlan": (None, False),
        "fragmentation": ("kprobe", False),
        "icmp": ("tracepoint", False),
        "softirq": ("tracepoint", False),
    }
    assert rejections(plan, "nat") == [
        ("netfilter_link netfilter:ipv4", "kernel 6.1.0-27-amd64 is too old for BPF netfilter links (needs 6.4)"),
    ]
    assert plan.hook("ipvs").targets == ["ip_vs_conn_new", "ip_vs_nat_xmit"]
    assert rejections(plan, "ipvs") == []
    # The vxlan module is on disk but not loaded: every candidate is rejected with the subsystem and the fix.
    assert {r["reason"] for r in plan.hook("vxlan").rejected} == {"VXLAN: module vxlan is not loaded (modprobe vxlan)"}
    assert len(plan.hook("vxlan").rejected) == len(hook_point("vxlan").candidates)
    assert plan.core_ok()
    assert plan.summary() == "7 of 9 hook points (missing: nat, vxlan)"


def test_ubuntu_5_4_kprobes_without_fentry() -> None:
    plan = plan_of("5.4-ubuntu-kprobes.json")
    chosen = {hook.name: (hook.chosen, hook.fallback) for hook in plan.hooks}
    assert chosen == {
        "drops": ("raw_tracepoint", True),  # tp_btf needs 5.5
        "path": ("tracepoint", False),
        "netfilter": ("kprobe", False),
        "nat": (None, False),
        "ipvs": (None, False),
        "vxlan": ("kprobe", False),
        "fragmentation": ("kprobe", False),
        "icmp": (None, False),
        "softirq": ("tracepoint", False),
    }
    assert rejections(plan, "path") == []
    assert rejections(plan, "vxlan") == []
    assert plan.hook("vxlan").gives == "encap/decap with VNI from the driver"
    assert rejections(plan, "ipvs") == [
        ("kprobe ip_vs_conn_new, ip_vs_nat_xmit", "IPVS: module ip_vs is not loaded (modprobe ip_vs)"),
    ]
    assert plan.core_ok()
    assert plan.summary() == "6 of 9 hook points (missing: nat, ipvs, icmp)"
    release, trials = load("5.4-ubuntu-kprobes.json")
    assert kernel.kernel_version(release) == (5, 4)
    fixes = fixes_for(plan, trials)
    assert any(fix.startswith("IPVS:") for fix in fixes)
    assert any(fix.startswith("netfilter links need kernel 6.4") for fix in fixes)
    assert not any(fix.startswith("kprobes:") for fix in fixes)


def test_locked_down_kernel_fails_the_core() -> None:
    plan = plan_of("locked-down.json")
    drops = plan.hook("drops")
    assert drops.chosen is None
    assert drops.unseen == "no drop events at all"
    assert rejections(plan, "drops") == [("tp_btf kfree_skb", EPERM), ("raw_tracepoint kfree_skb", EPERM)]
    path = plan.hook("path")
    assert (path.chosen, path.fallback, path.targets) == ("tc", True, ["clsact"])
    assert [r["reason"] for r in path.rejected] == [EPERM]
    assert plan.hook("nat").chosen == "netfilter_link"
    assert not plan.core_ok()
    assert plan.summary() == (
        "3 of 9 hook points (missing: drops, ipvs, vxlan, fragmentation, icmp, softirq)"
    )


# -- the ladder's rules on small synthetic sets --


POINT = HookPoint(
    "demo", "a demo", core=True,
    candidates=(
        Candidate(Mechanism.KPROBE, ("a", "b"), "overlay.c", "best"),
        Candidate(Mechanism.TRACEPOINT, ("x:y",), "path.c", "fallback"),
    ),
    unseen="nothing",
)


def test_first_failing_target_gives_the_reason() -> None:
    trials = {"kprobe:a": Trial(True), "kprobe:b": Trial(False, "b is inlined"), "tracepoint:x:y": Trial(True)}
    plan = plan_hook(POINT, trials)
    assert (plan.chosen, plan.fallback, plan.gives) == ("tracepoint", True, "fallback")
    assert plan.rejected == [{"candidate": "kprobe a, b", "reason": "b is inlined"}]


def test_untried_candidates_are_said_so() -> None:
    plan = plan_hook(POINT, {"kprobe:a": Trial(True)})
    assert plan.chosen is None
    assert plan.unseen == "nothing"
    assert plan.rejected == [
        {"candidate": "kprobe a, b", "reason": "not tried"},
        {"candidate": "tracepoint x:y", "reason": "not tried"},
    ]


def test_no_trials_at_all() -> None:
    plan = make_plan("0.0", {})
    assert not plan.core_ok()
    assert plan.summary().startswith("0 of 9 hook points (missing: drops, path,")
    # The subsystem check runs only on a recorded failure: an untried symbol is "not tried", not "missing".
    assert {r["reason"] for r in plan.hook("ipvs").rejected} == {"not tried"}


def test_subsystem_present_uses_the_ladder() -> None:
    trials = {"symbol:ip_vs_conn_new": Trial(True),
              "kprobe:ip_vs_conn_new": Trial(True), "kprobe:ip_vs_nat_xmit": Trial(True)}
    plan = plan_hook(hook_point("ipvs"), trials)
    assert (plan.chosen, plan.fallback) == ("kprobe", False)


def test_summary_without_missing() -> None:
    plan = AttachPlan("k", [HookPlan("a", "c", True, "tc", ["clsact"], "", "")])
    assert plan.summary() == "1 of 1 hook points"
    assert plan.core_ok()


def test_hook_lookup_unknown() -> None:
    with pytest.raises(KeyError):
        plan_of("6.18-ci.json").hook("nope")


# -- JSON round trips --


@pytest.mark.parametrize("name", ["6.18-ci.json", "6.1-debian-ipvs.json", "5.4-ubuntu-kprobes.json",
                                  "locked-down.json"])
def test_plan_json_round_trip(name: str) -> None:
    plan = plan_of(name)
    text = json.dumps(plan.to_json())
    again = AttachPlan.from_json(json.loads(text))
    assert again == plan
    assert again.summary() == plan.summary()
    assert again.core_ok() == plan.core_ok()
    data = json.loads(text)
    assert set(data) == {"kernel", "hooks"}
    assert set(data["hooks"][0]) == {"name", "concern", "core", "chosen", "targets", "gives", "unseen", "rejected",
                                     "fallback"}


def test_trials_json_round_trip() -> None:
    raw = json.loads((FIXTURES / "6.18-ci.json").read_text())["trials"]
    trials = trials_from_json(raw)
    assert trials_to_json(trials) == raw
    assert list(trials_to_json(trials)) == sorted(raw)
    assert trials_from_json({"tc:clsact": {"ok": 1}}) == {"tc:clsact": Trial(True, "")}
