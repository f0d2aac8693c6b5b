"""Boot Debian's distro kernel under virtme-ng and run tests/vm/inner inside it, once.

The guest shares the host's root filesystem read-only (virtme-ng), so it runs this checkout and its .venv; only
the results directory is writable. Used by tests/vm/test_vm.py (one VM per pytest session) and runnable alone:

    sudo .venv/bin/python tests/vm/vm_runner.py [--keep OUTDIR]

Settings (environment): PODTRACE_VM_KERNEL (a vmlinuz path, default the newest /boot/vmlinuz-* with modules and
headers), PODTRACE_VM_BOOT_TIMEOUT (s, default 300), PODTRACE_VM_TIMEOUT (s for the whole run, default 1500),
PODTRACE_VM_KVM=1 (use KVM; off by default: KVM is present on the CI machines but hangs),
PODTRACE_VM_SELECT (a pytest -k expression: run only those inner tests, e.g. "kprobes or doctor").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
INNER = Path(__file__).resolve().parent / "inner"
BOOT_MARKER = "booted"
MEMORY = "2G"
CPUS = 2


class VmUnavailable(Exception):
    """The VM could not be started: the tests are skipped with this message as the reason."""


@dataclass
class InnerResult:
    outcome: str  # "passed", "failed", "skipped"
    message: str = ""


@dataclass
class VmRun:
    kernel: str
    returncode: int | None
    boot_seconds: float
    total_seconds: float
    out_dir: Path
    results: dict[str, InnerResult] = field(default_factory=dict)  # "test_doctor.py::test_x" -> result
    facts: dict[str, Any] = field(default_factory=dict)  # written by the inner suite: timings, modules
    timed_out: bool = False

    def log_tail(self, lines: int = 40) -> str:
        log = self.out_dir / "console.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def counts(self) -> dict[str, int]:
        counts = {"passed": 0, "failed": 0, "skipped": 0}
        for result in self.results.values():
            counts[result.outcome] += 1
        return counts

    def summary(self) -> str:
        counts = self.counts()
        parts = [f"{counts['passed']} passed"]
        parts += [f"{counts[k]} {k}" for k in ("failed", "skipped") if counts[k]]
        features = [name for name in ("kprobes", "IPVS", "VXLAN") if self.facts.get(name.lower())]
        timings = self.facts.get("timings", {})
        figures = [f"boot {self.boot_seconds:.0f} s"]
        figures += [f"{name} {seconds:.0f} s" for name, seconds in timings.items()]
        figures.append(f"total {self.total_seconds:.0f} s")
        what = f" ({', '.join(features)})" if features else ""
        return f"vm: {', '.join(parts)} on {self.facts.get('kernel', self.kernel)}{what}; {', '.join(figures)}"


@dataclass
class Outcome:
    """One VM per pytest session: the finished run, or why it could not start (for the summary line)."""

    run: VmRun | None = None
    skipped: str = ""


OUTCOME = Outcome()


def inner_test_ids() -> list[str]:
    """Every test function of the inner suite, "file::name", read from the sources without importing them."""
    import ast

    ids = []
    for path in sorted(INNER.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        ids += [f"{path.name}::{node.name}" for node in tree.body
                if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    return ids


def find_kernel() -> Path:
    configured = os.environ.get("PODTRACE_VM_KERNEL")
    if configured:
        if not Path(configured).is_file():
            raise VmUnavailable(f"PODTRACE_VM_KERNEL={configured} does not exist")
        return Path(configured)
    usable = []
    for image in Path("/boot").glob("vmlinuz-*"):
        release = image.name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / release
        if (modules / "kernel").is_dir() and (modules / "build").exists():
            usable.append(image)
    if not usable:
        raise VmUnavailable("no distro kernel with modules and headers in /boot "
                            "(apt-get install linux-image-amd64 linux-headers-amd64)")
    return max(usable, key=lambda p: [int(n) if n.isdigit() else 0 for n in re.split(r"[.-]", p.name[8:])])


def vng_path() -> Path:
    beside = Path(sys.executable).parent / "vng"
    found = beside if beside.exists() else shutil.which("vng")
    if not found:
        raise VmUnavailable("virtme-ng is not installed (pip install virtme-ng)")
    return Path(found)


def check_host() -> None:
    if os.geteuid() != 0:
        raise VmUnavailable("needs root (the guest runs as the host user, and the inner tests need root)")
    if not shutil.which("qemu-system-x86_64"):
        raise VmUnavailable("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    busybox = shutil.which("busybox")
    if not busybox or b"ld-linux" in Path(busybox).read_bytes()[:4096]:
        raise VmUnavailable("virtme-ng needs a statically linked busybox (apt-get install busybox-static)")


def inner_script(out_dir: Path) -> str:
    python = REPO / ".venv" / "bin" / "python"
    junit = out_dir / "junit.xml"
    select = os.environ.get("PODTRACE_VM_SELECT", "")
    selection = f" -k {shlex.quote(select)}" if select else ""
    return "\n".join([
        "#!/bin/sh",
        f": > {shlex.quote(str(out_dir / BOOT_MARKER))}",
        "export PODTRACE_VM_INNER=1 PYTHONDONTWRITEBYTECODE=1",
        f"export PODTRACE_VM_OUT={shlex.quote(str(out_dir))}",
        f"cd {shlex.quote(str(REPO))}",
        f"{shlex.quote(str(python))} -m pytest -q -p no:cacheprovider tests/vm/inner{selection} "
        f"--junitxml={shlex.quote(str(junit))} 2>&1",
        f"echo $? > {shlex.quote(str(out_dir / 'rc'))}",
        "",
    ])


def parse_junit(path: Path) -> dict[str, InnerResult]:
    results: dict[str, InnerResult] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = case.get("name", "").split("[")[0]
        key = f"{module}.py::{name}"
        outcome, message = "passed", ""
        for tag in ("failure", "error"):
            element = case.find(tag)
            if element is not None:
                outcome = "failed"
                message = f"{element.get('message', '')}\n{element.text or ''}".strip()
        skipped = case.find("skipped")
        if outcome == "passed" and skipped is not None:
            outcome, message = "skipped", skipped.get("message", "")
        previous = results.get(key)
        if previous is None or previous.outcome == "passed" or outcome == "failed":  # parametrized: worst wins
            results[key] = InnerResult(outcome, message)
    return results


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)  # vng's own process group: it, virtme-run and qemu
    process.wait()


def run_vm(out_dir: Path) -> VmRun:
    """Boot once, run the inner suite, collect its results. Raises VmUnavailable when the VM does not boot."""
    check_host()
    kernel = find_kernel()
    vng = vng_path()
    release = kernel.name.removeprefix("vmlinuz-")
    if not (Path("/lib/modules") / release).is_dir():
        raise VmUnavailable(f"no /lib/modules/{release} for {kernel} (the guest loads its modules from there)")
    boot_timeout = float(os.environ.get("PODTRACE_VM_BOOT_TIMEOUT", "300"))
    timeout = float(os.environ.get("PODTRACE_VM_TIMEOUT", "1500"))
    out_dir.mkdir(parents=True, exist_ok=True)
    script = out_dir / "inner.sh"
    script.write_text(inner_script(out_dir))
    script.chmod(0o755)
    command = [str(vng), "-r", str(kernel), "--memory", MEMORY, "--cpus", str(CPUS),
               "--rwdir", str(out_dir), "--exec", str(script)]
    if os.environ.get("PODTRACE_VM_KVM") != "1":
        command.insert(3, "--disable-kvm")
    env = dict(os.environ, PATH=f"{vng.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    (out_dir / "command").write_text(shlex.join(command) + "\n")
    started = time.monotonic()
    with open(out_dir / "console.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    run = VmRun(release, None, 0.0, 0.0, out_dir)
    try:
        while not (out_dir / BOOT_MARKER).exists():
            if process.poll() is not None:
                raise VmUnavailable(f"the VM did not start (vng exited {process.returncode}): "
                                    f"{run.log_tail(5).strip() or 'no output'}")
            if time.monotonic() - started > boot_timeout:
                raise VmUnavailable(f"the VM did not boot within {boot_timeout:.0f} s "
                                    f"(console: {run.log_tail(5).strip() or 'no output'})")
            time.sleep(0.2)
        run.boot_seconds = time.monotonic() - started
        try:
            process.wait(timeout=max(1.0, timeout - run.boot_seconds))
        except subprocess.TimeoutExpired:
            run.timed_out = True
    finally:
        _stop(process)
        run.total_seconds = time.monotonic() - started
    run.returncode = process.returncode
    junit = out_dir / "junit.xml"
    if junit.exists():
        run.results = parse_junit(junit)
    facts = out_dir / "facts.json"
    if facts.exists():
        run.facts = json.loads(facts.read_text())
    return run


def main(argv: list[str]) -> int:
    keep = argv[1] if len(argv) >= 2 and argv[0] == "--keep" else None
    out_dir = Path(keep or tempfile.mkdtemp(prefix="podtrace-vm-"))
    try:
        run = run_vm(out_dir)
    except VmUnavailable as err:
        print(f"vm: skipped: {err}")
        return 0
    print(run.log_tail(60))
    selected = os.environ.get("PODTRACE_VM_SELECT")
    for test_id in inner_test_ids():
        if selected and test_id not in run.results:
            continue  # deselected by PODTRACE_VM_SELECT
        result = run.results.get(test_id, InnerResult("failed", "did not run in the VM"))
        print(f"  {result.outcome:<8} {test_id}")
    print(run.summary() + (" (TIMED OUT)" if run.timed_out else "") + f"; results in {out_dir}")
    counts = run.counts()
    complete = bool(run.results) if os.environ.get("PODTRACE_VM_SELECT") else all(
        test_id in run.results for test_id in inner_test_ids())
    return 0 if complete and counts["failed"] == 0 and not run.timed_out else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
