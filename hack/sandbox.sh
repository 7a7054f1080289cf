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
  for _ in $(seq 60); do
    curl -fs http://127.0.0.1:8080/healthz >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fs http://127.0.0.1:8080/healthz >/dev/null || { tail -30 $sandbox/operator.log >&2; echo "sandbox: operator not live" >&2; exit 1; }
  kubectl --kubeconfig $sandbox/kubeconfig apply -f examples/ >/dev/null
  if ! kubectl --kubeconfig $sandbox/kubeconfig wait rbdstorage/vmstore --for=condition=Ready --timeout=120s >/dev/null; then
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
