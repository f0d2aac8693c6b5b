#!/usr/bin/env bash
# node2: join the cluster node1 created. Waits for node1's API server (vagrant-libvirt brings VMs up in
# parallel). Idempotent: a node that has joined is left alone.
set -euo pipefail

PROVISION_DIR="${PROVISION_DIR:-/vagrant/vagrant/provision}"
# shellcheck source=lib.sh
source "$PROVISION_DIR/lib.sh"

: "${NODE_NAME:?}" "${CONTROL_PLANE_IP:?}" "${KUBEADM_TOKEN:?}" "${K8S_VERSION:?}"

if [ -f /etc/kubernetes/kubelet.conf ]; then
    step "already joined"
    exit 0
fi

step "waiting for the API server on $CONTROL_PLANE_IP:6443 (up to 20 minutes)"
retry 1200 10 curl -ksf "https://$CONTROL_PLANE_IP:6443/readyz" \
    || die "no API server at $CONTROL_PLANE_IP:6443: is node1 up? (vagrant up node1)"

step "kubeadm join"
install -d -m 0700 /etc/podtrace-lab
render_kubeadm_join_config "$NODE_NAME" "$CONTROL_PLANE_IP:6443" "$KUBEADM_TOKEN" "$K8S_VERSION" \
    >/etc/podtrace-lab/kubeadm-join.yaml
# The bootstrap token exists only once node1's kubeadm init has finished uploading it: retry briefly.
for attempt in 1 2 3 4 5 6; do
    if kubeadm join --config /etc/podtrace-lab/kubeadm-join.yaml; then
        step "joined"
        exit 0
    fi
    warn "kubeadm join failed (attempt $attempt), resetting and retrying in 30 s"
    kubeadm reset -f >/dev/null 2>&1 || true
    sleep 30
done
die "kubeadm join kept failing"
