"""Which headers BCC compiles against: /usr/src situations built in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tracer.kernel import headers
from tracer.output.errors import KernelError

NO_SUCH_RELEASE = "0.0.0-podtrace-unit-test"  # never under /lib/modules: find() goes to the fallbacks
AUTOCONF = {"x86_64": "CONFIG_X86_64", "aarch64": "CONFIG_ARM64"}


@pytest.fixture
def src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    assert not (Path("/lib/modules") / NO_SUCH_RELEASE).exists()
    src_dir = tmp_path / "usr" / "src"
    src_dir.mkdir(parents=True)
    monkeypatch.setattr(headers, "SRC_DIR", src_dir)
    monkeypatch.setattr(headers, "CACHE_DIR", tmp_path / "cache" / "headers")
    monkeypatch.delenv(headers.HEADERS_PATH_ENV, raising=False)
    return src_dir


def debian_pair(src_dir: Path, version: str, machine: str = "x86_64", flavour: str = "amd64") -> Path:
    """linux-headers-VERSION-common (sources) + linux-headers-VERSION-FLAVOUR (generated files, a wrapper)."""
    common = src_dir / f"linux-headers-{version}-common"
    (common / "include/linux").mkdir(parents=True)
    (common / "include/linux/kconfig.h").write_text("/* kconfig */\n")
    (common / "include/linux/skbuff.h").write_text("/* from common */\n")
    (common / "Makefile").write_text("# the kernel's Makefile\n")
    build = src_dir / f"linux-headers-{version}-{flavour}"
    (build / "include/generated").mkdir(parents=True)
    (build / "include/generated/autoconf.h").write_text(f"#define CONFIG_FOO 1\n#define {AUTOCONF[machine]} 1\n")
    (build / "include/linux").mkdir()
    (build / "include/linux/skbuff.h").write_text("/* from the flavour */\n")
    (build / "Makefile").write_text(f"MAKEFLAGS += --no-print-directory\ninclude {common}/Makefile\n")
    return build


def test_debian_split_tree_is_the_fallback(src: Path) -> None:
    build = debian_pair(src, "6.1.0-27")
    choice = headers.find(running_release=NO_SUCH_RELEASE, machine="x86_64")
    assert choice == headers.HeaderChoice("fallback", str(build), "6.1.0-27-amd64", NO_SUCH_RELEASE)
    text = choice.describe()
    assert "6.1.0-27-amd64 headers" in text and "fallback" in text and NO_SUCH_RELEASE in text and "BTF" in text


def test_debian_split_tree_is_merged(src: Path) -> None:
    build = debian_pair(src, "6.1.0-27")
    common = src / "linux-headers-6.1.0-27-common"
    source = headers._source_of(build)
    assert source == common
    merged = headers._merged_tree(build, source)
    assert merged == headers.CACHE_DIR / build.name
    assert (merged / ".podtrace-merged").read_text() == f"{common}\n{build}\n"
    # Files from both trees; where both have one, the build tree's wins.
    assert (merged / "include/linux/kconfig.h").resolve() == (common / "include/linux/kconfig.h").resolve()
    assert (merged / "include/generated/autoconf.h").resolve() == (build / "include/generated/autoconf.h")
    assert (merged / "include/linux/skbuff.h").read_text() == "/* from the flavour */\n"
    assert (merged / "Makefile").resolve() == build / "Makefile"
    assert all(p.is_symlink() for p in merged.rglob("*") if p.is_file() and p.name != ".podtrace-merged")
    assert not merged.with_name(merged.name + ".tmp").exists()
    # Built once: a second call reuses it.
    (common / "include/linux/new.h").write_text("")
    assert headers._merged_tree(build, source) == merged
    assert not (merged / "include/linux/new.h").exists()


def test_prepare_points_bcc_at_the_merged_tree(src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build = debian_pair(src, "6.1.0-27")
    monkeypatch.setattr(headers.platform, "release", lambda: NO_SUCH_RELEASE)
    monkeypatch.setattr(headers.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    choice = headers.prepare()
    merged = headers.CACHE_DIR / build.name
    assert choice == headers.HeaderChoice("fallback", str(merged), "6.1.0-27-amd64", NO_SUCH_RELEASE)
    assert os.environ["BCC_KERNEL_SOURCE"] == str(merged)


def test_single_tree_is_its_own_source(src: Path) -> None:
    tree = src / "linux-headers-5.15.0-91-generic"
    (tree / "include/generated").mkdir(parents=True)
    (tree / "include/generated/autoconf.h").write_text("#define CONFIG_X86_64 1\n")
    (tree / "include/linux").mkdir()
    (tree / "include/linux/kconfig.h").write_text("")
    assert headers._source_of(tree) == tree
    assert headers._merged_tree(tree, tree) == tree
    assert not headers.CACHE_DIR.exists()


def test_incomplete_tree(src: Path) -> None:
    build = debian_pair(src, "6.1.0-27")
    (build / "Makefile").write_text("include /nonexistent/Makefile\n")
    with pytest.raises(KernelError, match="incomplete"):
        headers._source_of(build)


def test_wrong_arch_is_ignored(src: Path) -> None:
    debian_pair(src, "6.1.0-27", machine="aarch64", flavour="arm64")
    with pytest.raises(KernelError):
        headers.find(running_release=NO_SUCH_RELEASE, machine="x86_64")
    choice = headers.find(running_release=NO_SUCH_RELEASE, machine="aarch64")
    assert choice.release == "6.1.0-27-arm64"
    amd64 = debian_pair(src, "5.10.0-30")
    assert headers.find(running_release=NO_SUCH_RELEASE, machine="x86_64").path == str(amd64)


def test_unknown_machine(src: Path) -> None:
    debian_pair(src, "6.1.0-27")
    with pytest.raises(KernelError, match="no other riscv64 headers"):
        headers.find(running_release=NO_SUCH_RELEASE, machine="riscv64")


def test_newest_version_wins(src: Path) -> None:
    for version in ("5.10.0-30", "6.1.0-9", "6.1.0-27", "6.1.0-13"):
        debian_pair(src, version)
    (src / "linux-headers-6.9.0-1-amd64").mkdir()  # no autoconf.h: not a usable tree
    (src / "linux-headers-7.0.0-1-amd64.txt").write_text("")  # not a directory
    choice = headers.find(running_release=NO_SUCH_RELEASE, machine="x86_64")
    assert choice.release == "6.1.0-27-amd64"


def single_tree(directory: Path, version: str) -> Path:
    """A self-contained tree (sources and generated files in one directory), as the container image ships."""
    tree = directory / f"linux-headers-{version}-amd64"
    (tree / "include/generated").mkdir(parents=True)
    (tree / "include/generated/autoconf.h").write_text("#define CONFIG_X86_64 1\n")
    (tree / "include/linux").mkdir()
    (tree / "include/linux/kconfig.h").write_text("")
    return tree


def test_headers_path_trees_are_the_last_fallback(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's own tree is used when the node's /usr/src (mounted over the image's) has none, and only then."""
    image = tmp_path / "opt" / "headers"
    old, new = single_tree(image, "6.1.0-9"), single_tree(image, "6.1.0-27")
    monkeypatch.setenv(headers.HEADERS_PATH_ENV, f"{tmp_path / 'missing'}::{image}")
    choice = headers.find(running_release=NO_SUCH_RELEASE, machine="x86_64")
    assert choice == headers.HeaderChoice("fallback", str(new), "6.1.0-27-amd64", NO_SUCH_RELEASE)
    assert old != new and headers._merged_tree(new, headers._source_of(new)) == new  # nothing to merge or cache
    node = debian_pair(src, "5.10.0-30")  # older than the image's, but the node's own distribution's: first
    assert headers.find(running_release=NO_SUCH_RELEASE, machine="x86_64").path == str(node)


def test_no_headers(src: Path) -> None:
    with pytest.raises(KernelError) as raised:
        headers.find(running_release=NO_SUCH_RELEASE, machine="x86_64")
    assert NO_SUCH_RELEASE in raised.value.message and "x86_64" in raised.value.message
    assert "linux-headers" in raised.value.hint
    assert raised.value.one_line().count("\n") == 0


def test_no_src_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(headers, "SRC_DIR", tmp_path / "missing")
    with pytest.raises(KernelError, match="no kernel headers"):
        headers.find(running_release=NO_SUCH_RELEASE, machine="x86_64")


def _installed_running_headers() -> str | None:
    modules = Path("/lib/modules")
    if not modules.is_dir():
        return None
    for release in sorted(os.listdir(modules)):
        if (modules / release / "build/include").is_dir():
            return release
    return None


@pytest.mark.skipif(_installed_running_headers() is None, reason="no /lib/modules/*/build on this machine")
def test_running_headers_win_when_present(src: Path) -> None:
    """A release with /lib/modules/RELEASE/build is taken as the running kernel's, before any fallback."""
    release = _installed_running_headers()
    assert release is not None
    debian_pair(src, "99.0.0-1")
    choice = headers.find(running_release=release, machine="x86_64")
    assert choice == headers.HeaderChoice("running", f"/lib/modules/{release}/build", release, release)
    assert choice.describe() == f"/lib/modules/{release}/build (the running kernel's)"
