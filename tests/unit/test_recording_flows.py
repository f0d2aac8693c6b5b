"""Service flows (`record --node`) and softirq summaries (`record --softirq`) in recordings: snapshots and
kube-proxy rules in, the tables of `podtrace flows` and `overlay softirq` out of `podtrace report` and the API,
with no root and no BPF."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from test_recording import header, make_event
from test_recording_fixture import V1, run_cli

from tracer.analysis.flows import FlowTable, NatRecord, write_flow_table
from tracer.analysis.softirq import (
    HISTS,
    NAPI_FIELDS,
    Log2Hist,
    SoftirqAggregator,
    SoftirqSnapshot,
    SoftnetRow,
    format_table,
)
from tracer.api import open_recording
from tracer.events.decode import Tuple
from tracer.node.kubeproxy.iptables import parse_iptables_save
from tracer.output.errors import RecordingError
from tracer.recording.fileformat import KIND_NAT_FLOWS, RecordReader
from tracer.recording.recorder import Recorder
from tracer.recording.records_json import nat_from_json, nat_to_json, softirq_from_json, softirq_to_json
from tracer.sources.replay import ReplaySource

FIXTURES = Path(__file__).parent / "fixtures" / "kubeproxy"
SAVE = (FIXTURES / "lab-iptables-node1.save").read_text()
PODS = {"10.244.0.2": "client", "10.244.0.3": "web-1", "10.244.1.2": "web-2", "10.244.1.3": "web-3"}


def _t(src: str, sport: int, dst: str, dport: int, proto: int = 17) -> Tuple:
    pad = bytes(12)
    return Tuple(socket.inet_aton(src) + pad, socket.inet_aton(dst) + pad, sport, dport, 4, proto, 0, 0, 0x4000, 60)


def _nat(point: int, before: Tuple, after: Tuple, packets: int = 1) -> NatRecord:
    return NatRecord(point, 4026532000, before, after, packets, packets * 60, 1, 2, packets * 5000, 9000)


def _dns(client_port: int, backend: str, packets: int) -> list[NatRecord]:
    return [_nat(1, _t("10.244.0.2", client_port, "10.96.0.10", 53), _t("10.244.0.2", client_port, backend, 5353),
                 packets),
            _nat(10, _t(backend, 5353, "10.244.0.2", client_port), _t("10.96.0.10", 53, "10.244.0.2", client_port),
                 packets)]


EARLY = _dns(40000, "10.244.1.2", 1)
LATE = _dns(40000, "10.244.1.2", 2) + _dns(40001, "10.244.0.3", 3)


def flows_header(services: dict | None = None) -> dict:
    data = header()
    data["names"]["lab"] = {"pods": {name: {"ip": ip, "netns": f"pt-{name}", "node": "node1"}
                                     for ip, name in PODS.items()}, "services": {}, "nodes": {}}
    data["services"] = services if services is not None else {
        "nodes": [{"netns": "pt-node1", "commands": {"iptables-save": SAVE}, "error": ""}]}
    return data


def record_flows(path: Path, data: dict | None = None) -> None:
    recorder = Recorder(str(path), data or flows_header(), lambda inode: f"ns-{inode}",
                        lambda addr: "__udp4_lib_rcv+0x4bc")
    recorder.add([make_event(0)])
    recorder.write_nat_flows([nat_to_json(r) for r in EARLY], 1)
    recorder.add([make_event(1)])
    recorder.write_nat_flows([nat_to_json(r) for r in LATE], 2)  # cumulative: the latest snapshot wins
    recorder.close({"lost": 0}, 3_000_000_000)


def expected_table() -> FlowTable:
    table = FlowTable(parse_iptables_save(SAVE), lambda ip: PODS.get(ip, "-"))
    table.add_nat(LATE)
    return table


def test_nat_records_round_trip_through_json() -> None:
    for record in LATE:
        assert nat_from_json(json.loads(json.dumps(nat_to_json(record)))) == record


def test_malformed_nat_entry_is_a_recording_error() -> None:
    with pytest.raises(RecordingError, match="nat_flows entry is malformed"):
        nat_from_json({"before": {}})


def test_replay_keeps_the_latest_nat_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "flows.ptrec"
    record_flows(path)
    kinds = [record.kind for record in RecordReader(str(path)).records()]
    assert kinds.count(KIND_NAT_FLOWS) == 2
    with ReplaySource(str(path)) as source:
        assert len(list(source)) == 2
        assert source.has_nat_flows and source.nat_records() == LATE


def test_report_json_prints_the_flows_rows_of_podtrace_flows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "flows.ptrec.gz"
    record_flows(path)
    code, out, err = run_cli("report", "--json", str(path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and err == "", err
    lines = [json.loads(line) for line in out.splitlines()]
    flows = [line for line in lines if "backend" in line]
    assert flows == [flow.to_json() for flow in expected_table().rows()]
    by_pod = {flow["backend_pod"]: flow for flow in flows}
    assert {pod: (f["service"], f["packets_out"], f["packets_in"]) for pod, f in by_pod.items()} == {
        "web-2": ("default/web:dns", 2, 2), "web-1": ("default/web:dns", 3, 3)}
    assert lines[-1]["summary"] and lines[-1]["proxy_mode"] == "iptables" and lines[-1]["events"] == 2
    assert len([line for line in lines if "reason" in line and "backend" not in line]) == 1  # the drop row


def test_report_text_prints_the_flow_table_after_the_drops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "flows.ptrec"
    record_flows(path)
    code, out, _err = run_cli("report", str(path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0

    class Out:
        text = ""

        def write(self, data: str) -> None:
            Out.text += data

    write_flow_table(expected_table(), Out())
    assert Out.text in out and out.index("NO_SOCKET") < out.index(Out.text)
    assert "kube-proxy mode iptables" in out


def test_node_without_rules_is_a_warning_and_flows_stay_unnamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "flows.ptrec"
    record_flows(path, flows_header({"nodes": [{"netns": "pt-node9", "commands": {}, "error": "no such netns"}]}))
    code, out, err = run_cli("report", "--json", str(path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    assert err == "podtrace: Service names unavailable in pt-node9: no such netns\n"
    flows = [json.loads(line) for line in out.splitlines() if "backend" in json.loads(line)]
    assert {flow["service"] for flow in flows} == {"-"} and len(flows) == 2


def test_api_flow_rows(tmp_path: Path) -> None:
    path = tmp_path / "flows.ptrec"
    record_flows(path)
    recording = open_recording(str(path))
    assert recording.flow_rows() == [flow.to_json() for flow in expected_table().rows()]
    assert recording.nat_records() == LATE


def test_recordings_without_node_have_no_flow_rows(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli("report", "--json", str(V1), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert not any("backend" in line for line in lines) and "proxy_mode" not in lines[-1]
    assert open_recording(str(V1)).flow_rows() == []


# --- softirq snapshots (`record --softirq`) -------------------------------------------------------------------


def _snapshot(ts: float, scale: int) -> SoftirqSnapshot:
    hists = {cpu: {key: Log2Hist.of_values([1000 * (cpu + 1)] * scale * (i + 1)) for i, key in enumerate(HISTS)}
             for cpu in (0, 1)}
    napi = {cpu: {name: scale * (cpu + 2) for name in NAPI_FIELDS} for cpu in (0, 1)}
    softnet = {cpu: SoftnetRow(cpu, 100 * scale, scale, 2 * scale, 0, 0) for cpu in (0, 1)}
    return SoftirqSnapshot(ts, hists, napi, softnet)


SNAPSHOTS = [_snapshot(10.0, 1), _snapshot(11.0, 3), _snapshot(12.5, 7)]


def test_softirq_snapshots_round_trip_through_json() -> None:
    for snapshot in SNAPSHOTS:
        assert softirq_from_json(json.loads(json.dumps(softirq_to_json(snapshot)))) == snapshot
    with pytest.raises(RecordingError, match="softirq record is malformed"):
        softirq_from_json({"hists": {}})


def test_report_prints_the_softirq_summary_of_the_live_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "softirq.ptrec"
    recorder = Recorder(str(path), header(), lambda inode: f"ns-{inode}", lambda addr: "x")
    recorder.add([make_event(0)])
    for snapshot in SNAPSHOTS:
        recorder.write_softirq(snapshot)
    recorder.close({"lost": 0}, 3_000_000_000)
    live = SoftirqAggregator()
    for snapshot in SNAPSHOTS:
        live.add(snapshot)
    expected = [{**row.to_json(), "seconds": 2.5} for row in live.report()]
    code, out, _err = run_cli("report", "--json", str(path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines() if "cpu" in json.loads(line)]
    assert rows == expected and rows[-1]["cpu"] == "all" and rows[-1]["softnet"]["processed"] == 1200
    assert open_recording(str(path)).softirq_rows() == expected
    code, out, _err = run_cli("report", str(path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and format_table(live.report(), live.seconds) in out
    assert open_recording(str(V1)).softirq_rows() == []


def test_report_gives_causes_from_the_rules_the_recording_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tracer.analysis.causes import explain

    path = tmp_path / "flows.ptrec.gz"
    record_flows(path)
    code, out, _err = run_cli("report", "--json", str(path), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0
    [drop] = [json.loads(line) for line in out.splitlines() if '"reason"' in line and '"backend"' not in line]
    assert drop["cause"]["kind"] == "no-socket", drop  # the recorded udp drop: nothing listened there
    with ReplaySource(str(path)) as source:
        for _ in source:
            pass
        states = source.cause_states()
    assert set(states) == {"pt-node1"} and states["pt-node1"].services is not None
    # A REJECT of node1's recorded rules, and what the recording cannot say (routes were not recorded).
    row = {"reason": "NETFILTER_DROP", "proto": "tcp", "src": "10.244.0.2", "dst": "10.96.0.30", "dport": 80,
           "netns": "pt-node1", "hook": "-"}
    cause = explain(row, states["pt-node1"])
    assert cause.kind == "no-endpoints" and cause.text.startswith("Service default/empty:http has no endpoints")
    route = explain({**row, "reason": "IP_INNOROUTES"}, states["pt-node1"])
    assert route.known == "unknown" and "not in the recording" in route.text, route
