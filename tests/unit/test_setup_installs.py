"""`make setup` installs every external command the suite and podtrace run: the next machine is a fresh one.

The commands are found by reading the sources (the argv lists handed to subprocess and the namespace helpers,
and shutil.which look-ups), so a test that starts calling a new tool fails here until setup installs it.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("tracer", "tui", "tests")
PATTERNS = (
    re.compile(r'(?:subprocess\.(?:run|Popen|check_output|call)|_run|\brun|\bsh|in_netns\([^,]+,)\(\s*\[\s*"([A-Za-z0-9][\w.+-]*)"'),
    re.compile(r'shutil\.which\(\s*"([\w.+-]+)"'),
    re.compile(r'\bsh\(\s*"([\w.+-]+)"'),
    re.compile(r'(?:command|argv)\s*=\s*\[\s*"([\w.+-]+)"'),
)
# command -> the Debian package that provides it
PACKAGES = {
    "bpftool": "bpftool", "bridge": "iproute2", "busybox": "busybox-static", "conntrack": "conntrack",
    "gcc": "gcc", "git": "git", "ip": "iproute2", "ip6tables": "iptables", "iperf3": "iperf3",
    "iptables": "iptables", "iptables-legacy": "iptables", "iptables-restore": "iptables",
    "iptables-save": "iptables", "ipvsadm": "ipvsadm", "modprobe": "kmod", "nft": "nftables", "nstat": "iproute2",
    "ping": "iputils-ping", "prometheus": "prometheus", "qemu-system-x86_64": "qemu-system-x86", "ruby": "ruby",
    "shellcheck": "shellcheck", "sysctl": "procps", "tc": "iproute2", "tmux": "tmux", "tshark": "tshark",
    "vagrant": "vagrant", "tcpdump": "tcpdump", "nfacct": "nfacct", "ip6tables-restore": "iptables",
    "ip6tables-save": "iptables",
}
# Every Debian and Ubuntu system has these (Essential: yes packages: coreutils, util-linux, bash, tar, dash),
# the interpreter runs the suite, and vng comes with the virtme-ng Python package (pyproject's dev extra).
# Used only where the node already has them, never installed: crictl comes with the node's CRI, not with podtrace.
OPTIONAL = {"crictl"}
PRESENT = {"bash", "cat", "id", "mount", "nsenter", "python3", "setpriv", "sh", "tar", "umount", "unshare", "vng"}


def _commands() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for top in SOURCES:
        for path in (REPO / top).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for pattern in PATTERNS:
                for match in pattern.finditer(text):
                    found.setdefault(match.group(1), set()).add(str(path.relative_to(REPO)))
    return found


def _apt_packages() -> set[str]:
    text = (REPO / "scripts" / "setup.sh").read_text(encoding="utf-8")
    block = re.search(r"APT_PACKAGES=\((.*?)\)", text, re.S)
    assert block, "scripts/setup.sh has no APT_PACKAGES list"
    return set(block.group(1).split())


def test_the_scan_finds_the_commands_it_should() -> None:
    found = _commands()
    for command in ("ip", "ping", "nft", "iptables-restore", "tshark", "tmux", "bpftool", "prometheus"):
        assert command in found, command


def test_setup_installs_every_command_the_sources_run() -> None:
    apt = _apt_packages()
    for command, paths in sorted(_commands().items()):
        if command in PRESENT or command in OPTIONAL:
            continue
        assert command in PACKAGES, f"{command} (run by {sorted(paths)}) is in no package this test knows"
        assert PACKAGES[command] in apt, f"{command} (run by {sorted(paths)}): scripts/setup.sh does not install " \
                                         f"{PACKAGES[command]}"
