"""kube-proxy's own rulesets (tests/unit/fixtures/kube-proxy) loaded for real in a throwaway namespace with
iptables-restore / ip6tables-restore / nft -f, read back by the tools (iptables-save, iptables -S, nft -j) and by
`tracer.node.kubeproxy.collect`, and checked against the Go tests' Services (tests/support/kubeproxy_expect.py); nft in
both element orders, and its JSON in shuffled orders."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest
from support import kubeproxy_expect as want
from support.netns import sh, throwaway_netns

from tracer.node.kubeproxy.collect import collect
from tracer.node.kubeproxy.iptables import parse_iptables_save
from tracer.node.kubeproxy.nftables import parse_nft_json

pytestmark = pytest.mark.root

FIXTURES = Path(__file__).parents[1] / "unit" / "fixtures" / "kube-proxy"
# The counters TestOverallIPTablesRules' `-m nfacct` matches name; kube-proxy creates them before its rules.
NFACCT = ("ct_state_invalid_dropped_pkts", "localhost_nps_accepted_pkts")


def restore(netns: str, command: str, name: str) -> None:
    text = (FIXTURES / name).read_text()
    subprocess.run(["ip", "netns", "exec", netns, command], input=text, text=True, check=True, timeout=60,
                   capture_output=True)


def nft_script(name: str, reverse_elements: bool) -> str:
    """The fixture with its declarations first (nft needs a chain declared before a rule jumps to it; the fake's
    dump lists chains next to their rules), and its `add element` lines reversed when asked."""
    lines = [line for line in (FIXTURES / name).read_text().splitlines() if line and not line.startswith("#")]
    decls = [line for line in lines if line.split()[:2][-1] in ("table", "set", "map", "chain")]
    elems = [line for line in lines if line.startswith("add element ")]
    rules = [line for line in lines if line not in decls and line not in elems]
    return "\n".join(decls + rules + (elems[::-1] if reverse_elements else elems)) + "\n"


def nft_load(netns: str, script: str) -> dict:
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=True,
                   timeout=60, capture_output=True)
    return json.loads(sh("nft", "-j", "list", "ruleset", netns=netns))


def test_iptables_overall_loaded_and_saved() -> None:
    with throwaway_netns() as ns:
        for counter in NFACCT:
            sh("nfacct", "add", counter, netns=ns)
        restore(ns, "iptables-restore", "iptables-overall-v4.save")
        saved = sh("iptables-save", netns=ns)
        want.check(parse_iptables_save(saved), want.OVERALL)
        dash_s = sh("iptables", "-S", netns=ns) + sh("iptables", "-t", "nat", "-S", netns=ns)
        want.check(parse_iptables_save(dash_s), want.OVERALL)
        collected = collect(ns)
        want.check(collected, want.OVERALL)
        assert collected.mode == "iptables"


def test_ip6tables_loaded_and_saved() -> None:
    with throwaway_netns() as ns:
        restore(ns, "ip6tables-restore", "ip6tables-localhost-nodeports.save")
        want.check(parse_iptables_save(sh("ip6tables-save", netns=ns)), want.IPV6_IPTABLES)
        want.check(collect(ns), want.IPV6_IPTABLES)


@pytest.mark.parametrize(("name", "expected"), [
    ("iptables-etp-local-v4.save", want.ETP_LOCAL_V4),
    ("iptables-localhost-nodeports-v4.save", want.LOCALHOST_NODEPORTS_V4),
], ids=["lb-externalip-nodeport", "nodeport"])
def test_iptables_local_policy_loaded_and_saved(name: str, expected: tuple[want.Expected, ...]) -> None:
    """externalTrafficPolicy Local with a local endpoint (KUBE-EXT-* -> KUBE-SVL-*), through iptables-restore and
    back out as iptables-save, iptables -S and collect()."""
    with throwaway_netns("h17-") as ns:
        restore(ns, "iptables-restore", name)
        want.check(parse_iptables_save(sh("iptables-save", netns=ns)), expected)
        dash_s = sh("iptables", "-S", netns=ns) + sh("iptables", "-t", "nat", "-S", netns=ns)
        want.check(parse_iptables_save(dash_s), expected)
        want.check(collect(ns), expected)


def test_gke_1_2_nat_loaded_and_saved() -> None:
    with throwaway_netns() as ns:
        restore(ns, "iptables-restore", "gke-1.2.4-node-nat.save")
        want.check(parse_iptables_save(sh("iptables-save", netns=ns)), want.GKE_1_2)


@pytest.mark.parametrize("reverse", [False, True], ids=["as-written", "elements-reversed"])
@pytest.mark.parametrize(("name", "expected"), [("nft-overall-v4.nft", want.OVERALL),
                                                ("nft-knftables-v6.nft", want.IPV6_NFT)], ids=["v4", "v6"])
def test_nft_loaded_in_both_element_orders(name: str, expected: tuple[want.Expected, ...], reverse: bool) -> None:
    with throwaway_netns() as ns:
        doc = nft_load(ns, nft_script(name, reverse))
        want.check(parse_nft_json(doc), expected, lb_known=False)
        rng = random.Random(17)
        for _ in range(3):
            shuffled = json.loads(json.dumps(doc))
            for obj in shuffled["nftables"]:
                body = obj.get("map") or obj.get("set")
                if body and isinstance(body.get("elem"), list):
                    rng.shuffle(body["elem"])
            rng.shuffle(shuffled["nftables"])
            want.check(parse_nft_json(shuffled), expected, lb_known=False)
        collected = collect(ns)
        want.check(collected, expected, lb_known=False)
        assert collected.mode == "nftables"


def test_nft_dual_stack_both_tables_loaded() -> None:
    """`table ip kube-proxy` and `table ip6 kube-proxy` side by side, as on a dual-stack node."""
    with throwaway_netns() as ns:
        nft_load(ns, nft_script("nft-overall-v4.nft", False))
        doc = nft_load(ns, nft_script("nft-knftables-v6.nft", True))
        for smap in (parse_nft_json(doc), collect(ns)):
            assert len(smap.ports) == 7
            p4, p6 = smap.lookup_vip("172.30.0.41", 80, "tcp"), smap.lookup_vip("fd00:172:30::41", 80, "tcp")
            assert p4 is not None and p6 is not None and p4 is not p6
            assert {str(e) for e in p4.endpoints} == {"10.180.0.1:80"}
            assert {str(e) for e in p6.endpoints} == {"[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"}
            assert smap.lookup_vip("5.6.7.8", 80, "tcp") is smap.lookup_vip("172.30.0.45", 80, "tcp")
