"""Causes in words (tracer/analysis/causes.py) over drop rows and node state; rulesets are real `iptables-save` and
`nft -j` dumps of the lab (tests/unit/fixtures/kubeproxy/README.md says how each was captured)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tracer.analysis.causes import NetnsState, RouteAnswer, explain, parse_cpu_mask
from tracer.node.cause_state import parse_icmp, parse_irq_devices, parse_rps
from tracer.node.conntrack import Health
from tracer.node.kubeproxy.iptables import parse_iptables_save
from tracer.node.kubeproxy.nftables import parse_nft_json
from tracer.output.report import write_drop_table

FIX = Path(__file__).parent / "fixtures" / "kubeproxy"
NODE2_FAULTS = parse_iptables_save((FIX / "lab-iptables-node2-faults.save").read_text())


def _row(**fields: Any) -> dict[str, Any]:
    row = {"reason": "NETFILTER_DROP", "location": "nf_hook_slow+0x8c", "count": 3, "bytes": 180, "proto": "tcp",
           "src": "10.244.0.2", "sport": 40312, "dst": "10.96.0.10", "dport": 80, "netns": "pt-node2",
           "ifname": "cni0", "hook": "-", "last_cpu": 1, "severity": "policy", "inner": None, "vni": None,
           "ct_identity": "not-traced", "ct_state": "unknown"}
    row.update(fields)
    return row


def test_a_reject_for_a_service_without_endpoints_names_the_service_and_its_vip() -> None:
    state = NetnsState("pt-node2", services=NODE2_FAULTS, conntrack=Health(12, 262144))
    cause = explain(_row(), state)
    assert (cause.kind, cause.known) == ("no-endpoints", "matched")
    assert cause.text == ("Service default/web:http has no endpoints: kube-proxy rejects its VIP 10.96.0.10:80/tcp "
                          "(filter KUBE-SERVICES #1)")
    assert cause.fix.startswith("kubectl -n default get endpointslices -l kubernetes.io/service-name=web")


def test_rate_limited_icmp_during_the_session_is_said_to_turn_refusals_into_timeouts() -> None:
    header = "Icmp: InMsgs OutMsgs OutRateLimitGlobal OutRateLimitHost"
    before = parse_icmp(f"{header}\nIcmp: 0 10 0 5\n")
    after = parse_icmp(f"{header}\nIcmp: 0 60 0 307\n")
    state = NetnsState("pt-node2", services=NODE2_FAULTS, icmp_before=before, icmp_after=after)
    cause = explain(_row(), state)
    assert cause.kind == "no-endpoints"
    assert cause.text.endswith("; 302 ICMP errors were rate-limited in pt-node2 during the session "
                               "(IcmpOutRateLimitHost +302): those clients saw timeouts, not 'connection refused'")


def test_a_drop_rule_kube_proxy_did_not_write_is_named_with_its_delete_command() -> None:
    state = NetnsState("pt-node2", services=NODE2_FAULTS)
    cause = explain(_row(dst="10.244.1.2", dport=8080, hook="FORWARD after filter"), state)
    assert (cause.kind, cause.known) == ("rule", "matched")
    assert cause.text.startswith("a DROP rule not written by kube-proxy: filter FORWARD #1 `")
    assert "podtrace-lab fault drop-backend" in cause.text
    assert cause.fix.startswith("ip netns exec pt-node2 iptables -t filter -D FORWARD 1")


def test_nftables_mode_no_endpoints_is_found_in_the_kube_proxy_table() -> None:
    services = parse_nft_json((FIX / "lab-nft-node2-faults.json").read_text())
    cause = explain(_row(), NetnsState("pt-node2", services=services))
    assert cause.kind == "no-endpoints" and "default/web:http" in cause.text, cause


def test_a_full_conntrack_table_explains_a_drop_no_rule_matches() -> None:
    state = NetnsState("pt-node1", services=NODE2_FAULTS, conntrack=Health(4096, 4096))
    cause = explain(_row(dst="10.96.0.20", dport=80, netns="pt-node1", hook="PREROUTING before conntrack"), state)
    assert cause.kind == "conntrack-full"
    assert cause.text.startswith("conntrack table full in pt-node1 (4096/4096)")
    assert cause.fix == "ip netns exec pt-node1 sysctl -w net.netfilter.nf_conntrack_max=8192"


def test_a_netfilter_drop_no_saved_rule_explains_is_unknown_not_guessed() -> None:
    cause = explain(_row(dst="192.0.2.9", dport=9), NetnsState("pt-node2", services=NODE2_FAULTS))
    assert (cause.kind, cause.known) == ("netfilter", "unknown")


def test_blackhole_unreachable_prohibit_and_no_route_from_the_fib() -> None:
    # What `ip -j route get` / `ip -j route show table all match` answer for each (seen on kernel 6.18, iproute2).
    answers = {
        "10.244.1.3": RouteAnswer("10.244.1.3", "Invalid argument", "", {"type": "blackhole", "dst": "10.244.1.3"}),
        "10.244.1.4": RouteAnswer("10.244.1.4", "No route to host", "",
                                  {"type": "unreachable", "dst": "10.244.1.0/24"}),
        "10.244.1.5": RouteAnswer("10.244.1.5", "Permission denied", "", {"type": "prohibit", "dst": "10.244.1.5"}),
        "10.8.8.8": RouteAnswer("10.8.8.8", "Network is unreachable", "", None),
    }
    state = NetnsState("pt-node1", routes=answers)
    got = {dst: explain(_row(reason="NOT_SPECIFIED", location="ip_error+0x94", dst=dst, netns="pt-node1"), state)
           for dst in answers}
    assert got["10.244.1.3"].text == "route lookup: `blackhole 10.244.1.3/32` in pt-node1 refuses 10.244.1.3"
    assert got["10.244.1.3"].fix.startswith("ip -n pt-node1 route del blackhole 10.244.1.3/32")
    assert got["10.244.1.4"].text == "route lookup: `unreachable 10.244.1.0/24` in pt-node1 refuses 10.244.1.4"
    assert got["10.244.1.5"].text.startswith("route lookup: `prohibit 10.244.1.5/32`")
    assert got["10.8.8.8"].text == "route lookup: no route to 10.8.8.8 in pt-node1 (Network is unreachable)"
    assert {c.kind for c in got.values()} == {"route"} and {c.known for c in got.values()} == {"observed"}
    # The FIB routes it now: the cause says the route changed, it does not invent one.
    state.routes["10.244.1.3"] = RouteAnswer("10.244.1.3", "", "flannel.1", {"dst": "10.244.1.0/24"})
    assert explain(_row(reason="IP_INNOROUTES", dst="10.244.1.3", netns="pt-node1"), state).known == "unknown"


def test_rp_filter_names_the_interface_the_sysctls_and_the_return_path() -> None:
    state = NetnsState("pt-node2", rp_filter={"all": 1, "default": 0, "eth0": 1, "cni0": 0},
                       routes={"10.244.0.2": RouteAnswer("10.244.0.2", "", "flannel.1")})
    cause = explain(_row(reason="IP_RPFILTER", location="ip_rcv_finish_core+0x3f", ifname="eth0",
                         dst="198.18.0.2", dport=30080), state)
    assert cause.text == ("reverse-path filter: rp_filter=1 (strict) on pt-node2/eth0 (all=1, eth0=1) dropped a "
                          "packet from 10.244.0.2; replies to 10.244.0.2 would leave by flannel.1")
    assert cause.fix.startswith("ip netns exec pt-node2 sysctl -w net.ipv4.conf.all.rp_filter=2")


def test_backlog_drops_name_the_rps_mask_that_steers_receive_to_one_cpu() -> None:
    rps = parse_rps("/sys/class/net/eth0/queues/rx-0/rps_cpus:2\n/sys/class/net/lo/queues/rx-0/rps_cpus:0\n")
    assert rps == {"eth0": [1]}
    state = NetnsState("pt-node2", rps=rps, cpus=2, sysctls={"net.core.netdev_max_backlog": 1000})
    cause = explain(_row(reason="CPU_BACKLOG", location="enqueue_to_backlog+0x1d6", ifname="eth0", proto="udp"),
                    state)
    assert cause.text == ("the input backlog was full (netdev_max_backlog 1000, dropped on CPU 1): RPS sends all "
                          "of pt-node2/eth0's receive to CPU 1 of 2, whose backlog overflows")
    assert cause.fix.startswith("ip netns exec pt-node2 sh -c 'echo 3 > /sys/class/net/eth0/queues/rx-0/rps_cpus'")
    spread = explain(_row(reason="CPU_BACKLOG", ifname="eth0"), NetnsState("pt-node2", rps={}, cpus=2))
    assert "not steered to one CPU" in spread.text


def test_cpu_masks_and_interrupt_names_as_the_kernel_prints_them() -> None:
    assert parse_cpu_mask("00000000,00000002\n") == [1]
    assert parse_cpu_mask("ff") == list(range(8))
    assert parse_cpu_mask("0") == []
    interrupts = ("           CPU0       CPU1\n 24:          1          0  IO-APIC   5-edge      ACPI:Ged\n"
                  " 31:       9120          0  PCI-MSIX-0000:00:05.0   1-edge      eth0-TxRx-0\n"
                  "NMI:          0          0   Non-maskable interrupts\n")
    assert parse_irq_devices(interrupts) == {24: "ACPI:Ged", 31: "eth0-TxRx-0"}


def test_mtu_rcvbuf_and_no_socket_causes() -> None:
    state = NetnsState("pt-node1", routes={"10.244.1.2": RouteAnswer("10.244.1.2", "", "flannel.1")},
                       mtus={"flannel.1": 1450}, sysctls={"net.core.rmem_max": 212992})
    mtu = explain(_row(reason="PKT_TOO_BIG", location="ip_forward+0x2f1", dst="10.244.1.2", count=2, bytes=3000,
                       netns="pt-node1"), state)
    assert mtu.text.startswith("packets of ~1500 bytes to 10.244.1.2 are larger than pt-node1/flannel.1's MTU 1450")
    rcv = explain(_row(reason="SOCKET_RCVBUFF", proto="udp", dst="10.244.1.2", dport=5353), state)
    assert rcv.kind == "rcvbuf" and "net.core.rmem_max 212992" in rcv.fix
    assert explain(_row(reason="NO_SOCKET", dport=9), None).kind == "no-socket"
    # An echo reply no ping socket waits for (ping_rcv) is not "nothing listens on port 0".
    assert explain(_row(reason="NO_SOCKET", proto="icmp", dport=0), None).kind == "unknown"


def test_without_node_state_a_cause_says_what_is_not_known() -> None:
    for reason in ("IP_RPFILTER", "NETFILTER_DROP", "IP_INNOROUTES", "CPU_BACKLOG"):
        assert explain(_row(reason=reason), None).known == "unknown", reason
    assert explain(_row(reason="TCP_INVALID_SEQUENCE"), None).text == "unknown"


def test_the_drops_table_prints_the_cause_under_its_row() -> None:
    import io

    row = _row()
    row["cause"] = explain(row, NetnsState("pt-node2", services=NODE2_FAULTS)).to_json()
    out = io.StringIO()
    write_drop_table([row], out)
    text = out.getvalue()
    assert "        cause: Service default/web:http has no endpoints: kube-proxy rejects" in text, text
    assert "(filter KUBE-SERVICES #1) (matched)\n        fix: kubectl -n default get endpointslices" in text, text
    assert all(len(line) < 100 for line in text.splitlines()), text


def test_a_fib_answer_not_known_here_is_not_turned_into_a_route_kind() -> None:
    state = NetnsState("pt-node1", routes={"10.1.1.1": RouteAnswer("10.1.1.1", "Operation not supported")})
    cause = explain(_row(reason="IP_INNOROUTES", dst="10.1.1.1", netns="pt-node1"), state)
    assert cause.known == "unknown" and cause.text.endswith("`ip route get` says: Operation not supported")


def test_rows_of_a_namespace_that_is_gone_get_causes_that_say_so() -> None:
    from tracer.node.cause_state import add_causes, collect

    rows = [_row(netns="pt-h16-gone"), _row(reason="IP_RPFILTER", netns="pt-h16-gone")]
    states = collect(rows, {})
    add_causes(rows, states)
    assert [row["cause"]["known"] for row in rows] == ["unknown", "unknown"], rows
    assert "'pt-h16-gone' is not an `ip netns` name" in rows[1]["cause"]["text"], rows[1]
