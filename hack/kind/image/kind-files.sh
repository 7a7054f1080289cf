#!/usr/bin/env bash
# kind's own node files (entrypoint, helper scripts, systemd units, containerd config) from the kind
# module's images/base/files, adapted to Debian's containerd 1.6 / runc paths and to this host
# (cgroup v1: restrict_oom_score_adj as containerd inside the node needs it; no fuse-overlayfs
# snapshotter). Used by hack/kind/build-node-image.sh.
#   kind-files.sh KIND_MODULE_DIR OUT_DIR      (OUT_DIR becomes the image's / overlay "kindfiles/")
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
files="$1/images/base/files" out=$2
mkdir -p "$out/usr/local/bin" "$out/kind/bin" "$out/etc"
cp "$files/usr/local/bin/entrypoint" "$out/usr/local/bin/"
cp "$files"/kind/bin/*.sh "$out/kind/bin/"
cp -r "$files/etc/." "$out/etc/"
rm -f "$out/etc/systemd/system/containerd-fuse-overlayfs.service"
chmod -R u+w "$out"
sed -i 's#^ExecStart=/usr/local/bin/containerd#ExecStart=/usr/bin/containerd#' \
  "$out/etc/systemd/system/containerd.service"
python3 "$here/patch-containerd-config.py" "$out/etc/containerd/config.toml"
