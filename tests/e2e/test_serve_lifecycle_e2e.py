"""`podtrace serve` start and stop on the host kernel: SIGKILL leaves no BPF program or link behind once the next
serve is up, and the killed one's recorder segments stay readable; a probe that cannot load is reported while the
rest keep running; SIGTERM stops it cleanly. Runs in serve's own (this) namespace: no lab, no traffic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from support.serve import scrape, serve

from tracer.sources.replay import ReplaySource

pytestmark = pytest.mark.root


def _bpf_ids(pid: int) -> tuple[set[int], set[int]]:
    """(prog ids, link ids) of the BPF file descriptors a process holds (/proc/PID/fdinfo)."""
    progs, links = set(), set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}", encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if "link_id" in fields:
            links.add(int(fields["link_id"]))
        elif "prog_id" in fields:
            progs.add(int(fields["prog_id"]))
    return progs, links


def _listed(kind: str) -> set[int]:
    out = subprocess.run(["bpftool", "-j", kind, "list"], capture_output=True, text=True, check=True).stdout
    return {int(item["id"]) for item in json.loads(out or "[]")}


def test_sigkill_leaves_no_programs_or_links_and_readable_segments(tmp_path: str) -> None:
    directory = str(tmp_path)
    with serve("--recorder-dir", directory, "--segment-seconds", "1") as (first, _port):
        progs, links = _bpf_ids(first.pid)
        assert progs and links, "serve holds its programs and netfilter links"
        assert progs <= _listed("prog") and links <= _listed("link")
        time.sleep(2.5)  # a segment closed and one open: both kinds are on disk when the kill comes
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        with serve("--recorder-dir", directory) as (second, port):
            assert not progs & _listed("prog"), "programs of the killed serve are still loaded"
            assert not links & _listed("link"), "links of the killed serve are still attached"
            new_progs, new_links = _bpf_ids(second.pid)
            assert new_progs and new_links
            assert _listed("link") - links >= new_links
            metrics = scrape(port)
    assert first.returncode == -signal.SIGKILL
    assert second.returncode == 0, second.log  # type: ignore[attr-defined]
    assert "podtrace_recorder_segments" in metrics
    segments = sorted(os.listdir(os.path.join(directory, "segments")))
    killed = [name for name in segments if f"-{first.pid}-" in name]
    assert len(killed) >= 2, segments
    for name in killed:
        source = ReplaySource(os.path.join(directory, "segments", name))
        try:
            list(source)  # raises RecordingError on corruption; a cut-short end is allowed
        finally:
            source.close()
        assert source.header.get("flight_recorder") is not None
    last = ReplaySource(os.path.join(directory, "segments", killed[-1]))
    list(last)
    last.close()
    assert last.truncated, "the segment open at the kill has no trailer, and says so"


def test_a_probe_that_fails_to_load_is_reported_and_the_rest_run(tmp_path: str) -> None:
    bad_btf = os.path.join(str(tmp_path), "vmlinux")
    with open(bad_btf, "wb") as handle:
        handle.write(b"not BTF at all" * 10)
    with serve("--btf", bad_btf) as (process, port):
        time.sleep(2.5)
        metrics = scrape(port)
    attached = {line.split('probe="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines() if line.startswith("podtrace_probe_attached{")}
    assert attached["drops"] == 0 and attached["netfilter"] == 0, attached
    assert attached["softirq"] == 1 and attached["conntrack"] == 1 and attached["mtu"] == 1, attached
    assert "podtrace_conntrack_fill_ratio{" in metrics
    log = process.log  # type: ignore[attr-defined]
    assert process.returncode == 0, log
    assert "probe drops not attached:" in log, log
    assert "Traceback" not in log, log
