#!/usr/bin/env bash
# The README's `make test` on a machine nobody set up: a Debian bookworm debootstrapped from the mirror (minbase,
# plus only make, git and certificates, what a user needs to clone and type the command), the project cloned into
# it from this checkout's HEAD, and `make test` run there as root with CI=true. It shares this machine's kernel:
# its BPF, namespaces and the running kernel's modules (bound read-only).
#
#   sudo scripts/fresh-machine-test.sh [--keep] [ROOTFS]     # default /var/tmp/podtrace-fresh; log in ROOTFS.log
#
# --keep leaves the tree for another run (debootstrap is then skipped; the clone is made afresh). TARGET=test-vm
# (any make target) runs that target instead of `make test`, e.g. to finish a tier a failed run never reached. Not part of
# `make test`: it downloads a system and takes as long as the suite itself.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/debootstrap.sh
source scripts/lib/debootstrap.sh

keep=0
if [ "${1:-}" = --keep ]; then keep=1; shift; fi
ROOTFS=${1:-/var/tmp/podtrace-fresh}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
SRC=$(pwd)

step() { printf '==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "fresh-machine-test: needs root (debootstrap, mounts, chroot)" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    step "installing debootstrap (this machine's, not the tree's)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null ||
        { echo "fresh-machine-test: cannot install debootstrap (apt-get install debootstrap)" >&2; exit 1; }
fi

mounted=()
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -l "${mounted[i]}" 2>/dev/null || true
    done
    if [ "$keep" -eq 0 ]; then
        rm -rf --one-file-system "$ROOTFS"
    fi
}
trap cleanup EXIT

mnt() {  # mnt TARGET ARGS...: mount inside the tree, remembered for the cleanup
    local target="$ROOTFS$1"
    shift
    mkdir -p "$target"
    mount "$@" "$target"
    mounted+=("$target")
}

if [ ! -x "$ROOTFS/usr/bin/apt-get" ]; then
    step "debootstrap --variant=minbase $SUITE $ROOTFS (from $MIRROR)"
    rm -rf --one-file-system "$ROOTFS"
    debootstrap_tree "$ROOTFS" "$SUITE" "$MIRROR"
else
    step "reusing $ROOTFS"
fi
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"

# On a real machine / is a mount point; `ip netns exec` and `ip -n` remount it (--make-rslave /), which fails
# with EINVAL in a chroot whose root is a plain directory. A bind mount of the tree onto itself makes it one.
mount --bind "$ROOTFS" "$ROOTFS"
mounted+=("$ROOTFS")
mnt /proc -t proc proc
mnt /sys --rbind /sys
mount --make-rslave "$ROOTFS/sys"
mnt /dev --rbind /dev
mount --make-rslave "$ROOTFS/dev"
mnt /run -t tmpfs tmpfs
# The lab tests' lock is shared with this machine's, so the two never have a lab up at once (their pod cgroups
# live in the one cgroup tree).
mkdir -p /run/lock
mnt /run/lock --bind /run/lock
# The running kernel's modules only (its own, as a real machine has them): the tree installs kernel packages of
# its own into the rest of /lib/modules.
if [ -d "/lib/modules/$(uname -r)" ]; then
    mnt "/lib/modules/$(uname -r)" --bind "/lib/modules/$(uname -r)"
    mount -o remount,bind,ro "$ROOTFS/lib/modules/$(uname -r)"
fi
mnt /src --bind "$SRC"
mount -o remount,bind,ro "$ROOTFS/src"

in_tree() {
    chroot "$ROOTFS" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 CI=true "$@"
}

# The machine's own trust store: a machine on this network (behind a TLS-inspecting egress proxy) comes with the
# proxy's CA installed locally, so it goes in the same place here; ca-certificates' postinst adds it to the bundle.
# Nothing of the project's setup is done for it.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
fi
step "what a user brings: make, git, certificates"
in_tree bash -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends make git ca-certificates'
step "cloning $(git rev-parse --short HEAD) into /root/podtrace"
in_tree bash -c 'rm -rf /root/podtrace && git config --global --add safe.directory /src/.git && git config --global --add safe.directory /src && git clone -q /src /root/podtrace'
in_tree git -C /root/podtrace checkout -q "$(git rev-parse HEAD)"
TARGET=${TARGET:-test}
step "make $TARGET (CI=true), as the README says"
start=$(date +%s)
status=0
in_tree bash -c "cd /root/podtrace && make $TARGET" || status=$?
step "make $TARGET exited $status after $(( $(date +%s) - start )) s"
exit "$status"
