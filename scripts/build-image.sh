#!/usr/bin/env bash
# Build the `podtrace serve` image (tracer/serve/deploy/Dockerfile) with whatever engine this machine has:
# `docker build` when a Docker daemon answers, else podman, else buildah (Debian's podman is installed with apt
# when neither exists). When the base image cannot be pulled (no registry reachable), the base is built from
# Debian's mirror with debootstrap and imported as the local image debian:bookworm-slim.
#
#   sudo scripts/build-image.sh [TAG]          (default podtrace:<version in pyproject.toml>)
#
# Environment: PODTRACE_IMAGE_ENGINE=docker|podman|buildah forces an engine; PODTRACE_STORAGE_DRIVER=overlay|vfs
# forces podman/buildah's storage driver (default: overlay when it mounts here, else vfs);
# PODTRACE_DEBIAN_MIRROR (default http://deb.debian.org/debian); PODTRACE_BUILD_CA (default $PIP_CERT when set):
# a CA bundle pip inside the build trusts, for build machines behind a TLS-intercepting proxy. It is mounted
# into the RUN steps only (podman, buildah), never copied into the image.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/debootstrap.sh
source scripts/lib/debootstrap.sh

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
TAG=${1:-podtrace:$VERSION}
BASE=debian:bookworm-slim
SUITE=bookworm
MIRROR=${PODTRACE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERFILE=tracer/serve/deploy/Dockerfile

step() { printf '==> %s\n' "$*"; }
die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "needs root to install ${missing[*]} (run: sudo make image)"
    step "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# --- the engine -------------------------------------------------------------------------------------------
engine=${PODTRACE_IMAGE_ENGINE:-}
if [ -z "$engine" ]; then
    if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null; then
        engine=podman
    elif command -v buildah >/dev/null; then
        engine=buildah
    else
        if command -v docker >/dev/null; then
            step "docker is installed but no Docker daemon answers: using podman instead"
        fi
        # podman and the runtime it needs on a machine without systemd's defaults (crun, netavark for RUN's
        # network, uidmap for the user namespace tools, iptables for the network's rules).
        apt_install podman crun netavark aardvark-dns uidmap iptables
        engine=podman
    fi
fi
step "engine: $engine"

storage=()
if [ "$engine" != docker ]; then
    [ "$(id -u)" -eq 0 ] || die "run as root: rootless $engine needs subuid ranges this script does not set up"
    driver=${PODTRACE_STORAGE_DRIVER:-}
    if [ -z "$driver" ]; then
        # A store that exists keeps its driver (podman refuses to open it with another one).
        if [ -d /var/lib/containers/storage/overlay-images ]; then
            driver=overlay
        elif [ -d /var/lib/containers/storage/vfs-images ]; then
            driver=vfs
        else
            probe=$(mktemp -d /var/tmp/podtrace-overlay-probe.XXXXXX)
            mkdir -p "$probe"/{lower,upper,work,merged}
            if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
                "$probe/merged" 2>/dev/null; then
                umount "$probe/merged"
                driver=overlay
            else
                driver=vfs
            fi
            rm -rf "$probe"
        fi
    fi
    storage=(--storage-driver "$driver")
    step "storage driver: $driver"
fi

eng() { "$engine" "${storage[@]}" "$@"; }

have_image() {
    case $engine in
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
        podman) eng image exists "$1" ;;
        buildah) eng inspect --type image "$1" >/dev/null 2>&1 ;;
    esac
}

# --- the base image ---------------------------------------------------------------------------------------
if have_image "$BASE"; then
    step "base $BASE: present locally"
elif step "pulling $BASE" && timeout 120 "$engine" "${storage[@]}" pull "docker.io/library/$BASE"; then
    :
else
    step "$BASE cannot be pulled: building it from $MIRROR with debootstrap --variant=minbase $SUITE"
    apt_install debootstrap
    rootfs=$(mktemp -d /var/tmp/podtrace-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap_tree "$rootfs" "$SUITE" "$MIRROR"
    # What the official image has and debootstrap does not: no caches.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log \
        "${rootfs:?}"/tmp/* "${rootfs:?}"/dev/*
    if [ "$engine" = buildah ]; then  # buildah has no import: a scratch container with the tree copied in
        ctr=$(eng from scratch)
        tar -C "$rootfs" --numeric-owner -c . | tar -C "$(eng mount "$ctr")" --numeric-owner -x
        eng config --cmd bash "$ctr"
        eng commit -q "$ctr" "$BASE" >/dev/null
        eng rm "$ctr" >/dev/null
    else
        tar -C "$rootfs" --numeric-owner -c . | eng import \
            --change 'CMD ["bash"]' --message "debootstrap --variant=minbase $SUITE $MIRROR" - "$BASE"
    fi
    rm -rf "$rootfs"
    trap - EXIT
    step "imported the debootstrap rootfs as the local image $BASE"
fi

# --- the image --------------------------------------------------------------------------------------------
build_ca=${PODTRACE_BUILD_CA:-${PIP_CERT:-}}
ca=()
if [ -n "$build_ca" ] && [ -f "$build_ca" ]; then
    if [ "$engine" = docker ]; then
        step "not passing $build_ca to docker build (no build-time volumes there): pip uses its own CA bundle"
    else
        step "pip in the build trusts $build_ca (this machine's CA bundle, mounted for RUN, not in the image)"
        ca=(--volume "$build_ca:/run/podtrace-build-ca.crt:ro" --build-arg PIP_CERT=/run/podtrace-build-ca.crt)
    fi
fi
step "building $TAG from $DOCKERFILE"
start=$(date +%s)
case $engine in
    docker) docker build -f "$DOCKERFILE" -t "$TAG" . ;;
    # --pull=never: the base is local (pulled or built above); never ask a registry again. chroot isolation
    # for RUN: no OCI runtime and no cgroups needed (crun refuses a cgroup v1 + v2 "hybrid" host), and the
    # host's network, so apt and pip need no container network set up on the build machine.
    podman) eng build --pull=never --isolation=chroot --network=host "${ca[@]}" -f "$DOCKERFILE" -t "$TAG" . ;;
    buildah) eng bud --pull=false --isolation=chroot --network=host "${ca[@]}" -f "$DOCKERFILE" -t "$TAG" . ;;
esac
elapsed=$(( $(date +%s) - start ))
case $engine in
    buildah) size=$(eng inspect --type image --format '{{.Docker.Size}}' "$TAG" 2>/dev/null || echo '?') ;;
    *) size=$(eng image inspect --format '{{.Size}}' "$TAG") ;;
esac
step "built $TAG with $engine in ${elapsed}s, $(numfmt --to=iec-i --suffix=B "$size" 2>/dev/null || echo "$size bytes")"
