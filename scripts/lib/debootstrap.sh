# shellcheck shell=bash
# debootstrap_tree ROOTFS SUITE MIRROR: a minbase Debian tree with the updates and security suites, as the official
# image and a freshly installed machine have them (debootstrap alone writes only the main suite).
# Sourced by scripts/build-image.sh and scripts/fresh-machine-test.sh.
debootstrap_tree() {
    local rootfs=$1 suite=$2 mirror=$3
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror"
    cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SOURCES
}
