"""`podtrace serve` and a real Prometheus server (Debian's `prometheus`) for end-to-end tests, both on loopback and
both always stopped by the context managers that start them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from support.podtrace import COMMAND

PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


@contextmanager
def serve(*args: str, timeout: float = 90) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`podtrace serve ARGS` on a free loopback port, stopped with SIGTERM at the end (SIGKILL if it hangs)."""
    port = free_port()
    handle, ready = tempfile.mkstemp(prefix="podtrace-serve-ready-")
    os.close(handle)
    os.unlink(ready)
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed below
    process = subprocess.Popen([*COMMAND, "serve", "--listen", f"127.0.0.1:{port}", "--ready-file", ready, *args],
                               stdout=log, stderr=log, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if process.poll() is not None:
                log.seek(0)
                raise AssertionError(f"serve exited early ({process.returncode}): {log.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("serve did not attach its probes in time")
            time.sleep(0.1)
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if os.path.exists(ready):
            os.unlink(ready)
        log.seek(0)
        process.log = log.read()  # type: ignore[attr-defined]
        log.close()


class Prometheus:
    def __init__(self, port: int) -> None:
        self.port = port

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, promql: str) -> float | None:
        """The single value of an expression that yields one series (None when it yields none)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(1)

    def targets_up(self) -> dict[str, float]:
        return {item["metric"]["instance"]: float(item["value"][1]) for item in self.query("up")}


@contextmanager
def prometheus(targets: list[int], interval: str = "1s") -> Iterator[Prometheus]:
    """A Prometheus server with its own config and storage in a temp dir, on 127.0.0.1, scraping `targets`."""
    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed (scripts/setup.sh installs Debian's package)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="podtrace-prom-") as root:
        config = os.path.join(root, "prometheus.yml")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
                         "scrape_configs:\n  - job_name: podtrace\n    static_configs:\n"
                         f"      - targets: [{', '.join(repr(f'127.0.0.1:{t}') for t in targets)}]\n")
        log = open(os.path.join(root, "log"), "w+")  # noqa: SIM115 - closed below
        process = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={root}/data",
                                    f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
        server = Prometheus(port)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError(f"prometheus did not start: {log.read()[-2000:]}")
                time.sleep(0.5)
            deadline = time.monotonic() + 30  # every target scraped once
            while len([v for v in server.targets_up().values() if v == 1]) < len(targets):
                if time.monotonic() > deadline:
                    raise AssertionError(f"targets not up: {server.targets_up()}")
                time.sleep(0.5)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
