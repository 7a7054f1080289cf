#!/usr/bin/env bash
# Prepares a cluster for the operator: CRDs (waits until established), the
# RbdImage finalizer policy where the API server has MutatingAdmissionPolicy v1
# (Kubernetes >= 1.36; RBD_FINALIZER_POLICY=0 leaves it out), the operator
# namespace, and the Ceph admin Secret the examples reference.
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

policy="$root/deploy/components/finalizer-policy/finalizer-policy.yaml"
# admissionregistration.k8s.io/v1 serves the kind from Kubernetes 1.36 on (1.34/1.35 only as beta)
admission_v1=$(k get --raw /apis/admissionregistration.k8s.io/v1 2>/dev/null || true)
if [ "${RBD_FINALIZER_POLICY:-1}" != 0 ] && grep -q '"name":"mutatingadmissionpolicies"' <<<"$admission_v1"; then
  k apply --server-side --force-conflicts -f "$policy" >/dev/null
  # The API server answers 503 for RbdImage creations until the new policy's matcher knows the
  # kind (a second or two): wait for a server-side dry run to pass, and check it gets the finalizer.
  probe='{"apiVersion":"rbd-operator.io/v1alpha1","kind":"RbdImage","metadata":{"name":"bootstrap-probe","namespace":"default"},"spec":{"storage":"probe","size":"1Gi"}}'
  out=""
  for _ in $(seq 1 60); do
    if out=$(echo "$probe" | k create --dry-run=server -o 'jsonpath={.metadata.finalizers}' -f - 2>/dev/null); then
      break
    fi
    sleep 1
  done
  case "$out" in
    *rbd-operator.io/finalizer*) echo "bootstrap: RbdImage finalizer policy installed" >&2 ;;
    *) echo "bootstrap: the RbdImage finalizer policy is not in effect (dry run: ${out:-failed})" >&2; exit 1 ;;
  esac
elif [ "${RBD_FINALIZER_POLICY:-1}" = 0 ]; then
  k delete --ignore-not-found -f "$policy" >/dev/null 2>&1 || true
fi

printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$ns" | k apply -f - >/dev/null

key=$(awk '$1 == "key" {print $3; exit}' "$ceph_dir/ceph.client.admin.keyring")
[ -n "$key" ] || { echo "bootstrap: no key in $ceph_dir/ceph.client.admin.keyring" >&2; exit 1; }
printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: ceph-admin\n  namespace: %s\ntype: Opaque\nstringData:\n  userID: admin\n  userKey: "%s"\n' \
  "$ns" "$key" | k apply -f - >/dev/null
echo "bootstrap: CRDs established, namespace $ns, Secret $ns/ceph-admin" >&2
