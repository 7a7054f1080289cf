#!/usr/bin/env bash
# Everything `make e2e` needs built, timed: the operator image (make image), kind, the control-plane
# and node binaries, the kind node image. Writes .e2e/build.json {"build_s", "cold"}: cold when the
# Kubernetes binaries had to be compiled in this run (a fresh machine's CI: the whole chain from an
# empty cache), so that tests/e2e can report cold_build_s.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cold=false
ls .cache/kind/bins/*/kubelet >/dev/null 2>&1 || cold=true
start=$(date +%s)
make image
hack/kind/build-kind.sh >/dev/null
if [ -z "${KIND_NODE_IMAGE:-}" ]; then hack/kind/build-node-image.sh >/dev/null; fi
mkdir -p .e2e
printf '{"build_s": %d, "cold": %s}\n' "$(( $(date +%s) - start ))" "$cold" > .e2e/build.json
cat .e2e/build.json
