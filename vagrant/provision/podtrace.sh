#!/usr/bin/env bash
# Both nodes, last: install podtrace from the synced repository (/vagrant = the repo root) with `make setup`,
# put `podtrace` on root's PATH and run `podtrace doctor`. Idempotent (make setup is).
set -euo pipefail

PROVISION_DIR="${PROVISION_DIR:-/vagrant/vagrant/provision}"
# shellcheck source=lib.sh
source "$PROVISION_DIR/lib.sh"
REPO="${REPO:-/vagrant}"
DOCTOR_STRICT="${DOCTOR_STRICT:-0}"

[ -f "$REPO/Makefile" ] || die "$REPO is not the podtrace repository (synced folder missing? try: vagrant reload)"

step "podtrace: make setup in $REPO"
make -C "$REPO" setup
ln -sfn "$REPO/.venv/bin/podtrace" /usr/local/bin/podtrace

step "podtrace doctor"
rc=0
podtrace doctor || rc=$?
if [ "$rc" -ne 0 ]; then
    if [ "$DOCTOR_STRICT" = 1 ]; then
        die "podtrace doctor exited $rc"
    fi
    warn "podtrace doctor exited $rc (provisioning continues; DOCTOR_STRICT=1 makes this fatal)"
fi
step "done: vagrant ssh $(hostname), then: sudo podtrace doctor"
