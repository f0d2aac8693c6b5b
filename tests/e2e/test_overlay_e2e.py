"""Overlay and stack health on the host kernel: softirq histograms under real load, the MTU verdict and the
`podtrace mtu` probe on the built-in lab with its `mtu-mismatch` fault."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from support.lab import exclusive_lab
from support.netns import Pair, netns_pair, send_udp

from tracer.analysis.softirq import CpuReport, SoftirqAggregator, findings
from tracer.lab import faults, traffic
from tracer.probes.softirq_probe import SoftirqProbe

pytestmark = pytest.mark.root

# `podtrace` with the overlay commands registered, whether or not tracer/cli/main.py lists them yet.
CLI = ("import sys\nfrom tracer.cli import main as cli\nif 'tracer.cli.overlay' not in cli.COMMAND_MODULES:\n"
       "    cli.COMMAND_MODULES = (*cli.COMMAND_MODULES, 'tracer.cli.overlay')\nsys.exit(cli.main(sys.argv[1:]))\n")
PRIME = 4999


def podtrace(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture
def pair() -> Iterator[Pair]:
    with netns_pair() as created:
        yield created


def _measure(probe: SoftirqProbe, seconds: float, during: Callable[[], object] | None = None) -> SoftirqAggregator:
    """Snapshots every 0.25 s for `seconds` (or after each call of `during`, which makes traffic)."""
    agg = SoftirqAggregator()
    agg.add(probe.snapshot())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if during:
            during()
        else:
            time.sleep(0.25)
        agg.add(probe.snapshot())
    return agg


def test_softirq_histograms_fill_under_traffic(pair: Pair) -> None:
    with SoftirqProbe() as probe:
        agg = SoftirqAggregator()
        agg.add(probe.snapshot())
        send_udp(pair.a, pair.addr_b, 9, PRIME, size=200)
        time.sleep(0.3)
        agg.add(probe.snapshot())
    total = agg.report()[-1]
    wait, run = total.hists[("NET_RX", "wait")], total.hists[("NET_RX", "run")]
    # A veth transmit queues to the peer's backlog and raises NET_RX (netif_rx -> enqueue_to_backlog).
    assert wait.count > 0 and run.count > 0 and wait.total == wait.count
    assert 0 < total.stats(("NET_RX", "wait"))["p50_ns"] <= total.stats(("NET_RX", "wait"))["p99_ns"]
    assert total.napi["polls"] > 0 and total.napi["work"] >= PRIME
    assert total.softnet is not None and total.softnet.processed >= PRIME


def _spawn(*args: str, netns: str | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tracer.lab.load", *args]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _cpu_row(agg: SoftirqAggregator, cpu: int) -> CpuReport:
    return next(row for row in agg.report() if row.cpu == cpu)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="softirq-load steers the receive to its own CPU")
def test_softirq_load_fault_lengthens_net_rx_wait() -> None:
    """The lab's softirq-load fault, same probe, same run: lab traffic without the fault, then with it.

    The fault saturates node2's receive CPU (RPS, per-packet rules, a hog there, floods from the other CPU), so the
    backlog overflows and NET_RX deferred out of net_rx_action waits behind the hog. That CPU's NET_RX wait p99
    must be higher under the fault than without it. Measured on the 2-CPU 6.18 host: p99 1.9 us without, 3.9 ms
    with (the deferred softirq runs at the next tick), 150k backlog drops and 2,000 exhausted NAPI polls in 3 s.
    The whole-machine p99 does not move this way: the senders' CPU adds hundreds of thousands of short inline
    waits (NET_RX raised by a sending task runs at its local_bh_enable).
    """
    key = ("NET_RX", "wait")
    with exclusive_lab(), SoftirqProbe() as probe:
        quiet = _measure(probe, 3.0, during=lambda: traffic.probe("default/web:http", 10))
        _, details = faults.set_fault("softirq-load", True)
        try:
            time.sleep(0.5)
            loaded = _measure(probe, 3.0)
            cli = podtrace("softirq", "--duration", "2", "--json")
        finally:
            faults.set_fault("softirq-load", False)
    cpu = details["hog_cpu"]
    assert cli.returncode == 0, cli.stderr
    said = json.loads(cli.stdout.splitlines()[-1])["findings"]
    assert any(line.startswith(f"CPU {cpu}: NET_RX waited") for line in said), said
    assert not [line for line in findings(quiet.report(), quiet.seconds) if line.startswith(f"CPU {cpu}:")]
    before, during = _cpu_row(quiet, cpu), _cpu_row(loaded, cpu)
    print(f"CPU {cpu} NET_RX wait: without the fault {before.hists[key].count} waits p99 "
          f"{before.stats(key)['p99_ns']:.0f} ns; with it {during.hists[key].count} waits p99 "
          f"{during.stats(key)['p99_ns']:.0f} ns, in ksoftirqd {during.hists[('NET_RX', 'wait_ksoftirqd')].count}, "
          f"softnet {during.softnet}, napi {during.napi}")
    assert before.hists[key].count >= 100 and during.hists[key].count >= 100
    assert during.stats(key)["p99_ns"] > before.stats(key)["p99_ns"]
    assert during.softnet is not None and during.softnet.dropped > 0  # the backlog overflowed: packets died


def test_softirq_cli_json(pair: Pair) -> None:
    sender = _spawn("flood", "--to", f"{pair.addr_b}:9", "--seconds", "4", netns=pair.a)
    try:
        result = podtrace("softirq", "--duration", "1.5", "--json")
    finally:
        os.killpg(sender.pid, signal.SIGKILL)
        sender.wait()
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[-1]["cpu"] == "all" and rows[-1]["net_rx_wait"]["count"] > 0
    assert {"p50_us", "p99_us", "max_us", "buckets_ns"} <= set(rows[-1]["net_rx_wait"])


# ICMP errors and reassembly (own namespaces) ----------------------------------------------------------------

# IP_MTU_DISCOVER (10) = IP_PMTUDISC_PROBE (3): DF set, and a path MTU learned from frag-needed is ignored.
SEND_DF = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
           "s.setsockopt(socket.IPPROTO_IP,10,3)\n"
           "[s.sendto(b'x'*int(sys.argv[3]),(sys.argv[1],int(sys.argv[2]))) for _ in range(int(sys.argv[4]))]\n")
FIRST_FRAGMENTS = ("import sys\nfrom scapy.all import IP,UDP,Raw,send\n"
                   "send([IP(dst=sys.argv[1],flags='MF',id=900+i)/UDP(sport=5000,dport=9)/Raw(b'x'*1000)"
                   " for i in range(int(sys.argv[2]))],verbose=0)\n")


@contextlib.contextmanager
def _routed_pair(pair: Pair, mtu: int) -> Iterator[tuple[str, str]]:
    """pair.b becomes a router to a third namespace behind a link of `mtu`; yields (router netns, far address)."""
    from support.netns import sh

    far, index = f"{pair.b}-c", int(pair.addr_a.split(".")[2])
    far_addr, router_addr = f"198.19.{index}.2", f"198.19.{index}.1"
    try:
        sh("ip", "netns", "add", far)
        sh("ip", "-n", pair.b, "link", "add", "veth-r", "mtu", str(mtu), "type", "veth", "peer", "name", "veth-c",
           "mtu", str(mtu), "netns", far)
        sh("ip", "-n", pair.b, "addr", "add", f"{router_addr}/24", "dev", "veth-r")
        sh("ip", "-n", far, "addr", "add", f"{far_addr}/24", "dev", "veth-c")
        for ns, dev in ((pair.b, "veth-r"), (far, "veth-c"), (far, "lo")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", pair.a, "route", "add", f"198.19.{index}.0/24", "via", pair.addr_b)
        sh("ip", "-n", far, "route", "add", "default", "via", router_addr)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=pair.b)
        yield pair.b, far_addr
    finally:
        subprocess.run(["ip", "netns", "del", far], capture_output=True, check=False)


def test_icmp_send_tracepoint_names_the_offending_packet_and_mtu(pair: Pair) -> None:
    """A router between 1500 and 1400 links gets PRIME DF datagrams of 1450 bytes: each is dropped (PKT_TOO_BIG)
    and answered by one frag-needed quoting 1400 (not rate-limited: icmpv4_mask_allow exempts PMTU discovery)."""
    from support.netns import sh

    from tracer.events.decode import EVENT_ICMP
    from tracer.probes.build import ProbeConfig
    from tracer.sources.live import LiveSource

    count = 7
    with _routed_pair(pair, 1400) as (router, far), LiveSource(ProbeConfig(icmp=True)) as source:
        assert "tracepoint icmp:icmp_send" in source.attached, source.warnings
        sh(sys.executable, "-c", SEND_DF, far, "9", str(1450 - 28), str(count), netns=pair.a)
        time.sleep(0.3)
        events = source.poll(100)
        reasons = source.reasons
    router_inode = pair.inode(router)
    mine = [e for e in events if e.outer.src == pair.addr_a and e.outer.dst == far]
    sent = [e for e in mine if e.type == EVENT_ICMP]
    drops = [e for e in mine if e.is_drop]
    assert len(sent) == count, [(e.type, hex(e.reason)) for e in mine]
    assert {(e.reason, e.location, e.netns, e.ifname, e.outer.ip_len) for e in sent} == {
        ((3 << 8) | 4, 1400, router_inode, "veth-b", 1450)}
    assert len(drops) == count and {reasons[e.reason] for e in drops} == {"PKT_TOO_BIG"}


def test_mtu_verdict_reports_reassembly_timeouts(pair: Pair, tmp_path: object) -> None:
    """First fragments only, into a namespace whose ipfrag_time is 1 s: each queue times out (ip_expire), which
    podtrace sees three ways: FRAG_REASM_TIMEOUT drops, ICMP time-exceeded sent, and ReasmTimeout in that
    namespace's /proc/net/snmp. `podtrace mtu --watch` must put them in its verdict."""
    from support.netns import sh

    count = 7
    sh("sysctl", "-qw", "net.ipv4.ipfrag_time=1", "net.ipv4.icmp_ratelimit=0", netns=pair.b)
    ready = f"{tmp_path}/mtu.ready"
    proc = subprocess.Popen([sys.executable, "-c", CLI, "mtu", "--from", pair.a, "--to", pair.addr_b, "--proto",
                             "udp", "--watch", "4", "--json", "--ready-file", ready],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "podtrace mtu never attached"
            time.sleep(0.1)
        sh(sys.executable, "-c", FIRST_FRAGMENTS, pair.addr_b, str(count), netns=pair.a)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    out = json.loads(stdout.splitlines()[-1])
    live, verdict = out["probe"]["live"], out["verdict"]
    print(json.dumps(live, indent=1), verdict["text"])
    assert out["probe"]["largest"] == 1500
    assert live["snmp"][pair.b]["ReasmTimeout"] == count and live["snmp"][pair.b]["ReasmFails"] == count
    assert live["snmp"][pair.a]["ReasmTimeout"] == 0
    assert live["reasm_drops"] == count
    assert live["reasm_time_exceeded"] == {pair.addr_a: count}
    assert not verdict["ok"]
    assert f"{count} IPv4 reassembly timeouts in {pair.b} (" in verdict["text"]
    assert f"{count} fragments dropped as FRAG_REASM_TIMEOUT" in verdict["text"]


# The lab --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[object]:
    from tracer.lab import names

    with exclusive_lab():
        yield names()


@pytest.fixture
def mtu_mismatch(lab: object) -> Iterator[None]:
    from tracer.lab import faults
    from tracer.output.errors import LabError

    try:
        faults.set_fault("mtu-mismatch", True)
    except LabError as err:
        pytest.skip(f"the lab changed under this test (another test took it down or rebuilt it): {err.one_line()}")
    try:
        yield
    finally:
        with contextlib.suppress(LabError):  # the lab is gone: nothing left to switch off
            faults.set_fault("mtu-mismatch", False)


def _remote_web(lab: object) -> str:
    pods = lab.pods  # type: ignore[attr-defined]
    client_node = pods["client"].node
    return next(p.ip for name, p in sorted(pods.items()) if name.startswith("web") and p.node != client_node)


def _mtu(*args: str) -> dict:
    result = podtrace("mtu", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_lab_without_fault_reports_no_mismatch(lab: object) -> None:
    target = _remote_web(lab)
    out = _mtu("--from", "client", "--to", target)
    assert out["verdict"]["ok"], out["verdict"]
    assert out["verdict"]["pod_mtu"] == 1450 and out["verdict"]["overlay_mtu"] == 1450
    assert out["probe"]["largest"] == 1450 and out["probe"]["dies_at"] == []


@pytest.mark.parametrize("proto", ["icmp", "udp", "tcp"])
def test_lab_mtu_mismatch_probe_finds_1450_and_frag_needed(lab: object, mtu_mismatch: None, proto: str) -> None:
    target = _remote_web(lab)
    client_ip = lab.pods["client"].ip  # type: ignore[attr-defined]
    out = _mtu("--from", "client", "--to", target, "--proto", proto)
    verdict, probe = out["verdict"], out["probe"]
    assert (verdict["pod_mtu"], verdict["overlay_mtu"], verdict["underlay_mtu"]) == (1500, 1450, 1500)
    assert verdict["text"].startswith(f"pod MTU 1500 > overlay 1450: DF packets above 1450 dropped, ICMP "
                                      f"frag-needed sent to {client_ip}")
    assert probe["largest"] == 1450 and probe["smallest_failed"] == 1451
    sites = probe["dies_at"]
    assert sites and sites[0]["reason"] == "PKT_TOO_BIG" and sites[0]["netns"] == "pt-node1", sites
    assert probe["frag_needed_mtu"] == 1450 and probe["frag_needed_sent"] >= 1
    assert probe["frag_needed_received"] >= 1  # nothing on the lab's path eats the ICMP error
    assert probe["live"]["frag_needed"].get(client_ip, 0) >= 1


# `podtrace overlay`: VXLAN tunnels, underlay drops by inner flow, fragments ---------------------------------

TUNNEL = ("192.168.77.1", "192.168.77.2", 1, 8472)  # node1 -> node2, flannel VNI 1, UDP 8472 (lab manifest)


@contextlib.contextmanager
def _overlay(tmp_path: object, seconds: float = 6.0) -> Iterator[dict]:
    """Run `podtrace overlay --json` around the with-block; the parsed output lands in the yielded dict."""
    ready = f"{tmp_path}/overlay.ready"
    proc = subprocess.Popen([sys.executable, "-c", CLI, "overlay", "--json", "--duration", str(seconds),
                             "--ready-file", ready], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: dict = {}
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "podtrace overlay never attached"
            time.sleep(0.1)
        yield out
        stdout, stderr = proc.communicate(timeout=seconds + 60)
        assert proc.returncode == 0, stderr
        out.update(json.loads(stdout.splitlines()[-1]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tunnel(out: dict, key: tuple = TUNNEL) -> dict:
    found = [t for t in out["tunnels"] if (t["src"], t["dst"], t["vni"], t["port"]) == key]
    assert found, [(t["src"], t["dst"], t["vni"], t["port"]) for t in out["tunnels"]]
    return found[0]


def _flows_to(tunnel: dict, src: str, dst: str) -> list[dict]:
    return [f for f in tunnel["flows"] if f["flow"].startswith(f"udp {src}:") and f["flow"].endswith(f"> {dst}")]


def _web2(lab: object) -> str:
    return lab.pods["web-2"].ip  # type: ignore[attr-defined]


def test_overlay_shows_tunnel_and_inner_flow(lab: object, tmp_path: object) -> None:
    from tracer.lab import traffic

    count, client, web2 = 20, lab.pods["client"].ip, _web2(lab)  # type: ignore[attr-defined]
    with _overlay(tmp_path) as out:
        summary = traffic.probe(f"udp:{web2}:5353", count=count, clients=["client"])
    print(summary)
    tunnel = _tunnel(out)
    flows = _flows_to(tunnel, client, f"{web2}:5353")
    print(json.dumps(tunnel, indent=1)[:3000])
    # Every attempt is a new socket (a new source port): one inner flow per attempt, one packet each.
    assert sum(f["packets"] for f in flows) == count, flows
    assert all(f["drops"] == 0 for f in flows)
    # Seen leaving node1's underlay and arriving on node2's.
    points = set().union(*(f["points"] for f in flows))
    assert {"pt-node1/eth0 queue", "pt-node2/eth0 rx"} <= points, points
    # The replies rode the reverse tunnel.
    back = _tunnel(out, (TUNNEL[1], TUNNEL[0], 1, 8472))
    assert sum(f["packets"] for f in back["flows"] if f["flow"].startswith(f"udp {web2}:5353 > {client}:")) == count


def test_overlay_underlay_drop_names_inner_flow(lab: object, tmp_path: object) -> None:
    from tracer.lab import sh, traffic

    count, client, web2 = 10, lab.pods["client"].ip, _web2(lab)  # type: ignore[attr-defined]
    rule = ["INPUT", "-i", "eth0", "-p", "udp", "--dport", "8472", "-j", "DROP"]
    sh.run(["iptables", "-w", "-I", *rule], netns="pt-node2")
    try:
        with _overlay(tmp_path) as out:
            traffic.probe(f"udp:{web2}:5353", count=count, clients=["client"], timeout=0.5)
    finally:
        sh.run(["iptables", "-w", "-D", *rule], netns="pt-node2")
    tunnel = _tunnel(out)
    flows = _flows_to(tunnel, client, f"{web2}:5353")
    print(json.dumps(flows, indent=1)[:3000])
    assert sum(f["drops"] for f in flows) == count, flows
    reasons = {(d["reason"], d["where"]) for f in flows for d in f["drop_reasons"]}
    assert reasons == {("NETFILTER_DROP", "pt-node2/eth0")}, reasons
    assert tunnel["drops"] == count


def test_overlay_counts_fragments_of_large_non_df_udp(lab: object, mtu_mismatch: None, tmp_path: object) -> None:
    """Pod MTU 1500 over the 1450 overlay: node1 forwards a 1500-byte non-DF packet to flannel.1 and fragments
    it there, before encapsulation. The fragments are inner packets (inner MF/offset inside VXLAN); the outer
    packets fit the 1500 underlay and are not fragmented."""
    from tracer.lab import traffic

    count, client, web2 = 10, lab.pods["client"].ip, _web2(lab)  # type: ignore[attr-defined]
    with _overlay(tmp_path) as out:
        traffic.probe(f"udp:{web2}:5353", count=count, clients=["client"], size=1472, df=False)
    tunnel = _tunnel(out)
    print(json.dumps({k: out[k] for k in out if k != "tunnels"}, indent=1)[:3000])
    print(json.dumps(tunnel["inner_fragment_flows"], indent=1), tunnel["outer_fragments"])
    # Each 1500-byte packet becomes two fragments (1428 + 72 bytes of IP payload... at most 1450 each).
    assert tunnel["inner_fragment_flows"].get(f"udp {client} > {web2}") == 2 * count
    assert out["outer_fragments"] == 0
    outside = {f["flow"]: f for f in out["fragments_outside_tunnels"]}
    assert outside[f"udp {client} > {web2}"]["fragments"] == 2 * count


def test_overlay_says_a_pod_mtu_over_the_overlay_drops_before_encapsulation(lab: object, mtu_mismatch: None) -> None:
    """mtu-mismatch: pods at 1500 over flannel.1 at 1450. What dies there never reaches a tunnel, so overlay says
    so for each node, from the links, and points at `podtrace mtu`."""
    result = subprocess.run([sys.executable, "-c", CLI, "overlay", "--duration", "1"], capture_output=True,
                            text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "before encapsulation" in line]
    assert [note.split(":")[0] for note in notes] == ["pt-node1", "pt-node2"], result.stdout
    assert all("> 1450 carried by flannel.1 (vxlan) (read from the links, not traced)" in note and
               note.endswith("`podtrace mtu --from POD --to IP` probes the path") for note in notes)
