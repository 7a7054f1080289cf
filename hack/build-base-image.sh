#!/usr/bin/env bash
# Builds a container base image locally from Debian packages — no registry needed — and prints its
# tag: debootstrap --variant=minbase SUITE, trimmed (docs, man pages, locales, apt lists), then
# `docker import`. The tag is keyed by this script, the suite and the mirror; an existing tag is reused.
#   hack/build-base-image.sh [SUITE]    -> rbd-operator-base:SUITE-<key>
# SUITE: bookworm (default: the kind node image, hack/kind) or trixie (the operator's image, Debian 13).
# BASE_MIRROR overrides the Debian mirror (default: the one this machine's apt uses).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
docker() { "$root/hack/docker.sh" cli "$@"; }
mirror=${BASE_MIRROR:-http://deb.debian.org/debian}
suite=${1:-bookworm}
case $suite in bookworm|trixie) ;; *) echo "build-base-image: unknown suite $suite (bookworm, trixie)" >&2; exit 2 ;; esac
key=$( { cat "$0"; echo "$mirror"; [ "$suite" = bookworm ] || echo "$suite"; } | sha256sum | cut -c1-12)
tag="rbd-operator-base:$suite-$key"
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi

command -v debootstrap >/dev/null || { echo "build-base-image: debootstrap is required" >&2; exit 1; }
start=$(date +%s)
dir=$(mktemp -d "${TMPDIR:-/tmp}/rbdop-base.XXXXXX")
trap 'rm -rf "$dir"' EXIT
cache="$root/.cache/base-debs"
[ "$suite" = bookworm ] || cache="$root/.cache/base-debs-$suite"
mkdir -p "$cache"
echo "build-base-image: debootstrap $suite (minbase) from $mirror" >&2
debootstrap --variant=minbase --cache-dir="$cache" "$suite" "$dir/rootfs" "$mirror" > "$dir/debootstrap.log" 2>&1 \
  || { tail -20 "$dir/debootstrap.log" >&2; exit 1; }
r="$dir/rootfs"
cat > "$r/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${BASE_SECURITY_MIRROR:-http://deb.debian.org/debian-security} $suite-security main
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
