"""The readers on rulesets kube-proxy itself wrote (tests/unit/fixtures/kube-proxy/README.md): every VIP:port and
NodePort maps to the Service port and endpoints the Go test's objects say, in iptables-save, iptables -S,
ip6tables-save and nft JSON form, and for nft whatever order the map elements and objects are listed in."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from support import kubeproxy_expect as want

from tracer.node.kubeproxy.iptables import _split, parse_iptables_save
from tracer.node.kubeproxy.nftables import parse_nft_json

FIXTURES = Path(__file__).parent / "fixtures" / "kube-proxy"


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_iptables_overall() -> None:
    smap = parse_iptables_save(text("iptables-overall-v4.save"))
    want.check(smap, want.OVERALL)
    assert smap.mode == "iptables"


def test_iptables_dash_s_reads_like_save() -> None:
    """`iptables -S` has no `*table` lines: the same Services, the rules with table "" (the command does not say)."""
    smap = parse_iptables_save(text("iptables-overall-v4.S.txt"))
    want.check(smap, want.OVERALL)
    saved = parse_iptables_save(text("iptables-overall-v4.save"))
    assert smap.rule_count == saved.rule_count == 65
    assert {r.table for r in smap.rules} == {""}
    # filter's dump then nat's: KUBE-SERVICES and KUBE-NODEPORTS are in both, and each table counts its own rules
    # (iptables -D CHAIN N takes these numbers); -S prints a rule's options in another order than -save
    assert sorted((r.chain, r.position, r.target, r.comment) for r in smap.rules) == sorted(
        (r.chain, r.position, r.target, r.comment) for r in saved.rules)


def test_ip6tables_local_policy() -> None:
    want.check(parse_iptables_save(text("ip6tables-localhost-nodeports.save")), want.IPV6_IPTABLES)


@pytest.mark.parametrize(("name", "expected"), [
    ("iptables-etp-local-v4.save", want.ETP_LOCAL_V4),
    ("iptables-localhost-nodeports-v4.save", want.LOCALHOST_NODEPORTS_V4),
], ids=["lb-externalip-nodeport", "nodeport"])
def test_iptables_local_policy_with_a_local_endpoint(name: str, expected: tuple[want.Expected, ...]) -> None:
    """externalTrafficPolicy Local (KUBE-EXT-* -> KUBE-SVL-*): every VIP and the NodePort name the Service with all
    its endpoints, and the local chain's endpoint is the only local one; no drop for missing local endpoints."""
    smap = parse_iptables_save(text(name))
    want.check(smap, expected)
    (port,) = smap.ports
    assert [e.chain for e in port.local_endpoints] == [e.chain for e in port.endpoints if e.ip.endswith(".2.1")]


def test_old_comment_forms_gke_1_2() -> None:
    """`"kube-system/heapster: cluster IP"` (unnamed port, kube-proxy 1.2) names kube-system/heapster."""
    want.check(parse_iptables_save(text("gke-1.2.4-node-nat.save")), want.GKE_1_2)


def _permuted(doc: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """The same ruleset with every map's and set's elements and the object list reordered (reversed when seed is
    None): nft lists set elements in hash order, so no order may be relied on."""
    out = copy.deepcopy(doc)
    rng = random.Random(seed)

    def reorder(items: list[Any]) -> None:
        if seed is None:
            items.reverse()
        else:
            rng.shuffle(items)

    for obj in out["nftables"]:
        body = obj.get("map") or obj.get("set")
        if body and isinstance(body.get("elem"), list):
            reorder(body["elem"])
    head, rest = out["nftables"][:1], out["nftables"][1:]
    reorder(rest)
    out["nftables"] = head + rest
    return out


@pytest.mark.parametrize("seed", [0, None, 1, 2, 3])
def test_nft_overall_any_order(seed: int | None) -> None:
    doc = json.loads(text("nft-overall-v4.json"))
    smap = parse_nft_json(doc if seed == 0 else _permuted(doc, seed))
    want.check(smap, want.OVERALL, lb_known=False)
    assert smap.mode == "nftables"
    assert smap.node_ips == ["192.168.0.2"]


def test_nft_local_policy_no_local_endpoints_keeps_cluster_ip() -> None:
    """svc2's drop elements for its LB IP, ExternalIP and NodePort mean "no endpoint on this node" for external
    traffic; the ClusterIP keeps its endpoint."""
    for seed in (None, 5):
        smap = parse_nft_json(_permuted(json.loads(text("nft-overall-v4.json")), seed))
        p = smap.lookup_vip("172.30.0.42", 80, "tcp")
        assert p is not None and [str(e) for e in p.endpoints] == ["10.180.0.2:80"]
        assert (p.vip, p.no_endpoints, p.no_local_endpoints) == ("172.30.0.42", False, True)
        drops = [r for r in smap.rules if r.comment == "ns2/svc2:p80"]
        assert sorted(r.verdict for r in drops) == ["DROP", "DROP", "DROP"]
        reject = next(r for r in smap.rules if r.comment == "ns6/svc6:p80")
        assert (reject.verdict, reject.target) == ("REJECT", "reject-chain")


@pytest.mark.parametrize("seed", [0, None, 7])
def test_nft_ipv6(seed: int | None) -> None:
    doc = json.loads(text("nft-knftables-v6.json"))
    smap = parse_nft_json(doc if seed == 0 else _permuted(doc, seed))
    want.check(smap, want.IPV6_NFT, lb_known=False)
    assert sorted(smap.node_ips) == ["2001:db8:1::2", "2001:db8::1"]


def test_old_xlb_chain_no_local_endpoints() -> None:
    """kube-proxy < 1.24's KUBE-XLB-*: "ns/name: has no local endpoints" -j KUBE-MARK-DROP, in a pasted fragment."""
    smap = parse_iptables_save(text("kind-xlb-no-local-endpoints.txt"))
    p = smap.lookup_nodeport(30012, "tcp")
    assert p is not None and p.name == "default/echo"
    assert (p.no_local_endpoints, p.no_endpoints, p.vip) == (True, False, "")
    assert [p.name for p in smap.ports] == ["default/echo"]


def test_rule_words_split_like_shlex() -> None:
    """The reader's own tokenizer gives shlex's words on every rule line kube-proxy wrote here."""
    import shlex

    lines = [line for name in ("iptables-overall-v4.save", "iptables-overall-v4.S.txt", "gke-1.2.4-node-nat.save",
                               "ip6tables-localhost-nodeports.save") for line in text(name).splitlines()
             if line.startswith("-A ")]
    assert len(lines) == 65 + 65 + 39 + 20
    for line in lines + [r'-A X -m comment --comment "say \"hi\" \\ there" -j Y']:
        assert _split(line) == shlex.split(line), line


def test_nft_dual_stack_tables_keep_their_own_ports() -> None:
    """`ip kube-proxy` and `ip6 kube-proxy` in one ruleset (a dual-stack node): both fixtures name a
    ns1/svc1:p80, and each keeps its own ClusterIP and endpoints."""
    v4, v6 = json.loads(text("nft-overall-v4.json")), json.loads(text("nft-knftables-v6.json"))
    both = {"nftables": v4["nftables"] + v6["nftables"][1:]}
    for seed in (0, None, 11):
        smap = parse_nft_json(both if seed == 0 else _permuted(both, seed))
        assert len(smap.ports) == 7
        p4, p6 = smap.lookup_vip("172.30.0.41", 80, "tcp"), smap.lookup_vip("fd00:172:30::41", 80, "tcp")
        assert p4 is not None and p6 is not None and p4 is not p6 and p4.name == p6.name == "ns1/svc1:p80"
        assert [str(e) for e in p4.endpoints] == ["10.180.0.1:80"]
        assert sorted(str(e) for e in p6.endpoints) == ["[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"]


def test_ipv6_vips_and_endpoints_are_bracketed_before_their_port() -> None:
    """`fd00:172:30::41:80` would read as one address: the port goes after brackets, as in kube-proxy's own
    `dnat to [fd00:10:180::1]:80`."""
    p = parse_nft_json(text("nft-knftables-v6.json")).lookup_vip("fd00:172:30::41", 80, "tcp")
    assert p is not None and str(p) == "ns1/svc1:p80 [fd00:172:30::41]:80/tcp"
    assert sorted(str(e) for e in p.endpoints) == ["[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"]
