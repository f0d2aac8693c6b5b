"""A drop's own conntrack entry, read by the drop probe from skb->_nfct: client, dialled VIP and backend.

Three throwaway namespaces: a client, a "node" that DNATs a VIP to a backend and forwards (where a FORWARD rule
drops the DNAT'd packets), and the backend. The identity must come from the kernel: the client's own socket
address (getsockname) and the VIP it dialled, never from the packet's post-DNAT addresses.
"""

from __future__ import annotations

import ctypes
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.netns import netns_pair, send_udp, sh
from support.podtrace import run, start

from bpf import BPF_DIR
from tracer.api import open_recording
from tracer.events import decode as events
from tracer.kernel import bccenv

pytestmark = pytest.mark.root


@dataclass
class Dnat:
    client: str
    node: str
    backend: str
    client_addr: str
    backend_addr: str
    vip: str


@pytest.fixture
def dnat() -> Iterator[Dnat]:
    tag = secrets.token_hex(3)
    octet = secrets.randbelow(200) + 20
    names = Dnat(f"ptct-c-{tag}", f"ptct-n-{tag}", f"ptct-b-{tag}", f"198.19.{octet}.2", f"198.19.{octet + 1}.2",
                 f"198.19.{octet + 2}.10")
    made: list[str] = []
    try:
        for ns in (names.client, names.node, names.backend):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "link", "set", "lo", "up", netns=ns)
        sh("ip", "link", "add", "c0", "netns", names.client, "type", "veth", "peer", "name", "n0", "netns", names.node)
        sh("ip", "link", "add", "b0", "netns", names.backend, "type", "veth", "peer", "name", "n1", "netns",
           names.node)
        for ns, dev, addr in ((names.client, "c0", f"198.19.{octet}.2/24"), (names.node, "n0", f"198.19.{octet}.1/24"),
                              (names.node, "n1", f"198.19.{octet + 1}.1/24"),
                              (names.backend, "b0", f"198.19.{octet + 1}.2/24")):
            sh("ip", "addr", "add", addr, "dev", dev, netns=ns)
            sh("ip", "link", "set", dev, "up", netns=ns)
        sh("ip", "route", "add", "default", "via", f"198.19.{octet}.1", netns=names.client)
        sh("ip", "route", "add", "default", "via", f"198.19.{octet + 1}.1", netns=names.backend)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=names.node)
        sh("iptables", "-t", "nat", "-A", "PREROUTING", "-d", names.vip, "-p", "tcp", "--dport", "80", "-j", "DNAT",
           "--to-destination", f"{names.backend_addr}:8080", netns=names.node)
        sh("iptables", "-A", "FORWARD", "-d", names.backend_addr, "-p", "tcp", "--dport", "8080", "-j", "DROP",
           netns=names.node)
        yield names
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


CONNECT = """
import socket, sys, time
s = socket.socket()
s.setblocking(False)
try:
    s.connect((sys.argv[1], 80))
except BlockingIOError:
    pass
print("%s:%d" % s.getsockname(), flush=True)
time.sleep(0.3)
s.close()
"""


def test_a_dnat_drop_at_forward_carries_the_clients_socket_and_the_vip(dnat: Dnat) -> None:
    tracer = start("drops", "--json", "--netns", dnat.node, "tcp")
    client = sh(sys.executable, "-c", CONNECT, dnat.vip, netns=dnat.client).strip()
    time.sleep(0.5)
    result = tracer.stop()
    assert result.returncode == 0, result.stderr
    [row] = [row for row in result.rows if row["dport"] == 8080]
    # The packet itself, after DNAT: addressed to the backend; only conntrack knows the VIP.
    assert (row["reason"], row["src"], row["dst"]) == ("NETFILTER_DROP", dnat.client_addr, dnat.backend_addr)
    assert client.startswith(f"{dnat.client_addr}:")
    assert (row["ct_identity"], row["ct_state"], row["ct_direction"]) == ("conntrack", "entry", "original")
    assert row["ct_client"] == client  # the client's getsockname()
    assert row["ct_dialled"] == f"{dnat.vip}:80"  # what it dialled
    assert row["ct_backend"] == f"{dnat.backend_addr}:8080" and row["ct_dnat"] is True
    assert row["severity"] == "policy"


def test_watch_prints_the_identity_of_the_drop(dnat: Dnat) -> None:
    tracer = start("watch", "--json", "--netns", dnat.node)
    client = sh(sys.executable, "-c", CONNECT, dnat.vip, netns=dnat.client).strip()
    time.sleep(0.5)
    result = tracer.stop()
    drops = [line for line in result.lines if line.get("kind") == "drop" and line.get("dport") == 8080]
    assert drops, result.stdout
    assert {(d["ct_client"], d["ct_dialled"], d["ct_backend"]) for d in drops} == {
        (client, f"{dnat.vip}:80", f"{dnat.backend_addr}:8080")}


def test_drops_before_conntrack_and_untracked_ones_say_so(dnat: Dnat) -> None:
    # raw PREROUTING (-300) runs before conntrack (-200): no entry yet; NOTRACK: marked untracked.
    sh("iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "5009", "-j", "DROP", netns=dnat.node)
    sh("iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "5010", "-j", "NOTRACK", netns=dnat.node)
    sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", "5010", "-j", "DROP", netns=dnat.node)
    tracer = start("drops", "--json", "--netns", dnat.node, "udp")
    node_addr = dnat.client_addr.rsplit(".", 1)[0] + ".1"
    send_udp(dnat.client, node_addr, 5009, 5)
    send_udp(dnat.client, node_addr, 5010, 7)
    time.sleep(0.5)
    result = tracer.stop()
    by_port = {row["dport"]: row for row in result.rows}
    assert (by_port[5009]["count"], by_port[5009]["ct_identity"], by_port[5009]["ct_state"]) == (
        5, "no-conntrack", "none")
    assert (by_port[5010]["count"], by_port[5010]["ct_identity"], by_port[5010]["ct_state"]) == (
        7, "no-conntrack", "untracked")
    assert "ct_dialled" not in by_port[5009]


CT_LAYOUT_PROGRAM = r"""
#include "podtrace.h"
BPF_ARRAY(layout, struct pt_ct_event, 1);
int unused(void *ctx) { return 0; }
"""


def test_python_ct_event_mirror_matches_the_struct_bcc_compiles() -> None:
    bcc = bccenv.bcc_module()
    module = bcc.BPF(text=CT_LAYOUT_PROGRAM, cflags=[f"-I{BPF_DIR}"])
    try:
        leaf = module["layout"].Leaf
        assert ctypes.sizeof(leaf) == events.CT_SIZE
        offsets = events.ct_offsets()
        for name, _ctype in leaf._fields_:
            if not name.startswith("__pad"):
                assert getattr(leaf, name).offset == offsets[name], name
    finally:
        module.cleanup()


def test_a_recording_keeps_the_identity_and_report_shows_it(dnat: Dnat, tmp_path: Path) -> None:
    path = tmp_path / "dnat.ptrec.gz"
    tracer = start("record", "-o", str(path), "--netns", dnat.node, "tcp")
    client = sh(sys.executable, "-c", CONNECT, dnat.vip, netns=dnat.client).strip()
    time.sleep(0.5)
    assert tracer.stop().returncode == 0, tracer.stderr
    report = run("report", "--json", str(path))  # no BPF: from the recorded events alone
    assert report.returncode == 0, report.stderr
    rows = [json.loads(line) for line in report.stdout.splitlines() if line.startswith("{")]
    [row] = [row for row in rows if row.get("reason") == "NETFILTER_DROP" and row.get("dport") == 8080]
    assert (row["ct_client"], row["ct_dialled"], row["ct_backend"]) == (
        client, f"{dnat.vip}:80", f"{dnat.backend_addr}:8080")
    rec = open_recording(str(path))
    assert [r["ct_dialled"] for r in rec.drop_rows() if r["dport"] == 8080] == [f"{dnat.vip}:80"]


SERVER_NEVER_ACCEPTS = """
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7001)); s.listen()
time.sleep(0.8); s.close()  # the connection in its accept queue, with data nobody read, is torn down
"""
CLIENT_SENDS = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7001)); s.sendall(b'x' * 3000); time.sleep(1); s.close()
"""


def test_a_connection_closed_with_unread_data_is_a_benign_row_not_loss() -> None:
    with netns_pair() as pair:
        tracer = start("drops", "--json", "--netns", pair.b)
        server = subprocess.Popen(["ip", "netns", "exec", pair.b, sys.executable, "-c", SERVER_NEVER_ACCEPTS])
        time.sleep(0.3)
        sh(sys.executable, "-c", CLIENT_SENDS, pair.addr_b, netns=pair.a)
        server.wait(timeout=10)
        time.sleep(0.3)
        result = tracer.stop()
    mine = [row for row in result.rows if row["proto"] == "tcp" and row["dport"] == 7001]
    assert mine and {(row["reason"], row["severity"]) for row in mine} == {("QUEUE_PURGE", "benign")}, mine
    classes = [row["severity"] for row in result.rows]
    assert classes == sorted(classes, key=lambda c: c == "benign"), "benign rows come last"
