"""podtrace record/report/export against real probes and real drops in throwaway namespaces."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import support.podtrace as podtrace
from support.flows import assert_web_dns_flows
from support.lab import exclusive_lab
from support.netns import Pair, netns_pair, send_udp, sh, tcp_connect_attempts

pytestmark = pytest.mark.root

PRIME = 13
# The CLI with tracer.cli.record registered, whether or not tracer/cli/main.py lists it yet.
CLI = [sys.executable, "-c", (
    "import sys, tracer.cli.main as c\n"
    "m = 'tracer.cli.record'\n"
    "c.COMMAND_MODULES = c.COMMAND_MODULES if m in c.COMMAND_MODULES else (*c.COMMAND_MODULES, m)\n"
    "sys.exit(c.main(sys.argv[1:]))\n"
)]


@pytest.fixture(autouse=True)
def _cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(podtrace, "COMMAND", CLI)


@pytest.fixture
def pair() -> Iterator[Pair]:
    with netns_pair() as created:
        yield created


def report(path: Path, *extra: str) -> tuple[list[dict], dict, subprocess.CompletedProcess[str]]:
    """The drop rows (the other sections' objects are in result.stdout), the summary object, the process."""
    result = podtrace.run("report", "--json", str(path), *extra)
    lines = json_lines(result)
    return [line for line in lines if "location" in line], lines[-1], result


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_report_matches_live_drops_over_the_same_traffic(pair: Pair, tmp_path: Path) -> None:
    output = tmp_path / "drops.ptrec"
    recorder = podtrace.start("record", "-o", str(output), "--netns", pair.b, "--json")
    live = podtrace.start("drops", "--json", "--netns", pair.b)
    send_udp(pair.a, pair.addr_b, 5002, PRIME, src_port=40002)
    time.sleep(0.5)
    recorded, live_result = recorder.stop(), live.stop()
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.summary["file"] == str(output) and recorded.summary["lost"] == 0
    rows, summary, result = report(output)
    assert result.returncode == 0 and result.stderr == ""
    udp = [row for row in rows if row["proto"] == "udp"]
    assert len(udp) == 1
    assert (udp[0]["reason"], udp[0]["count"], udp[0]["src"], udp[0]["sport"], udp[0]["dport"]) == (
        "NO_SOCKET", PRIME, pair.addr_a, 40002, 5002)
    assert udp[0]["location"].startswith("__udp4_lib_rcv") and udp[0]["netns"] == pair.b
    assert summary["lost"] == 0 and summary["truncated"] is False
    # The same rows as the live command (IPv6 link-up noise depends on when each one started: left out).
    def ours(items: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in ("first_seen", "last_seen")} for row in items
                if row["src"] == pair.addr_a]
    assert ours(rows) == ours(live_result.rows) and len(ours(rows)) == 1
    assert summary["events"] == recorded.summary["events"]
    assert live_result.summary["lost"] == 0


def test_export_gives_every_packet_to_tshark_with_comments(pair: Pair, tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    output = tmp_path / "trace.ptrec.gz"
    recorder = podtrace.start("record", "-o", str(output), "--netns", pair.b, "udp or tcp")
    send_udp(pair.a, pair.addr_b, 5004, PRIME, src_port=40004)
    tcp_connect_attempts(pair.a, pair.addr_b, 5005, 3)
    time.sleep(0.5)
    assert recorder.stop().returncode == 0
    _rows, summary, _ = report(output)
    pcap = tmp_path / "trace.pcapng"
    exported = podtrace.run("export", str(output), "--per-hop", "--pcapng", str(pcap))  # a frame per event
    assert exported.returncode == 0, exported.stderr
    fields = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|", "-e", "frame.comment",
                             "-e", "ip.src", "-e", "ip.dst", "-e", "udp.dstport"],
                            capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    assert len(fields) == summary["events"]
    assert all(line.split("|")[0] for line in fields), "every packet has a comment"
    udp_drops = [line for line in fields if line.startswith("drop NO_SOCKET at __udp4_lib_rcv") and
                 line.endswith(f"|{pair.addr_a}|{pair.addr_b}|5004")]
    assert len(udp_drops) == PRIME
    assert all(f"netns {pair.b}; if veth-b" in line for line in udp_drops)


def test_sigkill_leaves_a_truncated_file_with_every_complete_event(pair: Pair, tmp_path: Path) -> None:
    for name in ("killed.ptrec", "killed.ptrec.gz"):
        output = tmp_path / name
        recorder = podtrace.start("record", "-o", str(output), "--netns", pair.b, "udp port 5006")
        send_udp(pair.a, pair.addr_b, 5006, PRIME)
        time.sleep(2.0)  # the recorder flushes every second
        os.kill(recorder.process.pid, signal.SIGKILL)
        recorder.process.communicate(timeout=30)
        rows, summary, result = report(output)
        assert result.returncode == 0
        assert "was cut short" in result.stderr, result.stderr
        assert summary["truncated"] is True
        assert [(row["reason"], row["dport"], row["count"]) for row in rows] == [("NO_SOCKET", 5006, PRIME)], name


def test_rotation_splits_a_live_recording_into_parts_that_add_up(pair: Pair, tmp_path: Path) -> None:
    output = tmp_path / "rot.ptrec"
    recorder = podtrace.start("record", "-o", str(output), "--netns", pair.b, "--max-size", "64K", "--json",
                              "udp port 5007")
    send_udp(pair.a, pair.addr_b, 5007, 997)
    time.sleep(1.5)
    result = recorder.stop()
    parts = result.summary["parts"]
    assert len(parts) >= 3 and all(Path(part).stat().st_size < 64 * 1024 * 9 // 8 + 500 for part in parts)
    rows, summary, _ = report(output)
    assert [(row["dport"], row["count"]) for row in rows] == [(5007, 997)] and summary["lost"] == 0
    alone = sum(row["count"] for part in parts for row in report(Path(part), "--no-follow")[0])
    assert alone == 997


def test_live_api_yields_events_and_tables(pair: Pair) -> None:
    from tracer.api import live

    with live(filter="udp port 5008", netns=pair.b) as session:
        send_udp(pair.a, pair.addr_b, 5008, PRIME)
        events = list(session.events(duration=1.0))
        rows = session.drop_rows()
        counters = session.counters()
    assert len([event for event in events if event.is_drop]) == PRIME
    assert [(row["reason"], row["count"]) for row in rows] == [("NO_SOCKET", PRIME)]
    assert counters["lost"] == 0


def test_a_burst_is_recorded_without_loss_beyond_what_the_ring_buffer_reports(pair: Pair, tmp_path: Path) -> None:
    # Regression: symbolizing the first drop (loading kallsyms, ~0.6 s) inside the poll loop lost most of a burst.
    output = tmp_path / "burst.ptrec.gz"
    recorder = podtrace.start("record", "-o", str(output), "--netns", pair.b, "--json")
    send_udp(pair.a, pair.addr_b, 5010, 20000)
    time.sleep(1.5)
    recorded = recorder.stop()
    rows, summary, _ = report(output)
    burst = [row for row in rows if row["dport"] == 5010]
    assert burst[0]["count"] + summary["lost"] == 20000
    # The regression lost most of the burst. How much a ring buffer loses otherwise depends on how busy the
    # machine is (2,822 of 20,000 once with the CPUs shared by a second test suite), so the bound is half.
    assert summary["lost"] == recorded.summary["lost"] < 20000 // 2, summary
    # Per-probe counters travel in the recording and add up to its totals; the burst's drops are the drop probe's.
    from tracer.sources.replay import ReplaySource

    with ReplaySource(str(output)) as source:
        while source.poll_raw():
            pass
        totals, probes = source.counters(), source.probe_counters()
    assert probes["drops"]["events"] >= burst[0]["count"], probes
    for counter in ("seen", "events", "lost"):
        assert sum(values.get(counter, 0) for values in probes.values()) == totals.get(counter, 0), (probes, totals)


def test_softirq_summary_is_recorded_and_reported(pair: Pair, tmp_path: Path) -> None:
    output = tmp_path / "softirq.ptrec.gz"
    recorder = podtrace.start("record", "-o", str(output), "--netns", pair.b, "--softirq", "--json")
    send_udp(pair.a, pair.addr_b, 5011, PRIME, src_port=40011)
    time.sleep(1.5)  # at least one counters tick, so there is a snapshot between the first and the last
    recorded = recorder.stop()
    assert recorded.returncode == 0, recorded.stderr
    rows, _summary, result = report(output)
    assert result.returncode == 0, result.stderr
    drops = [row for row in rows if row.get("dport") == 5011]
    assert [(row["reason"], row["count"]) for row in drops] == [("NO_SOCKET", PRIME)]
    lines = json_lines(result)
    cpus = [row for row in lines if "cpu" in row]
    assert cpus and cpus[-1]["cpu"] == "all", lines
    assert cpus[-1]["net_rx_run"]["count"] > 0 and cpus[-1]["seconds"] > 1.0
    text = podtrace.run("report", str(output))
    assert text.returncode == 0 and "NET_RX" in text.stdout, text.stdout


# --- Service flows on the built-in lab ------------------------------------------------------------------------

NODES = ("--node", "pt-node1", "--node", "pt-node2")
DATAGRAMS = 31  # a prime: nothing else in the lab produces exactly this many


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    with exclusive_lab():
        yield


@pytest.mark.parametrize("hook_timing", [False, True], ids=["conntrack", "hook-timing"])
def test_report_gives_the_flow_numbers_of_the_traffic_sent(lab: None, tmp_path: Path, hook_timing: bool) -> None:
    """By default the recording counts Service flows from conntrack (untimed, as `flows`); --hook-timing records
    the per-packet links with the time in netfilter. Both give the same counts."""
    from tracer.lab import traffic

    output = tmp_path / "flows.ptrec.gz"
    timing = ("--hook-timing",) if hook_timing else ()
    recorder = podtrace.start("record", "-o", str(output), "--json", *NODES, *timing, "udp port 53 or udp port 5353")
    sent = traffic.probe("default/web:dns", count=DATAGRAMS)
    time.sleep(0.5)
    recorded = recorder.stop()
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.summary["lost"] == 0
    answered = sent.per_target["default/web:dns"].endpoints
    assert sum(answered.values()) == DATAGRAMS, sent

    result = podtrace.run("report", "--json", str(output))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    summary = lines[-1]
    flows = [line for line in lines if line.get("service") == "default/web:dns" and "backend" in line]
    assert_web_dns_flows(flows, answered, timed=hook_timing)
    assert summary["proxy_mode"] == "iptables" and summary["lost"] == 0 and summary["truncated"] is False
    assert summary["events"] == recorded.summary["events"]
    # Each node's links and conntrack table, as read in the lab's namespaces (pod ifindexes repeat across nodes:
    # each pod end is found by the node's own nsid of it).
    tables = {line["node"]: line for line in lines if line.get("conntrack")}
    assert set(tables) == {"pt-node1", "pt-node2"} and all(t["at"] == "end" and not t["full"] for t in tables.values())
    mtu = {line["node"]: line for line in lines if line.get("mtu")}
    assert set(mtu) == {"pt-node1", "pt-node2"}, lines
    pods = {node: sorted(pod for path in row["paths"] for pod in path["pods"]) for node, row in mtu.items()}
    assert pods == {"pt-node1": ["pt-client:eth0", "pt-web-1:eth0"], "pt-node2": ["pt-web-2:eth0", "pt-web-3:eth0"]}
    for row in mtu.values():
        assert row["ok"], row  # the lab without the mtu-mismatch fault: pods 1450 over flannel.1 1450 over 1500
        [path] = row["paths"]
        assert (path["verdict"]["pod_mtu"], path["verdict"]["overlay_mtu"], path["verdict"]["underlay_mtu"]) == (
            1450, 1450, 1500)

    text = podtrace.run("report", str(output))
    assert text.returncode == 0
    assert "default/web:dns" in text.stdout and "kube-proxy mode iptables" in text.stdout


CONNECTS = 29  # a prime: connection attempts to default/web:http with one backend dropping


def _tshark_rows(path: Path, *fields: str) -> list[list[str]]:
    result = subprocess.run(["tshark", "-2", "-r", str(path), "-T", "fields", "-E", "separator=|",
                             *(arg for field in fields for arg in ("-e", field))],
                            capture_output=True, text=True, check=True, timeout=120)
    return [line.split("|") for line in result.stdout.splitlines()]


def test_export_of_a_lab_recording_is_a_frame_per_packet_with_the_dropped_service(lab: None, tmp_path: Path) -> None:
    """drop-backend: SYNs to the VIP, DNATed on node1 and dropped in node2's FORWARD for web-2. Each packet is
    seen at several hops; one frame each, Wireshark finds no retransmission that TCP did not make, and the drop's
    comment names the Service. Per hop, the same SYN's later hops are what Wireshark calls retransmissions."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    from tracer.lab import faults, traffic

    output = tmp_path / "drop-backend.ptrec.gz"
    faults.set_fault("drop-backend", True)
    try:
        recorder = podtrace.start("record", "-o", str(output), *NODES, "tcp port 80 or tcp port 8080")
        # 0.5 s per attempt: under the kernel's first SYN retransmission (1 s), so TCP retransmits nothing
        traffic.probe("default/web:http", count=CONNECTS, timeout=0.5)
        time.sleep(0.5)
        assert recorder.stop().returncode == 0
    finally:
        faults.set_fault("drop-backend", False)
    frames, hops = tmp_path / "packets.pcapng", tmp_path / "hops.pcapng"
    for path, extra in ((frames, ()), (hops, ("--per-hop",))):
        exported = podtrace.run("export", str(output), *extra, "--pcapng", str(path))
        assert exported.returncode == 0, exported.stderr
    fields = ("frame.number", "ip.id", "tcp.stream", "tcp.seq_raw", "tcp.flags", "tcp.analysis.retransmission",
              "frame.comment")
    packets, per_hop = _tshark_rows(frames, *fields), _tshark_rows(hops, *fields)
    assert len(packets) < len(per_hop)  # hops folded

    def copies(rows: list[list[str]]) -> list[list[str]]:
        """Frames marked as retransmissions that carry the same IP ID as the segment's first frame: one packet."""
        first: dict[tuple[str, str, str], str] = {}
        found = []
        for row in rows:
            key = (row[2], row[3], row[4])
            if row[5] and first.get(key) == row[1]:
                found.append(row)
            first.setdefault(key, row[1])
        return found

    assert copies(packets) == []
    assert copies(per_hop), "per hop, a SYN's later hops look like retransmissions: the test can tell"
    dropped = [row[6] for row in packets if "; dropped: NETFILTER_DROP; service default/web:http (" in row[6]]
    assert dropped, [row[6] for row in packets if "dropped" in row[6]][:3]
    assert all(" drop NETFILTER_DROP at " in comment and "pt-node2/" in comment for comment in dropped)


# --- MTU and conntrack on a node of our own ----------------------------------------------------------------------

# A flannel-shaped node in throwaway namespaces: pod eth0 (MTU 1500) -> vethpod0 -> cni0 (1500) -> flannel.1
# (VXLAN, 1450) over eth0 (1500) to a peer node. 198.18.252.0/22 lies above the /24s netns_pair hands out, so
# the trace filter sees only this test's packets.
POD_IP, CNI_IP, NODE_UNDERLAY, PEER_UNDERLAY = "198.18.252.2", "198.18.252.1", "198.18.253.1", "198.18.253.2"
REMOTE_POD, VIP = "198.18.254.5", "198.18.255.10"
MINI_FILTER = "net 198.18.252.0/22"
TOO_BIG = 7  # DF datagrams over the overlay MTU: each one PKT_TOO_BIG and one ICMP frag-needed
FRAGMENTED = 5  # non-DF datagrams of 2000 bytes: two fragments each on flannel.1
NEW_FLOWS = 11  # connections to the Service once conntrack is full: each refused
KUBE_PROXY_RULES = f"""*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ECHODNSTEST00000 - [0:0]
:KUBE-SEP-ECHODNSTEST00000 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d {VIP}/32 -p udp -m comment --comment "default/echo:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-ECHODNSTEST00000
-A KUBE-SVC-ECHODNSTEST00000 -m comment --comment "default/echo:dns -> 198.18.254.7:5353" -j KUBE-SEP-ECHODNSTEST00000
-A KUBE-SEP-ECHODNSTEST00000 -p udp -m comment --comment "default/echo:dns" -m udp -j DNAT --to-destination 198.18.254.7:5353
COMMIT
"""  # noqa: E501 - iptables-save lines


@dataclass
class MiniNode:
    pod: str
    node: str
    peer: str


@contextmanager
def mini_node() -> Iterator[MiniNode]:
    from tracer.benchmarks.netns import sh as run

    tag = uuid.uuid4().hex[:6]
    created = MiniNode(f"ptm-{tag}-pod", f"ptm-{tag}-node", f"ptm-{tag}-peer")
    namespaces = (created.pod, created.node, created.peer)
    try:
        for ns in namespaces:
            run("ip", "netns", "add", ns)
            # No IPv6: router solicitations would be new conntrack entries, refused once the table is full.
            for key in ("all", "default"):
                run("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1", netns=ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        pod, node, peer = created.pod, created.node, created.peer
        for argv in (
            ["link", "add", "cni0", "mtu", "1500", "type", "bridge"],
            ["addr", "add", f"{CNI_IP}/24", "dev", "cni0"],
            ["link", "set", "cni0", "up"],
            ["link", "add", "vethpod0", "mtu", "1500", "type", "veth", "peer", "name", "eth0", "mtu", "1500",
             "netns", pod],
            ["link", "set", "vethpod0", "master", "cni0", "up"],
            ["link", "add", "eth0", "mtu", "1500", "type", "veth", "peer", "name", "eth0", "netns", peer],
            ["addr", "add", f"{NODE_UNDERLAY}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["link", "add", "flannel.1", "mtu", "1450", "type", "vxlan", "id", "1", "dstport", "8472", "local",
             NODE_UNDERLAY, "dev", "eth0", "nolearning"],
            ["addr", "add", "198.18.252.0/32", "dev", "flannel.1"],  # the node subnet's network address, as flannel
            ["link", "set", "flannel.1", "up"],
            ["neigh", "add", "198.18.254.0", "lladdr", "02:00:00:00:00:03", "dev", "flannel.1"],
            ["route", "add", "198.18.254.0/24", "via", "198.18.254.0", "dev", "flannel.1", "onlink"],
            ["route", "add", f"{VIP}/32", "via", "198.18.254.0", "dev", "flannel.1", "onlink"],
        ):
            run("ip", "-n", node, *argv)
        run("bridge", "-n", node, "fdb", "append", "02:00:00:00:00:03", "dev", "flannel.1", "dst", PEER_UNDERLAY)
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=node)
        for argv in (["addr", "add", f"{POD_IP}/24", "dev", "eth0"], ["link", "set", "eth0", "up"],
                     ["route", "add", "default", "via", CNI_IP]):
            run("ip", "-n", pod, *argv)
        run("ip", "-n", peer, "addr", "add", f"{PEER_UNDERLAY}/24", "dev", "eth0")
        run("ip", "-n", peer, "link", "set", "eth0", "up")
        subprocess.run(["ip", "netns", "exec", node, "iptables-restore", "--noflush"], input=KUBE_PROXY_RULES,
                       text=True, check=True, capture_output=True, timeout=60)
        yield created
    finally:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def send_sized(netns: str, dst: str, port: int, count: int, size: int, df: bool, new_socket: bool = False) -> None:
    """`count` UDP datagrams of `size` bytes; df: IP_PMTUDISC_PROBE (DF set, the cached path MTU ignored, so each
    one meets the small link), else IP_PMTUDISC_DONT (fragmented); new_socket: a new flow (conntrack entry) each."""
    code = (
        "import socket\n"
        "s = None\n"
        f"for _ in range({count}):\n"
        f"    if s is None or {new_socket}:\n"
        "        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"        s.setsockopt(socket.IPPROTO_IP, 10, {3 if df else 0})\n"
        f"    s.sendto(b'x' * {size}, ('{dst}', {port}))\n"
    )
    sh(sys.executable, "-c", code, netns=netns)


def test_report_shows_the_mtu_and_conntrack_of_the_recorded_node(tmp_path: Path) -> None:
    from tracer.lab import ctfill

    subnet_env = tmp_path / "subnet.env"
    subnet_env.write_text("FLANNEL_NETWORK=198.18.252.0/22\nFLANNEL_SUBNET=198.18.252.1/24\nFLANNEL_MTU=1450\n"
                          "FLANNEL_IPMASQ=true\n")
    with mini_node() as mini:
        output = tmp_path / "node.ptrec.gz"
        node = ("--node", mini.node)
        recorder = podtrace.start("record", "-o", str(output), "--json", *node, "--subnet-env", str(subnet_env),
                                  MINI_FILTER)
        send_sized(mini.pod, REMOTE_POD, 7001, TOO_BIG, 1472, df=True)  # IP total length 1500
        send_sized(mini.pod, REMOTE_POD, 7002, FRAGMENTED, 2000, df=False)
        table_max = ctfill.maximum(mini.node)
        ctfill.fill(mini.node, table_max)
        assert ctfill.count(mini.node) == table_max, "the table is full"
        send_sized(mini.pod, VIP, 53, NEW_FLOWS, 20, df=False, new_socket=True)
        time.sleep(1.5)  # a counters tick, then the trailer's conntrack reading
        recorded = recorder.stop()
        kernel_count = ctfill.count(mini.node)  # the kernel's own figure, read by the test
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.summary["lost"] == 0, recorded.summary
    _drops, summary, result = report(output)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert summary["lost"] == 0 and summary["truncated"] is False
    lines = json_lines(result)

    too_big = [row for row in lines if row.get("reason") == "PKT_TOO_BIG"]
    assert [(row["count"], row["dport"], row["netns"]) for row in too_big] == [(TOO_BIG, 7001, mini.node)], lines

    [mtu] = [row for row in lines if row.get("mtu") and row["node"] == mini.node]
    assert mtu["frag_needed"] == {POD_IP: TOO_BIG} and mtu["frag_needed_mtu"] == {"1450": TOO_BIG}, mtu
    assert mtu["frag_needed_seen_by"].startswith("icmp:icmp_send"), "each error the node sent, from the tracepoint"
    assert mtu["too_big_drops"] == TOO_BIG and mtu["fragments"] == 2 * FRAGMENTED, mtu
    assert mtu["flannel_mtu"] == 1450 and mtu["ok"] is False
    links = {link["name"]: link for link in mtu["links"]}
    assert (links["flannel.1"]["mtu"], links["flannel.1"]["kind"], links["flannel.1"]["lower"]) == (1450, "vxlan",
                                                                                                   "eth0")
    assert (links["cni0"]["mtu"], links["vethpod0"]["master"], links["eth0"]["mtu"]) == (1500, "cni0", 1500)
    [path] = mtu["paths"]
    assert path["pods"] == [f"{mini.pod}:eth0"]
    verdict = path["verdict"]
    assert (verdict["pod_mtu"], verdict["overlay_mtu"], verdict["underlay_mtu"]) == (1500, 1450, 1500)
    assert verdict["text"].startswith("pod MTU 1500 > overlay 1450: DF packets above 1450 dropped, ICMP "
                                      f"frag-needed sent to {POD_IP} ("), verdict

    [table] = [row for row in lines if row.get("conntrack")]
    assert (table["node"], table["count"], table["max"], table["full"]) == (mini.node, kernel_count, table_max, True)
    assert table["start"]["count"] < table_max and table["at"] == "end"
    assert table["drops_during"] == NEW_FLOWS, table
    cause = f"conntrack table full ({table_max}/{table_max})"
    charged = [row for row in lines if row.get("service_drop")]
    assert [(row["service"], row["count"], row["cause"], row["dst"], row["dport"]) for row in charged] == [
        ("default/echo:dns", NEW_FLOWS, cause, VIP, 53)], charged


    text = podtrace.run("report", str(output))
    assert text.returncode == 0, text.stderr
    assert f"conntrack {mini.node}: {table_max}/{table_max} entries (100% full)" in text.stdout
    assert "TABLE FULL" in text.stdout
    assert f"MTU {mini.node}: cni0 1500 (bridge), flannel.1 1450 (vxlan over eth0), eth0 1500 (underlay), " \
           "FLANNEL_MTU 1450" in text.stdout, text.stdout
    assert f"{TOO_BIG} ICMP frag-needed sent" in text.stdout and "MISMATCH: pod MTU 1500 > overlay 1450" in text.stdout
