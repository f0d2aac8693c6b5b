"""The real `podtrace tui` under tmux, against real probes: an iptables DROP in throwaway namespaces, and the lab's
drop-backend fault found in the Services view with its Service."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.lab import exclusive_lab
from support.netns import Pair, netns_pair, send_udp, sh

pytestmark = pytest.mark.root

PRIME = 17
ROOT = Path(__file__).resolve().parents[2]
# `podtrace` itself, with the tui subcommand registered even before tracer/cli/main.py lists it.
LAUNCH = ("import sys; from tracer.cli import main as cli; m = 'tracer.cli.tui'; "
          "cli.COMMAND_MODULES += () if m in cli.COMMAND_MODULES else (m,); sys.exit(cli.main(sys.argv[1:]))")


@pytest.fixture
def lab() -> Iterator[None]:
    with exclusive_lab():
        yield


@pytest.fixture
def pair() -> Iterator[Pair]:
    with netns_pair() as created:
        yield created


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=False, timeout=10).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for(session: str, pattern: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = screen(session)
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared; screen:\n{text}")


def show_view(session: str, key: str, pattern: str) -> str:
    """Press a view key until `pattern` shows in it: a key sent while a worker compiles BPF can go unseen."""
    for _ in range(5):
        tmux("send-keys", "-t", session, key)
        try:
            return wait_for(session, pattern, timeout=4)
        except AssertionError:
            continue
    return wait_for(session, pattern, timeout=1)


def start_tui(*args: str, width: int = 120) -> tuple[str, str]:
    """The TUI in a new tmux session; (session, ready file path)."""
    session = f"ptt-tui-{uuid.uuid4().hex[:6]}"
    ready = os.path.join(tempfile.mkdtemp(prefix="podtrace-tui-"), "ready")
    # COLUMNS/LINES from pytest's environment would override the pane's size.
    command = (f"unset COLUMNS LINES; cd {ROOT} && {sys.executable} -c {LAUNCH!r} tui {' '.join(args)} "
               f"--ready-file {ready}; echo EXIT=$?; sleep 30")
    tmux("new-session", "-d", "-s", session, "-x", str(width), "-y", "40", command)
    tmux("resize-window", "-t", session, "-x", str(width), "-y", "40")
    return session, ready


def wait_ready(session: str, ready: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        assert time.monotonic() < deadline, f"probes never attached; screen:\n{screen(session)}"
        time.sleep(0.1)


def test_tui_services_view_shows_the_drop_backend_drop_with_its_service(lab: None) -> None:
    from tracer.lab import faults, traffic

    faults.set_fault("drop-backend", True)
    session, ready = start_tui("--node", "pt-node1", "--node", "pt-node2", width=200)
    try:
        wait_ready(session, ready)
        sent = traffic.probe("default/web:http", count=30, timeout=0.5)
        assert sent.per_target["default/web:http"].failed > 0, "the fault broke some connections"
        # The Drops view first, its flows' ends named from the node itself (cgroups and kubelet directories)
        text = wait_for(session, r"NETFILTER_DROP.*\(default/web-2\)")
        row = next(line for line in text.splitlines() if "NETFILTER_DROP" in line and "(default/web-2)" in line)
        assert re.search(r"10\.244\.0\.\d+:\d+ \(default/client\) > 10\.244\.1\.\d+:8080 \(default/web-2\)", row), row
        text = show_view(session, "2", r"web-2:8080.*NETFILTER_DROP")
        row = next(line for line in text.splitlines() if "web-2:8080" in line and "NETFILTER_DROP" in line)
        assert "default/web:http" in row and "client" in row, text
        assert re.search(r"\b\d+ NETFILTER_DROP at FORWARD", row), row
        others = [line for line in text.splitlines() if re.search(r"web-[13]:8080.*NETFILTER_DROP", line)]
        assert not others, text  # only the faulted backend's flow has netfilter drops
        assert "DROPS" in text
        # Problems first, with no sort key pressed: the broken backend's flow is the first row under the header,
        # with the share of its packets lost and the VIP its client dialled.
        lines = text.splitlines()
        header = next(index for index, line in enumerate(lines) if "SERVICE" in line and "VIP" in line)
        first = lines[header + 1]
        assert "web-2:8080" in first and "NETFILTER_DROP" in first and re.search(r"\d+%", first), text
        assert "sorted by loss share" in text, text
        print(text)  # the Services view, for `pytest -s`
        # The Node view audits both traced nodes, each finding named after its node: not the namespace the TUI
        # runs in (which has no kube-proxy rules and does not forward).
        text = show_view(session, "6", r"pt-node[12]: ")
        assert "podtrace check" in text and not re.search(r"no kube-proxy rules|ip_forward\s+0", text), text
        tmux("send-keys", "-t", session, "q")
        wait_for(session, r"EXIT=0", timeout=15)
    finally:
        tmux("kill-session", "-t", session)


def test_the_node_views_table_audits_every_traced_node(lab: None) -> None:
    """`tui --node pt-node1 --node pt-node2`'s Node view: each node's own kube-proxy rules and sysctls."""
    from tracer.check.table import NodeFindingsTable

    table = NodeFindingsTable(["pt-node1", "pt-node2"], window=0)
    entry = table.header_entry(wait=120)
    assert isinstance(entry, list), entry
    rows = {row["check"]: row for row in table.rows()}
    for node in ("pt-node1", "pt-node2"):
        assert rows[f"{node}: mode"]["value"].startswith("iptables: "), rows[f"{node}: mode"]
        assert rows[f"{node}: ip_forward"]["value"] == "1", rows[f"{node}: ip_forward"]
    assert all(row["check"].startswith(("pt-node1: ", "pt-node2: ")) for row in rows.values()), sorted(rows)
    # a node that does not exist is said in its own row; the other's findings stay
    broken = NodeFindingsTable(["pt-node1", "pt-nosuch"], window=0)
    broken.header_entry(wait=120)
    first = broken.rows()[0]
    assert (first["severity"], first["check"]) == ("error", "pt-nosuch: node checks"), first
    assert any(row["check"] == "pt-node1: mode" for row in broken.rows())


def test_tui_shows_the_netfilter_drop_with_its_count_and_quits(pair: Pair) -> None:
    sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", "5011", "-j", "DROP", netns=pair.b)
    session = f"ptt-tui-{uuid.uuid4().hex[:6]}"
    ready = os.path.join(tempfile.mkdtemp(prefix="podtrace-tui-"), "ready")
    # COLUMNS/LINES from pytest's environment would override the pane's size.
    command = (f"unset COLUMNS LINES; cd {ROOT} && {sys.executable} -c {LAUNCH!r} tui --netns {pair.b} "
               f"--ready-file {ready} udp; echo EXIT=$?; sleep 30")
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    tmux("resize-window", "-t", session, "-x", "120", "-y", "40")  # a running server may keep its default size
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(ready):
            assert time.monotonic() < deadline, f"probes never attached; screen:\n{screen(session)}"
            time.sleep(0.1)
        send_udp(pair.a, pair.addr_b, 5011, PRIME, src_port=40011)
        text = wait_for(session, rf"\b{PRIME}\b.*NETFILTER_DROP")
        row = next(line for line in text.splitlines() if "NETFILTER_DROP" in line)
        assert re.match(rf"^\s*{PRIME}\s", row), row
        assert f"{pair.b}/veth-b" in row and f"udp {pair.addr_a}:40011" in row, text
        assert "lost 0" in text and "live" in text
        wait_for(session, r"hook points")  # the attach ladder, probed in a worker
        tmux("send-keys", "-t", session, "Enter")
        timeline = wait_for(session, r"last \d+ hops")
        assert f"{PRIME} drops, {PRIME} path events" in timeline, timeline
        # why, read from the namespace by the reader process: the rule (matched) and how to remove it
        timeline = wait_for(session, r"fix: ip netns exec")
        flat = " ".join(timeline.split())
        assert "cause: a DROP rule not written by kube-proxy: filter INPUT #1 `-A INPUT -p udp -m udp --dport 5011 " \
               "-j DROP` (matched)" in flat, timeline
        assert f"fix: ip netns exec {pair.b} iptables -t filter -D INPUT 1" in flat, timeline
        tmux("send-keys", "-t", session, "q")
        wait_for(session, r"EXIT=0", timeout=15)
    finally:
        tmux("kill-session", "-t", session)


def test_per_probe_counters_add_up_to_the_totals_and_match_the_events_of_each_probe(pair: Pair) -> None:
    """Real probes (drops, path, netfilter links, tc) on veth traffic: a DNAT to a port INPUT drops, so every
    probe fires; each probe's kernel counters add up to the totals the header shows, and each probe's `events`
    is the number of events of its kind that came out of the ring buffer."""
    from tracer.events.decode import EVENT_CT, decode_any
    from tracer.probes.build import ProbeConfig
    from tracer.probes.pcapfilter import compile_filter
    from tracer.sources.live import LiveSource
    from tui.model import probe_of

    sh("iptables", "-t", "nat", "-A", "PREROUTING", "-p", "udp", "--dport", "5432", "-j", "DNAT",
       "--to-destination", f"{pair.addr_b}:5001", netns=pair.b)
    sh("iptables", "-A", "INPUT", "-p", "udp", "--dport", "5001", "-j", "DROP", netns=pair.b)
    config = ProbeConfig(filter=compile_filter("udp"), netns_inode=pair.inode(pair.b), path=True, netfilter=True,
                         netfilter_netns=(pair.b,), tc_interfaces=(f"{pair.b}/veth-b",))
    source = LiveSource(config)
    source.start(progress=False)
    events = []
    try:
        for port in range(40200, 40200 + PRIME):  # one connection each: one NAT event each
            send_udp(pair.a, pair.addr_b, 5432, 1, src_port=port)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            events += [decode_any(raw) for raw in source.poll_raw(100) if raw[0] != EVENT_CT]  # companions of drops
        # Two reads of the kernel's counters: seen/filtered of unscoped programs may grow in between (other
        # namespaces' packets), so the totals lie between the per-probe sums read before and after them.
        per_probe = source.probe_counters()
        totals, after = source.counters(), source.probe_counters()
    finally:
        source.close()
    print(per_probe)
    assert set(per_probe) == {"drops", "path", "netfilter", "tc"}, per_probe
    for name, total in totals.items():
        low, high = (sum(values[name] for values in read.values()) for read in (per_probe, after))
        assert low <= total <= high, (name, per_probe, totals, after)
        if name in ("events", "lost"):  # the probes' events are all in: these stand still
            assert low == total == high, (name, per_probe, totals, after)
    assert totals["lost"] == 0 and totals["events"] == len(events)
    decoded: dict[str, int] = {}
    for event in events:
        decoded[probe_of(event)] = decoded.get(probe_of(event), 0) + 1
    assert {probe: values["events"] for probe, values in per_probe.items()} == decoded
    assert decoded == {"drops": PRIME, "path": PRIME, "netfilter": PRIME, "tc": PRIME}, decoded
    # The counters read at close: the same events and losses; `seen` and `filtered` may have grown meanwhile (the
    # probes are unscoped in the kernel and count other namespaces' packets until they are detached).
    final = source.final_probe_counters
    assert set(final) == set(per_probe) and source.final_counters["events"] == totals["events"]
    for probe, values in per_probe.items():
        assert {k: final[probe][k] for k in ("events", "lost")} == {k: values[k] for k in ("events", "lost")}
        assert all(final[probe][k] >= values[k] for k in values), (probe, final[probe], values)
