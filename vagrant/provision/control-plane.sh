#!/usr/bin/env bash
# node1: kubeadm init (control plane that also runs pods), flannel with the VXLAN backend (VNI 1, UDP 8472,
# FLANNEL_MTU 1450 on the 1500 private network), and kube-proxy in PROXY_MODE. Idempotent: on a cluster that
# already exists it only reconciles flannel's settings and kube-proxy's mode.
set -euo pipefail

PROVISION_DIR="${PROVISION_DIR:-/vagrant/vagrant/provision}"
# shellcheck source=lib.sh
source "$PROVISION_DIR/lib.sh"

: "${NODE_NAME:?}" "${NODE_IP:?}" "${PROXY_MODE:?}" "${KUBEADM_TOKEN:?}" "${FLANNEL_VERSION:?}" "${NET_PREFIX:?}"
check_proxy_mode "$PROXY_MODE" || exit 1
export KUBECONFIG=/etc/kubernetes/admin.conf

if [ ! -f /etc/kubernetes/admin.conf ]; then
    step "kubeadm init ($(kubeadm version -o short), kube-proxy mode $PROXY_MODE)"
    install -d -m 0700 /etc/podtrace-lab
    render_kubeadm_init_config "$NODE_NAME" "$NODE_IP" "$KUBEADM_TOKEN" "$(kubeadm version -o short)" "$PROXY_MODE" \
        >/etc/podtrace-lab/kubeadm-init.yaml
    kubeadm config images pull --config /etc/podtrace-lab/kubeadm-init.yaml
    kubeadm init --config /etc/podtrace-lab/kubeadm-init.yaml
else
    step "cluster already initialised"
fi

step "kubeconfig for root and vagrant"
for home in /root /home/vagrant; do
    [ -d "$home" ] || continue
    install -d -m 0700 "$home/.kube"
    install -m 0600 /etc/kubernetes/admin.conf "$home/.kube/config"
    chown -R "$(stat -c %U:%G "$home")" "$home/.kube"
done
retry 300 5 kubectl get --raw=/readyz || die "the API server did not become ready"

step "flannel $FLANNEL_VERSION (VXLAN, VNI 1, UDP 8472, over $NET_PREFIX.0/24)"
if ! kubectl -n kube-flannel get daemonset kube-flannel-ds >/dev/null 2>&1; then
    # Applied once: re-applying the upstream manifest would undo the patches below and restart flannel.
    kubectl apply -f "https://github.com/flannel-io/flannel/releases/download/$FLANNEL_VERSION/kube-flannel.yml"
fi
net_conf="$(jq -cn --arg net "$POD_CIDR" \
    '{Network: $net, EnableNFTables: false, Backend: {Type: "vxlan", VNI: 1, Port: 8472}}')"
kubectl -n kube-flannel patch configmap kube-flannel-cfg --type merge \
    -p "$(jq -cn --arg v "$net_conf" '{data: {"net-conf.json": $v}}')"
# Pin the overlay to the private network: the first NIC is the provider's NAT, identical on both VMs.
iface_regex="^${NET_PREFIX//./\\.}\\."
kubectl -n kube-flannel patch daemonset kube-flannel-ds --type strategic -p "$(jq -cn --arg re "$iface_regex" \
    '{spec: {template: {spec: {containers: [{name: "kube-flannel",
      args: ["--ip-masq", "--kube-subnet-mgr", ("--iface-regex=" + $re)]}]}}}}')"
kubectl -n kube-flannel rollout status daemonset/kube-flannel-ds --timeout=10m

step "node $NODE_NAME Ready"
kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=10m
retry 120 2 test -s /run/flannel/subnet.env || die "flannel wrote no /run/flannel/subnet.env"
cat /run/flannel/subnet.env
grep -qx 'FLANNEL_MTU=1450' /run/flannel/subnet.env \
    || warn "FLANNEL_MTU is not 1450: the private network's MTU is not 1500 (see common.sh's output)"

step "kube-proxy mode: $PROXY_MODE"
current="$(kubectl -n kube-system get configmap kube-proxy -o jsonpath='{.data.config\.conf}' | proxy_mode_of_config)"
if [ "$current" != "$PROXY_MODE" ]; then
    echo "switching kube-proxy from $current to $PROXY_MODE (in place; 'vagrant destroy' + 'vagrant up' is cleaner)"
    new_conf="$(kubectl -n kube-system get configmap kube-proxy -o jsonpath='{.data.config\.conf}' \
        | set_proxy_mode_in_config "$PROXY_MODE")"
    kubectl -n kube-system patch configmap kube-proxy --type merge \
        -p "$(jq -cn --arg v "$new_conf" '{data: {"config.conf": $v}}')"
    kubectl -n kube-system rollout restart daemonset/kube-proxy
fi
kubectl -n kube-system rollout status daemonset/kube-proxy --timeout=5m
kubectl get nodes -o wide
