"""The pure analysis and model modules take their inputs: importing them, in a fresh interpreter, loads neither BCC,
nor the demo lab, nor a module that runs commands or talks to the kernel (subprocess, pyroute2, socket, ctypes),
nor the Kubernetes client. The I/O lives at the edges: tracer.node.kubeproxy.collect, tracer.check.collect,
tracer.node.conntrack, tracer.sources.live and the command modules (tracer/cli/) are not listed here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = ("bcc", "tracer.lab", "subprocess", "pyroute2", "socket", "ctypes", "kubernetes", "textual", "tui")

PURE = [
    "tracer.node.kubeproxy", "tracer.node.kubeproxy.model", "tracer.node.kubeproxy.names",
    "tracer.node.kubeproxy.iptables", "tracer.node.kubeproxy.nftables", "tracer.node.kubeproxy.nft_text",
    "tracer.node.kubeproxy.ipvsadm", "tracer.analysis.attribution", "tracer.analysis.causes",
    "tracer.probes.nf_points", "tracer.node.flannel", "tracer.node.rulesfile", "tracer.analysis.mtu",
    "tracer.analysis.softirq",
]
# Every module of tracer/analysis/, found on disk, so a new analysis module is held to this without being listed.
ANALYSIS = sorted(f"tracer.analysis.{path.stem}" for path in (ROOT / "tracer" / "analysis").glob("*.py")
                  if path.stem != "__init__")
# These decode or hold events, and tracer.events.decode formats addresses with socket.inet_ntop: socket is imported for
# that pure function (str(ipaddress.IPv4Address(raw)) took 2.0 us against 0.5 us here), so it is allowed here
# and only here. Everything else stays forbidden.
PURE_BUT_EVENTS = [
    "tracer.events.decode", *ANALYSIS, "tracer.check", "tracer.check.model",
    "tracer.check.topology", "tracer.check.ranges", "tracer.check.kubeproxy", "tracer.check.rules",
    "tracer.check.routes", "tracer.check.conntrack", "tracer.check.mtu", "tracer.check.bridging",
    "tracer.check.sockets", "tracer.check.softirq",
]

# Imports each module and reports every forbidden module loaded, with the tracer modules on the stack when it was.
PROBE = """
import importlib, json, sys, traceback
forbidden = tuple(json.loads(sys.argv[1]))
seen = {}

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name not in seen and any(name == f or name.startswith(f + ".") for f in forbidden):
            seen[name] = [f"{frame.filename.rsplit('/tracer/', 1)[-1]}:{frame.lineno}"
                          for frame in traceback.extract_stack() if "/tracer/" in frame.filename]
        return None

already = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))
sys.meta_path.insert(0, Watch())
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
print(json.dumps({"already": already, "seen": seen}))
"""


def _loaded(modules: list[str], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(forbidden), json.dumps(modules)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["already"] == [], "the bare interpreter already had these; the check would prove nothing"
    return report["seen"]


def test_pure_modules_import_no_kernel_lab_or_io_module() -> None:
    assert _loaded(PURE, FORBIDDEN) == {}


def test_event_modules_import_nothing_but_socket_for_inet_ntop() -> None:
    assert {"tracer.analysis.flows", "tracer.analysis.causes", "tracer.analysis.journey"} <= set(ANALYSIS)
    assert _loaded(PURE_BUT_EVENTS, tuple(f for f in FORBIDDEN if f != "socket")) == {}


def test_the_probe_sees_a_forbidden_import() -> None:
    """The watch itself works: the command runner does import subprocess, and is named as the importer."""
    seen = _loaded(["tracer.node.kubeproxy.collect"], FORBIDDEN)
    assert "subprocess" in seen and any(frame.startswith("node/kubeproxy/collect.py:") for frame in seen["subprocess"])
