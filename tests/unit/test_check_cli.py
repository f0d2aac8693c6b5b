"""`podtrace check` output and exit codes on recorded node states (the collector is replaced by a recording)."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracer import cmd_check
from tracer.check import Finding, NodeState, evaluate, summary
from tracer.check import collect as collect_module
from tracer.errors import PodtraceError

FIXTURES = Path(__file__).parent / "fixtures" / "check"


def _state(name: str) -> NodeState:
    return NodeState.from_dict(json.loads((FIXTURES / name).read_text()))


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fixture: str,
         *argv: str) -> tuple[int, str]:
    recorded = _state(fixture)
    monkeypatch.setattr(collect_module, "collect", lambda netns, window: recorded)
    parser = argparse.ArgumentParser(prog="podtrace")
    cmd_check.add_parser(parser.add_subparsers())
    args = parser.parse_args(["check", *argv])
    code = args.func(args)
    return code, capsys.readouterr().out


def test_table_is_grouped_and_narrow(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(monkeypatch, capsys, "state-lab-node1-mtu-mismatch.json", "--netns", "pt-node1")
    assert code == 3
    lines = out.splitlines()
    assert lines[0] == "podtrace check on netns pt-node1: 1 fail, 1 warn, 21 ok"
    assert max(len(line) for line in lines) < 100
    headings = [line for line in lines if line and not line.startswith(" ") and not line.startswith("podtrace")]
    assert headings == ["kube-proxy", "rules", "routes", "conntrack", "mtu", "bridging", "softirq",
                        "sockets"]
    fail = next(i for i, line in enumerate(lines) if line.startswith("  FAIL  pods"))
    assert "cni0 1500" in lines[fail]
    assert any(line.strip().startswith("why: pod packets over 1450") for line in lines[fail:fail + 6])
    assert any(line.strip().startswith("fix: for d in cni0 veth") for line in lines[fail:fail + 8])


def test_json_lines_and_summary(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(monkeypatch, capsys, "state-lab-node1-conntrack-full.json", "--json")
    assert code == 3
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[-1] == {"summary": True, "ok": 21, "warn": 1, "fail": 1}
    table = next(r for r in rows if r.get("area") == "conntrack" and r.get("check") == "table")
    assert table == {"area": "conntrack", "check": "table", "severity": "fail",
                     "value": "262144/262144 entries (100% full)", "why": table["why"], "fix": table["fix"]}
    assert set(rows[0]) == {"area", "check", "severity", "value", "why", "fix"}


def test_no_fail_exits_zero(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(monkeypatch, capsys, "state-lab-node2-rp-filter.json", "--json")
    assert code == 0
    assert json.loads(out.splitlines()[-1]) == {"summary": True, "ok": 18, "warn": 5, "fail": 0}


def test_every_recorded_lab_state() -> None:
    """The whole picture per recording: which checks are not ok."""
    def bad(name: str) -> list[tuple[str, str]]:
        return [(f.severity, f.check) for f in evaluate(_state(name)) if f.severity != "ok"]

    empty = ("warn", "no endpoints")  # the lab's default/empty Service has none, by design
    assert bad("state-lab-node1-ok.json") == [empty]
    assert bad("state-lab-node2-ok.json") == [empty]
    assert bad("state-lab-node1-mtu-mismatch.json") == [empty, ("fail", "pods")]
    assert bad("state-lab-node1-conntrack-full.json") == [empty, ("fail", "table")]
    assert bad("state-lab-node2-rp-filter.json") == [empty, ("warn", "rp_filter eth0"), ("warn", "rp_filter flannel.1"),
                                                      ("warn", "rp_filter cni0"), ("warn", "rp_filter pod veths")]
    assert bad("state-host.json") == []


def test_finding_model() -> None:
    with pytest.raises(ValueError, match="severity"):
        Finding("bad", "x", "y")
    findings = [Finding("ok", "a", "1"), Finding("fail", "b", "2"), Finding("warn", "c", "3")]
    assert summary(findings) == {"summary": True, "ok": 1, "warn": 1, "fail": 1}
    state = _state("state-lab-node1-ok.json")
    assert NodeState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_long_values_wrap_under_100_columns() -> None:
    out = io.StringIO()
    long = Finding("fail", "rp_filter averyveryverylongifname", "x " * 120, why="y " * 80, fix="z" * 150, area="mtu")
    cmd_check.write_table([long], out, "test")
    assert max(len(line) for line in out.getvalue().splitlines()) < 100


def test_unknown_netns_is_one_line_exit_1() -> None:
    with pytest.raises(PodtraceError) as err:
        collect_module.collect("pt-no-such-namespace", 0)
    assert err.value.exit_code == 1 and "no network namespace named 'pt-no-such-namespace'" in err.value.one_line()
    proc = subprocess.run([sys.executable, "-m", "tracer.cmd_check", "--netns", "pt-no-such-namespace"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("podtrace: no network namespace named")


@pytest.mark.parametrize("name", ["", ".", "..", "../netns", "a/b"])
def test_names_that_are_not_one_namespace_are_refused(name: str) -> None:
    """"" used to check the host instead, ".." to reach `ip netns exec`: neither is a namespace name."""
    proc = subprocess.run([sys.executable, "-m", "tracer.cmd_check", "--netns", name, "--window", "0"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"podtrace: no network namespace named {name!r}")


@pytest.mark.parametrize("window", ["-1", "61", "nan", "inf"])
def test_bad_window_is_usage(window: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "tracer.cmd_check", "--window", window], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"podtrace: --window {window} is out of range (use 0 to 60 seconds)\n"


def test_check_package_is_headless() -> None:
    code = ("import sys, tracer.check, tracer.check.collect, tracer.cmd_check; "
            "assert 'textual' not in sys.modules, 'textual imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
