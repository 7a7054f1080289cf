#!/usr/bin/env bash
# Builds the operator image of an earlier release as it shipped, for the upgrade test in `make e2e`
# (tests/e2e/test_helm_upgrade.py): `git archive` of the release into .cache/e2e/release-<commit>/src and
# that tree's own hack/build-image.sh (sharing this checkout's image venv and Docker layer cache).
#   hack/kind/build-release-image.sh REF FALLBACK_COMMIT IMAGE   -> prints "<commit> <source dir>"
# REF is the release tag (v0.1.0); FALLBACK_COMMIT the commit it points at, used when a clone has no tags.
# Reused while IMAGE is the image this script built last for that commit.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
ref=$1 fallback=$2 image=$3
cd "$root"
commit=$(git rev-parse -q --verify "$ref^{commit}" 2>/dev/null || git rev-parse -q --verify "$fallback^{commit}" 2>/dev/null) \
  || { echo "build-release-image: neither $ref nor $fallback is in this clone (git fetch --tags)" >&2; exit 1; }
dir="$root/.cache/e2e/release-$commit"
src="$dir/src"
built=$(cat "$dir/image-id" 2>/dev/null || true)
current=$(hack/docker.sh cli image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
if [ -n "$built" ] && [ "$built" = "$current" ] && [ -d "$src" ]; then echo "$commit $src"; exit 0; fi
start=$(date +%s)
rm -rf "$src"; mkdir -p "$src/.cache"
git archive "$commit" | tar -x -C "$src"
# The image venv (pip + its cache) is this checkout's; the wheels are the release's own (build context).
[ -e "$src/.cache/image-venv" ] || ln -s "$root/.cache/image-venv" "$src/.cache/image-venv"
(cd "$src" && IMAGE="$image" hack/build-image.sh) >&2
hack/docker.sh cli image inspect -f '{{.Id}}' "$image" > "$dir/image-id"
echo "build-release-image: $ref ($commit) as $image in $(( $(date +%s) - start ))s" >&2
echo "$commit $src"
