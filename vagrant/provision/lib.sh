#!/usr/bin/env bash
# Shared helpers for the podtrace Vagrant lab. Sourced by the other provisioning scripts; the render_* and
# check_* functions are pure (no root, no network) so tests/unit/test_vagrant_files.py can call them.

PROXY_MODES="iptables ipvs nftables"
# What kube-proxy's IPVS mode needs (see FIELD-NOTES): the schedulers it may pick, and conntrack for NAT.
IPVS_MODULES="ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh nf_conntrack"
# shellcheck disable=SC2034  # used by the scripts that source this file
IPVS_MODULES_FILE=/etc/modules-load.d/podtrace-lab-ipvs.conf
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/12

step() { printf '==> [%s] %s\n' "$(hostname)" "$*"; }
warn() { printf 'WARNING [%s]: %s\n' "$(hostname)" "$*" >&2; }
die() { printf 'ERROR [%s]: %s\n' "$(hostname)" "$*" >&2; exit 1; }

# check_proxy_mode MODE: succeed for a kube-proxy mode this lab supports, fail with a message otherwise.
check_proxy_mode() {
    case "${1:-}" in
        iptables | ipvs | nftables) return 0 ;;
        *)
            echo "PROXY_MODE must be one of: ${PROXY_MODES// /, } (got '${1:-}')" >&2
            return 1
            ;;
    esac
}

# kubeadm_api_version K8S_MINOR (e.g. 1.33): the kubeadm config API that version reads best.
kubeadm_api_version() {
    local minor="${1#*.}"
    minor="${minor%%.*}"
    if [ "$minor" -ge 31 ]; then echo kubeadm.k8s.io/v1beta4; else echo kubeadm.k8s.io/v1beta3; fi
}

# render_kube_proxy_config MODE: the KubeProxyConfiguration document for kubeadm.
render_kube_proxy_config() {
    local mode="$1"
    check_proxy_mode "$mode" || return 1
    cat <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: "$mode"
YAML
    if [ "$mode" = ipvs ]; then
        cat <<YAML
ipvs:
  scheduler: rr
  strictARP: true
YAML
    fi
}

# render_kubeadm_init_config NODE_NAME NODE_IP TOKEN K8S_VERSION(full, e.g. v1.33.4) MODE
# The control-plane node also runs workloads (taints: []), like node A of the built-in lab.
render_kubeadm_init_config() {
    local name="$1" ip="$2" token="$3" version="$4" mode="$5" api
    check_proxy_mode "$mode" || return 1
    api="$(kubeadm_api_version "${version#v}")"
    cat <<YAML
apiVersion: $api
kind: InitConfiguration
bootstrapTokens:
  - token: "$token"
    ttl: "0s"
    description: "podtrace Vagrant lab join token (never expires: lab only)"
    groups: ["system:bootstrappers:kubeadm:default-node-token"]
    usages: ["signing", "authentication"]
localAPIEndpoint:
  advertiseAddress: "$ip"
  bindPort: 6443
nodeRegistration:
  name: "$name"
  criSocket: unix:///run/containerd/containerd.sock
  taints: []
---
apiVersion: $api
kind: ClusterConfiguration
kubernetesVersion: "$version"
controlPlaneEndpoint: "$ip:6443"
networking:
  podSubnet: "$POD_CIDR"
  serviceSubnet: "$SERVICE_CIDR"
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
---
YAML
    render_kube_proxy_config "$mode"
}

# render_kubeadm_join_config NODE_NAME API_ENDPOINT(ip:port) TOKEN K8S_MINOR
# No CA pinning: the VMs share a private network and the token is generated on the host per lab (README).
render_kubeadm_join_config() {
    local name="$1" endpoint="$2" token="$3" minor="$4"
    cat <<YAML
apiVersion: $(kubeadm_api_version "$minor")
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: "$endpoint"
    token: "$token"
    unsafeSkipCAVerification: true
nodeRegistration:
  name: "$name"
  criSocket: unix:///run/containerd/containerd.sock
YAML
}

# set_proxy_mode_in_config MODE < config.conf > config.conf: rewrite kube-proxy's config.conf (the text inside
# the kube-system/kube-proxy ConfigMap) for another mode. Top-level keys sit in column 0, ipvs' in column 2.
set_proxy_mode_in_config() {
    local mode="$1" strict=false
    check_proxy_mode "$mode" || return 1
    [ "$mode" = ipvs ] && strict=true
    sed -E -e "s/^mode:.*/mode: \"$mode\"/" -e "s/^  strictARP:.*/  strictARP: $strict/"
}

# proxy_mode_of_config < config.conf: the mode a kube-proxy config.conf selects ("" means iptables on Linux).
proxy_mode_of_config() {
    local mode
    mode="$(sed -nE 's/^mode:[[:space:]]*"?([a-z]*)"?[[:space:]]*$/\1/p' | head -n1)"
    echo "${mode:-iptables}"
}

# ipvs_modules_conf MODE: the modules-load.d content for MODE (empty unless ipvs).
ipvs_modules_conf() {
    check_proxy_mode "$1" || return 1
    if [ "$1" = ipvs ]; then
        echo "# podtrace Vagrant lab: kube-proxy IPVS mode"
        tr ' ' '\n' <<<"$IPVS_MODULES"
    fi
}

# iface_for_ip IP: the interface holding IP (the private network, whatever the provider named it).
iface_for_ip() {
    ip -o -4 addr show | awk -v ip="$1" '{ split($4, a, "/"); if (a[1] == ip) { print $2; exit } }'
}

# write_if_changed PATH: replace PATH with stdin when it differs; succeed (0) only when it changed.
write_if_changed() {
    local path="$1" tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    mkdir -p "$(dirname "$path")"
    install -m 0644 "$tmp" "$path"
    rm -f "$tmp"
    return 0
}

# retry SECONDS INTERVAL CMD...: run CMD until it succeeds or SECONDS pass.
retry() {
    local budget="$1" interval="$2" waited=0
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ "$waited" -ge "$budget" ]; then
            return 1
        fi
        sleep "$interval"
        waited=$((waited + interval))
    done
}
