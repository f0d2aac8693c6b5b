"""The machine the figures came from: kernel, CPUs, memory, Python and iperf3 versions."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            kib = int(handle.readline().split()[1])
        return f"{kib / (1 << 20):.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        return "unknown RAM"


def _iperf3() -> str:
    if not shutil.which("iperf3"):
        return "iperf3 not installed"
    out = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "iperf3"


def describe() -> str:
    return (f"{platform.node()}: Linux {platform.release()} ({platform.machine()}), {os.cpu_count()} CPUs "
            f"({_cpu_model()}), {_memory()}, Python {platform.python_version()}, {_iperf3()}")
