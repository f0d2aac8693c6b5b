"""The probe registry (tracer/probes/registry.py) against what it declares: bpf/podtrace.h's counter slots and
event kinds, the sources' tracepoints and maps, and the hook points' candidates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tracer.kernel.hookpoints import HOOK_POINTS
from tracer.probes import registry

BPF = Path(__file__).resolve().parents[2] / "bpf"
HEADER = (BPF / "podtrace.h").read_text()


def test_counter_slots_are_podtrace_h_probe_ids_in_order() -> None:
    ids = {name.lower(): int(value) for name, value in re.findall(r"#define PT_PROBE_(\w+) (\d+)", HEADER)}
    assert ids == {name: index for index, name in enumerate(registry.COUNTER_SLOTS)}
    assert f"#define PT_PROBES {len(registry.COUNTER_SLOTS)}" in HEADER


def test_every_source_in_bpf_is_a_registered_program_and_back() -> None:
    assert {path.name for path in BPF.glob("*.c")} == registry.SOURCES
    assert len(registry.BY_NAME) == len(registry.PROGRAMS)  # names are unique


def test_bcc_attached_tracepoints_are_exactly_those_the_source_declares() -> None:
    for program in registry.PROGRAMS:
        text = (BPF / program.source).read_text()
        declared = [f"tracepoint {c}:{n}" for c, n in re.findall(r"^TRACEPOINT_PROBE\((\w+), (\w+)\)", text, re.M)]
        declared += [f"raw tracepoint {n}" for n in re.findall(r"^RAW_TRACEPOINT_PROBE\((\w+)\)", text, re.M)]
        if program.attached_by == "bcc":
            assert sorted(program.tracepoints) == sorted(declared), program.name
            assert registry.auto_attached(program.name) == list(program.tracepoints)
        else:
            # attached by podtrace's own code: BCC must not attach anything of it by itself
            assert declared == [] and program.tracepoints == (), program.name
            assert registry.auto_attached(program.name) == []


def test_emitted_kinds_and_maps_exist() -> None:
    kinds = {name.lower() for name in re.findall(r"#define PT_EVENT_([A-Z_]+) \d+", HEADER)} - {"snap"}
    for program in registry.PROGRAMS:
        assert set(program.emits) <= kinds, program.name
        text = (BPF / program.source).read_text()
        for name in program.maps:
            assert re.search(rf"^BPF_\w+\({name},", text, re.M), (program.name, name)


def test_kprobe_concerns_name_registered_kprobe_programs() -> None:
    for concern, name in registry.KPROBE_PROGRAMS.items():
        assert registry.program(name).attached_by == "tracer.probes.kprobes", concern


def test_hook_point_candidates_name_registered_programs_only() -> None:
    # (a candidate naming an unregistered source cannot be built: tests/unit/test_ladder.py)
    for point in HOOK_POINTS:
        for candidate in point.candidates:
            assert candidate.program in registry.SOURCES
    with pytest.raises(ValueError, match="no BPF program 'fentry_path'"):
        registry.program("fentry_path")
