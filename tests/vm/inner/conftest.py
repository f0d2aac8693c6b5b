"""Inside the VM (root, the distro kernel): load the modules once, run the expensive things once per boot.

Under software emulation one BCC compile takes tens of seconds, so `podtrace doctor` and the drops pipeline each
run once per session and the tests assert on what they reported. Timings and kernel facts go to
$PODTRACE_VM_OUT/facts.json for the host's summary line.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.podtrace import run
from vmfacts import FACTS, timed

from tracer.kernel import capabilities as kernel

HERE = Path(__file__).resolve().parent
# br_netfilter: the lab sets net.bridge.bridge-nf-call-iptables, which exists only once it is loaded.
MODULES = ("vxlan", "ip_vs", "ip_tables", "iptable_filter", "nf_tables", "br_netfilter")
# Python starts several times slower under software emulation: the lab's 15 s wait for its servers' ready files
# is too short here (seen: "lab servers did not start within 15 s: web-3.ready").
os.environ.setdefault("PODTRACE_LAB_READY_TIMEOUT", "120")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PODTRACE_VM_INNER") != "1" or os.geteuid() != 0:
        for item in items:
            if Path(item.path).is_relative_to(HERE):
                item.add_marker(pytest.mark.skip(reason="runs only inside the VM, as root (tests/vm/test_vm.py)"))


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("PODTRACE_VM_OUT")
    if out:
        FACTS["kprobes"] = kernel.kprobes_available()
        FACTS["ipvs"] = os.path.isdir("/proc/sys/net/ipv4/vs")
        FACTS["vxlan"] = os.path.isdir("/sys/module/vxlan")
        Path(out, "facts.json").write_text(json.dumps(FACTS))


@pytest.fixture(scope="session")
def module_hints() -> dict[str, str]:
    """What doctor's symbol check says about IPVS and VXLAN before their modules are loaded."""
    return {symbol: kernel._module_on_disk(symbol) for symbol in ("ip_vs_conn_new", "vxlan_xmit_one")}


@pytest.fixture(scope="session")
def modules(module_hints: dict[str, str]) -> tuple[str, ...]:
    for name in MODULES:
        subprocess.run(["modprobe", name], check=True, capture_output=True, text=True)
    return MODULES


@pytest.fixture(scope="session")
def doctor(modules: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    started = time.monotonic()
    result = run("doctor", "--json", timeout=900)
    timed("doctor", time.monotonic() - started)
    assert result.returncode == 0, result.stderr
    yield json.loads(result.stdout)


@pytest.fixture(scope="session")
def ipvs_lab(modules: tuple[str, ...]) -> Iterator[None]:
    """The lab in kube-proxy's IPVS mode, once per VM boot (test_ipvs_lab.py, test_ipvs_flows.py)."""
    from tracer.lab import control

    control.down()
    started = time.monotonic()
    try:
        control.up(proxy_mode="ipvs")
        timed("ipvs lab up", time.monotonic() - started)
        yield
    finally:
        control.down()
