"""`podtrace check` output and exit codes on recorded node states (the collector is replaced by a recording)."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tracer.check import Finding, NodeState, evaluate, summary
from tracer.check import collect as collect_module
from tracer.cli import check as cmd_check
from tracer.output.errors import PodtraceError

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
    headings = [line for line in lines if line and not line.startswith(" ") and not line.startswith("podtrace")]
    assert headings == ["kube-proxy", "rules", "routes", "conntrack", "mtu", "bridging", "softirq",
                        "sockets"]
    fail = next(i for i, line in enumerate(lines) if line.startswith("  FAIL  pods"))
    assert "cni0 1500" in lines[fail]
    # Into a pipe nothing is wrapped: the finding is three lines, its fix one line to paste as it is.
    finding = next(f for f in evaluate(_state("state-lab-node1-mtu-mismatch.json")) if f.check == "pods")
    assert lines[fail + 1].strip() == f"why: {finding.why}"
    assert lines[fail + 2].strip() == f"fix: {finding.fix}" and finding.fix.startswith("for d in cni0 veth")


@pytest.mark.parametrize("width", [60, 80, 99, 140])
def test_at_terminal_widths_prose_wraps_and_fixes_stay_whole(width: int) -> None:
    findings = evaluate(_state("state-lab-node1-mtu-mismatch.json"))
    out = io.StringIO()
    cmd_check.write_table(findings, out, "netns pt-node1", width)
    lines = out.getvalue().splitlines()
    fixes = [line for line in lines if line.lstrip().startswith("fix: ")]
    assert [line.strip() for line in fixes] == [f"fix: {f.fix}" for f in findings if f.severity != "ok" and f.fix]
    assert all(len(line) <= width for line in lines if line not in fixes)
    unwrapped = io.StringIO()
    cmd_check.write_table(findings, unwrapped, "netns pt-node1", None)
    assert " ".join(out.getvalue().split()) == " ".join(unwrapped.getvalue().split()), "wrapping lost no word"


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


def test_long_values_wrap_and_long_names_and_fixes_are_whole() -> None:
    out = io.StringIO()
    fix = "sysctl -w " + " ".join(f"net.ipv4.conf.veth{i:08x}.rp_filter=2" for i in range(6))
    long = Finding("fail", "rp_filter averyveryverylongifname", "x " * 120, why="y " * 80, fix=fix, area="mtu")
    cmd_check.write_table([long], out, "test", 99)
    lines = out.getvalue().splitlines()
    assert lines[3] == "  FAIL  rp_filter averyveryverylongifname"  # the name whole, its value below
    assert f"fix: {fix}" in lines[-1] and len(lines[-1]) > 99
    assert max(len(line) for line in lines[:-1]) < 100


def test_unknown_netns_is_one_line_exit_2() -> None:
    with pytest.raises(PodtraceError) as err:
        collect_module.collect("pt-no-such-namespace", 0)
    assert err.value.exit_code == 2 and "no network namespace named 'pt-no-such-namespace'" in err.value.one_line()
    proc = subprocess.run([sys.executable, "-m", "tracer.cli.check", "--netns", "pt-no-such-namespace"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("podtrace: no network namespace named")


@pytest.mark.parametrize("name", ["", ".", "..", "../netns", "a/b"])
def test_names_that_are_not_one_namespace_are_refused(name: str) -> None:
    """"" used to check the host instead, ".." to reach `ip netns exec`: neither is a namespace name."""
    proc = subprocess.run([sys.executable, "-m", "tracer.cli.check", "--netns", name, "--window", "0"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"podtrace: no network namespace named {name!r}")


@pytest.mark.parametrize("window", ["-1", "61", "nan", "inf"])
def test_bad_window_is_usage(window: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "tracer.cli.check", "--window", window], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"podtrace: --window {window} is out of range (use 0 to 60 seconds)\n"


def test_check_package_is_headless() -> None:
    code = ("import sys, tracer.check, tracer.check.collect, tracer.cli.check; "
            "assert 'textual' not in sys.modules, 'textual imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
