#!/usr/bin/env bash
# Builds Argo CD's `argocd` binary (one binary: CLI, argocd-application-controller and
# argocd-repo-server by argv[0]) from the Go module pinned in hack/argocd/go.mod into
# .cache/argocd/<pin>/bin, with Go 1.27 (GOTOOLCHAIN fetches it from the module proxy).
# Prints the directory holding the binary. A build is reused until the pin changes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/hack/argocd"
pin=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)
out="${RBD_ARGOCD_BIN_CACHE:-$root/.cache/argocd}/$pin/bin"
if [ -x "$out/argocd" ]; then
  for name in argocd-application-controller argocd-repo-server; do ln -sf argocd "$out/$name"; done
  echo "$out"; exit 0
fi
command -v go >/dev/null || { echo "build-argocd: go is required" >&2; exit 1; }
version=$(grep -oE 'github.com/argoproj/argo-cd/v3 v[0-9][0-9.]*' "$mod/go.mod" | head -1 | cut -d' ' -f2)
tmp="$out.tmp.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd "$mod"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=${ARGOCD_GOTOOLCHAIN:-go1.27.4}
echo "build-argocd: building Argo CD $version into $out (first build takes a while)" >&2
nice -n 10 go build -trimpath \
  -ldflags "-s -w -X github.com/argoproj/argo-cd/v3/common.version=${version#v}" \
  -o "$tmp/argocd" github.com/argoproj/argo-cd/v3/cmd
for name in argocd-application-controller argocd-repo-server; do ln -sf argocd "$tmp/$name"; done
rm -rf "$out"; mv "$tmp" "$out"
echo "build-argocd: built in $(( $(date +%s) - start ))s" >&2
echo "$out"
