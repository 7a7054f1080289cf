#!/usr/bin/env bash
# Installs everything the sandbox and the tests need, on a fresh Debian bookworm
# machine (root): Debian packages, the Python venv, and the control-plane
# binaries built from Go modules. Fast when everything is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DEB_PACKAGES=(
  # Ceph micro-cluster and the Python bindings the operator uses
  ceph-mon ceph-mgr ceph-osd ceph-common python3-rados python3-rbd
  # libvirt + QEMU with its rbd driver (hypervisor side)
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients python3-libvirt qemu-utils qemu-block-extra
  # test hosts: sshd, debootstrap, network namespaces
  openssh-server openssh-client debootstrap iproute2
  # tooling
  python3-venv openssl curl ca-certificates procps psmisc git
  # make gitops-e2e: Argo CD's cache
  redis-server
)

. hack/lib/debs.sh
ensure_debs install-deps "${DEB_PACKAGES[@]}"

# A venv that sees Debian's rados/rbd/libvirt bindings.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import rados, rbd, libvirt' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
  echo "install-deps: installing Python packages into .venv" >&2
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# kube-apiserver, kube-controller-manager, kubectl and etcd from Go modules.
if ! command -v go >/dev/null; then
  echo "install-deps: Go is required to build the control plane (hack/kube)" >&2
  exit 1
fi
hack/build-kube.sh >/dev/null
# helm (charts/rbd-operator: helm lint/template in `make test`, the Helm upgrade in `make e2e`).
hack/build-helm.sh >/dev/null
