"""A conntrack entry that is gone before podtrace reads the drop: the drop still names its client, VIP and backend.

The drop probe copies the skb's nf_conn tuples into the ring buffer at the drop (bpf/skb.h pt_ct_emit_in), so
nothing needs the entry afterwards. These tests make sure nothing does: an established DNAT'd connection (its entry
confirmed, in the table), then a FORWARD rule drops its next packets; the entry is deleted (`conntrack -F`) while
the tracer is stopped (SIGSTOP: the events wait in the ring buffer) or before a recording is reported. A userspace
lookup after the fact would find no entry, or another connection's; the answer must be the kernel's copy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.dnat import Dnat, dnat_namespaces  # noqa: F401 (the fixture "dnat")
from support.netns import sh
from support.podtrace import Running, run, start

pytestmark = pytest.mark.root

SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8080)); s.listen()
c, _ = s.accept()
while c.recv(65536):
    pass
"""
# Connects through the VIP, says its address, then on each stdin line: "send" a burst, "reset" (RST, then exit).
CLIENT = """
import socket, struct, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
print("%s:%d" % s.getsockname(), flush=True)
for line in sys.stdin:
    if line.strip() == "send":
        s.sendall(b"x" * 100)
    else:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        break
print("done", flush=True)
"""


def _ct_entries(dnat: Dnat) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", dnat.node, "conntrack", "-L", "-d", dnat.vip],
                         capture_output=True, text=True, check=False)
    return [line for line in out.stdout.splitlines() if line.strip()]


def _drop_established_then_flush(dnat: Dnat, stalled: Running | None) -> str:
    """Connect, drop the connection's later packets at FORWARD, delete its conntrack entry; the client's address."""
    sh("iptables", "-D", "FORWARD", "-d", dnat.backend_addr, "-p", "tcp", "--dport", "8080", "-j", "DROP",
       netns=dnat.node)  # the fixture's rule: this connection is established first
    server = subprocess.Popen(["ip", "netns", "exec", dnat.backend, sys.executable, "-c", SERVER])
    client = None
    try:
        time.sleep(0.3)
        client = subprocess.Popen(["ip", "netns", "exec", dnat.client, sys.executable, "-c", CLIENT, dnat.vip],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdin is not None and client.stdout is not None
        address = client.stdout.readline().strip()
        assert address.startswith(f"{dnat.client_addr}:"), address
        [entry] = _ct_entries(dnat)
        assert "ESTABLISHED" in entry and f"src={dnat.backend_addr}" in entry, entry  # confirmed, DNAT'd
        if stalled is not None:  # the reader stops; the probes keep filling the ring buffer
            os.kill(stalled.process.pid, signal.SIGSTOP)
        sh("iptables", "-I", "FORWARD", "1", "-s", dnat.client_addr, "-d", dnat.backend_addr, "-p", "tcp",
           "--dport", "8080", "-j", "DROP", netns=dnat.node)
        # The backend's packets die before conntrack (their rows name no port 8080), so the client never answers
        # them after the flush: every drop to port 8080 then belongs to the connection while its entry lived.
        sh("iptables", "-t", "raw", "-I", "PREROUTING", "-i", "n1", "-j", "DROP", netns=dnat.node)
        client.stdin.write("send\n")
        client.stdin.flush()
        time.sleep(0.7)  # the burst and a retransmission or two, all dropped at FORWARD
        client.stdin.write("reset\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "done"
        client.wait(timeout=10)
        time.sleep(0.2)
        sh("conntrack", "-F", netns=dnat.node)
        assert _ct_entries(dnat) == [], "the connection's entry is gone before anything reads the drops"
        return address
    finally:
        if stalled is not None:
            os.kill(stalled.process.pid, signal.SIGCONT)
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _assert_rows(rows: list[dict[str, object]], dnat: Dnat, client: str) -> int:
    mine = [row for row in rows if row.get("reason") == "NETFILTER_DROP" and row.get("dport") == 8080]
    assert mine, json.dumps(rows)
    for row in mine:
        assert (row["src"], row["dst"]) == (dnat.client_addr, dnat.backend_addr)  # the post-DNAT packet
        assert (row["ct_identity"], row["ct_state"], row.get("ct_direction")) == (
            "conntrack", "entry", "original"), {k: v for k, v in row.items() if k != "cause"}
        assert (row["ct_client"], row["ct_dialled"], row["ct_backend"]) == (
            client, f"{dnat.vip}:80", f"{dnat.backend_addr}:8080")
        assert row["ct_dnat"] is True and row["connection_known"] == "observed"
    return sum(int(row["count"]) for row in mine)  # type: ignore[call-overload]


def test_a_drop_read_after_its_entry_was_flushed_names_the_connection_the_kernel_copied(dnat: Dnat) -> None:
    tracer = start("drops", "--json", "--netns", dnat.node, "tcp")
    client = _drop_established_then_flush(dnat, stalled=tracer)
    time.sleep(0.5)  # the reader runs again and drains what waited
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    assert result.summary["lost"] == 0
    assert _assert_rows(result.rows, dnat, client) >= 2  # the burst and the RST at least


def test_a_recording_reported_after_the_flush_keeps_the_kernels_copy(dnat: Dnat, tmp_path: Path) -> None:
    path = tmp_path / "vanished.ptrec.gz"
    tracer = start("record", "-o", str(path), "--netns", dnat.node, "tcp")
    client = _drop_established_then_flush(dnat, stalled=None)
    assert tracer.stop().returncode == 0, tracer.stderr
    report = run("report", "--json", str(path))  # read with no entry left anywhere
    assert report.returncode == 0, report.stderr
    rows = [json.loads(line) for line in report.stdout.splitlines() if line.startswith("{")]
    assert _assert_rows(rows, dnat, client) >= 2
    text = run("report", str(path))
    assert f"dialled {dnat.vip}:80 from {client}, backend {dnat.backend_addr}:8080 (conntrack, observed)" in \
        text.stdout, text.stdout
