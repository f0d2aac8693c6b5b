"""doctor's advice is true on the kernel it runs on: lockdown read where securityfs shows it, mounted first where
it does not; no `modprobe` on a kernel that loads no modules (the states as directories and files laid out here)."""

from __future__ import annotations

from pathlib import Path

from tracer.cli import doctor as cmd_doctor
from tracer.kernel.kernelhints import lockdown_hint, module_hint


def test_lockdown_is_read_when_securityfs_is_mounted(tmp_path: Path) -> None:
    (tmp_path / "lockdown").write_text("none [integrity] confidentiality\n")
    assert lockdown_hint(str(tmp_path)) == f"{tmp_path}/lockdown reads none [integrity] confidentiality (needs [none])"


def test_an_empty_mount_point_says_mount_securityfs_first(tmp_path: Path) -> None:
    hint = lockdown_hint(str(tmp_path))
    assert hint.startswith("securityfs is not mounted: ")
    assert f"`mount -t securityfs securityfs {tmp_path} && cat {tmp_path}/lockdown`" in hint


def test_securityfs_without_lockdown_points_at_the_other_lsms(tmp_path: Path) -> None:
    (tmp_path / "lsm").write_text("capability,yama,apparmor\n")
    hint = lockdown_hint(str(tmp_path))
    assert "no lockdown LSM" in hint and "cat" not in hint.split("`")[0]
    assert "lockdown`" not in hint  # nothing tells the user to read a file that is not there


def test_module_loading_is_advised_only_where_modules_load(tmp_path: Path) -> None:
    modules = tmp_path / "modules"  # (the test's name is in tmp_path: it must not hold the word looked for)
    assert "modprobe" not in module_hint("ip_vs", "CONFIG_IP_VS", str(modules))
    assert "CONFIG_IP_VS=y" in module_hint("ip_vs", "CONFIG_IP_VS", str(modules))
    modules.write_text("ip_vs 184320 0 - Live 0x0000000000000000\n")
    assert module_hint("ip_vs", "CONFIG_IP_VS", str(modules)).startswith("`modprobe ip_vs`")


def test_doctor_fixes_follow_this_kernel() -> None:
    """The fix texts as doctor makes them here: every hint is computed when asked, never a fixed `cat` or
    `modprobe` for a file or a module loader this kernel may not have."""
    texts = {fragment: fix if isinstance(fix, str) else fix() for fragment, fix in cmd_doctor.FIXES}
    assert lockdown_hint() in texts["EPERM"] and module_hint("ip_vs", "CONFIG_IP_VS") in texts["IPVS"]
    if not Path("/sys/kernel/security/lockdown").exists():
        assert "cat /sys/kernel/security/lockdown`" not in texts["EPERM"].split("&&")[0]
    if not Path("/proc/modules").exists():
        assert "modprobe" not in " ".join(texts.values())
