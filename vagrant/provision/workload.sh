#!/usr/bin/env bash
# node1: the demo workload (provision/demo-workload.yaml). Does not wait for node2: the Deployment's spread
# constraint keeps two replicas Pending until node2 joins. Idempotent (kubectl apply).
set -euo pipefail

PROVISION_DIR="${PROVISION_DIR:-/vagrant/vagrant/provision}"
# shellcheck source=lib.sh
source "$PROVISION_DIR/lib.sh"
export KUBECONFIG=/etc/kubernetes/admin.conf

step "demo workload"
kubectl apply -f "$PROVISION_DIR/demo-workload.yaml"
kubectl wait --for=condition=Ready pod/client --timeout=10m
kubectl get deployment,pods,services,endpointslices -o wide
