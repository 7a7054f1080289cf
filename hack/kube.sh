#!/usr/bin/env bash
# Local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager)
# on 127.0.0.1, built from Go modules by hack/build-kube.sh. No kubelet/nodes.
#
#   hack/kube.sh up DIR      start, wait for /readyz, write DIR/kubeconfig, DIR/env
#   hack/kube.sh down DIR    stop everything (TERM, then KILL), remove etcd data
#   hack/kube.sh status DIR  exit 0 iff the apiserver's /readyz is ok
#
# Ports (env, defaults): KUBE_API_PORT=6443 ETCD_CLIENT_PORT=2379
# ETCD_PEER_PORT=2380 KCM_PORT=10257. Other knobs: KUBE_UP_TIMEOUT=120,
# KUBE_DOWN_TIMEOUT=20 (seconds), KCM_CONTROLLERS (comma list).
# Only progress/errors go to stderr; stdout stays empty.
set -euo pipefail
export LC_ALL=C # "." in $EPOCHREALTIME

root=$(cd "$(dirname "$0")/.." && pwd)
comps=(etcd kube-apiserver kube-controller-manager) # start order

log() { echo "kube.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() { echo "usage: $0 up|down|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
case "$cmd" in
  up) mkdir -p "$2" ;;
  down) [ -d "$2" ] || { log "down: $2 does not exist, nothing to do"; exit 0; } ;;
  status) [ -d "$2" ] || { log "not up: $2 does not exist"; exit 1; } ;;
  *) usage ;;
esac
dir=$(cd "$2" && pwd) # absolute: it is also part of our processes' argv

# Serialize up/down on one DIR (e.g. parallel test workers sharing it).
if [ "$cmd" != status ]; then
  exec 9>"$dir/.lock"
  flock -w 300 9 || die "timed out waiting for the lock on $dir"
fi

# Each component's argv holds one DIR-specific argument; it tells our processes
# apart from those of another DIR (or a reused pid).
mark() {
  case "$1" in
    etcd) echo "--data-dir=$dir/etcd" ;;
    kube-apiserver) echo "--cert-dir=$dir/certs/apiserver" ;;
    kube-controller-manager) echo "--kubeconfig=$dir/kubeconfig" ;;
  esac
}

# is_ours PID [COMP]: echo PID if it runs one of our binaries for this DIR
# (zombies have an empty cmdline, so they count as gone).
is_ours() {
  local pid=$1 want=${2:-} exe a m args=()
  mapfile -d '' args 2>/dev/null <"/proc/$pid/cmdline" || return 1
  [ ${#args[@]} -gt 0 ] || return 1
  exe=${args[0]##*/}
  case "$exe" in etcd | kube-apiserver | kube-controller-manager) ;; *) return 1 ;; esac
  [ -z "$want" ] || [ "$exe" = "$want" ] || return 1
  m=$(mark "$exe")
  for a in "${args[@]}"; do
    if [ "$a" = "$m" ]; then echo "$pid"; return 0; fi
  done
  return 1
}

# pid_of COMP: pid from DIR/run/COMP.pid if it is alive and really ours.
pid_of() {
  local f="$dir/run/$1.pid"
  [ -s "$f" ] || return 1
  is_ours "$(cat "$f")" "$1"
}

# our_pids: every live process of this DIR (pidfiles may be stale or missing).
our_pids() {
  local p comm
  for p in /proc/[0-9]*; do
    read -r comm 2>/dev/null <"$p/comm" || continue
    case "$comm" in etcd | kube-apiserver | kube-controll*) is_ours "${p#/proc/}" || true ;; esac
  done
}

# alive PIDS...: echo those still running as ours.
alive() {
  local p
  for p in "$@"; do is_ours "$p" || true; done
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

load_env() {
  [ -f "$dir/env" ] || return 1
  # shellcheck disable=SC1091
  . "$dir/env"
}

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

http_ok() { curl -fs --max-time 2 -o /dev/null "$@" 2>/dev/null; }

readyz() {
  [ -f "$dir/pki/ca.crt" ] && [ -f "$dir/token" ] || return 1
  curl -fsS --max-time 5 --cacert "$dir/pki/ca.crt" \
    -H @<(printf 'Authorization: Bearer %s\n' "$(cat "$dir/token")") \
    "https://127.0.0.1:$KUBE_API_PORT/readyz" >/dev/null 2>&1
}

system_namespaces() {
  local n
  for n in default kube-system kube-public; do
    curl -fsS --max-time 5 --cacert "$dir/pki/ca.crt" \
      -H @<(printf 'Authorization: Bearer %s\n' "$(cat "$dir/token")") \
      "https://127.0.0.1:$KUBE_API_PORT/api/v1/namespaces/$n" >/dev/null 2>&1 || return 1
  done
}

# stop_all: TERM in reverse start order, wait, then KILL the rest.
stop_all() {
  local timeout=${KUBE_DOWN_TIMEOUT:-20} pids=() stopped=() p i t
  for ((i = ${#comps[@]} - 1; i >= 0; i--)); do
    p=$(pid_of "${comps[i]}") || continue
    log "stopping ${comps[i]} (pid $p)"
    stopped+=("$p")
    kill -TERM "$p" 2>/dev/null || true
    for ((t = 0; t < timeout * 10; t++)); do
      [ -n "$(alive "$p")" ] || break
      sleep 0.1
    done
  done
  # Leftovers: processes without a (valid) pidfile, or ones ignoring TERM.
  mapfile -t pids < <(our_pids)
  if [ ${#pids[@]} -gt 0 ]; then
    log "terminating leftover pids: ${pids[*]}"
    stopped+=("${pids[@]}")
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((t = 0; t < timeout * 10; t++)); do
      mapfile -t pids < <(alive "${pids[@]}")
      [ ${#pids[@]} -gt 0 ] || break
      sleep 0.1
    done
    if [ ${#pids[@]} -gt 0 ]; then
      log "killing pids: ${pids[*]}"
      kill -KILL "${pids[@]}" 2>/dev/null || true
      for ((t = 0; t < 50; t++)); do [ -n "$(alive "${pids[@]}")" ] || break; sleep 0.1; done
    fi
  fi
  mapfile -t pids < <(our_pids)
  [ ${#pids[@]} -eq 0 ] || die "processes still running: ${pids[*]}"
  # The exited processes are zombies until PID 1 (their new parent) reaps
  # them; give it a moment so that pgrep shows nothing afterwards.
  for ((t = 0; t < 100; t++)); do
    pids=()
    for p in "${stopped[@]}"; do [ ! -e "/proc/$p" ] || pids+=("$p"); done
    [ ${#pids[@]} -gt 0 ] || break
    sleep 0.1
  done
  [ ${#pids[@]} -eq 0 ] || log "note: exited but not yet reaped by PID 1: ${pids[*]}"
  rm -f "$dir"/run/*.pid
}

# start COMP ARGS...: detached (own session), logs to DIR/log/COMP.log.
start() {
  local c=$1 pidf="$dir/run/$1.pid"
  shift
  rm -f "$pidf"
  [ ! -f "$dir/log/$c.log" ] || mv -f "$dir/log/$c.log" "$dir/log/$c.log.1" # keep the previous run
  log "starting $c"
  # The inner sh writes its own pid and execs, so the pidfile is the real pid.
  # shellcheck disable=SC2016
  setsid -f sh -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$bin/$c" "$@" \
    </dev/null >"$dir/log/$c.log" 2>&1 9>&- # the lock fd must not leak
  # Wait until the pidfile exists and the pid has exec'd the binary.
  for ((t = 0; t < 50; t++)); do
    if pid_of "$c" >/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$c did not start (see $dir/log/$c.log)"
}

# fail COMP MSG: show the component's log tail, tear down (as down), exit 1.
fail() {
  log "error: $2; last lines of $dir/log/$1.log:"
  tail -n 30 "$dir/log/$1.log" >&2 || true
  stop_all || true
  rm -rf "$dir/etcd"
  exit 1
}

# wait_for COMP DESC CHECK...: poll CHECK until it succeeds or the deadline.
wait_for() {
  local c=$1 what=$2
  shift 2
  while ! "$@"; do
    pid_of "$c" >/dev/null || fail "$c" "$c exited"
    [ "$SECONDS" -lt "$deadline" ] || fail "$c" "timed out waiting for $what"
    sleep 0.2
  done
}

gen_pki() {
  local p="$dir/pki"
  mkdir -p "$p"
  [ -f "$p/ca.crt" ] && [ -f "$p/apiserver.crt" ] && [ -f "$p/sa.key" ] && [ -s "$dir/token" ] && return 0
  log "generating CA, serving cert, service-account keys and admin token"
  (
    umask 077
    cd "$p"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout ca.key -out ca.crt \
      -subj "/CN=rbd-operator-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr \
      -subj "/CN=kube-apiserver" 2>/dev/null
    cat >apiserver.ext <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days 3650 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f apiserver.csr apiserver.ext ca.srl
    openssl rand -hex 32 >"$dir/token"
    # token,user,uid,"groups"
    printf '%s,admin,admin,"system:masters"\n' "$(cat "$dir/token")" >"$dir/token.csv"
    chmod 600 "$dir/token" "$dir/token.csv" ./*.key
  ) || die "openssl failed"
}

write_kubeconfig() {
  local f="$dir/kubeconfig" ca
  ca=$(base64 -w0 <"$dir/pki/ca.crt")
  (
    umask 077
    cat >"$f.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$KUBE_API_PORT
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $(cat "$dir/token")
contexts:
- name: local
  context:
    cluster: local
    user: admin
    namespace: default
current-context: local
EOF
    mv "$f.tmp" "$f"
  )
}

cmd_up() {
  : "${KUBE_API_PORT:=6443}" "${ETCD_CLIENT_PORT:=2379}" "${ETCD_PEER_PORT:=2380}" "${KCM_PORT:=10257}"
  local c p running=0 t0=$EPOCHREALTIME
  for c in "${comps[@]}"; do
    if pid_of "$c" >/dev/null; then running=$((running + 1)); fi
  done
  if [ "$running" -gt 0 ]; then
    if [ "$running" -eq ${#comps[@]} ] && load_env && readyz; then
      log "already up in $dir (apiserver https://127.0.0.1:$KUBE_API_PORT)"
      return 0
    fi
    die "$dir has a partly running control plane; run '$0 down $dir' first"
  fi
  p=$(our_pids | xargs)
  [ -z "$p" ] || die "stray processes use $dir: $p; run '$0 down $dir'"
  for p in "$KUBE_API_PORT" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$KCM_PORT"; do
    if port_busy "$p"; then die "port 127.0.0.1:$p is in use (set KUBE_API_PORT/ETCD_CLIENT_PORT/ETCD_PEER_PORT/KCM_PORT)"; fi
  done
  command -v openssl >/dev/null || die "openssl is required"
  command -v curl >/dev/null || die "curl is required"

  bin=$("$root/hack/build-kube.sh") || die "hack/build-kube.sh failed"
  for c in "${comps[@]}" kubectl; do [ -x "$bin/$c" ] || die "missing $bin/$c"; done

  mkdir -p "$dir/log" "$dir/run" "$dir/certs/apiserver" "$dir/certs/kcm"
  gen_pki
  write_kubeconfig
  ln -sfn "$bin/kubectl" "$dir/kubectl"
  {
    printf 'KUBE_API_PORT=%q\nETCD_CLIENT_PORT=%q\nETCD_PEER_PORT=%q\nKCM_PORT=%q\n' \
      "$KUBE_API_PORT" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$KCM_PORT"
    printf 'KUBE_API_URL=%q\nKUBECONFIG=%q\nKUBECTL=%q\nKUBE_BIN=%q\n' \
      "https://127.0.0.1:$KUBE_API_PORT" "$dir/kubeconfig" "$dir/kubectl" "$bin"
  } >"$dir/env"

  deadline=$((SECONDS + ${KUBE_UP_TIMEOUT:-120}))
  local etcd_url="http://127.0.0.1:$ETCD_CLIENT_PORT" peer_url="http://127.0.0.1:$ETCD_PEER_PORT"
  # Data is throw-away (removed by down), so skip fsync for speed.
  start etcd --name=default --data-dir="$dir/etcd" \
    --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
    --listen-peer-urls="$peer_url" --initial-advertise-peer-urls="$peer_url" \
    --initial-cluster="default=$peer_url" --initial-cluster-state=new \
    --unsafe-no-fsync --log-level=warn
  wait_for etcd "etcd /health" http_ok "$etcd_url/health"

  # --endpoint-reconciler-type=none: Endpoints may not hold a loopback IP, so
  # the "kubernetes" Service stays without endpoints (nothing in-cluster uses it).
  start kube-apiserver \
    --etcd-servers="$etcd_url" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$KUBE_API_PORT" \
    --cert-dir="$dir/certs/apiserver" \
    --tls-cert-file="$dir/pki/apiserver.crt" --tls-private-key-file="$dir/pki/apiserver.key" \
    --client-ca-file="$dir/pki/ca.crt" \
    --token-auth-file="$dir/token.csv" \
    --authorization-mode=RBAC \
    --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range=10.0.0.0/24 \
    --endpoint-reconciler-type=none
  wait_for kube-apiserver "apiserver /readyz" readyz
  # /readyz does not wait for the system namespaces (created by a controller of the API server a
  # moment later); objects go into "default" right away.
  wait_for kube-apiserver "the default and kube-system namespaces" system_namespaces
  log "apiserver ready after $(since "$t0")s"

  # No --authentication/authorization-kubeconfig: the apiserver has no
  # requestheader CA, which would make delegated authn log errors every 10s.
  start kube-controller-manager \
    --kubeconfig="$dir/kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$dir/certs/kcm" \
    --leader-elect=false \
    --controllers="${KCM_CONTROLLERS:-garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller}" \
    --service-account-private-key-file="$dir/pki/sa.key" \
    --root-ca-file="$dir/pki/ca.crt"
  # /healthz needs no credentials; the controller-manager's cert is self-signed.
  wait_for kube-controller-manager "controller-manager /healthz" \
    http_ok -k "https://127.0.0.1:$KCM_PORT/healthz"

  log "up in $(since "$t0")s: apiserver https://127.0.0.1:$KUBE_API_PORT," \
    "kubeconfig $dir/kubeconfig, kubectl $dir/kubectl"
}

cmd_down() {
  stop_all
  rm -rf "$dir/etcd"
  log "down ($dir)"
}

cmd_status() {
  load_env || { log "not up: no $dir/env"; exit 1; }
  if readyz; then log "ready (https://127.0.0.1:$KUBE_API_PORT)"; else log "not ready"; exit 1; fi
}

case "$cmd" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) usage ;;
esac
