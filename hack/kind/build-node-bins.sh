#!/usr/bin/env bash
# Builds what a kind node needs beyond hack/kube's control plane — kubelet, kubeadm, kube-scheduler,
# kube-proxy — from the same k8s.io/kubernetes release (hack/kind/node pins it like hack/kube) and
# the same Go build cache, into .cache/kind/bins/<pin>/. Prints that directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mod="$root/hack/kind/node"
pin=$(cat "$mod/go.mod" "$mod/go.sum" "$0" | sha256sum | cut -c1-12)
out="$root/.cache/kind/bins/$pin"
cmds=(kubelet kubeadm kube-scheduler kube-proxy)
have_all=1
for c in "${cmds[@]}"; do [ -x "$out/$c" ] || have_all=0; done
if [ "$have_all" = 1 ]; then echo "$out"; exit 0; fi

. "$root/hack/lib/kube-version.sh"
kver=$(kube_version "$mod/go.mod")
kube_ver=$(kube_version "$root/hack/kube/go.mod")
[ "$kver" = "$kube_ver" ] || { echo "build-node-bins: hack/kind/node pins $kver, hack/kube $kube_ver" >&2; exit 1; }
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
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
rm -rf "$out"; mv "$tmp" "$out"
echo "build-node-bins: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
