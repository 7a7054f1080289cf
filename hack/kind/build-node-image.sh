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
# Cached by the hash of every input.
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
mkdir -p "$ctx/bin" "$ctx/images" "$ctx/kindfiles/usr/local/bin" "$ctx/kindfiles/kind/bin" "$ctx/kindfiles/etc"
cp -r "$here/files" "$here/Dockerfile" "$ctx/"

# kind's own files, adapted to Debian's containerd 1.6 / runc paths and to this host (cgroup v1:
# restrict_oom_score_adj as containerd inside the node needs it; no fuse-overlayfs snapshotter).
files="$kind_dir/images/base/files"
cp "$files/usr/local/bin/entrypoint" "$ctx/kindfiles/usr/local/bin/"
cp "$files"/kind/bin/*.sh "$ctx/kindfiles/kind/bin/"
cp -r "$files/etc/." "$ctx/kindfiles/etc/"
rm -f "$ctx/kindfiles/etc/systemd/system/containerd-fuse-overlayfs.service"
chmod -R u+w "$ctx/kindfiles"
sed -i 's#^ExecStart=/usr/local/bin/containerd#ExecStart=/usr/bin/containerd#' \
  "$ctx/kindfiles/etc/systemd/system/containerd.service"
python3 - "$ctx/kindfiles/etc/containerd/config.toml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r'\[proxy_plugins\]\n(#.*\n)*\[proxy_plugins\."fuse-overlayfs"\]\n(  .*\n)+', '', text)
text = text.replace("restrict_oom_score_adj = false", "restrict_oom_score_adj = true")
assert "fuse-overlayfs\"]" not in text and "restrict_oom_score_adj = true" in text
open(path, "w").write(text)
PY

cp "$node_bin/kubelet" "$node_bin/kubeadm" "$node_bin/kubectl" "$ctx/bin/"
mkdir -p "$ctx/files/kind"
echo "$kver" > "$ctx/files/kind/version"  # kind reads the Kubernetes version from here

# The images kubeadm asks for, under the names it asks for.
mkdir -p "$ctx/img"
gcc -static -O2 -o "$ctx/img/pause" "$here/pause.c"
cp "$node_bin/kube-apiserver" "$node_bin/kube-controller-manager" "$node_bin/kube-scheduler" \
   "$node_bin/kube-proxy" "$node_bin/etcd" "$ctx/img/"
mapfile -t wanted < <("$node_bin/kubeadm" config images list --kubernetes-version "$kver" 2>/dev/null)
for ref in "${wanted[@]}"; do
  name=${ref##*/}; name=${name%%:*}
  dir="$ctx/img/$name.ctx"; mkdir -p "$dir"
  case "$name" in
    kube-apiserver|kube-controller-manager|kube-scheduler|etcd)
      cp "$ctx/img/$name" "$dir/"
      printf 'FROM scratch\nCOPY %s /usr/local/bin/%s\nENV PATH=/usr/local/bin:/usr/bin:/bin\nUSER 0\n' "$name" "$name" \
        > "$dir/Dockerfile" ;;
    pause)
      cp "$ctx/img/pause" "$dir/"
      printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' > "$dir/Dockerfile" ;;
    kube-proxy)  # needs iptables, conntrack
      cp "$ctx/img/kube-proxy" "$dir/"
      printf 'FROM %s\nRUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables conntrack ipset kmod && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man\nCOPY kube-proxy /usr/local/bin/kube-proxy\n' "$base" \
        > "$dir/Dockerfile" ;;
    coredns)
      dns_ver=$(sed -nE 's#^(require)?[[:space:]]*github.com/coredns/coredns (v[0-9.]+)$#\2#p' "$dns_mod/go.mod" | head -1)
      [ "${ref##*:}" = "$dns_ver" ] || { echo "build-node-image: kubeadm wants $ref, hack/kind/coredns pins $dns_ver" >&2; exit 1; }
      cp "$dns_out/coredns" "$dir/"
      printf 'FROM scratch\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n' > "$dir/Dockerfile" ;;
    *) echo "build-node-image: kubeadm wants an image this script does not know: $ref" >&2; exit 1 ;;
  esac
  "${docker[@]}" build -q --network host -t "$ref" "$dir" >/dev/null
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
