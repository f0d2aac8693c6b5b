"""`podtrace check --rules FILE` and `api.read_rules`: a saved ruleset is recognised by its text, read with the
tracer's reader, and anything else is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support import kubeproxy_expect as want

from tracer import api
from tracer.node import rulesfile

FIXTURES = Path(__file__).parent / "fixtures" / "kube-proxy"
ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(("name", "kind", "lb_known"), [
    ("iptables-overall-v4.save", rulesfile.IPTABLES_SAVE, True),
    ("iptables-overall-v4.S.txt", rulesfile.IPTABLES_S, True),
    ("nft-overall-v4.json", rulesfile.NFT_JSON, False),
])
def test_detect_and_read(name: str, kind: str, lb_known: bool) -> None:
    path = str(FIXTURES / name)
    assert rulesfile.read(path).kind == kind
    want.check(api.read_rules(path), want.OVERALL, lb_known=lb_known)


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracer.cli.main", "check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def test_check_rules_counts_every_service() -> None:
    """The GKE 1.2 dump: 6 Service ports of 5 Services, the unnamed heapster and dashboard ports included."""
    result = _check("--rules", str(FIXTURES / "gke-1.2.4-node-nat.save"))
    assert result.returncode == 0, result.stderr
    assert "iptables: 5 Services, 6 Service ports, 6 endpoints, 39 rules" in result.stdout
    assert "(iptables-save)" in result.stdout.splitlines()[0]


@pytest.mark.parametrize(("content", "says"), [
    ("", "is empty"),
    ("table ip kube-proxy {\n\tchain services {\n\t}\n}\n", "nft -j list ruleset"),
    ('{"nftables": 3}', "not `nft -j list ruleset` output"),
    ("{not json", "does not parse"),
    ("# kube-proxy rules\nhello\n", "is not iptables-save, iptables -S or nft -j output"),
    ("*nat\n-A KUBE-SERVICES -j KUBE-NODEPORTS\nthis is not a rule\nCOMMIT\n", "line 'this is not a rule'"),
])
def test_not_a_ruleset_is_one_line_exit_2(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "dump"
    path.write_text(content)
    result = _check("--rules", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_and_netns_conflict(tmp_path: Path) -> None:
    missing = _check("--rules", str(tmp_path / "nope"))
    assert (missing.returncode, missing.stderr.strip()) == \
           (2, f"podtrace: cannot read {tmp_path / 'nope'}: No such file or directory")
    both = _check("--rules", str(FIXTURES / "iptables-overall-v4.save"), "--netns", "x")
    assert both.returncode == 2 and "--rules and --netns exclude each other" in both.stderr
