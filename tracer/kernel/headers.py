"""Pick the kernel headers BCC compiles against, and say which.

Struct offsets never come from these headers (they come from BTF, see tracer/kernel/btf.py); BCC only needs some
headers tree of the right architecture so its C compiles. Preference: the running kernel's own headers
(/lib/modules/$(uname -r)/build), else the newest installed /usr/src tree of the same architecture, else the newest
tree in the directories of $PODTRACE_HEADERS_PATH (the container image ships one there: a node's /usr/src mounted
over the image's own would hide it). Debian
splits a tree in two (linux-headers-X-amd64 holds the generated files and a Makefile that includes
linux-headers-X-common); BCC's BCC_KERNEL_SOURCE takes one directory, so a merged tree of symlinks is
built once under the cache directory.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tracer.output.errors import KernelError

CACHE_DIR = Path(os.environ.get("PODTRACE_CACHE", "/var/cache/podtrace")) / "headers"
SRC_DIR = Path("/usr/src")
HEADERS_PATH_ENV = "PODTRACE_HEADERS_PATH"  # colon-separated directories of linux-headers-* trees, after SRC_DIR

# `uname -m` -> the arch/ directory and the autoconf symbol that proves a tree is for it.
ARCHES = {
    "x86_64": ("x86", "CONFIG_X86_64"),
    "aarch64": ("arm64", "CONFIG_ARM64"),
}


@dataclass(frozen=True)
class HeaderChoice:
    kind: str  # "running" (the running kernel's own) or "fallback" (another release)
    path: str  # what BCC compiles against
    release: str  # the headers' kernel release
    running_release: str

    def describe(self) -> str:
        if self.kind == "running":
            return f"{self.path} (the running kernel's)"
        return (
            f"{self.release} headers at {self.path}, a fallback: no headers for the running kernel "
            f"{self.running_release}; offsets come from BTF, so this is safe"
        )


def _has_arch(tree: Path, machine: str) -> bool:
    arch = ARCHES.get(machine)
    autoconf = tree / "include/generated/autoconf.h"
    if arch is None or not autoconf.is_file():
        return False
    return f"#define {arch[1]} 1" in autoconf.read_text(errors="replace")


def _source_of(build: Path) -> Path:
    """The tree holding include/linux for a build tree (itself, or Debian's -common sibling)."""
    if (build / "include/linux/kconfig.h").is_file():
        return build
    makefile = build / "Makefile"
    if makefile.is_file():
        match = re.search(r"^include\s+(\S+)/Makefile", makefile.read_text(errors="replace"), re.M)
        if match and (Path(match.group(1)) / "include/linux/kconfig.h").is_file():
            return Path(match.group(1))
    raise KernelError(f"headers tree {build} is incomplete (no include/linux/kconfig.h)")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)[:4])


def _fallback_candidates(machine: str) -> list[Path]:
    """/usr/src's trees, newest first, then each $PODTRACE_HEADERS_PATH directory's, newest first."""
    extra = [Path(part) for part in os.environ.get(HEADERS_PATH_ENV, "").split(":") if part]
    candidates: list[Path] = []
    for directory in (SRC_DIR, *extra):
        if not directory.is_dir():
            continue
        trees = [tree for tree in directory.glob("linux-headers-*") if tree.is_dir() and _has_arch(tree, machine)]
        candidates += sorted(trees, key=lambda tree: _version_key(tree.name), reverse=True)
    return candidates


def _merged_tree(build: Path, source: Path) -> Path:
    """A single directory with source and build files (build files win), made of symlinks."""
    if build == source:
        return build
    target = CACHE_DIR / build.name
    stamp = target / ".podtrace-merged"
    if stamp.is_file():
        return target
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for tree in (source, build):
        for dirpath, _dirnames, filenames in os.walk(tree, followlinks=True):
            rel = Path(dirpath).relative_to(tree)
            (staging / rel).mkdir(parents=True, exist_ok=True)
            for filename in filenames:
                link = staging / rel / filename
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(Path(dirpath) / filename)
    (staging / ".podtrace-merged").write_text(f"{source}\n{build}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def find(running_release: str | None = None, machine: str | None = None) -> HeaderChoice:
    """Decide which headers BCC should use, without changing anything."""
    release = running_release or platform.release()
    machine = machine or platform.machine()
    own = Path("/lib/modules") / release / "build"
    if (own / "include").is_dir():
        return HeaderChoice("running", str(own), release, release)
    for build in _fallback_candidates(machine):
        return HeaderChoice("fallback", str(build), build.name.removeprefix("linux-headers-"), release)
    raise KernelError(
        f"no kernel headers for {release} and no other {machine} headers installed",
        "install linux-headers-$(uname -r) or your distribution's generic headers (Debian: linux-headers-amd64)",
    )


def prepare() -> HeaderChoice:
    """Find headers and point BCC at them (BCC_KERNEL_SOURCE) when they are not the running kernel's."""
    choice = find()
    if choice.kind == "running":
        return choice
    build = Path(choice.path)
    merged = _merged_tree(build, _source_of(build))
    os.environ["BCC_KERNEL_SOURCE"] = str(merged)
    return HeaderChoice(choice.kind, str(merged), choice.release, choice.running_release)
