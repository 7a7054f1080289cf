#!/usr/bin/env bash
# Builds the `helm` CLI from the Go module pinned in hack/helm/go.mod (helm.sh/helm/v4) into
# .cache/helm/<pin>/bin; prints the directory holding the binary. A build is reused until the pin
# (go.mod/go.sum/tools.go) changes. Used by `make test` (helm lint/template, tests/integration/
# test_chart.py) and `make e2e` (the Helm takeover and upgrade, tests/e2e/test_helm_upgrade.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/hack/helm"
pin=$(cat "$mod/go.mod" "$mod/go.sum" "$mod/tools.go" | sha256sum | cut -c1-12)
out="${RBD_HELM_BIN_CACHE:-$root/.cache/helm}/$pin/bin"
if [ -x "$out/helm" ]; then echo "$out"; exit 0; fi
command -v go >/dev/null || { echo "build-helm: go is required" >&2; exit 1; }
version=$(grep -oE 'helm.sh/helm/v4 v[0-9][0-9.]*' "$mod/go.mod" | head -1 | cut -d' ' -f2)
tmp="$out.tmp.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd "$mod"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "build-helm: building Helm $version into $out" >&2
go build -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
  -o "$tmp/helm" helm.sh/helm/v4/cmd/helm
rm -rf "$out"; mv "$tmp" "$out"
echo "build-helm: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
