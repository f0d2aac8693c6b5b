"""`--tc` after kill -9: the killed session's filters are found by their owner mark (priority, name, the owner's PID
as handle), `doctor` lists them, and the next session on the interface removes them, and only them."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator

import pytest
import support.podtrace as podtrace
from support.netns import Pair, netns_pair, sh

pytestmark = pytest.mark.root


@pytest.fixture
def pair() -> Iterator[Pair]:
    with netns_pair() as created:
        yield created


def filters(pair: Pair) -> list[tuple[str, int, int, str]]:
    """(direction, pref, handle, name) of every tc filter on veth-b's clsact hooks, as tc(8) prints them."""
    found = []
    for direction in ("ingress", "egress"):
        for line in sh("tc", "filter", "show", "dev", "veth-b", direction, netns=pair.b).splitlines():
            match = re.search(r"pref (\d+) \S+ .*handle (0x[0-9a-f]+)", line)
            if match:
                name = line.split("flowid :1 ")[1].split()[0] if "flowid :1 " in line else ""
                found.append((direction, int(match[1]), int(match[2], 16), name))
    return found


def tc_text(pair: Pair) -> str:
    return sh("tc", "filter", "show", "dev", "veth-b", "ingress", netns=pair.b)


def test_a_killed_tc_session_is_listed_by_doctor_and_cleaned_by_the_next(pair: Pair) -> None:
    target = f"{pair.b}/veth-b"
    # Someone else's filter on the same hook: never touched.
    sh("tc", "qdisc", "add", "dev", "veth-b", "clsact", netns=pair.b)
    sh("tc", "filter", "add", "dev", "veth-b", "ingress", "pref", "10", "u32", "match", "u32", "0", "0", netns=pair.b)
    live = podtrace.start("drops", "--tc", target)  # a session that keeps running: its filters stay
    killed = podtrace.start("drops", "--tc", target)
    os.kill(killed.process.pid, signal.SIGKILL)
    killed.process.communicate(timeout=30)
    ours = {(d, h) for d, pref, h, _ in filters(pair) if pref == 49001}
    assert ours == {(d, pid) for d in ("ingress", "egress") for pid in (live.process.pid, killed.process.pid)}

    doctor = podtrace.run("doctor", "--json", timeout=300)
    leftovers = json.loads(doctor.stdout.splitlines()[-1])["tc_leftovers"]
    assert sorted(leftovers) == sorted(f"{target} {d} (owner pid {killed.process.pid}, no longer running)"
                                       for d in ("ingress", "egress"))
    text = podtrace.run("doctor", timeout=300).stdout
    assert f"  - {target} ingress (owner pid {killed.process.pid}, no longer running)" in text

    after = podtrace.start("drops", "--tc", target)
    now = filters(pair)
    assert {(d, h) for d, pref, h, _ in now if pref == 49001} == {
        (d, pid) for d in ("ingress", "egress") for pid in (live.process.pid, after.process.pid)}
    assert "pref 10 u32" in tc_text(pair)  # the foreign filter is still there
    assert all(name.startswith("podtrace-") for _d, pref, _h, name in now if pref == 49001)
    for session in (after, live):
        assert session.stop().returncode == 0, session.stderr
    assert f"podtrace: removed 2 stale podtrace tc filter(s) on {target} left by pid {killed.process.pid} (killed?)" \
        in after.stderr.splitlines()
    assert "stale" not in live.stderr
    assert filters(pair) == [] and "pref 10 u32" in tc_text(pair)
    leftovers = json.loads(podtrace.run("doctor", "--json", timeout=300).stdout.splitlines()[-1])["tc_leftovers"]
    assert not [line for line in leftovers if line.startswith(target)]


def test_an_attach_error_is_one_line_in_words(pair: Pair) -> None:
    result = podtrace.run("drops", "--tc", f"{pair.b}/no-such-if", "--duration", "1")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("podtrace:")]
    assert errors == [f"podtrace: no interface 'no-such-if' in {pair.b}"], result.stderr
    assert "Traceback" not in result.stderr
