#!/usr/bin/env bash
# Prepares a cluster for the operator: CRDs (waits until established and served), the RbdImage
# finalizer policy where the API server has MutatingAdmissionPolicy v1 (Kubernetes >= 1.36; waits
# until it is in effect; RBD_FINALIZER_POLICY=0 leaves it out and removes it), the operator
# namespace, and the Ceph admin Secret the examples reference.
#   hack/bootstrap.sh KUBECONFIG CEPH_DIR [NAMESPACE]
# The key is read from CEPH_DIR/ceph.client.admin.keyring and sent to kubectl on stdin, never on a
# command line.
#
# Every step waits for what it needs, each within BOOTSTRAP_TIMEOUT seconds (default 120; the policy
# step RBD_FINALIZER_POLICY_TIMEOUT, default 150), retrying transient refusals, and fails with the
# last answer it got. Progress and errors go to stderr.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 2 ] || { echo "usage: $0 KUBECONFIG CEPH_DIR [NAMESPACE]" >&2; exit 2; }
kubeconfig=$1 ceph_dir=$2 ns=${3:-rbd-operator}
kubectl=${KUBECTL:-kubectl}
step_timeout=${BOOTSTRAP_TIMEOUT:-120}
policy_timeout=${RBD_FINALIZER_POLICY_TIMEOUT:-150}
want_policy=${RBD_FINALIZER_POLICY:-1}
export LC_ALL=C # "." in $EPOCHREALTIME
t_start=$EPOCHREALTIME

log() { echo "bootstrap: $*" >&2; }
die() { log "error: $*"; exit 1; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
k() { "$kubectl" --kubeconfig "$kubeconfig" --request-timeout=30s "$@"; }

errf=$(mktemp)
trap 'rm -f "$errf"' EXIT

# A refusal that waiting cannot cure (bad input, no rights); "forbidden: not yet ready to handle
# request" is an admission plugin of a starting API server, and so transient.
fatal() {
  grep -qE 'is invalid|error validating|error parsing|Unauthorized|unknown (flag|command)' "$errf" ||
    { grep -qi 'forbidden' "$errf" && ! grep -q 'not yet ready' "$errf"; }
}

# until_ok TIMEOUT WHAT CMD...: run CMD until it succeeds (its stdout is kept in $out), at most
# TIMEOUT seconds; on timeout or a fatal refusal, fail with CMD's last answer. Tries: $tries.
out="" tries=0
until_ok() {
  local timeout=$1 what=$2 t0=$EPOCHREALTIME deadline
  shift 2
  deadline=$((SECONDS + timeout))
  tries=0
  while :; do
    tries=$((tries + 1))
    if out=$("$@" 2>"$errf"); then
      [ "$tries" -eq 1 ] || [ -n "${quiet:-}" ] || log "$what after $(since "$t0")s ($tries tries)"
      return 0
    fi
    if fatal; then
      log "error: $what failed:"
      tail -n 20 "$errf" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "error: timed out after ${timeout}s ($tries tries) waiting for $what; last answer:"
      { tail -n 20 "$errf"; [ -z "$out" ] || echo "$out"; } >&2
      exit 1
    fi
    sleep 0.5
  done
}

readyz() { k get --raw /readyz >/dev/null; }

apply_crds() { k apply --server-side --force-conflicts -k "$root/crds/" >/dev/null; }

# All four CRDs Established and NamesAccepted (polled: `kubectl wait` fails at once with "accessor
# error" on a CRD whose status.conditions is still null, as it is right after its creation).
crds=(rbdstorages rbdimages rbdsnapshots rbdsnapshotschedules hypervisornodes)
crds_established() {
  local c s
  for c in "${crds[@]}"; do
    s=$(k get crd "$c.rbd-operator.io" -o \
      'jsonpath={.status.conditions[?(@.type=="Established")].status}{.status.conditions[?(@.type=="NamesAccepted")].status}')
    [ "$s" = TrueTrue ] || { echo "crd/$c.rbd-operator.io: Established+NamesAccepted=${s:-none}" >&2; return 1; }
  done
}

# The API server lists and serves every kind (discovery, then a list of each).
crds_served() {
  local c d
  d=$(k get --raw /apis/rbd-operator.io/v1alpha1)
  for c in "${crds[@]}"; do
    grep -q "\"name\":\"$c\"" <<<"$d" || { echo "discovery lacks $c" >&2; return 1; }
    k get "$c.rbd-operator.io" -A --chunk-size=1 -o name >/dev/null || return 1
  done
}

probe='{"apiVersion":"rbd-operator.io/v1alpha1","kind":"RbdImage","metadata":{"name":"bootstrap-probe","namespace":"default"},"spec":{"storage":"probe","size":"1Gi"}}'
# A server-side dry run of an RbdImage creation gets the finalizer from the policy. Until the API
# server's policy matcher knows the kind's schema it answers 503 ("Resource kind ... not found");
# until it has loaded the new policy, the creation passes without the finalizer.
policy_in_effect() {
  local got
  got=$(k create --dry-run=server -o 'jsonpath={.metadata.finalizers}' -f - <<<"$probe") || return 1
  case "$got" in
    *rbd-operator.io/finalizer*) return 0 ;;
    *) echo "a dry-run RbdImage creation passed without the finalizer (finalizers: ${got:-none})" >&2; return 1 ;;
  esac
}

namespace() { printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$ns" | k apply -f - >/dev/null; }

key=$(awk '$1 == "key" {print $3; exit}' "$ceph_dir/ceph.client.admin.keyring" 2>/dev/null || true)
[ -n "$key" ] || die "no key in $ceph_dir/ceph.client.admin.keyring"
admin_secret() {
  printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: ceph-admin\n  namespace: %s\ntype: Opaque\nstringData:\n  userID: admin\n  userKey: "%s"\n' \
    "$ns" "$key" | k apply -f - >/dev/null
}

until_ok "$step_timeout" "the API server ready (/readyz)" readyz
until_ok "$step_timeout" "the CRDs applied" apply_crds
until_ok "$step_timeout" "the CRDs established" crds_established
until_ok "$step_timeout" "the kinds served" crds_served

policy="$root/deploy/components/finalizer-policy/finalizer-policy.yaml"
# admissionregistration.k8s.io/v1 serves the kind from Kubernetes 1.36 on (1.34/1.35 only as beta)
until_ok "$step_timeout" "admissionregistration.k8s.io/v1 discovery" k get --raw /apis/admissionregistration.k8s.io/v1
if ! grep -q '"name":"mutatingadmissionpolicies"' <<<"$out"; then
  [ "$want_policy" = 0 ] || log "this API server has no MutatingAdmissionPolicy v1: the RbdImage finalizer policy is left out"
elif [ "$want_policy" != 0 ]; then
  until_ok "$step_timeout" "the finalizer policy applied" k apply --server-side --force-conflicts -f "$policy"
  t0=$EPOCHREALTIME
  quiet=1 until_ok "$policy_timeout" "the RbdImage finalizer policy in effect" policy_in_effect
  log "RbdImage finalizer policy in effect after $(since "$t0")s ($tries tries)"
else
  until_ok "$step_timeout" "the finalizer policy removed" k delete --ignore-not-found -f "$policy"
fi

until_ok "$step_timeout" "namespace $ns" namespace
until_ok "$step_timeout" "Secret $ns/ceph-admin" admin_secret
log "CRDs established and served, namespace $ns, Secret $ns/ceph-admin ($(since "$t_start")s)"
