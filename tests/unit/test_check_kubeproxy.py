"""kube-proxy mode and Service counts from recorded rule dumps (fixtures/check/README.md says where each came from)."""

from __future__ import annotations

import json
from pathlib import Path

from tracer.check import kubeproxy
from tracer.check.model import Finding, NodeState

FIXTURES = Path(__file__).parent / "fixtures" / "check"


def _text(name: str) -> str:
    return (FIXTURES / name).read_text()


def _state(name: str) -> NodeState:
    return NodeState.from_dict(json.loads(_text(name)))


def _by_check(findings: list[Finding], check: str) -> Finding:
    found = [f for f in findings if f.check == check]
    assert found, f"no {check!r} finding in {findings}"
    return found[0]


def test_parse_lab_iptables_save() -> None:
    rules = kubeproxy.parse_iptables_save(_text("lab-node1-iptables.save"))
    # default/web (http, dns), default/web-nodeport (http) have endpoints; default/empty:http has none.
    assert rules.service_ports == {"default/web:http", "default/web:dns", "default/web-nodeport:http"}
    assert rules.no_endpoints == {"default/empty:http"}
    assert len(rules.svc_chains) == 3 and len(rules.sep_chains) == 9
    assert rules.rules["nat"] > 0 and rules.rules["filter"] > 0
    assert rules.total == sum(1 for line in _text("lab-node1-iptables.save").splitlines() if line.startswith("-A "))


def test_lab_node_is_iptables_mode() -> None:
    state = _state("state-lab-node1-ok.json")
    assert kubeproxy.mode(state)[0] == "iptables"
    finding = _by_check(kubeproxy.check(state), "mode")
    assert finding.severity == "ok"
    assert finding.value.startswith("iptables: 3 Services, 4 Service ports, 9 endpoints, ")


def _thousands(n: int) -> str:
    """The lab's dump with `n` extra Services, each written the way kube-proxy writes default/web:http."""
    base = _text("lab-node1-iptables.save")
    chains, rules = [], []
    for i in range(n):
        svc, sep = f"KUBE-SVC-DUMMY{i:011d}", f"KUBE-SEP-DUMMY{i:011d}"
        ip = f"10.96.{10 + i // 250}.{i % 250 + 1}"
        chains += [f":{svc} - [0:0]", f":{sep} - [0:0]"]
        rules += [f'-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment "dummy/svc-{i}:http cluster IP" '
                  f"-m tcp --dport 80 -j {svc}",
                  f'-A {svc} -m comment --comment "dummy/svc-{i}:http -> 10.244.0.3:8080" -j {sep}',
                  f'-A {sep} -p tcp -m comment --comment "dummy/svc-{i}:http" -m tcp -j DNAT '
                  "--to-destination 10.244.0.3:8080"]
    nat_start = base.index("*nat\n") + len("*nat\n")
    out = base[:nat_start] + "\n".join(chains) + "\n" + base[nat_start:]
    last_commit = out.rindex("COMMIT")
    return out[:last_commit] + "\n".join(rules) + "\n" + out[last_commit:]


def test_thousands_of_services_in_iptables_mode_are_flagged_with_the_figure() -> None:
    state = NodeState(iptables_save=_thousands(2500), nft_ruleset={"nftables": []})
    finding = _by_check(kubeproxy.check(state), "mode")
    assert finding.severity == "warn"
    assert "2503 Services, 2504 Service ports" in finding.value
    assert "~2504 rules" in finding.why and "nftables" in finding.fix


def test_a_few_hundred_services_are_fine() -> None:
    state = NodeState(iptables_save=_thousands(500), nft_ruleset={"nftables": []})
    assert _by_check(kubeproxy.check(state), "mode").severity == "ok"


def test_iptables_nft_ruleset_alone_is_not_nftables_mode() -> None:
    """iptables-nft's tables show up in `nft -j list ruleset` too; only table kube-proxy means nftables mode."""
    ruleset = json.loads(_text("lab-node1-iptables-nft.json"))
    assert not kubeproxy.parse_nft(ruleset).table
    state = NodeState(iptables_save=_text("lab-node1-iptables.save"), nft_ruleset=ruleset)
    assert kubeproxy.mode(state)[0] == "iptables"


def test_nftables_mode() -> None:
    ruleset = json.loads(_text("lab-nftables-mode-node1.json"))
    parsed = kubeproxy.parse_nft(ruleset)
    assert parsed.table
    assert parsed.service_ports == {"default/web:http", "default/web:dns", "default/web-nodeport:http"}
    assert parsed.no_endpoints == {"default/empty:http"}
    findings = kubeproxy.check(NodeState(iptables_save="", nft_ruleset=ruleset))
    mode = _by_check(findings, "mode")
    assert mode.severity == "ok" and mode.value.startswith("nftables: 3 Services, 4 Service ports, ")
    assert not [f for f in findings if f.check == "stale rules"]


def test_iptables_leftovers_in_nftables_mode_are_stale() -> None:
    ruleset = json.loads(_text("lab-nftables-mode-node1.json"))
    state = NodeState(iptables_save=_text("lab-node1-iptables.save"), nft_ruleset=ruleset)
    assert kubeproxy.mode(state)[0] == "nftables"
    stale = _by_check(kubeproxy.check(state), "stale rules")
    assert stale.severity == "warn" and stale.value.startswith("3 KUBE-SVC-* iptables chains")


def test_ipvs_mode_without_modules_or_strict_arp() -> None:
    state = NodeState(iptables_save=_text("ipvs-mode-iptables.save"), nft_ruleset={"nftables": []},
                      ipvsadm=_text("ipvsadm-Ln-handwritten.txt"), modules=["nf_conntrack"],
                      ipv4_conf={"all": {"arp_ignore": "0", "arp_announce": "0"}},
                      links=[{"ifname": "kube-ipvs0", "linkinfo": {"info_kind": "dummy"}}])
    assert kubeproxy.mode(state)[0] == "ipvs"
    findings = kubeproxy.check(state)
    assert _by_check(findings, "mode").value.startswith("ipvs: 5 virtual servers, 12 real servers")
    modules = _by_check(findings, "ipvs modules")
    assert modules.severity == "fail" and modules.value == "missing: ip_vs, ip_vs_rr"
    assert modules.fix == "modprobe ip_vs ip_vs_rr"
    arp = _by_check(findings, "strictARP")
    assert arp.severity == "warn" and arp.value == "arp_ignore=0 arp_announce=0"


def test_ipvs_mode_healthy() -> None:
    state = NodeState(iptables_save=_text("ipvs-mode-iptables.save"), ipvsadm=_text("ipvsadm-Ln-handwritten.txt"),
                      modules=["ip_vs", "ip_vs_rr", "nf_conntrack"],
                      ipv4_conf={"all": {"arp_ignore": "1", "arp_announce": "2"}})
    assert {f.severity for f in kubeproxy.check(state)} == {"ok"}


def test_ipvs_rules_but_ipvs_not_loaded_fails() -> None:
    state = NodeState(iptables_save=_text("ipvs-mode-iptables.save"), ipvsadm=None, modules=[])
    assert _by_check(kubeproxy.check(state), "mode").severity == "fail"


def test_no_kube_proxy_and_unreadable_rules() -> None:
    host = _state("state-host.json")
    assert _by_check(kubeproxy.check(host), "mode").value == "none: no kube-proxy rules"
    state = NodeState(iptables_save=None, nft_ruleset=None, errors={
        "iptables": "`iptables-save`: iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: "
                    "Permission denied (you must be root)",
        "nft": "`nft -j list ruleset`: Operation not permitted (you must be root)"})
    findings = kubeproxy.check(state)
    assert [f.check for f in findings] == ["rules readable"]  # not "mode: none" when nothing could be read
    assert findings[0].severity == "warn"
    assert findings[0].value == ("iptables-save: Permission denied (you must be root); "
                                 "nft: Operation not permitted (you must be root)")


def test_userspace_portals() -> None:
    text = "*nat\n:KUBE-PORTALS-CONTAINER - [0:0]\n:KUBE-PORTALS-HOST - [0:0]\nCOMMIT\n"
    assert kubeproxy.mode(NodeState(iptables_save=text))[0] == "userspace"


def test_comment_parsing_without_quotes() -> None:
    text = ("*filter\n-A KUBE-FW-X -m comment --comment ns/a:b -j DROP\n"
            '-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "ns/empty:http has no endpoints" -j REJECT\n'
            "COMMIT\n")
    rules = kubeproxy.parse_iptables_save(text)
    assert rules.no_endpoints == {"ns/empty:http"} and rules.rules == {"filter": 2}


KUBE_PROXY = Path(__file__).parent / "fixtures" / "kube-proxy"


def test_counts_come_from_the_tracers_reader() -> None:
    """check counts what the tracer reads: kube-proxy's own rulesets (6 ports, svc6 without endpoints) and the
    GKE 1.2 node's unnamed `"kube-system/heapster: cluster IP"` ports, which a `:port`-needing pattern missed."""
    ipt = kubeproxy.parse_iptables_save((KUBE_PROXY / "iptables-overall-v4.save").read_text())
    assert ipt.no_endpoints == {"ns6/svc6:p80"}
    assert ipt.service_ports == {f"ns{i}/svc{i}:p80" for i in range(1, 6)}
    nft = kubeproxy.parse_nft(json.loads((KUBE_PROXY / "nft-overall-v4.json").read_text()))
    assert (nft.service_ports, nft.no_endpoints) == (ipt.service_ports, ipt.no_endpoints)
    gke = kubeproxy.parse_iptables_save((KUBE_PROXY / "gke-1.2.4-node-nat.save").read_text())
    assert gke.service_ports == {"kube-system/default-http-backend:http", "kube-system/heapster",
                                 "kube-system/kube-dns:dns", "kube-system/kube-dns:dns-tcp",
                                 "kube-system/kubernetes-dashboard", "default/kubernetes:https"}


def test_ip6tables_services_are_counted() -> None:
    """An IPv6-only node's Services live in ip6tables-save alone (TestEnableLocalhostNodePortsIPv6's dump)."""
    v6 = (KUBE_PROXY / "ip6tables-localhost-nodeports.save").read_text()
    finding = _by_check(kubeproxy.check(NodeState(iptables_save="", ip6tables_save=v6,
                                                  nft_ruleset={"nftables": []})), "mode")
    assert finding.value.startswith("iptables: 1 Services, 1 Service ports, 2 endpoints, 20 rules")
    both = NodeState(iptables_save=(KUBE_PROXY / "iptables-overall-v4.save").read_text(), ip6tables_save=v6,
                     nft_ruleset={"nftables": []})
    # ns1/svc1:p80 has a v4 and a v6 ClusterIP here: one Service port, counted once
    assert _by_check(kubeproxy.check(both), "mode").value.startswith("iptables: 6 Services, 6 Service ports, ")
