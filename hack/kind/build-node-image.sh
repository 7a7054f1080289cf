#!/usr/bin/env bash
# Builds a kind node image locally, without any registry, and prints its tag
# (rbd-operator-kind-node:<Kubernetes version>-<inputs hash>). KIND_NODE_IMAGE=... skips all this.
#
# The way kind's images/base and pkg/build/nodeimage assemble theirs:
#   - base: the project's debootstrap'd Debian bookworm (hack/build-base-image.sh) plus systemd,
#     containerd, runc and the CNI plugins from Debian's packages;
#   - kind's entrypoint, systemd units and helper scripts from the kind Go module (hack/kind/cli);
#   - kubelet, kubeadm, kubectl built from the k8s.io/kubernetes release hack/kind/node pins
#     (hack/kind/build-node-bins.sh; not hack/kube's: see there);
#   - the images kubeadm runs (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
#     etcd, pause), made from those binaries, saved into /kind/images and imported into containerd
#     at boot, before the kubelet starts (kind-images.service).
# etcd is hack/kind/node's (v3.5.21) under the tag kubeadm asks for; CoreDNS is built from its Go module at
# the version kubeadm deploys (hack/kind/coredns). Pods use a bridge CNI (the cluster is created with
# disableDefaultCNI: kindnet is an image from a registry).
# What goes in is under hack/kind/image: Dockerfile (the node), kubeadm-images/*.Dockerfile (the images
# kubeadm runs), kind-files.sh + patch-containerd-config.py (kind's files, adapted), files/ (ours), pause.c.
# This script only gathers the inputs and runs the builds. Cached by the hash of every input (this
# script, the binaries, the base image, every file under hack/kind/image).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/hack/kind/image"
docker=("$root/hack/docker.sh" cli)

node_bin=$("$root/hack/kind/build-node-bins.sh")
kind_bin=$("$root/hack/kind/build-kind.sh")
# CoreDNS at the version kubeadm deploys (hack/kind/coredns pins it).
dns_mod="$root/hack/kind/coredns"
dns_out="$root/.cache/kind/coredns/$(cat "$dns_mod/go.mod" "$dns_mod/go.sum" | sha256sum | cut -c1-12)"
if [ ! -x "$dns_out/coredns" ]; then
  echo "build-node-image: building CoreDNS into $dns_out" >&2
  mkdir -p "$dns_out"
  (cd "$dns_mod" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$dns_out/coredns.tmp" \
     github.com/coredns/coredns)
  mv "$dns_out/coredns.tmp" "$dns_out/coredns"
fi
kind_dir=$(cd "$root/hack/kind/cli" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' sigs.k8s.io/kind)
base=${NODE_BASE_IMAGE:-$("$root/hack/build-base-image.sh")}
kver=$("$node_bin/kubeadm" version -o short)

key=$( { echo "$kver $base $kind_bin"; "${docker[@]}" image inspect -f '{{.Id}}' "$base";
         sha256sum "$node_bin"/* "$dns_out/coredns" "$0"; find "$here" -type f -print0 | sort -z | xargs -0 sha256sum; } \
       | sha256sum | cut -c1-12)
tag="rbd-operator-kind-node:$kver-$key"
if "${docker[@]}" image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; exit 0; fi

start=$(date +%s)
ctx=$(mktemp -d "${TMPDIR:-/tmp}/kind-node.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/images"
cp -r "$here/files" "$here/Dockerfile" "$ctx/"
"$here/kind-files.sh" "$kind_dir" "$ctx/kindfiles"   # kind's entrypoint, units, containerd config (adapted)
cp "$node_bin/kubelet" "$node_bin/kubeadm" "$node_bin/kubectl" "$ctx/bin/"
mkdir -p "$ctx/files/kind"
echo "$kver" > "$ctx/files/kind/version"  # kind reads the Kubernetes version from here

# The images kubeadm asks for, under the names it asks for: a context with the binary and a Dockerfile
# from hack/kind/image/kubeadm-images (build args for what varies), saved into the node's /kind/images.
mkdir -p "$ctx/img"
gcc -static -O2 -o "$ctx/img/pause" "$here/pause.c"
mapfile -t wanted < <("$node_bin/kubeadm" config images list --kubernetes-version "$kver" 2>/dev/null)
for ref in "${wanted[@]}"; do
  name=${ref##*/}; name=${name%%:*}
  dir="$ctx/img/$name.ctx"; mkdir -p "$dir"
  args=()
  case "$name" in
    kube-apiserver|kube-controller-manager|kube-scheduler|etcd)
      cp "$node_bin/$name" "$dir/"; dockerfile=binary; args=(--build-arg "NAME=$name") ;;
    pause) cp "$ctx/img/pause" "$dir/"; dockerfile=pause ;;
    kube-proxy) cp "$node_bin/kube-proxy" "$dir/"; dockerfile=kube-proxy; args=(--build-arg "BASE_IMAGE=$base") ;;
    coredns)
      dns_ver=$(sed -nE 's#^(require)?[[:space:]]*github.com/coredns/coredns (v[0-9.]+)$#\2#p' "$dns_mod/go.mod" | head -1)
      [ "${ref##*:}" = "$dns_ver" ] || { echo "build-node-image: kubeadm wants $ref, hack/kind/coredns pins $dns_ver" >&2; exit 1; }
      cp "$dns_out/coredns" "$dir/"; dockerfile=coredns ;;
    *) echo "build-node-image: kubeadm wants an image this script does not know: $ref" >&2; exit 1 ;;
  esac
  cp "$here/kubeadm-images/$dockerfile.Dockerfile" "$dir/Dockerfile"
  "${docker[@]}" build -q --network host "${args[@]}" -t "$ref" "$dir" >/dev/null
  "${docker[@]}" save -o "$ctx/images/$name.tar" "$ref"
done
rm -rf "$ctx/img"

echo "build-node-image: building $tag" >&2
"${docker[@]}" build -q --network host --build-arg BASE_IMAGE="$base" -t "$tag" "$ctx" >/dev/null
# Older node images (other inputs) only take disk space.
"${docker[@]}" images --format '{{.Repository}}:{{.Tag}}' rbd-operator-kind-node | grep -vxF "$tag" \
  | xargs -r "$root/hack/docker.sh" cli image rm >/dev/null 2>&1 || true
elapsed=$(( $(date +%s) - start ))
echo "build-node-image: built in ${elapsed}s" >&2
echo "$tag"
