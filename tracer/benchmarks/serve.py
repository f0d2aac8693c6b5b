"""`podtrace serve` over a minute of lab traffic: its CPU share and resident memory, metrics only and with the
flight recorder (path events of the Service's packets, a ring of segments, a trigger firing on the fault's drops).

Needs the built-in lab, so it takes the lab lock the tests take (/run/lock/podtrace-lab-tests.lock) for its whole
run and takes the lab down after. CPU is serve's own utime+stime from /proc over the wall time after its probes
attached; RSS is sampled every second.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tracer.benchmarks.stats import Section

LOCK_PATH = "/run/lock/podtrace-lab-tests.lock"
LOCK_WAIT_S = 1200
PORT = 19560
RATE = 50  # connections per second from the lab's client to the Services


@contextmanager
def _lab() -> Iterator[None]:
    from tracer.lab import control, faults

    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    with open(LOCK_PATH, "w", encoding="utf-8") as handle:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the lab lock was held by someone else for 20 minutes") from None
                time.sleep(2)
        try:
            if control.is_up():
                raise RuntimeError("the lab is up outside the benchmark: `podtrace lab down` first")
            control.up()
            faults.set_fault("drop-backend", True)
            yield
        finally:
            try:
                if control.is_up():
                    faults.clear_all()
            finally:
                control.down()
                fcntl.flock(handle, fcntl.LOCK_UN)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _measure(extra: list[str], seconds: float, log: Callable[[str], None]) -> list[str]:
    handle, ready = tempfile.mkstemp(prefix="podtrace-bench-serve-")
    os.close(handle)
    os.unlink(ready)  # serve writes it once its probes are attached
    command = [sys.executable, "-m", "tracer.cli.main", "serve", "--node", "pt-node2", "--interval", "2",
               "--listen", f"127.0.0.1:{PORT}", "--ready-file", ready, *extra]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    traffic = None
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {process.stderr.read() if process.stderr else ''}")
            time.sleep(0.2)
        started_rss = _rss_mib(process.pid)
        traffic = subprocess.Popen([sys.executable, "-m", "tracer.cli.main", "lab", "traffic", "--rate", str(RATE),
                                    "--duration", str(seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0, wall0 = _cpu_seconds(process.pid), time.monotonic()
        peak = 0.0
        while time.monotonic() - wall0 < seconds:
            time.sleep(1)
            peak = max(peak, _rss_mib(process.pid))
        cpu = _cpu_seconds(process.pid) - cpu0
        wall = time.monotonic() - wall0
        began = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10) as response:
            text = response.read().decode()
        scrape_ms = (time.perf_counter() - began) * 1000
        series = sum(1 for line in text.splitlines() if line.startswith("podtrace_"))
        drops = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith("podtrace_drops_total{"))
        log(f"serve {' '.join(extra) or '(metrics only)'}: {cpu / wall:.1%} CPU, peak RSS {peak:.0f} MiB")
        return [f"{cpu / wall * 100:.1f}%", f"{started_rss:.0f}", f"{peak:.0f}", str(series), f"{drops:.0f}",
                f"{scrape_ms:.1f}"]
    finally:
        if traffic is not None:
            traffic.wait(timeout=seconds + 60)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        if os.path.exists(ready):
            os.unlink(ready)


def run(quick: bool, log: Callable[[str], None]) -> Section:
    seconds = 10.0 if quick else 60.0
    section = Section(
        "serve",
        f"`podtrace serve --node pt-node2` on the lab for {seconds:g} s of `lab traffic --rate {RATE}` with the "
        "drop-backend fault on (so there are drops to attribute). CPU is serve's share of one CPU (utime+stime over "
        "wall time after its probes attached); RSS at start and its peak, sampled each second. With the recorder: "
        "`--recorder-dir DIR --path 'tcp port 8080' --trigger 'drop reason=NETFILTER_DROP'` (incidents sealed "
        "during the run).",
        ["configuration", "CPU", "RSS at start MiB", "peak RSS MiB", "series", "drops counted", "scrape ms"],
    )
    with _lab(), tempfile.TemporaryDirectory(prefix="podtrace-bench-recorder-") as directory:
        section.rows.append(["metrics only", *_measure([], seconds, log)])
        recorder = ["--recorder-dir", directory, "--path", "tcp port 8080", "--trigger", "drop reason=NETFILTER_DROP",
                    "--after", "5", "--cooldown", "10"]
        section.rows.append(["metrics and flight recorder", *_measure(recorder, seconds, log)])
    return section
