"""Issue 2 on the real kernel: doctor tells the truth, BTF offsets read what the kernel's own tracepoint says,
and the Python mirror of the event struct matches what BCC compiles."""

from __future__ import annotations

import ctypes
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
from support.netns import netns_pair, send_udp
from support.podtrace import COMMAND, run

from bpf import BPF_DIR
from tracer.events import decode as events
from tracer.kernel import bccenv
from tracer.kernel.btf import Btf
from tracer.kernel.ksyms import KernelSymbols
from tracer.probes.build import ProbeConfig
from tracer.probes.pcapfilter import compile_filter
from tracer.sources.live import LiveSource

pytestmark = pytest.mark.root


def test_doctor_reports_what_the_kernel_really_allows() -> None:
    result = run("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    mechanisms = report["mechanisms"]
    kprobes_in_kernel = os.path.exists("/sys/kernel/tracing/kprobe_events") or os.path.isdir(
        "/sys/bus/event_source/devices/kprobe"
    )
    assert mechanisms["kprobe"]["available"] == kprobes_in_kernel
    if not kprobes_in_kernel:
        assert "not in this kernel" in mechanisms["kprobe"]["reason"]
    for always in ("tp_btf", "raw_tracepoint", "tracepoint", "tc"):
        assert mechanisms[always]["available"], mechanisms[always]
    major, minor = (int(part) for part in platform.release().split(".")[:2])
    assert mechanisms["netfilter_link"]["available"] == ((major, minor) >= (6, 4))
    ipvs = next(hook for hook in report["hooks"] if hook["name"] == "ipvs")
    has_ipvs = KernelSymbols.load().has("ip_vs_conn_new")
    assert bool(ipvs["chosen"]) == (has_ipvs and kprobes_in_kernel)
    if not has_ipvs:
        assert any("IPVS" in rejected["reason"] for rejected in ipvs["rejected"])
        assert any(line.startswith("ipvs:") for line in report["cannot_see"])
    own_headers = os.path.isdir(f"/lib/modules/{platform.release()}/build")
    assert report["headers"]["kind"] == ("running" if own_headers else "fallback")
    assert report["core_ok"] is True
    assert report["btf"]["drop_reasons"] == len(Btf.load().enum("skb_drop_reason"))


def test_doctor_human_output_names_the_plan() -> None:
    result = run("doctor")
    assert result.returncode == 0, result.stderr
    assert "drops          tp_btf: kfree_skb" in result.stdout
    assert "hook points" in result.stdout and "Traceback" not in result.stderr
    assert "ok: the core probes attach" in result.stdout


def _kernel_config() -> dict[str, str]:
    """CONFIG_X -> y/m/n from /proc/config.gz: an oracle independent of doctor's trials."""
    config: dict[str, str] = {}
    with gzip.open("/proc/config.gz", "rt") as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("CONFIG_"):
                name, _, value = line.partition("=")
                config[name] = value
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                config[line[2:].split()[0]] = "n"
    return config


@pytest.mark.skipif(not os.path.exists("/proc/config.gz"), reason="the kernel does not expose /proc/config.gz")
def test_doctor_agrees_with_the_kernel_config_and_an_fentry_trial_of_its_own() -> None:
    report = json.loads(run("doctor", "--json").stdout)
    config = _kernel_config()
    mechanisms = report["mechanisms"]
    assert mechanisms["kprobe"]["available"] == (config.get("CONFIG_KPROBES") == "y")
    if config.get("CONFIG_KPROBES") != "y":
        assert mechanisms["kprobe"]["reason"] == "kprobes are not in this kernel (CONFIG_KPROBES off)"
        assert any(line.startswith("netfilter: verdicts with table and chain") for line in report["cannot_see"])
        assert any(fix.startswith("kprobes: use a kernel built with CONFIG_KPROBES=y") for fix in report["fixes"])
    assert mechanisms["netfilter_link"]["available"] == (config.get("CONFIG_NETFILTER_BPF_LINK") == "y")
    assert mechanisms["tc"]["available"] == (config.get("CONFIG_NET_CLS_BPF") in ("y", "m"))
    if config.get("CONFIG_IP_VS", "n") == "n":
        assert "ipvs: IPVS Service flows (iptables and nftables modes are unaffected)" in report["cannot_see"]
        assert any(fix.startswith("IPVS:") for fix in report["fixes"])

    # fentry: load one on another function than doctor tries, straight through BCC.
    bcc = bccenv.bcc_module()
    with bccenv.captured_stderr() as lines:
        try:
            bcc.BPF(text="KFUNC_PROBE(ip_rcv) { return 0; }").cleanup()
            fentry_works = True
        except Exception:  # BCC raises bare Exception
            fentry_works = False
    assert mechanisms["fentry"]["available"] == fentry_works
    if not fentry_works and any("Operation not permitted" in line for line in lines):
        assert "EPERM" in mechanisms["fentry"]["reason"]
        # A fact about the kernel, not a fix: no hook point offers fentry (podtrace has no fentry programs).
        assert not any(fix.startswith("fentry:") for fix in report["fixes"])

    # headers: the running kernel's tree when installed, else the newest /usr/src tree (Debian's 6.1 here)
    if not os.path.isdir(f"/lib/modules/{platform.release()}/build") and platform.machine() == "x86_64":
        trees = sorted(Path("/usr/src").glob("linux-headers-*-amd64"))
        assert trees, "no fallback headers installed"
        assert report["headers"]["kind"] == "fallback"
        assert report["headers"]["release"] == trees[-1].name.removeprefix("linux-headers-")
    assert report["btf"]["layout_problems"] == []
    assert 0 < report["btf"]["load_ms"] < 1000


# -- errors: one line naming the fix, exit 1, no traceback, each caused for real --


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("podtrace: ")
    return lines[0]


def _in_private_mounts(setup: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` in a mount namespace of its own after the shell `setup`: the host's mounts stay untouched."""
    script = f"{setup}\nexec \"$@\""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script, "sh", *argv],
                          capture_output=True, text=True, timeout=120, check=False)


def test_doctor_without_btf_in_the_kernel() -> None:
    line = _one_line_error(_in_private_mounts("mount -t tmpfs none /sys/kernel/btf", *COMMAND, "doctor"))
    assert line == ("podtrace: no BTF at /sys/kernel/btf/vmlinux (the kernel needs CONFIG_DEBUG_INFO_BTF=y; "
                    "pass --btf FILE with a vmlinux BTF)")


def test_doctor_with_a_truncated_btf_file(tmp_path: Path) -> None:
    truncated = tmp_path / "vmlinux.btf"
    truncated.write_bytes(Path("/sys/kernel/btf/vmlinux").read_bytes()[:100_000])
    line = _one_line_error(run("doctor", "--btf", str(truncated)))
    assert f"BTF at {truncated} is corrupt" in line and "truncated" in line and "pass --btf FILE" in line
    missing = _one_line_error(run("doctor", "--btf", str(tmp_path / "nonexistent")))
    assert "no BTF at" in missing and "--btf FILE" in missing


def test_doctor_with_a_btf_that_lacks_the_kernel_structs() -> None:
    """A BTF that loads but lacks sk_buff & co: doctor shows what is missing and exits 1 (the core cannot load)."""
    fixture = Path(__file__).parents[1] / "unit" / "fixtures" / "btf" / "fixture.btf"
    result = run("doctor", "--btf", str(fixture))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"  layout     MISSING struct sk_buff not found in BTF {fixture}" in result.stdout
    assert "no enum skb_drop_reason (kernel before 5.17)" in result.stdout
    assert "FAIL: the core probes cannot attach" in result.stdout
    assert result.stderr.splitlines()[-1] == ("podtrace: the core probes (drops, packet path) cannot attach on "
                                             "this kernel (see the BTF layout lines above)")


def test_doctor_without_bcc(tmp_path: Path) -> None:
    """A venv made without --system-site-packages: podtrace's own dependencies import, Debian's bcc does not."""
    system_python = shutil.which("python3", path="/usr/bin")
    if system_python is None:
        pytest.skip("no /usr/bin/python3")
    same = subprocess.run([system_python, "-c", "import sys; print(sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    if same != str(sys.version_info[:2]):
        pytest.skip(f"/usr/bin/python3 is {same}, the test venv needs {sys.version_info[:2]}")
    venv = tmp_path / "venv"
    subprocess.run([system_python, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    site_packages = Path(subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; "
                                         "print(sysconfig.get_paths()['purelib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip())
    ours = sysconfig.get_paths()["purelib"]
    (site_packages / "podtrace-deps.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    python = str(venv / "bin/python")
    probe = subprocess.run([python, "-c", "import pyroute2, tracer.cli.main; import bcc"], capture_output=True,
                           text=True, check=False)
    assert "No module named 'bcc'" in probe.stderr, probe.stderr
    line = _one_line_error(subprocess.run([python, "-m", "tracer.cli.main", "doctor"], capture_output=True, text=True,
                                          timeout=120, check=False))
    assert "BCC's Python module cannot be imported" in line and "python3-bpfcc" in line


def test_doctor_without_any_kernel_headers() -> None:
    if os.path.isdir(f"/lib/modules/{platform.release()}/build"):
        pytest.skip("the running kernel's own headers are installed")
    line = _one_line_error(_in_private_mounts("mount -t tmpfs none /usr/src", *COMMAND, "doctor"))
    assert f"no kernel headers for {platform.release()}" in line and "linux-headers-amd64" in line


def test_doctor_when_tracefs_cannot_be_mounted() -> None:
    """tracefs and debugfs unmounted, and root without CAP_SYS_ADMIN (as in a container) cannot mount them."""
    unmount = "for m in /sys/kernel/debug/tracing /sys/kernel/tracing /sys/kernel/debug; do umount -l $m || true; done"
    drop = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
    line = _one_line_error(_in_private_mounts(unmount, *drop, *COMMAND, "doctor"))
    assert line.startswith("podtrace: cannot mount tracefs on /sys/kernel/tracing: ")
    assert "mount -t tracefs tracefs /sys/kernel/tracing" in line
    assert os.path.isdir("/sys/kernel/tracing/events"), "the host's tracefs is still mounted"


TRACEPOINT_SIDE = r"""
#include "podtrace.h"
struct seen { u64 skb; u64 ts; u32 len; char name[16]; };
BPF_HASH(by_time, u64, struct seen, 65536);
TRACEPOINT_PROBE(net, netif_receive_skb)
{
    struct seen s = {};
    s.skb = (u64)args->skbaddr;
    s.ts = bpf_ktime_get_ns();
    s.len = args->len;
    TP_DATA_LOC_READ_CONST(s.name, name, 16);
    by_time.update(&s.ts, &s);
    return 0;
}
"""


def test_btf_offsets_read_the_same_skb_fields_as_the_kernels_own_tracepoint() -> None:
    """Path events read skb->len, the IPv4 header and dev->name through BTF offsets; the netif_receive_skb
    tracepoint records skb->len and the device name itself. Match them by skb address."""
    bcc = bccenv.bcc_module()
    with netns_pair() as pair:
        inode_b = pair.inode(pair.b)
        reference = bcc.BPF(text=TRACEPOINT_SIDE, cflags=[f"-I{BPF_DIR}"])
        source = LiveSource(ProbeConfig(path=True, drops=False, filter=compile_filter("udp port 5099"),
                                        netns_inode=inode_b))
        source.start(progress=False)
        try:
            send_udp(pair.a, pair.addr_b, 5099, 5, size=100, src_port=41099)
            time.sleep(0.3)
            received = [e for e in source.poll(200) if e.type == events.EVENT_PATH and e.reason == events.POINT_RX]
            # skb memory is reused, so match on the address and the nearest time: both programs run on the
            # same tracepoint hit, microseconds apart.
            seen = [value for _key, value in reference["by_time"].items()]
        finally:
            source.close()
            reference.cleanup()
    assert len(received) == 5
    for event in received:
        same_skb = [value for value in seen if value.skb == event.skb]
        assert same_skb, "the tracepoint saw the same skb"
        truth = min(same_skb, key=lambda value: abs(value.ts - event.ts_ns))
        assert abs(truth.ts - event.ts_ns) < 1_000_000
        assert event.len == truth.len == 100 + 8 + 20  # UDP payload + UDP header + IPv4 header
        assert event.ifname == ctypes.string_at(truth.name).decode() == "veth-b"
        assert (event.outer.src, event.outer.dst) == (pair.addr_a, pair.addr_b)
        assert (event.outer.sport, event.outer.dport, event.outer.proto) == (41099, 5099, 17)
        assert event.netns == inode_b


LAYOUT_PROGRAM = r"""
#include "podtrace.h"
BPF_ARRAY(layout, struct pt_packet_event, 1);
int unused(void *ctx) { return 0; }
"""


def test_python_event_mirror_matches_the_struct_bcc_compiles() -> None:
    bcc = bccenv.bcc_module()
    module = bcc.BPF(text=LAYOUT_PROGRAM, cflags=[f"-I{BPF_DIR}"])
    try:
        leaf = module["layout"].Leaf
        assert ctypes.sizeof(leaf) == events.EVENT_SIZE
        offsets = events.field_offsets()
        for name, _ctype in leaf._fields_:
            if name.startswith("__pad"):
                continue
            assert getattr(leaf, name).offset == offsets[name], name
        tuple_type = dict(leaf._fields_)["outer"]
        for name, _ctype in tuple_type._fields_:
            assert offsets["outer"] + getattr(tuple_type, name).offset == offsets[f"outer.{name}"], name
    finally:
        module.cleanup()


def test_pair_fixture_cleans_up() -> None:
    with netns_pair() as pair:
        names = (pair.a, pair.b)
        assert all(os.path.exists(f"/run/netns/{name}") for name in names)
    assert not any(os.path.exists(f"/run/netns/{name}") for name in names)


