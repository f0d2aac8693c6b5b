"""The attach ladder: for each hook point, the first candidate whose every target attached.

Pure: takes trial results (recorded live by tracer/kernel/capabilities.py, or loaded from JSON in tests and recordings)
and returns a plan that doctor, the TUI and every recording header show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tracer.kernel.hookpoints import HOOK_POINTS, Candidate, HookPoint


@dataclass(frozen=True)
class Trial:
    ok: bool
    reason: str = ""  # why it failed, in words a user can act on


@dataclass
class HookPlan:
    name: str
    concern: str
    core: bool
    chosen: str | None  # mechanism value, e.g. "raw_tracepoint"
    targets: list[str]
    gives: str
    unseen: str  # empty when something attached
    rejected: list[dict[str, str]] = field(default_factory=list)  # {"candidate": ..., "reason": ...}
    fallback: bool = False  # chosen is not the first candidate


@dataclass
class AttachPlan:
    kernel: str
    hooks: list[HookPlan]

    def hook(self, name: str) -> HookPlan:
        for plan in self.hooks:
            if plan.name == name:
                return plan
        raise KeyError(name)

    def core_ok(self) -> bool:
        return all(plan.chosen for plan in self.hooks if plan.core)

    def summary(self) -> str:
        attached = sum(1 for plan in self.hooks if plan.chosen)
        missing = [plan.name for plan in self.hooks if not plan.chosen]
        text = f"{attached} of {len(self.hooks)} hook points"
        return f"{text} (missing: {', '.join(missing)})" if missing else text

    def to_json(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "hooks": [asdict(plan) for plan in self.hooks]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttachPlan:
        return cls(data["kernel"], [HookPlan(**plan) for plan in data["hooks"]])


def _candidate_failure(candidate: Candidate, trials: dict[str, Trial]) -> str | None:
    """None when every target attached, else the first reason it did not."""
    for key in candidate.keys:
        trial = trials.get(key)
        if trial is None:
            return "not tried"
        if not trial.ok:
            return trial.reason
    return None


def _missing_subsystem(point: HookPoint, trials: dict[str, Trial]) -> str | None:
    for symbol in point.requires_symbols:
        trial = trials.get(f"symbol:{symbol}")
        if trial is not None and not trial.ok:
            return f"{point.subsystem}: {trial.reason}"
    return None


def plan_hook(point: HookPoint, trials: dict[str, Trial]) -> HookPlan:
    plan = HookPlan(point.name, point.concern, point.core, None, [], "", point.unseen)
    absent = _missing_subsystem(point, trials)
    if absent:
        plan.rejected = [{"candidate": c.label(), "reason": absent} for c in point.candidates]
        return plan
    for index, candidate in enumerate(point.candidates):
        failure = _candidate_failure(candidate, trials)
        if failure is None:
            plan.chosen = candidate.mechanism.value
            plan.targets = list(candidate.targets)
            plan.gives = candidate.gives
            plan.unseen = ""
            plan.fallback = index > 0
            return plan
        plan.rejected.append({"candidate": candidate.label(), "reason": failure})
    return plan


def make_plan(kernel: str, trials: dict[str, Trial], points: tuple[HookPoint, ...] = HOOK_POINTS) -> AttachPlan:
    return AttachPlan(kernel, [plan_hook(point, trials) for point in points])


def trials_from_json(data: dict[str, dict[str, Any]]) -> dict[str, Trial]:
    return {key: Trial(bool(value["ok"]), str(value.get("reason", ""))) for key, value in data.items()}


def trials_to_json(trials: dict[str, Trial]) -> dict[str, dict[str, Any]]:
    return {key: {"ok": trial.ok, "reason": trial.reason} for key, trial in sorted(trials.items())}
