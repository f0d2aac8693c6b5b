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
# `podtrace` itself, with the tui subcommand registered even before tracer/cli.py lists it.
LAUNCH = ("import sys; from tracer import cli; m = 'tracer.cmd_tui'; "
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
        text = wait_for(session, r"NETFILTER_DROP")  # the Drops view first
        text = show_view(session, "2", r"web-2:8080.*NETFILTER_DROP")
        row = next(line for line in text.splitlines() if "web-2:8080" in line and "NETFILTER_DROP" in line)
        assert "default/web:http" in row and "client" in row, text
        assert re.search(r"\b\d+ NETFILTER_DROP at FORWARD", row), row
        others = [line for line in text.splitlines() if re.search(r"web-[13]:8080.*NETFILTER_DROP", line)]
        assert not others, text  # only the faulted backend's flow has netfilter drops
        assert "DROPS" in text
        print(text)  # the Services view, for `pytest -s`
        tmux("send-keys", "-t", session, "q")
        wait_for(session, r"EXIT=0", timeout=15)
    finally:
        tmux("kill-session", "-t", session)


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
        timeline = wait_for(session, r"last \d+ packets")
        assert f"{PRIME} drops, {PRIME} path events" in timeline, timeline
        tmux("send-keys", "-t", session, "q")
        wait_for(session, r"EXIT=0", timeout=15)
    finally:
        tmux("kill-session", "-t", session)
