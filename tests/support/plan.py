"""Doctor's attach plan against what a live session really attached: the same programs, nothing invented.

Used on the host (tests/e2e) and inside the 6.1 VM (tests/vm/inner), where the kprobe side of the ladder runs.
"""

from __future__ import annotations

import uuid
from subprocess import run
from typing import Any

# Hook points a LiveSource session loads (softirq has its own probe, tracer/analysis/softirq.py).
SESSION_HOOKS = ("drops", "path", "netfilter", "nat", "ipvs", "vxlan", "fragmentation", "icmp")
# Attached besides the ladder's targets, with the hook that brings them: path.c's driver transmit (the "xmit"
# event) on a raw tracepoint, and ipvs.c's replies where the kernel has handle_response.
EXTRAS = {"path": {"raw tracepoint net_dev_xmit"}, "ipvs": {"kprobe handle_response"}}


def expected_attachments(hook: dict[str, Any]) -> set[str]:
    """The LiveSource.attached lines a chosen hook plan stands for."""
    chosen, targets = hook["chosen"], hook["targets"]
    if chosen == "tp_btf":
        return {f"tp_btf {t}" for t in targets}
    if chosen == "raw_tracepoint":
        return {f"raw tracepoint {t}" for t in targets}
    if chosen == "tracepoint":
        return {f"tracepoint {t}" for t in targets}
    if chosen == "kprobe":
        return {f"kprobe {t}" for t in targets}
    if chosen == "netfilter_link":
        return {"netfilter links"}
    raise AssertionError(f"a session never chooses {chosen} for {hook['name']}")


def _normalise(line: str) -> str:
    if line.startswith("netfilter links at "):
        return "netfilter links"
    return line.replace("kretprobe ", "kprobe ", 1)


def session_attachments() -> list[str]:
    """Everything a full session (path, netfilter links, ICMP, every kprobe concern) attached on this kernel."""
    from tracer.probes.build import ProbeConfig
    from tracer.probes.kprobes import CONCERNS, choose_live, netfilter_links_possible
    from tracer.sources.live import LiveSource

    netns = f"ptdp-{uuid.uuid4().hex[:6]}"
    run(["ip", "netns", "add", netns], check=True)
    try:
        links = netfilter_links_possible()
        config = ProbeConfig(path=True, netfilter=links, netfilter_netns=(netns,) if links else (None,), icmp=True,
                             kprobes=choose_live((*CONCERNS, "ipvs")))
        source = LiveSource(config)
        source.start(progress=False)
        try:
            return list(source.attached)
        finally:
            source.close()
    finally:
        run(["ip", "netns", "del", netns], check=False)


def assert_plan_matches_session(report: dict[str, Any], attached: list[str]) -> None:
    seen = {_normalise(line) for line in attached}
    explained: set[str] = set()
    for hook in report["hooks"]:
        if hook["name"] not in SESSION_HOOKS or not hook["chosen"]:
            continue
        wanted = expected_attachments(hook)
        if hook["name"] in ("vxlan", "fragmentation") and hook["chosen"] == "tracepoint":
            wanted = set()  # the device-based fallback is the path hook's tracepoints, loaded with path events
        explained |= EXTRAS.get(hook["name"], set())
        assert wanted <= seen, f"doctor says {hook['name']} uses {sorted(wanted)}; the session attached {sorted(seen)}"
        explained |= wanted
    unexplained = seen - explained
    assert not unexplained, f"the session attached {sorted(unexplained)}, which doctor's plan does not show"
