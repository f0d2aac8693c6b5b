"""The vagrant/ lab: scripts parse, the Vagrantfile parses and wires the scripts, PROXY_MODE is handled.

Nothing here boots a VM (the CI machine has no nested virtualization). The Vagrantfile is evaluated under a
small Ruby stand-in for Vagrant's configuration API, which records every call, so the tests see what Vagrant
would be asked to do without Vagrant. `vagrant validate` runs too where vagrant is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
PROVISION_DIR = VAGRANT_DIR / "provision"
SCRIPTS = sorted(PROVISION_DIR.glob("*.sh"))
MODES = ("iptables", "ipvs", "nftables")
IPVS_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "nf_conntrack")

RUBY = shutil.which("ruby")
BASH = shutil.which("bash") or "/bin/bash"
needs_ruby = pytest.mark.skipif(RUBY is None, reason="ruby is not installed (apt-get install ruby)")

# A stand-in for Vagrant's configuration API: every call is accepted; provisioners, machine definitions and
# synced folders are recorded and printed as JSON.
RUBY_HARNESS = r"""
require "json"
$record = { "machines" => [], "provisioners" => [], "synced_folders" => [], "providers" => [] }

class Recorder
  def initialize(machine) @machine = machine end
  def respond_to_missing?(*) true end
  def method_missing(name, *args, **kw, &blk)
    case name
    when :define
      $record["machines"] << args[0].to_s
      blk&.call(Recorder.new(args[0].to_s))
    when :provision
      $record["provisioners"] << { "machine" => @machine, "name" => args[0].to_s,
                                   "type" => (kw[:type] || args[0]).to_s, "path" => kw[:path],
                                   "env" => kw[:env] || {} }
    when :synced_folder
      $record["synced_folders"] << { "machine" => @machine, "host" => args[0], "guest" => args[1],
                                     "options" => kw.transform_keys(&:to_s) }
    when :provider
      $record["providers"] << args[0].to_s
      blk&.call(Recorder.new(@machine))
    else
      blk&.call(Recorder.new(@machine))
    end
    self
  end
end

module Vagrant
  def self.require_version(*) end
  def self.configure(_version) yield Recorder.new(nil) end
end

load ARGV[0]
puts JSON.generate($record)
"""


def _bash(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, "-c", f'set -euo pipefail; source "{PROVISION_DIR}/lib.sh"; {script}', "bash", *args],
        capture_output=True, text=True, timeout=30,
    )


@pytest.fixture
def vagrant_copy(tmp_path: Path) -> Path:
    """A copy of vagrant/: the Vagrantfile keeps state in its own .vagrant/, the repository stays untouched."""
    copy = tmp_path / "repo" / "vagrant"
    shutil.copytree(VAGRANT_DIR, copy, ignore=shutil.ignore_patterns(".vagrant"))
    return copy


def _evaluate(vagrant_dir: Path, tmp_path: Path, proxy_mode: str | None) -> subprocess.CompletedProcess[str]:
    harness = tmp_path / "harness.rb"
    harness.write_text(RUBY_HARNESS)
    env = {k: v for k, v in os.environ.items() if k not in ("PROXY_MODE", "NET_PREFIX", "K8S_VERSION")}
    if proxy_mode is not None:
        env["PROXY_MODE"] = proxy_mode
    assert RUBY is not None
    return subprocess.run(
        [RUBY, str(harness), str(vagrant_dir / "Vagrantfile")],
        capture_output=True, text=True, env=env, cwd=vagrant_dir, timeout=60,
    )


def _record(vagrant_dir: Path, tmp_path: Path, proxy_mode: str | None) -> dict:
    proc = _evaluate(vagrant_dir, tmp_path, proxy_mode)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- shell -------------------------------------------------------------------------------------------------


def test_provisioning_scripts_exist() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"lib.sh", "common.sh", "control-plane.sh", "worker.sh", "workload.sh", "podtrace.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script: Path) -> None:
    proc = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.name != "lib.sh"], ids=lambda p: p.name)
def test_script_is_strict(script: Path) -> None:
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck() -> None:
    proc = subprocess.run(
        ["shellcheck", "-x", "-P", str(PROVISION_DIR), *map(str, SCRIPTS)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("mode", MODES)
def test_kube_proxy_config_per_mode(mode: str) -> None:
    proc = _bash('render_kube_proxy_config "$1"', mode)
    assert proc.returncode == 0, proc.stderr
    assert "kind: KubeProxyConfiguration" in proc.stdout
    assert f'mode: "{mode}"' in proc.stdout
    assert ("strictARP: true" in proc.stdout) == (mode == "ipvs")


@pytest.mark.parametrize("mode", MODES)
def test_kubeadm_init_config_carries_mode_and_lab_cidrs(mode: str) -> None:
    proc = _bash('render_kubeadm_init_config node1 192.168.56.10 abcdef.0123456789abcdef v1.33.4 "$1"', mode)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "apiVersion: kubeadm.k8s.io/v1beta4" in out
    assert 'podSubnet: "10.244.0.0/16"' in out
    assert 'advertiseAddress: "192.168.56.10"' in out
    assert "taints: []" in out  # node1 runs pods too
    assert f'mode: "{mode}"' in out


def test_kubeadm_api_version_follows_kubernetes_version() -> None:
    proc = _bash("kubeadm_api_version 1.30; kubeadm_api_version 1.31; kubeadm_api_version 1.33.4")
    v3, v4 = "kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4"
    assert proc.stdout.split() == [v3, v4, v4]


@pytest.mark.parametrize("bad", ["", "userspace", "IPVS ", "ipvs;true"])
def test_bad_proxy_mode_is_refused(bad: str) -> None:
    for func in ("check_proxy_mode", "render_kube_proxy_config", "ipvs_modules_conf"):
        proc = _bash(f'{func} "$1"', bad)
        assert proc.returncode != 0, func
        assert "PROXY_MODE must be one of: iptables, ipvs, nftables" in proc.stderr


def test_ipvs_modules_only_in_ipvs_mode() -> None:
    proc = _bash("ipvs_modules_conf ipvs")
    assert [ln for ln in proc.stdout.splitlines() if not ln.startswith("#")] == list(IPVS_MODULES)
    for mode in ("iptables", "nftables"):
        assert _bash('ipvs_modules_conf "$1"', mode).stdout == ""


@pytest.mark.parametrize("mode", MODES)
def test_switching_mode_in_kube_proxy_configmap(mode: str) -> None:
    conf = (
        'apiVersion: kubeproxy.config.k8s.io/v1alpha1\nipvs:\n  scheduler: ""\n  strictARP: false\nmode: ""\n'
    )
    lib = f'source "{PROVISION_DIR}/lib.sh"'
    before = subprocess.run([BASH, "-c", f"{lib}; proxy_mode_of_config"], input=conf, capture_output=True, text=True)
    assert before.stdout.strip() == "iptables"  # "" is iptables on Linux
    switched = subprocess.run([BASH, "-c", f"{lib}; set_proxy_mode_in_config {mode}"],
                              input=conf, capture_output=True, text=True)
    assert f'mode: "{mode}"' in switched.stdout
    assert f"strictARP: {'true' if mode == 'ipvs' else 'false'}" in switched.stdout
    after = subprocess.run([BASH, "-c", f"{lib}; proxy_mode_of_config"],
                           input=switched.stdout, capture_output=True, text=True)
    assert after.stdout.strip() == mode


def test_common_loads_ipvs_modules_only_for_ipvs() -> None:
    text = (PROVISION_DIR / "common.sh").read_text()
    assert 'if [ "$PROXY_MODE" = ipvs ]; then' in text
    assert 'for mod in $IPVS_MODULES; do modprobe "$mod"; done' in text
    assert "net.bridge.bridge-nf-call-iptables = 1" in text


def test_demo_workload_matches_the_builtin_lab() -> None:
    yaml = pytest.importorskip("yaml")
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all((PROVISION_DIR / "demo-workload.yaml").read_text()) if d}
    web = docs[("Deployment", "web")]
    assert web["spec"]["replicas"] == 3
    spread = web["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["minDomains"] == 2
    svc = docs[("Service", "web")]
    assert svc["metadata"]["namespace"] == "default" and svc["spec"]["type"] == "ClusterIP"
    assert {(p["port"], p["targetPort"], p["protocol"]) for p in svc["spec"]["ports"]} >= {(80, 8080, "TCP")}
    nodeport = docs[("Service", "web-nodeport")]
    assert [p["nodePort"] for p in nodeport["spec"]["ports"]] == [30080]
    empty = docs[("Service", "no-endpoints")]
    assert empty["spec"]["selector"] != web["spec"]["selector"]["matchLabels"]
    assert ("Pod", "client") in docs


# --- Vagrantfile -------------------------------------------------------------------------------------------


@needs_ruby
def test_vagrantfile_parses() -> None:
    assert RUBY is not None
    proc = subprocess.run([RUBY, "-c", str(VAGRANT_DIR / "Vagrantfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Syntax OK" in proc.stdout


@needs_ruby
def test_vagrantfile_wires_existing_scripts(vagrant_copy: Path, tmp_path: Path) -> None:
    rec = _record(vagrant_copy, tmp_path, None)
    assert rec["machines"] == ["node1", "node2"]
    assert {"libvirt", "virtualbox"} <= set(rec["providers"])
    by_machine: dict[str, list[str]] = {}
    referenced = set()
    for prov in rec["provisioners"]:
        assert prov["type"] == "shell"
        path = vagrant_copy / prov["path"]
        assert path.is_file(), f"{prov['path']} does not exist"
        referenced.add(path.name)
        by_machine.setdefault(prov["machine"], []).append(prov["name"])
    assert by_machine["node1"] == ["common", "control-plane", "workload", "podtrace"]
    assert by_machine["node2"] == ["common", "worker", "podtrace"]  # podtrace (and its doctor) comes last
    # Every script but the sourced library is run by some provisioner.
    assert referenced == {p.name for p in SCRIPTS} - {"lib.sh"}
    # The workload manifest and lib.sh are read from the synced repository: /vagrant is the repo root.
    roots = [f for f in rec["synced_folders"] if f["guest"] == "/vagrant" and not f["options"].get("disabled")]
    assert len(roots) == 1
    root = roots[0]
    assert root["host"] == ".." and root["options"]["type"] == "rsync"
    assert ".venv/" in root["options"]["rsync__exclude"]
    assert {p["env"]["PROVISION_DIR"] for p in rec["provisioners"]} == {"/vagrant/vagrant/provision"}


@needs_ruby
@pytest.mark.parametrize("mode", MODES)
def test_vagrantfile_passes_proxy_mode(mode: str, vagrant_copy: Path, tmp_path: Path) -> None:
    rec = _record(vagrant_copy, tmp_path, mode)
    assert {p["env"]["PROXY_MODE"] for p in rec["provisioners"]} == {mode}
    tokens = {p["env"]["KUBEADM_TOKEN"] for p in rec["provisioners"]}
    assert len(tokens) == 1
    [token] = tokens
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token), token


@needs_ruby
def test_vagrantfile_defaults_to_iptables_and_remembers_mode(vagrant_copy: Path, tmp_path: Path) -> None:
    first = _record(vagrant_copy, tmp_path, None)
    assert {p["env"]["PROXY_MODE"] for p in first["provisioners"]} == {"iptables"}
    _record(vagrant_copy, tmp_path, "ipvs")
    # A later bare `vagrant provision` keeps the cluster's mode; the join token stays the same too.
    later = _record(vagrant_copy, tmp_path, None)
    assert {p["env"]["PROXY_MODE"] for p in later["provisioners"]} == {"ipvs"}
    token = first["provisioners"][0]["env"]["KUBEADM_TOKEN"]
    assert later["provisioners"][0]["env"]["KUBEADM_TOKEN"] == token
    again = _record(vagrant_copy, tmp_path, "nftables")
    assert {p["env"]["PROXY_MODE"] for p in again["provisioners"]} == {"nftables"}


@needs_ruby
@pytest.mark.parametrize("bad", ["userspace", "kernelspace", "ipvs,iptables"])
def test_vagrantfile_refuses_bad_proxy_mode(bad: str, vagrant_copy: Path, tmp_path: Path) -> None:
    proc = _evaluate(vagrant_copy, tmp_path, bad)
    assert proc.returncode != 0
    assert "PROXY_MODE must be one of iptables, ipvs, nftables" in proc.stderr


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
@pytest.mark.parametrize("mode", MODES)
def test_vagrant_validate(mode: str, vagrant_copy: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PROXY_MODE=mode, VAGRANT_HOME=str(tmp_path / "vagrant.d"),
               VAGRANT_CHECKPOINT_DISABLE="1")
    # --ignore-provider: no VirtualBox/libvirt here; the Vagrantfile itself (boxes, scripts, PROXY_MODE) is checked.
    proc = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=vagrant_copy, capture_output=True,
                          text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
