"""`podtrace report` on a recording names the causes live `podtrace drops` names: a `record` runs beside `drops`
during each lab fault whose culprit is node state (a blackhole route, strict rp_filter, the ICMP rate limit behind a
REJECT's timeouts, an RPS mask), and the report's cause of every drop group is the live one, word for word and fix
for fix, saying the state was recorded at the end of the recording. Lab faults as tests/e2e/test_fault_culprits_e2e.py
produces them, on one iptables-mode lab."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from support import podtrace
from support.lab import faults_cleared, iptables_lab  # noqa: F401 (fixtures)
from support.podtrace import Running, start

from tracer.analysis.causes import RECORDED_RULES
from tracer.lab import faults, traffic
from tracer.recording.recorded_causes import ORIGIN

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("faults_cleared")]

KEY = ("reason", "location", "netns", "ifname", "proto", "src", "dst", "dport")


def _stop(tracer: Running) -> Running:
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    return result


def _report(path: Path) -> list[dict[str, Any]]:
    result = podtrace.run("report", "--json", str(path))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _same_causes(live: Running, path: Path, netns: str, kind: str, dport: int | None = None) -> list[dict[str, Any]]:
    """Every live drop group of `kind` in `netns` (to `dport`, when given) is in the report with the same cause;
    returns the live ones."""
    recorded = {tuple(row.get(k) for k in KEY): row for row in _report(path)
                if isinstance(row.get("cause"), dict) and not row.get("service_drop")}  # the drop rows
    rows = [row for row in live.rows if row.get("netns") == netns and row.get("cause", {}).get("kind") == kind
            and (dport is None or row.get("dport") == dport)]
    assert rows, live.rows
    for row in rows:
        then = recorded.get(tuple(row.get(k) for k in KEY))
        assert then is not None, (row, sorted(recorded))
        if kind != "backlog":  # the floods go on between the two stops; the other traffic ended before
            assert then["count"] == row["count"], (then, row)
        # said of the recorded state: a rule is recorded at the start, the rest of what names a culprit at the end
        state = f"{RECORDED_RULES}, ICMP counters at its start and its end" if kind == "no-endpoints" else ORIGIN
        want = {**row["cause"], "state": state}
        assert then["cause"] == want, (then["cause"], row["cause"])
    return rows


def test_a_blackhole_route_is_named_by_the_report_as_by_drops(tmp_path: Path) -> None:
    _, details = faults.set_fault("blackhole-route", True)
    path = tmp_path / "blackhole.ptrec.gz"
    drops = start("drops", "--json", "--netns", details["netns"], "tcp")
    record = start("record", "-o", str(path), "--netns", details["netns"])
    traffic.probe("default/web:http", count=30, timeout=0.5)
    time.sleep(0.5)
    live, _ = _stop(drops), _stop(record)
    rows = _same_causes(live, path, details["netns"], "route")
    route = f"route lookup: `blackhole {details['ip']}/32` in {details['netns']} refuses {details['ip']}"
    assert {row["cause"]["text"] for row in rows} == {route} and rows[0]["cause"]["known"] == "observed"
    text = podtrace.run("report", str(path))
    assert f"cause: {route} (observed; {ORIGIN})" in " ".join(text.stdout.split()), text.stdout


def test_a_recording_killed_before_its_trailer_says_the_route_is_not_known_never_a_wrong_one(tmp_path: Path) -> None:
    _, details = faults.set_fault("blackhole-route", True)
    path = tmp_path / "killed.ptrec"
    record = start("record", "-o", str(path), "--netns", details["netns"])
    traffic.probe("default/web:http", count=30, timeout=0.5)
    time.sleep(2.0)  # the recorder flushes every second
    os.kill(record.process.pid, signal.SIGKILL)
    record.process.communicate(timeout=30)
    rows = [row for row in _report(path) if isinstance(row.get("cause"), dict) and row.get("dst") == details["ip"]]
    assert rows, "the drops before the kill are read"
    for row in rows:
        assert row["cause"] == {
            "kind": "route", "known": "unknown", "fix": "",
            "text": f"route lookup failed for {details['ip']} in {details['netns']}; which one is not known (not in "
                    "the recording: it ends before its trailer (cut short), where this is recorded)"}, row


def test_strict_rp_filter_is_named_by_the_report_as_by_drops(tmp_path: Path) -> None:
    faults.set_fault("rp-filter", True)
    path = tmp_path / "rp.ptrec"
    drops = start("drops", "--json", "--netns", "pt-node2", "tcp")
    record = start("record", "-o", str(path), "--netns", "pt-node2")
    traffic.probe("default/web-nodeport:http nodeport", count=6, timeout=0.5)
    time.sleep(0.5)
    live, _ = _stop(drops), _stop(record)
    rows = _same_causes(live, path, "pt-node2", "rp_filter")
    assert all(row["cause"]["text"].startswith("reverse-path filter: rp_filter=1 (strict) on pt-node2/eth0 (all=1, "
                                               "eth0=1)") for row in rows), rows


def test_the_rate_limited_icmp_of_a_no_endpoints_reject_is_in_the_report_as_in_drops(tmp_path: Path) -> None:
    faults.set_fault("no-endpoints", True)
    path = tmp_path / "noep.ptrec"
    drops = start("drops", "--json", "--netns", "pt-node1", "tcp port 80")
    record = start("record", "-o", str(path), "--node", "pt-node1", "tcp port 80")
    sent = traffic.probe("default/web:http", count=20, timeout=0.5)  # faster than the ICMP limit (1/s, burst 6)
    time.sleep(0.5)
    live, _ = _stop(drops), _stop(record)
    assert sent.per_target["default/web:http"].failures.get("timeout", 0) > 0, sent
    rows = _same_causes(live, path, "pt-node1", "no-endpoints")
    assert all(" ICMP errors were rate-limited in pt-node1 during the session (IcmpOutRateLimitHost +" in
               row["cause"]["text"] for row in rows), rows


def test_an_rps_mask_behind_backlog_drops_is_named_by_the_report_as_by_drops(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("one CPU: softirq-load steers nothing")
    path = tmp_path / "rps.ptrec.gz"
    drops = start("drops", "--json", "--netns", "pt-node2")
    record = start("record", "-o", str(path), "--netns", "pt-node2")
    _, details = faults.set_fault("softirq-load", True)
    try:
        time.sleep(4)
        live, _ = _stop(drops), _stop(record)  # both read the RPS mask while the fault still steers receive
    finally:
        faults.set_fault("softirq-load", False)
    # The flood's groups: it reaches pt-node2's eth0 inside VXLAN (flannel's UDP port 8472). A one-off packet the
    # overflowing backlog also dropped (an IPv6 router solicitation, once) was in the live session and not in the
    # recording on a busy machine, where a ring buffer can lose an event; the flood's groups are in both.
    rows = _same_causes(live, path, details["netns"], "backlog", dport=8472)
    assert all(row["cause"]["text"].endswith(f": RPS sends all of {details['netns']}/eth0's receive to CPU "
                                             f"{details['hog_cpu']} of {cpus}, whose backlog overflows")
               for row in rows), rows
