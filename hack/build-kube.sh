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
kver=$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$mod/go.mod")
major=$(echo "$kver" | sed -E 's/^v([0-9]+)\..*/\1/')
minor=$(echo "$kver" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
commit=$(cd "$mod" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ld=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $pkg.gitVersion=$kver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ld+=" -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
done

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
