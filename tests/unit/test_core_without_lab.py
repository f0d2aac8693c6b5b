"""The core never depends on the demo lab: no tracer module but the lab's own, the benchmarks (which drive the
lab) and the entry point (which lists the lab's commands) imports tracer.lab, not even inside a function. The
lab's names reach the core through tracer/node/declared_names.py, where importing the lab registers it as a provider."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

OUTSIDE_THE_CORE = ("tracer.lab", "tracer.benchmarks", "tracer.cli.main")


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _lab_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[:2] == ["tracer", "lab"]]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[:2] == ["tracer", "lab"]:
                found.append(node.module)
            elif node.module == "tracer":
                found += [f"tracer.{alias.name}" for alias in node.names if alias.name == "lab"]
    return [f"{path.relative_to(ROOT)}: {name}" for name in found]


def test_no_core_module_imports_the_lab() -> None:
    core = [path for path in sorted((ROOT / "tracer").rglob("*.py"))
            if not any(_module(path) == o or _module(path).startswith(o + ".") for o in OUTSIDE_THE_CORE)]
    assert {"tracer.node.ipvs", "tracer.cli.record", "tracer.cli.tui", "tracer.cli.overlay"} <= {
        _module(p) for p in core}
    assert [found for path in core for found in _lab_imports(path)] == [], \
        "a core module imports the lab: ask tracer.node.declared_names instead"
    # the check itself sees the lab's own imports
    assert _lab_imports(ROOT / "tracer" / "cli" / "main.py") or _lab_imports(ROOT / "tracer" / "lab" / "cli.py")


def test_the_lab_registers_itself_as_a_name_provider() -> None:
    probe = ("import json; from tracer.node import declared_names as d; before = list(d._providers); "
             "import tracer.lab; print(json.dumps([len(before), [p.__module__ for p in d._providers]]))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [0, ["tracer.lab"]]
