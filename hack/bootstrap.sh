#!/usr/bin/env bash
# Prepares a cluster for the operator: CRDs (waits until established), the
# operator namespace, and the Ceph admin Secret the examples reference.
#   hack/bootstrap.sh KUBECONFIG CEPH_DIR [NAMESPACE]
# The key is read from CEPH_DIR/ceph.client.admin.keyring and sent to kubectl
# on stdin, never on a command line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 2 ] || { echo "usage: $0 KUBECONFIG CEPH_DIR [NAMESPACE]" >&2; exit 2; }
kubeconfig=$1 ceph_dir=$2 ns=${3:-rbd-operator}
kubectl=${KUBECTL:-kubectl}
k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }

k apply --server-side --force-conflicts -k "$root/crds/" >/dev/null
k wait --for=condition=Established --timeout=60s \
  crd/rbdstorages.rbd-operator.io crd/rbdimages.rbd-operator.io crd/rbdsnapshots.rbd-operator.io \
  crd/hypervisornodes.rbd-operator.io >/dev/null

printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$ns" | k apply -f - >/dev/null

key=$(awk '$1 == "key" {print $3; exit}' "$ceph_dir/ceph.client.admin.keyring")
[ -n "$key" ] || { echo "bootstrap: no key in $ceph_dir/ceph.client.admin.keyring" >&2; exit 1; }
printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: ceph-admin\n  namespace: %s\ntype: Opaque\nstringData:\n  userID: admin\n  userKey: "%s"\n' \
  "$ns" "$key" | k apply -f - >/dev/null
echo "bootstrap: CRDs established, namespace $ns, Secret $ns/ceph-admin" >&2
