"""`podtrace doctor --json` on Debian's 6.1 kernel: the kprobe side of every attach ladder, no netfilter links."""

from __future__ import annotations

import platform
from typing import Any

import pytest


def _hook(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(hook for hook in report["hooks"] if hook["name"] == name)


def test_runs_on_the_distro_kernel_with_its_own_headers(doctor: dict[str, Any]) -> None:
    assert doctor["kernel"] == platform.release()
    assert doctor["kernel"].startswith("6.1."), "the VM tier boots Debian 12's 6.1 kernel"
    assert doctor["headers"]["kind"] == "running", doctor["headers"]
    assert doctor["core_ok"] is True
    assert doctor["mechanisms"]["kprobe"]["available"] is True


@pytest.mark.parametrize(
    ("hook", "targets"),
    [
        ("netfilter", ["nf_hook_slow", "ipt_do_table", "nft_do_chain"]),
        ("vxlan", ["vxlan_rcv", "vxlan_xmit_one"]),
        ("fragmentation", ["ip_do_fragment"]),
        ("ipvs", ["ip_vs_conn_new", "ip_vs_nat_xmit"]),
    ],
)
def test_kprobes_chosen(doctor: dict[str, Any], hook: str, targets: list[str]) -> None:
    plan = _hook(doctor, hook)
    assert (plan["chosen"], plan["targets"]) == ("kprobe", targets), plan
    for target in targets:
        assert doctor["trials"][f"kprobe:{target}"]["ok"] is True


def test_doctor_offers_only_programs_podtrace_has(doctor: dict[str, Any]) -> None:
    """fentry works on 6.1, but podtrace has no fentry programs: doctor must say what a session really loads."""
    for hook in ("netfilter", "vxlan", "ipvs", "fragmentation"):
        plan = _hook(doctor, hook)
        assert plan["fallback"] is False, plan
        assert not any(r["candidate"].startswith("fentry") for r in plan["rejected"]), plan
    path = _hook(doctor, "path")
    assert (path["chosen"], path["targets"]) == ("tracepoint", ["net:netif_receive_skb", "net:net_dev_queue"])


def test_netfilter_links_unavailable_before_6_4(doctor: dict[str, Any]) -> None:
    links = doctor["mechanisms"]["netfilter_link"]
    assert links["available"] is False and "needs 6.4" in links["reason"], links
    assert any("netfilter links need kernel 6.4" in fix for fix in doctor["fixes"])
    nat = _hook(doctor, "nat")
    assert nat["rejected"][0]["candidate"].startswith("netfilter_link"), nat


def test_ipvs_and_vxlan_present_after_modprobe(doctor: dict[str, Any], module_hints: dict[str, str]) -> None:
    assert module_hints == {
        "ip_vs_conn_new": "module ip_vs is not loaded (modprobe ip_vs)",
        "vxlan_xmit_one": "module vxlan is not loaded (modprobe vxlan)",
    }
    assert doctor["trials"]["symbol:ip_vs_conn_new"]["ok"] is True
    assert doctor["trials"]["symbol:vxlan_xmit_one"]["ok"] is True
    assert not any(line.startswith(("ipvs:", "vxlan:")) for line in doctor["cannot_see"]), doctor["cannot_see"]


def test_drops_and_softirq_use_tracepoints(doctor: dict[str, Any]) -> None:
    assert _hook(doctor, "drops")["chosen"] == "tp_btf"  # BTF-typed raw tracepoints since 5.5
    softirq = _hook(doctor, "softirq")
    assert softirq["chosen"] == "tracepoint" and "napi:napi_poll" in softirq["targets"]


def test_doctors_plan_is_what_a_session_attaches(doctor: dict[str, Any], module_hints: dict[str, str]) -> None:
    """On 6.1 the kprobe side: every kprobe doctor chooses is one the session attaches, and nothing else."""
    from support.plan import assert_plan_matches_session, session_attachments

    del module_hints  # ip_vs and vxlan are loaded by then, as for the doctor report
    attached = session_attachments()
    assert any(line.startswith("kprobe") for line in attached), attached
    assert_plan_matches_session(doctor, attached)
