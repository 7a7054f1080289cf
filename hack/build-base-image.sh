#!/usr/bin/env bash
# Builds the container base image locally from Debian packages — no registry needed — and prints its
# tag: debootstrap --variant=minbase bookworm, trimmed (docs, man pages, locales, apt lists), then
# `docker import`. The tag is keyed by this script and the mirror; an existing tag is reused.
#   hack/build-base-image.sh            -> rbd-operator-base:bookworm-<key>
# BASE_MIRROR overrides the Debian mirror (default: the one this machine's apt uses).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
docker() { "$root/hack/docker.sh" cli "$@"; }
mirror=${BASE_MIRROR:-http://deb.debian.org/debian}
key=$( { cat "$0"; echo "$mirror"; } | sha256sum | cut -c1-12)
tag="rbd-operator-base:bookworm-$key"
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi

command -v debootstrap >/dev/null || { echo "build-base-image: debootstrap is required" >&2; exit 1; }
start=$(date +%s)
dir=$(mktemp -d "${TMPDIR:-/tmp}/rbdop-base.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cache="$root/.cache/base-debs"
mkdir -p "$cache"
echo "build-base-image: debootstrap bookworm (minbase) from $mirror" >&2
debootstrap --variant=minbase --cache-dir="$cache" bookworm "$dir/rootfs" "$mirror" > "$dir/debootstrap.log" 2>&1 \
  || { tail -20 "$dir/debootstrap.log" >&2; exit 1; }
r="$dir/rootfs"
cat > "$r/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${BASE_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
SOURCES
# Package scripts never start services in an image build; apt keeps no caches in layers.
printf '#!/bin/sh\nexit 101\n' > "$r/usr/sbin/policy-rc.d"; chmod 755 "$r/usr/sbin/policy-rc.d"
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > "$r/etc/apt/apt.conf.d/90-no-recommends"
printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n' \
  > "$r/etc/dpkg/dpkg.cfg.d/90-slim"
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/usr/share/doc/* "$r"/usr/share/man/* \
  "$r"/usr/share/info/* "$r"/var/log/*.log "$r"/var/cache/debconf/*-old
find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
tar -C "$r" --numeric-owner -c . | docker import -c 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "build-base-image: $tag in $(( $(date +%s) - start ))s" >&2
echo "$tag"
