#!/usr/bin/env bash
# Idempotent set-up of a fresh Debian/Ubuntu machine for podtrace: apt packages, the virtual environment,
# kernel filesystems and the kernel-headers fallback that BCC needs to compile.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    python3-bpfcc python3-venv python3-pip bpftool iproute2 iptables nftables conntrack ipvsadm
    linux-headers-amd64 tcpdump tshark tmux libpcap0.8 iperf3 procps kmod
    linux-image-amd64 qemu-system-x86 busybox-static prometheus
    iputils-ping gcc libc6-dev git ruby shellcheck vagrant nfacct
    file zstd  # virtme-ng (the VM tier) runs `file` on the kernel image; zstd for compressed modules
)
VENV=.venv

step() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: needs root to install packages and mount tracefs (run: sudo make setup)" >&2
    exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    # linux-headers-amd64 only exists on amd64 Debian; other architectures need their own meta-package.
    if [ "$pkg" = linux-headers-amd64 ] && [ "$(dpkg --print-architecture 2>/dev/null)" != amd64 ]; then
        pkg="linux-headers-$(dpkg --print-architecture)"
    fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    step "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer no without a prompt.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    step "apt packages present"
fi

if [ ! -x "$VENV/bin/python" ]; then
    step "creating $VENV (with system site packages, so Debian's bcc imports)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -e "$stamp" ]; then
    step "installing podtrace and its Python dependencies into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    rm -f "$VENV"/.installed-*
    touch "$stamp"
else
    step "Python dependencies present"
fi

step "kernel filesystems and headers"
"$VENV/bin/podtrace" setup-kernel
