"""`podtrace check` on the lab in kube-proxy's IPVS mode, on a kernel that has IPVS (the host has none): the mode is
judged from the node's own IPVS table, the modules it needs are found, and strictARP follows the node's sysctls."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from support.podtrace import run

from tracer.lab import names

CONF_ALL = Path("/proc/sys/net/ipv4/conf/all")


def _in(netns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def _check(netns: str) -> tuple[int, dict[tuple[str, str], dict[str, Any]]]:
    result = run("check", "--json", "--netns", netns, "--window", "0.2", timeout=300)
    assert result.returncode in (0, 3), result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[-1]["summary"] is True
    return result.returncode, {(row["area"], row["check"]): row for row in rows[:-1]}


def _ipvsadm_counts(netns: str) -> tuple[int, int]:
    """Virtual and real servers as the test reads `ipvsadm -Ln` itself."""
    lines = [line.split() for line in _in(netns, "ipvsadm", "-Ln").splitlines() if line.strip()]
    virtual = sum(1 for parts in lines if parts[0] in ("TCP", "UDP", "SCTP"))
    real = sum(1 for parts in lines if parts[0] == "->" and parts[1] != "RemoteAddress:Port")
    return virtual, real


def _sysctl(netns: str, key: str) -> str:
    return _in(netns, "cat", str(CONF_ALL / key)).strip()


def test_check_judges_ipvs_mode_from_the_nodes_own_table(ipvs_lab: None) -> None:
    lab = names()
    for netns in lab.nodes.values():
        code, rows = _check(netns)
        virtual, real = _ipvsadm_counts(netns)
        assert virtual >= len(lab.services) and real > 0
        mode = rows[("kube-proxy", "mode")]
        assert mode["severity"] == "ok"
        assert mode["value"].startswith(f"ipvs: {virtual} virtual servers, {real} real servers, "), mode
        modules = rows[("kube-proxy", "ipvs modules")]
        assert modules["severity"] == "ok" and modules["value"] == "ip_vs, nf_conntrack, ip_vs_rr", modules
        arp = rows[("kube-proxy", "strictARP")]
        measured = f"arp_ignore={_sysctl(netns, 'arp_ignore')} arp_announce={_sysctl(netns, 'arp_announce')}"
        assert arp["value"] == measured
        assert ("kube-proxy", "stale rules") not in rows
        bad = [(key, row["value"]) for key, row in rows.items() if row["severity"] == "fail"]
        assert code == 0 and not bad, bad


def test_strict_arp_sysctls_flip_the_finding(ipvs_lab: None) -> None:
    netns = next(iter(names().nodes.values()))
    before = {key: _sysctl(netns, key) for key in ("arp_ignore", "arp_announce")}
    try:
        _in(netns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=0", "net.ipv4.conf.all.arp_announce=0")
        arp = _check(netns)[1][("kube-proxy", "strictARP")]
        assert (arp["severity"], arp["value"]) == ("warn", "arp_ignore=0 arp_announce=0")
        assert arp["fix"].startswith("sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2")
        _in(netns, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2")
        arp = _check(netns)[1][("kube-proxy", "strictARP")]
        assert (arp["severity"], arp["value"]) == ("ok", "arp_ignore=1 arp_announce=2")
    finally:
        _in(netns, "sysctl", "-qw", f"net.ipv4.conf.all.arp_ignore={before['arp_ignore']}",
            f"net.ipv4.conf.all.arp_announce={before['arp_announce']}")
