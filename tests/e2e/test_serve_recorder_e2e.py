"""The flight recorder of `podtrace serve` on the lab: a drop trigger seals the window around it into a recording
that `podtrace report` and tracer.api open; retention stays under its caps over a run with many triggers."""

from __future__ import annotations

import json
import os
import time

import pytest
from support.lab import faults_cleared, iptables_lab  # noqa: F401 (fixtures)
from support.podtrace import run
from support.serve import scrape, serve

from tracer.api import open_recording
from tracer.events.decode import EVENT_DROP, EVENT_PATH, decode
from tracer.lab import faults, traffic

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("faults_cleared")]

WEB_HTTP = "default/web:http"
WEB2 = "10.244.1.2"


def _incidents(directory: str) -> list[str]:
    folder = os.path.join(directory, "incidents")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if not name.startswith("."))


def _du(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_a_drop_trigger_seals_the_drop_and_the_packets_before_it(tmp_path: str) -> None:
    directory = str(tmp_path)
    with serve("--node", "pt-node2", "--interval", "1", "--recorder-dir", directory, "--path", "tcp port 8080",
               "--trigger", f"drop service={WEB_HTTP} reason=NETFILTER_DROP", "--before", "60", "--after", "2",
               "--segment-seconds", "3") as (_process, port):
        traffic.probe(WEB_HTTP, count=10, timeout=0.5)  # healthy packets first: the window before the trigger
        time.sleep(4)  # across a segment boundary
        assert not _incidents(directory), "nothing has failed yet"
        faults.set_fault("drop-backend", True)
        fault_on = time.time()
        traffic.probe(WEB_HTTP, count=20, timeout=0.5)
        deadline = time.monotonic() + 30
        while not _incidents(directory) and time.monotonic() < deadline:
            time.sleep(0.5)
        metrics = scrape(port)
    incidents = _incidents(directory)
    assert len(incidents) == 1, (incidents, metrics)
    recording = open_recording(incidents[0])
    header = recording.header
    incident = header["flight_recorder"]["incident"]
    assert incident["trigger"] == f"drop service={WEB_HTTP} reason=NETFILTER_DROP", incident
    events = [decode(raw) for raw in recording.raw_events() if len(raw) >= 296]
    drops = [e for e in events if e.type == EVENT_DROP and recording.resolver().reason(e.reason) == "NETFILTER_DROP"
             and e.outer.dst == WEB2 and e.outer.dport == 8080]
    assert drops, f"{len(events)} events, none the backend's NETFILTER_DROP"
    first_drop = min(e.ts_ns for e in drops)
    before = [e for e in events if e.type == EVENT_PATH and e.ts_ns < first_drop]
    assert before, "no path events before the drop"
    wall = recording.resolver().wall
    assert min(wall(e.ts_ns) for e in before) < fault_on, "the window reaches back before the fault"
    report = run("report", "--json", incidents[0])
    assert report.returncode == 0, report.stderr
    rows = [json.loads(line) for line in report.stdout.splitlines() if line.startswith("{")]
    service_drops = [row for row in rows if row.get("service_drop") and row["dst"] == WEB2]
    # node2 alone cannot tell which of web-2's Services was dialled (the DNAT was node1's): without a conntrack
    # entry saying so, the report names both, as ambiguous; one named alone must be one of the two.
    shared = "default/web-nodeport:http or default/web:http (shared backend: which was dialled is not known)"
    assert service_drops and {row["service"] for row in service_drops} <= {WEB_HTTP, "default/web-nodeport:http",
                                                                            shared}, rows
    assert all(row["service_known"] == "ambiguous" for row in service_drops if row["service"] == shared), rows
    text = run("report", incidents[0])
    assert text.returncode == 0 and "default/web" in text.stdout, text.stdout


def test_retention_stays_under_its_caps_with_many_triggers(tmp_path: str) -> None:
    directory = str(tmp_path)
    ring_cap, incident_cap = 96 << 10, 160 << 10
    faults.set_fault("drop-backend", True)
    samples = []
    with serve("--node", "pt-node2", "--interval", "1", "--recorder-dir", directory, "--path", "tcp",
               "--trigger", "drop reason=NETFILTER_DROP", "--before", "3", "--after", "0.5", "--cooldown", "0.5",
               "--segment-seconds", "1", "--ring-size", str(ring_cap), "--incidents-size", str(incident_cap)
               ) as (process, port):
        end = time.monotonic() + 25
        while time.monotonic() < end:
            traffic.probe(WEB_HTTP, count=10, timeout=0.3)
            metrics = scrape(port)
            samples.append((_metric(metrics, "podtrace_recorder_ring_bytes"),
                            _metric(metrics, "podtrace_recorder_incident_bytes")))
        metrics = scrape(port)
    sealed = _metric(metrics, "podtrace_recorder_incidents_total")
    assert sealed >= 5, metrics
    assert max(ring for ring, _ in samples) <= ring_cap, samples
    assert max(kept for _, kept in samples) <= incident_cap, samples
    assert _du(os.path.join(directory, "incidents")) <= incident_cap
    assert _du(os.path.join(directory, "segments")) <= ring_cap
    kept = _incidents(directory)
    assert 0 < len(kept) < sealed, (samples[-5:], process.log[-3000:])  # type: ignore[attr-defined]
    for path in kept:  # what is kept is whole
        assert run("report", path).returncode == 0
