"""podtrace record/report/export against real probes and real drops in throwaway namespaces."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import support.podtrace as podtrace
from support.lab import exclusive_lab
from support.netns import Pair, netns_pair, send_udp, tcp_connect_attempts

pytestmark = pytest.mark.root

PRIME = 13
# The CLI with tracer.cmd_record registered, whether or not tracer/cli.py lists it yet.
CLI = [sys.executable, "-c", (
    "import sys, tracer.cli as c\n"
    "m = 'tracer.cmd_record'\n"
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
    result = podtrace.run("report", "--json", str(path), *extra)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return [line for line in lines if not line.get("summary")], lines[-1], result


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
    exported = podtrace.run("export", str(output), "--pcapng", str(pcap))
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
    assert summary["lost"] == recorded.summary["lost"] < 2000, summary


def test_softirq_summary_is_recorded_and_reported(pair: Pair, tmp_path: Path) -> None:
    output = tmp_path / "softirq.ptrec.gz"
    recorder = podtrace.start("record", "-o", str(output), "--netns", pair.b, "--softirq", "--json")
    send_udp(pair.a, pair.addr_b, 5011, PRIME, src_port=40011)
    time.sleep(1.5)  # at least one counters tick, so there is a snapshot between the first and the last
    recorded = recorder.stop()
    assert recorded.returncode == 0, recorded.stderr
    lines, summary, result = report(output)
    assert result.returncode == 0, result.stderr
    drops = [row for row in lines if row.get("dport") == 5011]
    assert [(row["reason"], row["count"]) for row in drops] == [("NO_SOCKET", PRIME)]
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


def test_report_gives_the_flow_numbers_of_the_traffic_sent(lab: None, tmp_path: Path) -> None:
    from tracer.lab import traffic

    output = tmp_path / "flows.ptrec.gz"
    recorder = podtrace.start("record", "-o", str(output), "--json", *NODES, "udp port 53 or udp port 5353")
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
    by_pod = {flow["backend_pod"]: flow for flow in flows}
    assert set(by_pod) == {"web-1", "web-2", "web-3"} == set(answered), flows
    for pod, flow in by_pod.items():
        assert flow["client_pod"] == "client" and flow["vip"] == "10.96.0.10" and flow["port"] == 53
        assert flow["backend_port"] == 5353 and flow["proto"] == "udp"
        assert flow["packets_out"] == answered[pod], (pod, flow, answered)
        assert flow["packets_in"] == answered[pod], "each reply un-NATed back to the VIP"
        assert flow["connections"] == answered[pod]
        assert flow["netfilter_ns_max"] > 0
    assert summary["proxy_mode"] == "iptables" and summary["lost"] == 0 and summary["truncated"] is False
    assert summary["events"] == recorded.summary["events"]

    text = podtrace.run("report", str(output))
    assert text.returncode == 0
    assert "default/web:dns" in text.stdout and "kube-proxy mode iptables" in text.stdout
