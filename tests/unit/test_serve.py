"""serve's pure parts: triggers, options and config files, bounded labels, the metrics a scrape renders, and the
flight recorder's ring and sealing on synthetic events with a controlled clock."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP  # type: ignore[import-untyped]
from test_aggregate import drop

from tracer.events.decode import EVENT_PATH, encode
from tracer.output.errors import UsageError
from tracer.serve.attribution import Charge
from tracer.serve.labels import OTHER, TopN
from tracer.serve.metrics import METRICS, MetricsState, StateCollector, exported_names
from tracer.serve.recorder import FlightRecorder, Retention
from tracer.serve.triggers import parse_trigger
from tracer.sources.replay import ReplaySource


def charge(reason: str = "NETFILTER_DROP", severity: str = "policy", service: str = "default/web:http",
           count: int = 3) -> Charge:
    return Charge(reason, severity, "", service, "web-2", "matched", count, {})


# --- triggers -------------------------------------------------------------------------------------------------


def test_drop_trigger_matches_reason_severity_and_service_prefix() -> None:
    trigger = parse_trigger("drop reason=SKB_DROP_REASON_NETFILTER_DROP service=default/web")
    assert trigger.reason == "NETFILTER_DROP"
    assert trigger.fired([charge()], 1.0, {}) == "3 drops NETFILTER_DROP default/web:http"
    assert trigger.fired([charge(service="default/web-nodeport:http")], 1.0, {}) is None
    assert trigger.fired([charge(reason="NO_SOCKET")], 1.0, {}) is None
    assert parse_trigger("drop severity=loss").fired([charge()], 1.0, {}) is None


def test_rate_and_conntrack_triggers() -> None:
    rate = parse_trigger("drop-rate per_second=5 severity=policy")
    assert rate.fired([charge(count=9)], 2.0, {}) is None  # 4.5/s
    assert rate.fired([charge(count=10)], 2.0, {}) == "5.0 drops/s >= 5/s"
    fill = parse_trigger("conntrack-fill ratio=0.9")
    assert fill.fired([], 1.0, {"pt-node1": 0.5}) is None
    assert fill.fired([], 1.0, {"pt-node1": 1.0, "pt-node2": 0.1}) == "conntrack pt-node1 at 100% full"


def test_filter_trigger_runs_libpcap_on_the_packet_snapshot() -> None:
    trigger = parse_trigger("drop filter='tcp dst port 8080'")
    assert trigger.matcher is not None
    hit = bytes(IP(src="10.244.0.2", dst="10.244.1.2") / TCP(sport=40000, dport=8080, flags="S"))
    miss = bytes(IP(src="10.244.0.2", dst="10.244.1.2") / TCP(sport=40000, dport=80, flags="S"))
    assert trigger.matcher(hit, len(hit)) and not trigger.matcher(miss, len(miss))


@pytest.mark.parametrize(("text", "says"), [
    ("", "an empty trigger"),
    ("dorp", "unknown kind 'dorp'"),
    ("drop reason", "'reason' is not KEY=VALUE"),
    ("drop ratio=0.5", "drop takes reason, severity, service, filter, not 'ratio'"),
    ("drop severity=bad", "severity must be one of loss, policy, benign"),
    ("drop-rate", "drop-rate needs per_second=N"),
    ("drop-rate per_second=-1", "per_second='-1' must be a number at least 0.001"),
    ("conntrack-fill ratio=2", "ratio='2' must be a number between 1e-06 and 1"),
    ("drop filter='tcp port'", "bad filter 'tcp port'"),
    ("drop filter='unclosed", "No closing quotation"),
])
def test_bad_triggers_are_one_line_usage_errors(text: str, says: str) -> None:
    with pytest.raises(UsageError) as raised:
        parse_trigger(text)
    assert says in raised.value.one_line() and "\n" not in raised.value.one_line()


# --- options ------------------------------------------------------------------------------------------------------


def _serve(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracer.cli.main", "serve", *argv], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize(("argv", "config", "says"), [
    (["--listen", "localhost"], None, "--listen 'localhost': expected ADDRESS:PORT"),
    (["--listen", "example:80"], None, "'example' is not an IP address"),
    (["--interval", "0"], None, "interval: '0' is not a positive number of seconds"),
    (["--ring-size", "lots"], None, "ring_size: 'lots' is not a size"),
    (["--trigger", "drop"], None, "--trigger needs --recorder-dir"),
    (["--before", "900"], None, "--before 900 is longer than --ring-seconds 600"),
    (["--node", "no-such-netns-here"], None, "--node 'no-such-netns-here': no such network namespace"),
    ([], "{not json", "not JSON"),
    ([], '["a list"]', "expected a JSON object of settings"),
    ([], '{"ring_sise": "1M"}', "unknown setting 'ring_sise'"),
    ([], '{"triggers": "drop"}', "triggers must be a list of trigger lines"),
    ([], '{"recorder_dir": "/tmp", "triggers": ["drop severity=worst"]}', "severity must be one of"),
])
def test_bad_flags_and_config_exit_2_with_one_line(tmp_path: Path, argv: list[str], config: str | None,
                                                    says: str) -> None:
    if config is not None:
        path = tmp_path / "serve.json"
        path.write_text(config)
        argv = [*argv, "--config", str(path)]
    result = _serve(*argv)
    assert result.returncode == 2, result
    assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_flags_win_over_the_config_file(tmp_path: Path) -> None:
    import argparse

    from tracer.cli.serve import add_parser
    from tracer.serve.options import from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"listen": "0.0.0.0:9999", "before": 10, "recorder-dir": str(tmp_path),
                                  "triggers": ["drop severity=loss"], "ring_size": "2M"}))
    args = parser.parse_args(["serve", "--config", str(config), "--before", "20",
                              "--trigger", "conntrack-fill ratio=1"])
    options = from_args(args)
    assert (options.address, options.port) == ("0.0.0.0", 9999)
    assert options.retention.before_s == 20 and options.retention.ring_bytes == 2 << 20
    assert [t.text for t in options.triggers] == ["conntrack-fill ratio=1"]
    assert options.recorder_dir == str(tmp_path)


# --- labels and metrics -------------------------------------------------------------------------------------


def test_top_n_keeps_the_busiest_and_counts_the_rest_as_other() -> None:
    top = TopN(2)
    assert [top.label(s) for s in ("a", "b", "c")] == ["a", "b", OTHER]
    assert top.label("") == ""
    for _ in range(3):
        top.label("b")
    for _ in range(10):
        top.label("c")  # counted while under "other": its total is what reranking reads
    assert top.rerank() == {"a"}  # c (11) and b (4) overtook a (1)
    assert top.label("c") == "c" and top.label("a") == OTHER


def test_top_n_forgets_values_beyond_what_it_tracks() -> None:
    top = TopN(2, track=10)
    for index in range(1000):
        top.label(f"svc-{index}")
    assert len(top.totals) <= 10 and top.admitted <= set(top.totals)


def test_a_scrape_renders_every_declared_metric_with_prometheus_names() -> None:
    state = MetricsState()
    state.inc("podtrace_drops", ("n1", "NETFILTER_DROP", "policy", "rule", "default/web:http", "web-2", "matched"), 3)
    state.inc("podtrace_drops", ("n1", "NETFILTER_DROP", "policy", "rule", "default/web:http", "web-2", "matched"), 2)
    state.set("podtrace_conntrack_fill_ratio", ("n1",), 0.5)
    state.set("podtrace_probe_attached", ("n1", "softirq"), 0)
    with pytest.raises(ValueError, match="takes labels"):
        state.set("podtrace_conntrack_fill_ratio", ("n1", "extra"), 1)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    text = generate_latest(registry).decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {f"podtrace_{m.name.removeprefix('podtrace_')}" for m in METRICS} == set(families)
    samples = {sample.name: sample for family in families.values() for sample in family.samples}
    assert samples["podtrace_drops_total"].value == 5
    assert samples["podtrace_drops_total"].labels["backend"] == "web-2"
    assert samples["podtrace_conntrack_fill_ratio"].value == 0.5
    assert "podtrace_drops_total" in exported_names() and "podtrace_conntrack_fill_ratio" in exported_names()
    for metric in METRICS:  # Prometheus conventions: counters end in _total, units are base units
        assert not metric.name.endswith("_total") and "_ms" not in metric.name and "milli" not in metric.name
    state.forget("podtrace_drops", lambda labels: labels[4] != "default/web:http")
    assert "podtrace_drops_total{" not in generate_latest(registry).decode()


# --- the flight recorder ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 10_000_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


def _recorder(tmp_path: Path, clock: Clock, **retention: float) -> tuple[FlightRecorder, list[str]]:
    logged: list[str] = []
    header = {"format_version": 1, "names": {"netns": {"4026531840": "host"}}, "drop_reasons": {"3": "NO_SOCKET"},
              "clock": {"wall_offset_ns": 0}, "filter": {"expression": ""}}
    values = {"segment_s": 2.0, "before_s": 5.0, "after_s": 2.0, "cooldown_s": 10.0, **retention}
    recorder = FlightRecorder(str(tmp_path), Retention(**values),  # type: ignore[arg-type]
                              lambda: json.loads(json.dumps(header)), lambda inode: f"ns{inode}",
                              lambda address: "kfree_skb+0x10", logged.append, clock)
    return recorder, logged


def _second(recorder: FlightRecorder, clock: Clock, events: int, kind_drop: bool = True) -> None:
    """One second of traffic: `events` events stamped now, counters, then the tick's flush."""
    event = drop(ts_ns=clock.now)
    if not kind_drop:
        event = dataclasses.replace(event, type=EVENT_PATH)
    recorder.add([encode(dataclasses.replace(event, ts_ns=clock.now + i)) for i in range(events)])
    recorder.write_counters({"events": clock.now // 10**9, "lost": 1}, {"drops": {"events": 1}})
    clock.advance(1)
    recorder.flush()
    recorder.tick()


def test_a_trigger_seals_only_the_window_into_a_readable_recording(tmp_path: Path) -> None:
    clock = Clock()
    recorder, logged = _recorder(tmp_path, clock)
    for _ in range(10):  # 10 s of path events: the first 3 s fall outside the 5 s before the trigger
        _second(recorder, clock, 7, kind_drop=False)
    trigger_at = clock.now
    recorder.trigger("drop reason=NO_SOCKET", "3 drops NO_SOCKET")
    recorder.trigger("drop reason=NO_SOCKET", "again")  # joins the open incident
    _second(recorder, clock, 3)
    assert not recorder.incidents, "sealed only once the window after the trigger has passed"
    _second(recorder, clock, 3)
    _second(recorder, clock, 1000)  # after the window: not in the incident
    assert len(recorder.incidents) == 1 and "sealed incident" in logged[-1]
    recorder.trigger("drop reason=NO_SOCKET", "within the cooldown")
    assert recorder.pending is None and recorder.fired == {"drop reason=NO_SOCKET": 3}
    source = ReplaySource(recorder.incidents[0])
    events = list(source)
    source.close()
    stamps = [int.from_bytes(raw[8:16], "little") for raw in events]
    assert min(stamps) >= trigger_at - 5 * 10**9 and max(stamps) <= trigger_at + 3 * 10**9
    assert len(events) == 5 * 7 + 3 + 3, len(events)
    assert not source.truncated
    incident = source.header["flight_recorder"]["incident"]
    assert [f["what"] for f in incident["firings"]] == ["3 drops NO_SOCKET", "again"]
    assert source.final_counters["lost"] == 0, "counters are counted from the window's start"
    assert source.resolver().netns(4026531840) in ("host", "ns4026531840")
    recorder.close()


def test_ring_and_incidents_stay_under_their_caps(tmp_path: Path) -> None:
    clock = Clock()
    recorder, _ = _recorder(tmp_path, clock, ring_bytes=40_000, segment_s=1.0, before_s=2.0, after_s=0.5,
                            cooldown_s=0.5, incident_bytes=30_000)
    for second in range(60):
        _second(recorder, clock, 50)
        if second % 2:
            recorder.trigger("drop", "drops")
        assert recorder.ring_bytes() <= 40_000
        assert recorder.incident_bytes() <= 30_000
    on_disk = sum(os.path.getsize(tmp_path / "segments" / name) for name in os.listdir(tmp_path / "segments"))
    assert on_disk <= 40_000
    assert sum(recorder.sealed.values()) >= 20 and len(os.listdir(tmp_path / "incidents")) < 20
    recorder.close()


def test_segments_of_a_killed_run_are_kept_readable_and_pruned_by_the_cap(tmp_path: Path) -> None:
    clock = Clock()
    first, _ = _recorder(tmp_path, clock)
    for _ in range(3):
        _second(first, clock, 10)
    # no close(): as after a SIGKILL, the open segment has no trailer but everything flushed is there
    left = sorted(os.listdir(tmp_path / "segments"))
    source = ReplaySource(str(tmp_path / "segments" / left[-1]))
    assert len(list(source)) > 0 and source.truncated
    source.close()
    second, _ = _recorder(tmp_path, clock, ring_bytes=1)
    assert [os.path.basename(s.path) for s in second.segments] == [sorted(os.listdir(tmp_path / "segments"))[-1]]
    assert all(s.ours for s in second.segments), "the old run's segments went first"
    second.close()
