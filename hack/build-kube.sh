#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from the Go
# modules pinned in hack/kube/go.mod into .cache/kube/<pin>/bin. A build is
# reused until the pin (go.mod/go.sum) changes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/hack/kube"
pin=$(cat "$mod/go.mod" "$mod/go.sum" "$mod/cmd/etcd/main.go" | sha256sum | cut -c1-12)
out="${RBD_KUBE_BIN_CACHE:-$root/.cache/kube}/$pin/bin"
cmds=(kube-apiserver kube-controller-manager kubectl etcd)

have_all=1
for c in "${cmds[@]}"; do [ -x "$out/$c" ] || have_all=0; done
if [ "$have_all" = 1 ]; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "build-kube: go is required" >&2; exit 1; }
. "$root/hack/lib/kube-version.sh"
kver=$(kube_version "$mod/go.mod")
commit=$(cd "$mod" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
ld=$(kube_ldflags "$kver" "$commit" "$(date -u +%Y-%m-%dT%H:%M:%SZ)")

tmp="$out.tmp.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd "$mod"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "build-kube: building Kubernetes $kver and etcd into $out (first build takes a while)" >&2
go build -trimpath -ldflags "-s -w $ld" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl
go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" ./cmd/etcd
rm -rf "$out"; mv "$tmp" "$out"
echo "build-kube: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
