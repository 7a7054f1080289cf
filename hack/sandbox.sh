#!/usr/bin/env bash
# The local sandbox: control plane, Ceph, the operator, the examples.
#   hack/sandbox.sh up     start everything in the background
#   hack/sandbox.sh down   stop everything, leave no process
#   hack/sandbox.sh run    up, follow the operator's log, down on Ctrl-C
# Contract: .sandbox/kubeconfig (admin) and .sandbox/ceph/ceph.conf (admin
# keyring beside it) work from the repository root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
sandbox=.sandbox
bridge=rbdop0
ceph_addr=10.254.0.1
bin=$(hack/build-kube.sh)
export PATH="$bin:$PATH"
export KUBECTL="$bin/kubectl"

# wait_until SECONDS WHAT CMD...: retry CMD (every second) until it succeeds; give up after SECONDS,
# or at once when CMD returns 2, showing its last answer. Logs how long it waited if it had to.
wait_until() {
  local timeout=$1 what=$2 t0=$SECONDS rc errf tries=0
  shift 2
  errf=$(mktemp)
  while :; do
    tries=$((tries + 1))
    if "$@" >/dev/null 2>"$errf"; then
      [ "$tries" -eq 1 ] || echo "sandbox: $what after $((SECONDS - t0))s ($tries tries)" >&2
      rm -f "$errf"; return 0
    else
      rc=$?
    fi
    if [ "$rc" = 2 ] || [ $((SECONDS - t0)) -ge "$timeout" ]; then
      echo "sandbox: error: gave up waiting for $what after $((SECONDS - t0))s ($tries tries); last answer:" >&2
      tail -n 20 "$errf" >&2; rm -f "$errf"; return 1
    fi
    sleep 1
  done
}

operator_pid() { [ -s $sandbox/operator.pid ] && kill -0 "$(cat $sandbox/operator.pid)" 2>/dev/null && cat $sandbox/operator.pid; }

up() {
  mkdir -p $sandbox
  hack/net.sh up $bridge $ceph_addr/24
  hack/kube.sh up $sandbox/kube
  ln -sf kube/kubeconfig $sandbox/kubeconfig
  CEPH_ADDR=$ceph_addr hack/ceph.sh up $sandbox/ceph
  hack/bootstrap.sh $sandbox/kubeconfig $sandbox/ceph
  # Two test hypervisors (network namespaces with sshd + libvirtd) for examples/hypervisornodes.yaml.
  hack/testhosts/testhost.sh prepare
  for i in 1 2; do
    TESTHOST_NO_REPO=1 hack/testhosts/testhost.sh up sb-h$i $bridge 10.254.0.1$i/24 debian
    hack/testhosts/testhost.sh repo-url debian $ceph_addr >/dev/null
    # The key goes to kubectl on stdin, never on a command line.
    { printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: sandbox-h%s-ssh, namespace: rbd-operator}\n' $i
      printf 'stringData:\n  ssh-privatekey: |\n'
      sed 's/^/    /' .cache/testhosts/run/sb-h$i/id_ed25519; } | kubectl --kubeconfig $sandbox/kubeconfig apply -f - >/dev/null
  done
  if ! operator_pid >/dev/null; then
    echo "sandbox: starting the operator (log: $sandbox/operator.log)" >&2
    RBD_OPERATOR_RESYNC_SECONDS=${RBD_OPERATOR_RESYNC_SECONDS:-30} setsid nohup .venv/bin/rbd-operator \
      --kubeconfig $sandbox/kubeconfig --namespace rbd-operator --liveness http://127.0.0.1:8080/healthz --metrics 127.0.0.1:9090 \
      > $sandbox/operator.log 2>&1 < /dev/null &
    echo $! > $sandbox/operator.pid
  fi
  live() { operator_pid >/dev/null || { echo "the operator exited" >&2; return 2; }; curl -fsS --max-time 2 http://127.0.0.1:8080/healthz; }
  wait_until 90 "the operator live (http://127.0.0.1:8080/healthz)" live || { tail -30 $sandbox/operator.log >&2; exit 1; }
  wait_until 60 "examples/ applied" kubectl --kubeconfig $sandbox/kubeconfig apply -f examples/ || exit 1
  storage_ready() {
    [ "$(kubectl --kubeconfig $sandbox/kubeconfig get rbdstorage vmstore \
      -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
  }
  if ! wait_until 180 "RbdStorage vmstore Ready" storage_ready; then
    kubectl --kubeconfig $sandbox/kubeconfig get rbds -o wide >&2 || true
    tail -30 $sandbox/operator.log >&2
    echo "sandbox: the example storage did not become Ready" >&2
    exit 1
  fi
  if ! kubectl --kubeconfig $sandbox/kubeconfig wait hvn --all --for=condition=Ready --timeout=600s >/dev/null; then
    kubectl --kubeconfig $sandbox/kubeconfig get hvn >&2 || true
    echo "sandbox: the example hypervisors are not Ready yet (see kubectl describe hvn)" >&2
  fi
  cat <<MSG

The sandbox is up. From the repository root:
  export PATH=$bin:\$PATH
  kubectl --kubeconfig $sandbox/kubeconfig get rbd
  kubectl --kubeconfig $sandbox/kubeconfig describe rbds vmstore
  kubectl --kubeconfig $sandbox/kubeconfig get rbdimg -A
  kubectl --kubeconfig $sandbox/kubeconfig get hvn -o wide
  hack/testhosts/testhost.sh ssh sb-h1 virsh -c qemu:///system secret-list
  ceph -c $sandbox/ceph/ceph.conf -s
  ceph -c $sandbox/ceph/ceph.conf osd pool ls detail
  rbd -c $sandbox/ceph/ceph.conf ls -l vmstore
Operator log: $sandbox/operator.log
MSG
}

down() {
  if pid=$(operator_pid); then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f $sandbox/operator.pid
  for i in 1 2; do hack/testhosts/testhost.sh down sb-h$i || true; done
  hack/testhosts/testhost.sh repo-down || true
  hack/ceph.sh down $sandbox/ceph || true
  hack/kube.sh down $sandbox/kube || true
  hack/net.sh down $bridge || true
  echo "sandbox: down" >&2
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  run)
    tail_pid=
    # On Ctrl-C, tear down even if our output pipe is gone (e.g. `make run | tee`): a copy goes to down.log.
    trap '[ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null; trap "" PIPE INT TERM
          { down 2>&1 | tee -p -a $sandbox/down.log >&2; } || true; exit 0' INT TERM
    up
    echo "Following the operator's log; Ctrl-C stops the sandbox." >&2
    tail -n +1 -f $sandbox/operator.log &
    tail_pid=$!
    wait "$tail_pid" || true
    ;;
  *) echo "usage: $0 up|down|run" >&2; exit 2 ;;
esac
