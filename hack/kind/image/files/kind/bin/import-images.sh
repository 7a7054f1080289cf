#!/bin/sh
# Imports /kind/images/*.tar into containerd's k8s.io namespace once (kept in /var, a volume).
set -eu
stamp=/var/lib/kind-images.imported
[ -e "$stamp" ] && exit 0
for _ in $(seq 60); do ctr version >/dev/null 2>&1 && break; sleep 1; done
for tar in /kind/images/*.tar; do
  ctr --namespace=k8s.io images import "$tar"
done
touch "$stamp"
