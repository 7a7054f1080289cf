# shellcheck shell=bash
# Sourced by testhost.sh: a host's processes — the guest init installed into its root, PID 1 (tini,
# then testhost-init) launched in fresh mount/PID/UTS/IPC namespaces inside its netns (enter.sh),
# readiness, TESTHOST_PREINSTALL, stopping it, and looking at it (exec, status).
# Uses from testhost.sh: here, cache, log, die, rundir, host_down; netns (network.sh), ssh_cmd (identity.sh).

# The PID of the host's `unshare` process (parent of the host's PID 1).
host_pid() {
  local f pid
  f=$(rundir "$1")/pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = unshare ] || return 1
  echo "$pid"
}
# The host's PID 1 (tini), from the machine's point of view.
host_init() {
  local pid child
  pid=$(host_pid "$1") || return 1
  child=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null | awk '{print $1}')
  [ -n "$child" ] || return 1
  echo "$child"
}
host_running() { host_init "$1" >/dev/null && [ -e "/proc/$(host_init "$1")/root/run/testhost-ready" ]; }

# host_guest_init ROOT: the host's init and its systemctl shim, into the upper layer.
host_guest_init() {
  local r=$1
  install -m 0755 "$here/guest/testhost-init" "$r/usr/local/sbin/testhost-init"
  install -m 0755 "$here/guest/testhost-svc" "$r/usr/local/sbin/testhost-svc"
  ln -sf ../sbin/testhost-svc "$r/usr/local/bin/systemctl"
}

# host_launch NAME: PID 1 (tini) in fresh mount/PID/UTS/IPC namespaces, in the netns; in the
# background, without the per-host lock's descriptor (8).
host_launch() {
  local name=$1 run
  run=$(rundir "$name")
  setsid ip netns exec "$(netns "$name")" unshare --mount --pid --uts --ipc --fork --kill-child --propagation private \
    bash "$here/enter.sh" "$run/root" "$name" "${TESTHOST_KVM:-0}" \
    >"$run/console.log" 2>&1 </dev/null 8>&- &
  echo $! >"$run/pid"
}

# host_wait_ready NAME: until the init reports ready and ssh with the pinned host key works;
# otherwise shows the console and the init's log, takes the host down and fails.
host_wait_ready() {
  local name=$1 run i init ok=0
  run=$(rundir "$name")
  for i in $(seq 300); do
    if host_running "$name"; then ok=1; break; fi
    host_pid "$name" >/dev/null || [ "$i" -lt 5 ] || break
    init=$(host_init "$name") && [ -e "/proc/$init/root/run/testhost-failed" ] && break
    sleep 0.1
  done
  if [ $ok = 1 ]; then
    ok=0
    for i in $(seq 50); do
      if ssh_cmd "$name" true 2>/dev/null; then ok=1; break; fi
      sleep 0.2
    done
  fi
  if [ $ok != 1 ]; then
    cat "$run/console.log" >&2 || true
    if init=$(host_init "$name"); then tail -20 "/proc/$init/root/var/log/testhost-init.log" >&2 || true; fi
    host_down "$name" quiet
    die "host $name did not come up"
  fi
}

# host_preinstall NAME FAMILY: TESTHOST_PREINSTALL, with the host's own apt or dnf.
host_preinstall() {
  local name=$1 family=$2
  [ -n "${TESTHOST_PREINSTALL:-}" ] || return 0
  log "preinstalling on $name: $TESTHOST_PREINSTALL"
  if [ "$family" = debian ]; then
    host_exec "$name" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $TESTHOST_PREINSTALL" >&2
  else
    host_exec "$name" sh -c "dnf -y -q install $TESTHOST_PREINSTALL" >&2
  fi
}

# host_stop NAME [quiet]: every process of the host, and anything else left in its netns.
host_stop() {
  local name=$1 quiet=${2:-} run ns pid init _
  run=$(rundir "$name") ns=$(netns "$name")
  if pid=$(host_pid "$name"); then
    [ -n "$quiet" ] || log "stopping host $name"
    if init=$(host_init "$name"); then kill -TERM "$init" 2>/dev/null || true; fi
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    # --kill-child: the host's PID 1 dies with unshare, and with it every process
    # of the host's PID namespace.
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$run/pid"
  # Anything else still in the netns (e.g. started with `ip netns exec`).
  if [ -e "/run/netns/$ns" ]; then
    local pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  fi
  return 0
}

# host_exec NAME CMD...: CMD inside the host's namespaces and rootfs, no SSH.
host_exec() {
  local name=$1; shift
  local init; init=$(host_init "$name") || die "host $name is not running"
  nsenter -t "$init" -m -u -i -n -p -r -w -- /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" "$@"
}

status() {
  local d name
  for d in "$cache"/run/*/; do
    [ -d "$d" ] || continue
    name=$(basename "$d")
    if host_running "$name"; then
      (. "$d/env"; echo "$NAME $OS_FAMILY $ADDR $BRIDGE running")
    elif host_pid "$name" >/dev/null; then
      echo "$name starting-or-broken"
    fi
  done
}
