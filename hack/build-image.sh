#!/usr/bin/env bash
# `make image`: builds the operator's container image and prints its size and build time.
#   IMAGE=rbd-operator:0.1.0 hack/build-image.sh          (the Makefile passes IMAGE)
#   BASE_IMAGE=debian:trixie-slim ...                      the public base, where it can be pulled
# The image is Debian 13 (trixie): Python 3.13, Ceph 18.2 client libraries (python3-rados/-rbd).
# Needs only Debian packages (docker.io, debootstrap, python3-venv, installed here when missing),
# a Debian mirror and PyPI — not the test toolchain (`make deps`: Go, Ceph, the control plane).
# Wheels are made on this machine (its pip trusts its network's CAs): the build fetches nothing
# from PyPI inside a container. This machine's Python may differ from the image's (3.11 here, 3.13
# there): the package's own wheel is pure Python, its dependencies are downloaded as wheels for
# the image's Python (IMAGE_PYTHON) and glibc (IMAGE_GLIBC), binary only.
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
py=${IMAGE_PYTHON:-3.13} glibc=${IMAGE_GLIBC:-2.41}
venv=.cache/image-venv
[ -x "$venv/bin/pip" ] || /usr/bin/python3 -m venv "$venv"
rm -rf .cache/image-wheels
"$venv/bin/pip" wheel -q --disable-pip-version-check --no-deps --wheel-dir .cache/image-wheels .
# Pinned (hack/image-constraints.txt): the same image from the same commit, and its size measured once.
version=$(sed -nE 's/^version = "([^"]+)"/\1/p' pyproject.toml | head -n1)
# Every manylinux tag the image's glibc runs (pip lists only the ones it is given).
platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
for ((minor = ${glibc#*.}; minor >= 5; minor--)); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
"$venv/bin/pip" download -q --disable-pip-version-check --dest .cache/image-wheels \
  --find-links .cache/image-wheels --only-binary=:all: --python-version "$py" --implementation cp \
  "${platforms[@]}" --constraint hack/image-constraints.txt "rbd-operator==$version"

base=${BASE_IMAGE:-$(hack/build-base-image.sh trixie)}
hack/docker.sh cli build --network host --build-arg BASE_IMAGE="$base" -t "$image" .
bytes=$(hack/docker.sh cli image inspect -f '{{.Size}}' "$image")
echo "image: $image from $base: $bytes bytes ($(awk -v b="$bytes" 'BEGIN {printf "%.1f", b/1048576}') MiB)," \
  "built in $(( $(date +%s) - start ))s"
