#!/usr/bin/env bash
# Builds every Kubernetes command a kind node runs — kubelet, kubeadm, kube-apiserver,
# kube-controller-manager, kube-scheduler, kube-proxy, kubectl — and etcd, from the release
# hack/kind/node pins, into .cache/kind/bins/<pin>/. Prints that directory.
# The kind node keeps its own release (1.33), apart from hack/kube's test control plane (1.36): this
# host has cgroup v1, which kubelets from 1.35 on refuse by default; and the kind e2e then covers
# clusters without MutatingAdmissionPolicy v1 (the operator adds its finalizer itself there).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mod="$root/hack/kind/node"
pin=$(cat "$mod/go.mod" "$mod/go.sum" "$0" | sha256sum | cut -c1-12)
out="$root/.cache/kind/bins/$pin"
cmds=(kubelet kubeadm kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl etcd)
have_all=1
for c in "${cmds[@]}"; do [ -x "$out/$c" ] || have_all=0; done
if [ "$have_all" = 1 ]; then echo "$out"; exit 0; fi

. "$root/hack/lib/kube-version.sh"
kver=$(kube_version "$mod/go.mod")
ld=$(kube_ldflags "$kver" "$kver" 1970-01-01T00:00:00Z)
tmp="$out.tmp.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd "$mod"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "build-node-bins: building ${cmds[*]} $kver into $out" >&2
go build -trimpath -ldflags "-s -w $ld" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" ./cmd/etcd
rm -rf "$out"; mv "$tmp" "$out"
echo "build-node-bins: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
