#!/usr/bin/env bash
# Builds kind from the Go module pinned in hack/kind/cli into .cache/kind/cli/<pin>/kind; prints the
# binary's path. The same module provides the node-image files (images/base/files) used by
# hack/kind/build-node-image.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mod="$root/hack/kind/cli"
pin=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)
out="$root/.cache/kind/cli/$pin"
if [ ! -x "$out/kind" ]; then
  echo "build-kind: building kind into $out" >&2
  mkdir -p "$out"
  (cd "$mod" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out/kind.tmp" sigs.k8s.io/kind)
  mv "$out/kind.tmp" "$out/kind"
fi
echo "$out/kind"
