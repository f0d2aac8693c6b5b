"""Fuzz: hostile variants of real recordings through every reader (report, export, API, TUI replay).

The seed corpus is the real recordings in tests/unit/fixtures/recordings: v1.ptrec as recorded, and the same file
with the real `links`/`conntrack` entries of node-links.json put in its header and trailer, and with the lab's real
iptables-save and nft output (tests/unit/fixtures/kubeproxy) as its recorded Services, and the merged recording
(`podtrace merge -o`) of merge-a/merge-b.ptrec.gz, each plain, gzip and zstd.
tests/unit/recording_mutate.py derives the variants (CRCs recomputed) from a fixed seed; a worker process
(tests/unit/recording_fuzz_worker.py) reads them. Every read must end in a normal result or one podtrace line:
no traceback, no hang, and the worker's peak RSS under RSS_BOUND_MIB.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import recording_mutate as mutate

from tracer.cli.merge import merge_files
from tracer.recording.fileformat import KIND_HEADER, KIND_TRAILER, encode_record

FIXTURES = Path(__file__).parent / "fixtures" / "recordings"
WORKER = Path(__file__).parent / "recording_fuzz_worker.py"
ROOT = Path(__file__).parents[2]
SEED = 24
VARIANTS = 240
RSS_BOUND_MIB = 200  # measured: 47 MiB (the worker imports tracer and tui; the files are ~24 KB)
BOMB_RSS_BOUND_MIB = 300


def seeds() -> dict[str, list[tuple[int, bytes]]]:
    plain = mutate.records_of(str(FIXTURES / "v1.ptrec"))
    node = json.loads((FIXTURES / "node-links.json").read_text())
    with_node = []
    for kind, payload in plain:
        if kind == KIND_HEADER:
            header = json.loads(payload)
            header.update(links=node["links"], conntrack=node["conntrack_start"], format_minor=2)
            payload = json.dumps(header).encode()
        elif kind == KIND_TRAILER:
            payload = json.dumps({**json.loads(payload), "conntrack": node["conntrack_end"]}).encode()
        with_node.append((kind, payload))
    rules = FIXTURES.parent / "kubeproxy"  # real iptables-save and nft output of the lab (their README)
    services = {"nodes": [{"netns": "pt-node1", "error": "", "commands": {
        "iptables-save": (rules / "lab-iptables-node1.save").read_text(),
        "nft -j list ruleset": (rules / "lab-nft-node1.json").read_text(), "ipvsadm -Ln": None}}]}
    with_services = [(KIND_HEADER, json.dumps({**json.loads(plain[0][1]), "services": services}).encode()),
                     *plain[1:]]
    with tempfile.TemporaryDirectory() as directory:  # the merge of the two real merge-a/merge-b recordings
        both = str(Path(directory) / "both.ptrec")
        merge_files([str(FIXTURES / "merge-a.ptrec.gz"), str(FIXTURES / "merge-b.ptrec.gz")], both)
        merged = mutate.records_of(both)
    return {"v1": plain, "node": with_node, "services": with_services, "merged": merged}


def corpus(directory: Path) -> list[Path]:
    rng = random.Random(SEED)
    bases = seeds()
    files = []
    for number in range(VARIANTS):
        name = rng.choice(sorted(bases))
        how = rng.choice(["ptrec", "ptrec", "gz", "zst"])
        data = mutate.encode(mutate.mutate(rng, bases[name]))
        if rng.random() < 0.1:  # cut anywhere, as a killed recorder or a partial download leaves it
            data = data[: rng.randrange(len(data))]
        path = directory / f"{number:03d}-{name}.{how}"
        path.write_bytes(mutate.compress(data, how))
        files.append(path)
    return files


def run_worker(paths: list[Path]) -> tuple[list[dict[str, Any]], int]:
    done = subprocess.run([sys.executable, str(WORKER), *map(str, paths)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return lines[:-1], int(lines[-1]["maxrss_kib"])


def failures(results: list[dict[str, Any]]) -> list[str]:
    """Reads that ended in a traceback or a hang, or a CLI failure that is not exactly one podtrace line."""
    bad = []
    for result in results:
        for reader in ("report", "export", "api", "tui"):
            outcome = result[reader]
            where = f"{result['file']} {reader}"
            if isinstance(outcome, str):
                if outcome.startswith("traceback") or outcome == "hang":
                    bad.append(f"{where}: {outcome}")
                continue
            errors = [line for line in outcome["stderr"]
                      if line.startswith("podtrace: ") and not line.startswith("podtrace: warning")]
            if any("Traceback" in line for line in outcome["stderr"]) or outcome["code"] not in (0, 1, 4):
                bad.append(f"{where}: exit {outcome['code']} {outcome['stderr'][-3:]}")
            elif outcome["code"] == 1 and len(errors) != 1:
                bad.append(f"{where}: exit 1 with {len(errors)} error lines {outcome['stderr'][-3:]}")
    return bad


def test_seeds_read_cleanly(tmp_path: Path) -> None:
    """The unmutated seeds read without error in every reader (the fuzz starts from files that are fine)."""
    paths = []
    for name, records in seeds().items():
        for how in ("ptrec", "gz", "zst"):
            path = tmp_path / f"{name}.{how}"
            path.write_bytes(mutate.compress(mutate.encode(records), how))
            paths.append(path)
    results, _rss = run_worker(paths)
    for result in results:
        assert result["api"] == "ok" and result["tui"] == "ok", result
        assert result["report"]["code"] == 0 and result["export"]["code"] == 0, result


def test_fuzz_corpus_no_traceback_hang_or_rss(tmp_path: Path) -> None:
    paths = corpus(tmp_path)
    results, rss_kib = run_worker(paths)
    assert len(results) == VARIANTS
    assert failures(results) == []
    refused = sum(1 for result in results if result["report"]["code"] == 1)
    assert refused > VARIANTS // 4  # the mutations reach the parser: many are refused, not all read as fine
    assert rss_kib < RSS_BOUND_MIB * 1024, f"peak RSS {rss_kib} KiB"


@pytest.mark.parametrize("how", ["gz", "zst"])
def test_decompression_bomb_refused_in_bounded_memory(tmp_path: Path, how: str) -> None:
    """A real header followed by 64 MiB of valid empty records (an unknown kind), compressed ~1000x: refused once
    the stream passes recording.RATIO_FLOOR, with one line, and the reader never holds more than a chunk."""
    header = seeds()["v1"][0]
    empty = encode_record(99, b"") * (1 << 16)  # 9 bytes each: 576 KiB
    path = tmp_path / f"bomb.ptrec.{how}"
    with path.open("wb") as out:
        mutate.compress_stream(out, mutate.encode([header]), empty, (64 << 20) // len(empty), how)
    results, rss_kib = run_worker([path])
    for reader in ("report", "export"):
        outcome = results[0][reader]
        assert outcome["code"] == 1, outcome
        assert "decompression bomb" in outcome["stderr"][-1], outcome
    assert "decompression bomb" in results[0]["api"] and "decompression bomb" in results[0]["tui"]
    assert rss_kib < BOMB_RSS_BOUND_MIB * 1024, f"peak RSS {rss_kib} KiB"


def _with_header(update: dict[str, Any], raw: str = "") -> list[tuple[int, bytes]]:
    records = list(seeds()["v1"])
    header = json.loads(records[0][1])
    header.update(update)
    text = json.dumps(header)
    if raw:  # a value json.dumps would not write: spliced in as text
        text = text.replace('"@@"', raw, 1)
    records[0] = (KIND_HEADER, text.encode())
    return records


@pytest.mark.parametrize(("records", "says"), [
    (_with_header({"names": {"netns": {}, "symbols": "x"}}), "names.symbols should be an object keyed by integers"),
    (_with_header({"counters_at_start": {"lost": -1.5}}), "counters_at_start.lost should be an integer"),
    (_with_header({"part": "@@"}, "[" * 100_000 + "]" * 100_000), "nests deeper than"),
    (_with_header({"clock": {"wall_offset_ns": "@@"}}, "9" * 100_000), "an integer of 100000 digits"),
    (_with_header({"clock": {"wall_ns": "@@"}}, "NaN"), "NaN is not a JSON number"),
], ids=["symbols-string", "negative-float-counter", "deep-nesting", "huge-integer", "nan"])
def test_hostile_header_is_one_error_with_its_offset(tmp_path: Path, records: list[tuple[int, bytes]],
                                                      says: str) -> None:
    from tracer.api import open_recording
    from tracer.output.errors import RecordingError

    path = tmp_path / "hostile.ptrec"
    path.write_bytes(mutate.encode(records))
    with pytest.raises(RecordingError) as caught:
        open_recording(str(path)).drop_rows()
    assert "header record at byte offset 12" in caught.value.message and says in caught.value.message


def test_nat_flows_of_the_wrong_type_and_events_of_the_wrong_size(tmp_path: Path) -> None:
    from tracer.api import open_recording
    from tracer.events.decode import EVENT_SIZE
    from tracer.output.errors import RecordingError
    from tracer.recording.fileformat import KIND_EVENTS, KIND_NAT_FLOWS

    records = seeds()["v1"]
    nat = [*records[:1], (KIND_NAT_FLOWS, b'{"nat_flows": -1, "monotonic_ns": 1}'), *records[1:]]
    (tmp_path / "nat.ptrec").write_bytes(mutate.encode(nat))
    offset = 12 + 5 + len(records[0][1]) + 4  # after the preamble and the header record
    with pytest.raises(RecordingError, match=rf"nat_flows record at byte offset {offset}: nat_flows should be a list"):
        open_recording(str(tmp_path / "nat.ptrec")).flow_rows()
    index = next(i for i, (kind, _) in enumerate(records) if kind == KIND_EVENTS)
    short = list(records)
    drop = (1).to_bytes(4, "little") + bytes(EVENT_SIZE - 8)  # a drop event 4 bytes short, its size field agreeing
    short[index] = (KIND_EVENTS, (len(drop)).to_bytes(2, "little") + drop)
    (tmp_path / "short.ptrec").write_bytes(mutate.encode(short))
    with pytest.raises(RecordingError, match=rf"the event at 2 is {EVENT_SIZE - 4} bytes, a type-1 event is "
                                             rf"{EVENT_SIZE}"):
        open_recording(str(tmp_path / "short.ptrec")).drop_rows()
