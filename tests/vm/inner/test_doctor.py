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


def test_fentry_on_module_functions_falls_back_with_a_reason(doctor: dict[str, Any]) -> None:
    """BCC finds fentry targets in vmlinux BTF only: module functions (ipt_do_table, vxlan_rcv) fall to kprobes."""
    for hook in ("netfilter", "vxlan", "ipvs"):
        plan = _hook(doctor, hook)
        assert plan["fallback"] is True
        assert plan["rejected"][0]["candidate"].startswith("fentry"), plan
        assert "BTF" in plan["rejected"][0]["reason"], plan
    assert _hook(doctor, "path")["chosen"] == "fentry", "fentry works for vmlinux functions on 6.1"


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
    assert _hook(doctor, "drops")["chosen"] == "raw_tracepoint"
    softirq = _hook(doctor, "softirq")
    assert softirq["chosen"] == "tracepoint" and "napi:napi_poll" in softirq["targets"]
