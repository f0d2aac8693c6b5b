"""`podtrace doctor`: what this kernel lets podtrace see, what it cannot, and what to do about it."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tracer.kernel import bccenv
from tracer.kernel import capabilities as kernel
from tracer.kernel.btf import Btf
from tracer.kernel.hookpoints import hook_point
from tracer.kernel.kernelhints import lockdown_hint, module_hint
from tracer.kernel.ladder import AttachPlan, HookPlan, Trial, trials_to_json
from tracer.output.errors import KernelError, PodtraceError
from tracer.output.progress import Progress
from tracer.probes import tc
from tracer.probes.build import BTF_OFFSETS, DROP_REASON_ENUM

EPILOG = """\
exit codes: 0 the core probes (drops, packet path) can attach, 1 they cannot (a hook point or the BTF
            layout they read is missing) or an error

examples:
  sudo podtrace doctor
  sudo podtrace doctor --json | jq '.hooks[] | select(.chosen == null)'
"""

# Reason fragment -> what the user can do about it (a text, or one made from what this kernel has when asked).
FIXES: tuple[tuple[str, str | Callable[[], str]], ...] = (
    ("CONFIG_KPROBES off", "kprobes: use a kernel built with CONFIG_KPROBES=y (most distribution kernels) "
     "for table/chain attribution and driver-level VXLAN and fragmentation hooks"),
    ("EPERM", lambda: f"fentry: lockdown and LSMs can refuse BPF tracing: {lockdown_hint()}; podtrace falls back "
     "to the next mechanism meanwhile"),
    ("IPVS", lambda: "IPVS: only matters when kube-proxy runs in IPVS mode; then "
     + module_hint("ip_vs", "CONFIG_IP_VS")),
    ("too old for BPF netfilter links", "netfilter links need kernel 6.4 or later; with kprobes podtrace "
     "uses nf_hook_slow instead"),
    ("is not in this kernel (not in /proc/kallsyms", "a hooked function is missing: load its module or accept "
     "the fallback shown above"),
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="what this kernel lets podtrace see",
        description="Check BTF, headers and every hook point's attach ladder by loading tiny programs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    parser.add_argument("--btf", metavar="FILE", help="read BTF from FILE instead of /sys/kernel/btf/vmlinux")
    parser.set_defaults(func=run)


def layout_problems(btf: Btf) -> list[str]:
    """Members the core probes read (tracer/probes/build.py BTF_OFFSETS) that this BTF lacks or sizes differently.

    Any of them stops the drops and path probes from compiling, so doctor must not call the core attachable.
    """
    problems: list[str] = []
    for _macro, struct_name, member, size in BTF_OFFSETS:
        try:
            actual = btf.member_size(struct_name, member)
        except KernelError as err:
            problem = err.message
        else:
            if actual == size:
                continue
            problem = f"{struct_name}.{member} is {actual} bytes, podtrace reads {size}"
        if problem not in problems:  # a missing struct would otherwise repeat once per member
            problems.append(problem)
    return problems


def btf_facts(path: str | None) -> dict[str, Any]:
    started = time.perf_counter()
    btf = Btf.load(path)
    load_ms = (time.perf_counter() - started) * 1000
    try:
        reasons = len(btf.enum(DROP_REASON_ENUM))
    except KernelError:  # kernels before 5.17 have no drop reasons: drops still show, without one
        reasons = 0
    return {"path": btf.path, "bytes": os.path.getsize(btf.path), "types": btf.type_count,
            "load_ms": round(load_ms, 1), "drop_reasons": reasons, "layout_problems": layout_problems(btf)}


def fixes_for(plan: AttachPlan, trials: dict[str, Trial]) -> list[str]:
    # Only what stood between a hook point and a better program: a mechanism no hook offers (fentry) needs no fix.
    del trials
    texts = [rejected["reason"] for hook in plan.hooks for rejected in hook.rejected]
    wanted = [fix for fragment, fix in FIXES if any(fragment in text for text in texts)]
    return [fix if isinstance(fix, str) else fix() for fix in wanted]


def _lost_by_fallback(hook: HookPlan) -> str | None:
    """What the preferred candidate shows that the fallback attached does not, with the mechanisms it needs."""
    try:
        candidates = hook_point(hook.name).candidates
    except KeyError:  # a plan from a recording made by another podtrace version
        return None
    preferred = candidates[0]
    if not preferred.gives or preferred.gives == hook.gives:
        return None
    better = []
    for candidate in candidates:
        if candidate.mechanism.value == hook.chosen and list(candidate.targets) == hook.targets:
            break
        if candidate.gives == preferred.gives and candidate.mechanism.value not in better:
            better.append(candidate.mechanism.value)
    return f"{hook.name}: {preferred.gives} (needs {' or '.join(better)})"


def cannot_see(plan: AttachPlan) -> list[str]:
    """Hook points with nothing attached, and what a fallback loses compared with the preferred mechanism."""
    lines = []
    for hook in plan.hooks:
        if not hook.chosen:
            lines.append(f"{hook.name}: {hook.unseen}")
        elif hook.fallback:
            lost = _lost_by_fallback(hook)
            if lost:
                lines.append(lost)
    return lines


def collect(btf_path: str | None) -> dict[str, Any]:
    bccenv.require_root("doctor")
    btf = btf_facts(btf_path)
    # tracefs, headers and the BCC import first: each failure is then the only line on stderr.
    header_choice = bccenv.header_choice()
    with Progress("probing the kernel: loading a tiny program per hook mechanism") as progress:
        plan, trials = kernel.probe_kernel(every_mechanism=True)
        progress.done(f"{len(trials)} trials")
    return {
        "node": platform.node(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "btf": btf,
        "headers": {"kind": header_choice.kind, "path": header_choice.path, "release": header_choice.release,
                    "text": header_choice.describe()},
        "mechanisms": kernel.describe_mechanisms(trials),
        "hooks": plan.to_json()["hooks"],
        "summary": plan.summary(),
        "core_ok": plan.core_ok() and not btf["layout_problems"],
        "cannot_see": cannot_see(plan),
        "fixes": fixes_for(plan, trials),
        "trials": trials_to_json(trials),
        "tc_leftovers": [stale.describe() for stale in tc.leftovers()],  # filters of killed `--tc` sessions
    }


def print_report(report: dict[str, Any], out: TextIO) -> None:
    write = out.write
    write(f"podtrace doctor on {report['node']}: kernel {report['kernel']} ({report['arch']})\n")
    btf = report["btf"]
    write(f"  BTF        {btf['path']} ({btf['bytes'] / 1e6:.1f} MB, {btf['types']} types, "
          f"read in {btf['load_ms']:.0f} ms)\n")
    if btf["drop_reasons"]:
        write(f"  drops      {btf['drop_reasons']} drop reasons (enum skb_drop_reason)\n")
    else:
        write("  drops      no enum skb_drop_reason (kernel before 5.17): drops are seen without a reason\n")
    for problem in btf["layout_problems"]:
        write(f"  layout     MISSING {problem}\n")
    write(f"  headers    {report['headers']['text']}\n")
    write("\nmechanisms\n")
    for name, state in report["mechanisms"].items():
        verdict = "yes" if state["available"] else "no "
        write(f"  {name:<16} {verdict}  {state['reason']}\n")
    write(f"\n{report['summary']}\n")
    for hook in report["hooks"]:
        if hook["chosen"]:
            note = " (fallback)" if hook["fallback"] else ""
            write(f"  {hook['name']:<14} {hook['chosen']}: {', '.join(hook['targets'])}{note}\n")
            if hook["gives"]:
                write(f"  {'':<14} sees {hook['gives']}\n")
        else:
            reason = hook["rejected"][-1]["reason"] if hook["rejected"] else "no candidate"
            write(f"  {hook['name']:<14} NONE: {reason}\n")
    if report["cannot_see"]:
        write("\nwhat you cannot see on this kernel\n")
        for line in report["cannot_see"]:
            write(f"  - {line}\n")
    if report["fixes"]:
        write("\nfixes\n")
        for line in report["fixes"]:
            write(f"  - {line}\n")
    if report.get("tc_leftovers"):
        write("\nleftovers (tc filters of podtrace sessions that were killed; the next --tc run there removes them)\n")
        for line in report["tc_leftovers"]:
            write(f"  - {line}\n")
    verdict = "ok: the core probes attach" if report["core_ok"] else "FAIL: the core probes cannot attach"
    write(f"\n{verdict}\n")


def run(args: argparse.Namespace) -> int:
    report = collect(args.btf)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        print_report(report, sys.stdout)
    if not report["core_ok"]:
        where = "the BTF layout lines above" if report["btf"]["layout_problems"] else "the hook points above"
        raise PodtraceError("the core probes (drops, packet path) cannot attach on this kernel", f"see {where}")
    return 0
