#!/usr/bin/env bash
# Both nodes: kernel modules and sysctls for Kubernetes networking, containerd, and kubeadm/kubelet/kubectl
# from the Kubernetes apt repository at K8S_VERSION. Idempotent: safe on every `vagrant provision`.
set -euo pipefail

PROVISION_DIR="${PROVISION_DIR:-/vagrant/vagrant/provision}"
# shellcheck source=lib.sh
source "$PROVISION_DIR/lib.sh"

: "${NODE_NAME:?set by the Vagrantfile}" "${NODE_IP:?set by the Vagrantfile}"
: "${K8S_VERSION:?set by the Vagrantfile}" "${PROXY_MODE:?set by the Vagrantfile}"
LAB_HOSTS="${LAB_HOSTS:-}"
[ "$(id -u)" -eq 0 ] || die "run as root (Vagrant's shell provisioner does)"
check_proxy_mode "$PROXY_MODE" || exit 1

K8S_MINOR="$(cut -d. -f1,2 <<<"$K8S_VERSION")"   # 1.33 or 1.33.4 -> 1.33 (the apt repository)
export DEBIAN_FRONTEND=noninteractive

step "host names"
if [ -n "$LAB_HOSTS" ]; then
    {
        sed '/# podtrace-lab begin/,/# podtrace-lab end/d' /etc/hosts
        echo "# podtrace-lab begin"
        for entry in $LAB_HOSTS; do echo "${entry#*=} ${entry%%=*}"; done
        echo "# podtrace-lab end"
    } | write_if_changed /etc/hosts || true
fi

step "private network"
iface="$(iface_for_ip "$NODE_IP")"
[ -n "$iface" ] || die "no interface holds $NODE_IP: the private network did not come up"
mtu="$(cat "/sys/class/net/$iface/mtu")"
if [ "$mtu" != 1500 ]; then
    warn "$iface has MTU $mtu, not 1500: flannel will pick FLANNEL_MTU=$((mtu - 50)), not the lab's 1450"
fi
echo "$iface $NODE_IP mtu $mtu"

step "swap off (kubelet refuses to start with swap)"
swapoff -a
sed -i -E '/^[^#].*[[:space:]]swap[[:space:]]/s/^/# podtrace-lab: /' /etc/fstab

step "base packages"
base=(apt-transport-https ca-certificates curl gnupg jq make python3 rsync containerd
      iptables nftables ipset ipvsadm conntrack ethtool socat kmod iproute2 tcpdump)
missing=()
for pkg in "${base[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

step "kernel modules and sysctls"
printf 'overlay\nbr_netfilter\n' | write_if_changed /etc/modules-load.d/podtrace-lab-k8s.conf || true
modprobe overlay
modprobe br_netfilter
if [ "$PROXY_MODE" = ipvs ]; then
    ipvs_modules_conf ipvs | write_if_changed "$IPVS_MODULES_FILE" || true
    for mod in $IPVS_MODULES; do modprobe "$mod"; done
    echo "IPVS modules loaded: $IPVS_MODULES"
else
    # Leaving IPVS mode: stop loading the modules at boot (already loaded ones stay until reboot).
    rm -f "$IPVS_MODULES_FILE"
fi
cat <<CONF | write_if_changed /etc/sysctl.d/90-podtrace-lab-k8s.conf || true
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
CONF
sysctl -q --system

step "Kubernetes apt repository v$K8S_MINOR"
install -d -m 0755 /etc/apt/keyrings
keyring=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
repo="https://pkgs.k8s.io/core:/stable:/v$K8S_MINOR/deb/"
list_line="deb [signed-by=$keyring] $repo /"
if [ ! -s "$keyring" ] || ! grep -qxF "$list_line" /etc/apt/sources.list.d/kubernetes.list 2>/dev/null; then
    curl -fsSL "${repo}Release.key" | gpg --dearmor --yes -o "$keyring"
    echo "$list_line" >/etc/apt/sources.list.d/kubernetes.list
    apt-get update -q
fi

step "kubelet, kubeadm, kubectl, kubernetes-cni"
if [ "$K8S_VERSION" = "$K8S_MINOR" ]; then
    want="$(apt-cache madison kubeadm | awk -v m="$K8S_MINOR." 'index($3, m) == 1 { print $3; exit }')"
else
    want="$(apt-cache madison kubeadm | awk -v v="$K8S_VERSION-" 'index($3, v) == 1 { print $3; exit }')"
fi
[ -n "$want" ] || die "kubeadm $K8S_VERSION is not in $repo"
have="$(dpkg-query -W -f='${Version}' kubeadm 2>/dev/null || true)"
if [ "$have" != "$want" ] || ! command -v kubelet >/dev/null || ! command -v kubectl >/dev/null; then
    apt-get install -y -q --allow-change-held-packages --allow-downgrades \
        "kubelet=$want" "kubeadm=$want" "kubectl=$want" kubernetes-cni cri-tools
fi
apt-mark hold kubelet kubeadm kubectl >/dev/null
echo "kubeadm $(kubeadm version -o short)"

step "containerd (systemd cgroups, the pause image kubeadm expects)"
k8s_full="$(kubeadm version -o short)"
pause="$(kubeadm config images list --kubernetes-version "$k8s_full" 2>/dev/null | grep /pause: || true)"
config="$(containerd config default)"
config="$(sed -E -e 's/SystemdCgroup = false/SystemdCgroup = true/' \
                 -e 's#bin_dir = .*#bin_dir = "/opt/cni/bin"#' <<<"$config")"
if [ -n "$pause" ]; then
    config="$(sed -E "s#sandbox_image = .*#sandbox_image = \"$pause\"#" <<<"$config")"
fi
if write_if_changed /etc/containerd/config.toml <<<"$config"; then
    systemctl restart containerd
fi
systemctl enable --now containerd >/dev/null
printf 'runtime-endpoint: unix:///run/containerd/containerd.sock\nimage-endpoint: unix:///run/containerd/containerd.sock\n' \
    | write_if_changed /etc/crictl.yaml || true

step "kubelet on the private network ($NODE_IP)"
if echo "KUBELET_EXTRA_ARGS=--node-ip=$NODE_IP" | write_if_changed /etc/default/kubelet; then
    systemctl daemon-reload
    # Before kubeadm init/join the kubelet has no config and restarts in a loop: that is expected.
    systemctl restart kubelet || true
fi
systemctl enable kubelet >/dev/null
step "common provisioning done (kube-proxy mode $PROXY_MODE)"
