#!/usr/bin/env bash
# `make image`: builds the operator's container image and prints its size and build time.
#   IMAGE=rbd-operator:0.1.0 hack/build-image.sh          (the Makefile passes IMAGE)
#   BASE_IMAGE=debian:bookworm-slim ...                    the public base, where it can be pulled
# Needs only Debian packages (docker.io, debootstrap, python3-venv, installed here when missing),
# a Debian mirror and PyPI — not the test toolchain (`make deps`: Go, Ceph, the control plane).
# Wheels are built on this machine (its pip trusts its network's CAs): the build fetches nothing
# from PyPI inside a container.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
image=${IMAGE:?IMAGE (e.g. rbd-operator:0.1.0) is required}
start=$(date +%s)

need=(python3-venv)
[ -n "${BASE_IMAGE:-}" ] || need+=(debootstrap)
. hack/lib/debs.sh
ensure_debs build-image "${need[@]}"

hack/docker.sh up

# The package and its dependencies as wheels, from a venv of its own (no dev extras, no system
# site packages: rados/rbd/libvirt come from the image's Debian packages).
venv=.cache/image-venv
[ -x "$venv/bin/pip" ] || /usr/bin/python3 -m venv "$venv"
rm -rf .cache/image-wheels
# Pinned (hack/image-constraints.txt): the same image from the same commit, and its size measured once.
"$venv/bin/pip" wheel -q --disable-pip-version-check --wheel-dir .cache/image-wheels \
  --constraint hack/image-constraints.txt .

base=${BASE_IMAGE:-$(hack/build-base-image.sh)}
hack/docker.sh cli build --network host --build-arg BASE_IMAGE="$base" -t "$image" .
bytes=$(hack/docker.sh cli image inspect -f '{{.Size}}' "$image")
echo "image: $image from $base: $bytes bytes ($(awk -v b="$bytes" 'BEGIN {printf "%.1f", b/1048576}') MiB)," \
  "built in $(( $(date +%s) - start ))s"
