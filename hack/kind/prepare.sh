#!/usr/bin/env bash
# Everything `make e2e` needs, built and timed: `make deps` (venv, control plane), the operator image
# (`make image`), kind, the node binaries and the kind node image. Writes .e2e/build.json
# {"build_s", "cold"}; cold = this run started with an empty Go build cache and no kind node image,
# i.e. it compiled and assembled everything (a fresh machine), so tests/e2e reports it as cold_build_s.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
gocache=$(go env GOCACHE 2>/dev/null || true)
cold=false
if { [ -z "$gocache" ] || [ ! -d "$gocache" ] || [ -z "$(ls -A "$gocache" 2>/dev/null)" ]; } \
   && ! "$root/hack/docker.sh" cli images -q rbd-operator-kind-node 2>/dev/null | grep -q .; then
  cold=true
fi
start=$(date +%s)
make deps
make image
hack/kind/build-kind.sh >/dev/null
if [ -z "${KIND_NODE_IMAGE:-}" ]; then hack/kind/build-node-image.sh >/dev/null; fi
mkdir -p .e2e
printf '{"build_s": %d, "cold": %s}\n' "$(( $(date +%s) - start ))" "$cold" > .e2e/build.json
cat .e2e/build.json
