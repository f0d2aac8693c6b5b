"""`podtrace check`: audit this node's networking set-up against the known failure modes (no BPF needed)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import TextIO

from tracer.check import AREAS, Finding, NodeState, kubeproxy, run_checks, summary
from tracer.node import rulesfile
from tracer.output.errors import UsageError
from tracer.output.layout import add_wide_option, table_width

EPILOG = """\
exit codes: 0 nothing failed, 1 error, 2 bad usage (e.g. no such netns), 3 at least one check failed

checks: kube-proxy mode and Service count, conntrack fill and counters, MTU of underlay/overlay/pods
(and FLANNEL_MTU), bridge-nf-call-iptables, ip_forward, rp_filter, softnet drops/time_squeeze, CPU steal,
somaxconn, ephemeral ports, tcp_tw_reuse

examples:
  sudo podtrace check
  sudo podtrace check --netns pt-node1            a lab node (ip netns name)
  sudo podtrace check --json | jq 'select(.severity != "ok")'
  sudo podtrace check --window 5 || echo "node is configured to fail"
  podtrace check --rules ticket-1234.save      kube-proxy checks on a saved ruleset (iptables-save,
                                               iptables -S or nft -j list ruleset output; no root)
"""

CHECK_COLUMN = 25
LABELS = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="audit the node's networking set-up (no BPF needed)",
        description="Read sysctls, rules, links and kernel counters and judge them against the known ways "
                    "Kubernetes node networking fails. Each finding says what was measured, why it matters and "
                    "the command that fixes it.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per finding per line, then a summary object")
    parser.add_argument("--netns", metavar="NAME", help="check inside this `ip netns` namespace (e.g. pt-node1)")
    parser.add_argument("--rules", metavar="FILE",
                        help="judge a saved ruleset instead of this node: iptables-save, ip6tables-save, "
                             "iptables -S or `nft -j list ruleset` output (kube-proxy checks only)")
    parser.add_argument("--window", type=float, default=1.0, metavar="S",
                        help="seconds over which softnet drops and CPU steal are measured (default 1)")
    add_wide_option(parser)
    parser.set_defaults(func=run)


def _wrapped(text: str, first: str, indent: str, width: int | None) -> list[str]:
    if width is None:  # a pipe, a file or --wide: one line per text, nothing to re-join
        return [first + text]
    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=indent, break_on_hyphens=False,
                         break_long_words=False) or [first.rstrip()]


def write_table(findings: list[Finding], out: TextIO, where: str, width: int | None = None) -> None:
    """Findings by area. Values and reasons wrap at `width` (the terminal's, or None: never); a fix is a command
    to paste, so it is never wrapped, whatever the width: a terminal folds it only on screen."""
    counts = summary(findings)
    out.write(f"podtrace check on {where}: {counts['fail']} fail, {counts['warn']} warn, {counts['ok']} ok\n")
    indent = " " * (2 + 6 + CHECK_COLUMN)
    for area in [*AREAS, *sorted({f.area for f in findings} - set(AREAS))]:
        rows = [f for f in findings if f.area == area]
        if not rows:
            continue
        out.write(f"\n{area}\n")
        for f in rows:
            label = f"  {LABELS[f.severity]:<5} "
            if len(f.check) < CHECK_COLUMN:
                lines = _wrapped(f.value, f"{label}{f.check:<{CHECK_COLUMN}}", indent, width)
            else:  # a long name whole on its own line, its value under it
                lines = [f"{label}{f.check}", *_wrapped(f.value, indent, indent, width)]
            if f.severity != "ok":
                if f.why:
                    lines += _wrapped(f.why, indent + "why: ", indent + "     ", width)
                if f.fix:
                    lines.append(f"{indent}fix: {f.fix}")
            out.write("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.window <= 60:  # written so that nan is refused too
        raise UsageError(f"--window {args.window:g} is out of range", "use 0 to 60 seconds")
    if args.rules is not None:
        if args.netns:
            raise UsageError("--rules and --netns exclude each other", "--rules reads a file, not a node")
        saved = rulesfile.read(args.rules)
        state = NodeState(iptables_save=None if saved.nft is not None else saved.text, nft_ruleset=saved.nft)
        findings = kubeproxy.check(state)
        where = f"{args.rules} ({saved.kind})"
    else:
        findings = run_checks(args.netns, window=args.window)
        where = f"netns {args.netns}" if args.netns else "this node"
    if args.json:
        for finding in findings:
            sys.stdout.write(json.dumps(finding.to_json()) + "\n")
        sys.stdout.write(json.dumps(summary(findings)) + "\n")
    else:
        write_table(findings, sys.stdout, where, table_width(sys.stdout, args.wide))
    return 3 if any(f.severity == "fail" for f in findings) else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tracer.cli.check ...`: the same command without the rest of the CLI."""
    from tracer.output.errors import PodtraceError

    parser = argparse.ArgumentParser(prog="podtrace")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["check", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args))
    except PodtraceError as err:
        print(f"podtrace: {err.one_line()}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
