#!/usr/bin/env bash
# Throwaway single-node Ceph cluster (1 mon, 1 mgr, 1 memstore OSD, cephx on)
# for development and tests, from Debian's Ceph packages of the release CEPH_RELEASE:
# pacific (16.2, Debian 12), reef (18.2, Debian 13; the default) or tentacle (20.2, Debian
# testing). A release this machine's own packages do not carry runs from a root built by
# hack/ceph-root.sh (debootstrap, cached under .cache/ceph-root by package versions): chrooted, in a
# mount namespace of its own where DIR is bound at the same path, on the same addresses and ports.
#
#   hack/ceph.sh up DIR      bootstrap a fresh cluster in DIR and start it
#   hack/ceph.sh down DIR    stop it (TERM, then KILL) and delete DIR entirely
#   hack/ceph.sh status DIR  print `ceph -s`; exit 0 if running and healthy enough
#   hack/ceph.sh kill|start|pause|resume DIR DAEMON   fault injection (make faults): DAEMON is
#       mon.a, mgr.x or osd.0; kill = SIGKILL (start brings it back on its store: fine for the mon
#       and mgr; the OSD is memstore, so it is paused/resumed instead: SIGSTOP/SIGCONT)
#
# Environment:
#   CEPH_RELEASE       pacific, reef (default) or tentacle (squid: no Debian suite, refused);
#                      `up` records the root it used in DIR, so `start` brings a daemon back from it
#   CEPH_ADDR          IPv4/IPv6 address daemons bind to (default 127.0.0.1);
#                      it must already be configured on a local interface
#   CEPH_MON_PORT_V2   mon msgr2 port (default 3300)
#   CEPH_MON_PORT_V1   mon legacy msgr1 port (default 6789)
#   CEPH_PORT_BASE     first port of the 32-port range used by the mgr and OSD
#                      (default 6800 + 32 * ((CEPH_MON_PORT_V2 - 3300) mod 800),
#                      so clusters whose v2 ports differ by < 800 never collide)
#   CEPH_MEMSTORE_BYTES  OSD memstore size (default 8 GiB, allocated lazily)
#   CEPH_UP_TIMEOUT    seconds `up` waits for a healthy cluster (default 60)
#   CEPH_STOP_TIMEOUT  seconds `down` waits after SIGTERM before SIGKILL (default 10)
#
# Produces DIR/ceph.conf (mon_host with v2+v1 addresses, admin keyring path)
# and DIR/ceph.client.admin.keyring, so `ceph -c DIR/ceph.conf ...` and
# rados.Rados(conffile=DIR/ceph.conf) work as client.admin from anywhere.
# Layout: DIR/data (mon store, mgr and OSD dirs), DIR/log, DIR/run (pidfiles).
# Needs: ceph-common python3-rados (the host's clients), and ceph-mon ceph-mgr ceph-osd for the
# release the host carries, or debootstrap for the others (see hack/ceph.md).
set -euo pipefail

readonly PROG=${0##*/}
readonly MARKER=.ceph-sh-cluster
readonly ROOT_FILE=.ceph-sh-root # the root the daemons run from (/ = this machine's packages)
readonly HERE=$(cd "$(dirname "$0")" && pwd)
readonly PORT_SPAN=32
readonly DAEMONS=(mon.a mgr.x osd.0)
# Optional mgr modules that are never loaded (not needed here; fewer python
# sub-interpreters = faster mgr start, less memory). Always-on modules (balancer, crash,
# devicehealth, orchestrator, pg_autoscaler, progress, rbd_support, status,
# telemetry, volumes) must stay: disabling them raises MGR_MODULE_ERROR. The list is the union
# over the releases (a name a release lacks is ignored): reef and tentacle add cli_api,
# osd_perf_query, osd_support, rgw, mds_autoscaler, k8sevents, rook and (tentacle) smb.
readonly MGR_DISABLED_MODULES="alerts diskprediction_local influx insights \
localpool mirroring nfs prometheus restful selftest snap_schedule stats \
telegraf test_orchestrator zabbix cli_api osd_perf_query osd_support rgw \
mds_autoscaler k8sevents rook smb"
# the interpreter that has python3-rados (a pyenv/venv python3 may not)
readonly PYTHON=/usr/bin/python3
unset CEPH_ARGS # would leak extra arguments into every ceph CLI call

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  cat >&2 <<EOF
usage: $PROG up|down|status DIR | kill|start|pause|resume DIR DAEMON
environment: CEPH_RELEASE (reef: pacific|reef|tentacle) CEPH_ADDR (127.0.0.1) CEPH_MON_PORT_V2 (3300) CEPH_MON_PORT_V1 (6789)
             CEPH_PORT_BASE CEPH_MEMSTORE_BYTES CEPH_UP_TIMEOUT CEPH_STOP_TIMEOUT
EOF
  exit 2
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# ---------------------------------------------------------------- settings --
setup() {
  DIR=$(realpath -m -- "$1")
  CONF=$DIR/ceph.conf
  ADMIN_KEYRING=$DIR/ceph.client.admin.keyring

  RELEASE=${CEPH_RELEASE:-reef}
  case $RELEASE in
    pacific|reef|tentacle) ;;
    squid) die "CEPH_RELEASE=squid: Squid (19.2) is in no Debian suite (pacific, reef or tentacle)" ;;
    *) die "unknown CEPH_RELEASE=$RELEASE (pacific, reef or tentacle)" ;;
  esac
  ADDR=${CEPH_ADDR:-127.0.0.1}
  PORT_V2=${CEPH_MON_PORT_V2:-3300}
  PORT_V1=${CEPH_MON_PORT_V1:-6789}
  local p
  for p in PORT_V2 PORT_V1; do
    if ! is_uint "${!p}" || ((${!p} == 0 || ${!p} > 65535)); then die "bad port CEPH_MON_$p=${!p}"; fi
  done
  ((PORT_V2 != PORT_V1)) || die "CEPH_MON_PORT_V2 and CEPH_MON_PORT_V1 must differ"
  PORT_BASE=${CEPH_PORT_BASE:-$((6800 + PORT_SPAN * (((PORT_V2 - 3300) % 800 + 800) % 800)))}
  if ! is_uint "$PORT_BASE" || ((PORT_BASE < 1024 || PORT_BASE + PORT_SPAN > 65536)); then
    die "bad CEPH_PORT_BASE=$PORT_BASE"
  fi
  PORT_MAX=$((PORT_BASE + PORT_SPAN - 1))
  for p in "$PORT_V2" "$PORT_V1"; do
    ((p < PORT_BASE || p > PORT_MAX)) ||
      die "mon port $p lies in the daemon port range $PORT_BASE-$PORT_MAX; set CEPH_PORT_BASE"
  done
  MEMSTORE_BYTES=${CEPH_MEMSTORE_BYTES:-$((8 << 30))}
  UP_TIMEOUT=${CEPH_UP_TIMEOUT:-60}
  STOP_TIMEOUT=${CEPH_STOP_TIMEOUT:-10}
  for p in MEMSTORE_BYTES UP_TIMEOUT STOP_TIMEOUT; do
    is_uint "${!p}" || die "CEPH_$p=${!p} is not an integer"
  done

  if [[ $ADDR == *:* ]]; then # IPv6
    ADDR_URL="[$ADDR]" BIND_V4=false BIND_V6=true
  else
    [[ $ADDR =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "CEPH_ADDR=$ADDR is not an IP address"
    ADDR_URL=$ADDR BIND_V4=true BIND_V6=false
  fi
}

# ------------------------------------------------------------- processes --
# PIDs of this cluster's daemons (argv[0] is a ceph daemon, --conf is ours).
# Arguments: daemon types to look for (mon mgr osd; default all).
cluster_pids() {
  local pid type types=("$@")
  ((${#types[@]})) || types=(mon mgr osd)
  for type in "${types[@]}"; do
    pgrep -x "ceph-$type" || true
  done | while read -r pid; do
    if tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$CONF"; then
      echo "$pid"
    fi
  done
}

# True if PID exists and is not a zombie (PID 1 here may reap late).
alive() {
  local st
  { st=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
  st=${st##*) }
  [[ ${st:0:1} != Z ]]
}

# Send $1 to the given PIDs and wait up to $2 seconds for them to exit.
# Returns non-zero if some are still alive.
signal_wait() {
  local sig=$1 timeout=$2 pid left i
  shift 2
  (($#)) || return 0
  kill "-$sig" "$@" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    left=0
    for pid in "$@"; do
      if alive "$pid"; then left=1; fi
    done
    ((left)) || return 0
    sleep 0.1
  done
  return 1
}

stop_daemons() {
  local -a pids
  local group
  # The OSD first: it tells the mon it is going down and waits for the ack.
  for group in osd "mgr mon"; do
    # shellcheck disable=SC2086 # split group into types
    mapfile -t pids < <(cluster_pids $group)
    ((${#pids[@]})) || continue
    log "stopping $group (pid ${pids[*]})"
    if ! signal_wait TERM "$STOP_TIMEOUT" "${pids[@]}"; then
      log "$group still running after ${STOP_TIMEOUT}s, sending SIGKILL"
      signal_wait KILL 5 "${pids[@]}" || die "could not kill pid ${pids[*]}"
    fi
  done
  mapfile -t pids < <(cluster_pids)
  ((${#pids[@]} == 0)) || die "daemons still running: ${pids[*]}"
}

# Delete DIR. Only a directory `up` created (or found empty) carries the
# marker; everything in it belongs to the cluster, including files that
# callers added (client keyrings...). Anything else is left alone.
wipe_dir() {
  [[ -d $DIR ]] || return 0
  if [[ ! -e $DIR/$MARKER ]]; then
    if [[ -z $(ls -A -- "$DIR") ]]; then rmdir -- "$DIR"; return 0; fi
    die "$DIR is not a $PROG cluster directory (no $MARKER), refusing to delete it"
  fi
  rm -rf -- "${DIR:?}"
}

# ---------------------------------------------------------- python helper --
# Talks to the mon through python3-rados (one connection instead of many
# slow `ceph` CLI calls). Subcommands: prepare OSD_UUID [HEALTH_CODE_TO_MUTE...] | wait | health.
rados_helper() {
  "$PYTHON" - "$CONF" "$UP_TIMEOUT" "$@" <<'PY'
import json, sys, time
import rados

conf, timeout, cmd, args = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
deadline = time.monotonic() + timeout

def connect():
    while True:
        c = rados.Rados(conffile=conf, conf={"rados_mon_op_timeout": "10"})
        try:
            c.connect(timeout=max(1, min(5, int(deadline - time.monotonic()))))
            return c
        except rados.Error as e:
            c.shutdown()
            if time.monotonic() > deadline:
                sys.exit(f"cannot connect to the mon: {e}")
            time.sleep(0.3)

def mon(c, **cmd):
    ret, out, err = c.mon_command(json.dumps(dict(cmd, format="json")), b"")
    if ret != 0:
        raise RuntimeError(f"{cmd['prefix']}: {err} ({ret})")
    return json.loads(out) if out else None

def state(c):
    s = mon(c, prefix="status")
    o = s["osdmap"].get("osdmap", s["osdmap"])  # layout differs across releases
    return s, o.get("num_up_osds", 0) >= 1 and o.get("num_in_osds", 0) >= 1, \
        s.get("mgrmap", {}).get("available", False)

def main(c):
    if cmd == "prepare":
        # devicehealth would create its own pool as soon as the OSD is up
        mon(c, prefix="config set", who="mgr",
            name="mgr/devicehealth/enable_monitoring", value="false", force=True)
        mon(c, prefix="osd new", uuid=args[0], id=0)
        for code in args[1:]:
            mon(c, prefix="health mute", code=code, sticky=True)
    elif cmd == "wait":
        while True:
            s, osd_ok, mgr_ok = state(c)
            if osd_ok and mgr_ok:
                break
            if time.monotonic() > deadline:
                sys.exit(f"timeout: osd up+in={osd_ok} mgr available={mgr_ok}\n"
                         + json.dumps(s.get("health"), indent=1))
            time.sleep(0.3)
    elif cmd == "health":
        s, osd_ok, mgr_ok = state(c)
        health = s.get("health", {}).get("status")
        if not (osd_ok and mgr_ok and health in ("HEALTH_OK", "HEALTH_WARN")):
            sys.exit(f"osd up+in={osd_ok} mgr available={mgr_ok} health={health}")
c = connect()
try:
    main(c)
except RuntimeError as e:
    sys.exit(str(e))
finally:
    c.shutdown()
PY
}

# ------------------------------------------------------------ the root --
# CROOT: where the release's daemons and tools are (/ or a hack/ceph-root.sh root).
resolve_root() {
  CROOT=$("$HERE/ceph-root.sh" "$RELEASE") || die "no root for CEPH_RELEASE=$RELEASE (see above)"
  [[ $CROOT == / || -x $CROOT/usr/bin/ceph-mon ]] || die "$CROOT holds no ceph-mon"
}

# The root `up` used for the cluster in DIR (for `start`).
recorded_root() {
  CROOT=$(cat "$DIR/$ROOT_FILE" 2>/dev/null) || die "$DIR has no $ROOT_FILE (not started by this $PROG?)"
  [[ $CROOT == / || -x $CROOT/usr/bin/ceph-mon ]] || die "the root $CROOT of this cluster is gone"
}

# in_root CMD...: run a Ceph tool or daemon of the release. From a root: chrooted, in a mount
# namespace of its own (gone with its last process) with /dev, /proc, /sys and DIR bound, DIR at
# the same path, so ceph.conf's absolute paths hold inside and out; the network is the machine's.
# A daemon forks into the background and keeps the namespace; its command line stays
# `ceph-TYPE ... --conf DIR/ceph.conf`, so cluster_pids, kill, pause and resume work unchanged.
in_root() {
  if [[ $CROOT == / ]]; then "$@"; return; fi
  mkdir -p "$CROOT$DIR"
  unshare --mount --propagation private -- /bin/bash -euc '
    r=$1 d=$2; shift 2
    mount --rbind /dev "$r/dev"
    mount -t proc proc "$r/proc"
    mount --rbind /sys "$r/sys"
    if [[ -d $d ]]; then mount --bind "$d" "$r$d"; fi
    exec chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TZ=UTC "$@"
  ' in_root "$CROOT" "$DIR" "$@"
}

# ------------------------------------------------------------- bootstrap --
write_conf() {
  local sec
  {
    cat <<EOF
# generated by hack/ceph.sh; cluster in $DIR
[global]
fsid = $FSID
mon_host = [v2:$ADDR_URL:$PORT_V2,v1:$ADDR_URL:$PORT_V1]
keyring = $ADMIN_KEYRING
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
ms_bind_ipv4 = $BIND_V4
ms_bind_ipv6 = $BIND_V6
ms_bind_port_min = $PORT_BASE
ms_bind_port_max = $PORT_MAX
run_dir = $DIR/run
crash_dir = $DIR/data/crash
# single OSD: size 1 pools, replicas on the same "host"
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_allow_pool_delete = true
# callers set pg_num themselves; many pg_num=128 pools on one OSD must fit
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 100000
osd_max_pg_per_osd_hard_ratio = 10
# keep health quiet and settled
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_warn_on_insecure_global_id_reclaim = false
mon_warn_on_insecure_global_id_reclaim_allowed = false
mon_warn_on_crush_straw_calc_version_zero = false
# read by the mon when it creates the first mgrmap (default: restful iostat nfs)
mgr_initial_modules = iostat
${EXTRA_GLOBAL}
[mon]
mon_data = $DIR/data/mon.\$id
keyring = \$mon_data/keyring
# commit map changes (pool create/set, auth caps) in ~50 ms instead of 1 s:
# one mon, no quorum to batch for
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
mon_cluster_log_file = $DIR/log/\$cluster.log

[mgr]
mgr_data = $DIR/data/mgr.\$id
keyring = \$mgr_data/keyring
public_addr = $ADDR
mgr_disabled_modules = $MGR_DISABLED_MODULES

[osd]
osd_data = $DIR/data/osd.\$id
keyring = \$osd_data/keyring
public_addr = $ADDR
cluster_addr = $ADDR
osd_objectstore = memstore
memstore_device_bytes = $MEMSTORE_BYTES
# memstore ignores osd_memory_target; keep op threads modest
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 2
# the same op queue on every release: from 17.2 the default is mclock, which meters client ops by
# a capacity measured at OSD start or taken from defaults (memstore reports itself rotational:
# osd_mclock_max_capacity_iops_hdd, 315)
osd_op_queue = wpq
# do not hang on SIGTERM when the mon is already gone
osd_mon_shutdown_timeout = 2
EOF
    # daemons only: clients keep logging and pidfiles off
    for sec in mon mgr osd; do
      cat <<EOF

[$sec]
log_file = $DIR/log/\$cluster-\$name.log
pid_file = $DIR/run/\$name.pid
EOF
    done
  } >"$CONF"
}

# keyring FILE NAME CAP... : new keyring with a fresh key and caps. client.admin's key is AES-128
# (KEY_TYPE_ARGS): from 20.2 ceph-authtool makes AES-256 (aes256k) keys, which clients before 20.2
# cannot read; the daemons' own keys keep the release's default.
keyring() {
  local file=$1 name=$2 type=()
  shift 2
  [[ $name != client.* ]] || type=("${KEY_TYPE_ARGS[@]}")
  in_root ceph-authtool --create-keyring "$file" "${type[@]}" --gen-key -n "$name" "$@" >/dev/null
  chmod 0600 "$file"
}

# Check that ADDR is local and the mon ports are free, before anything starts.
check_bind() {
  "$PYTHON" - "$ADDR" "$PORT_V2" "$PORT_V1" <<'PY' || die "cannot bind the mon ports (see above)"
import socket, sys
addr, ports = sys.argv[1], sys.argv[2:]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
for p in ports:
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((addr, int(p)))
    except OSError as e:
        sys.exit(f"{addr} port {p}: {e.strerror}"
                 + (" (address not configured here?)" if e.errno == 99 else ""))
    finally:
        s.close()
PY
}

# start NAME: run the daemon (it daemonizes itself once initialized)
start_daemon() {
  local type=${1%%.*} id=${1#*.}
  in_root "ceph-$type" --cluster ceph --conf "$CONF" --id "$id" \
    --setuser root --setgroup root \
    </dev/null >>"$DIR/log/$1.out" 2>&1 ||
    die "ceph-$type failed to start; see $DIR/log/$1.out and $DIR/log/ceph-$1.log"
}

cmd_up() {
  local -a pids running=()
  local d t0=$SECONDS
  mapfile -t pids < <(cluster_pids)
  if ((${#pids[@]})); then
    for d in mon mgr osd; do
      if [[ -n $(cluster_pids "$d") ]]; then running+=("$d"); fi
    done
    if ((${#running[@]} == 3)); then
      log "cluster in $DIR is already running ($(grep -m1 '^mon_host' "$CONF" || true))"
      return 0
    fi
    log "cluster in $DIR is only partly running (${running[*]}); recreating it"
    stop_daemons
  fi
  if [[ -d $DIR && ! -e $DIR/$MARKER && -n $(ls -A -- "$DIR") ]]; then
    die "$DIR exists, is not empty and is not a $PROG cluster directory"
  fi
  local tool
  for tool in ceph "$PYTHON"; do
    command -v "$tool" >/dev/null || die "$tool not found; install the packages listed in hack/ceph.md"
  done
  "$PYTHON" -c 'import rados' 2>/dev/null || die "python3-rados is not installed"
  check_bind
  resolve_root
  for tool in ceph-authtool monmaptool ceph-mon ceph-mgr ceph-osd; do
    if [[ $CROOT == / ]]; then
      command -v "$tool" >/dev/null || die "$tool not found; install the packages listed in hack/ceph.md"
    else
      [[ -x $CROOT/usr/bin/$tool ]] || die "$tool not found in $CROOT"
    fi
  done
  # From 20.2 a new cluster admits and makes only AES-256 (aes256k) cephx keys, which no client
  # before 20.2 reads (the host's 16.2 CLIs and librados, the operator, hypervisors' librbd). As on
  # a cluster that has such clients: client.admin gets an AES-128 key, and the monmap allows both
  # ciphers, encrypts service tickets with AES-128 and gives new keys (`auth get-or-create`) AES-128.
  # The health checks that say so (AUTH_INSECURE_*, one of them HEALTH_ERR) are muted.
  KEY_TYPE_ARGS=() MONMAP_ARGS=() MUTE=() EXTRA_GLOBAL=
  if [[ $(in_root ceph-authtool --help 2>&1 || true) == *--key-type* ]]; then KEY_TYPE_ARGS=(--key-type aes); fi
  if [[ $(in_root monmaptool --help 2>&1 || true) == *--auth-allowed-ciphers* ]]; then
    MONMAP_ARGS=(--auth-allowed-ciphers aes,aes256k --auth-service-cipher aes --auth-preferred-cipher aes)
    MUTE=(AUTH_INSECURE_CLIENT_KEY_TYPE AUTH_INSECURE_KEYS_ALLOWED AUTH_INSECURE_KEYS_CREATABLE
      AUTH_INSECURE_ROTATING_SERVICE_KEY_TYPE AUTH_INSECURE_SERVICE_TICKETS)
  fi
  # From 17.2 the mgr makes a pool of its own (.mgr) as soon as an OSD is up: off, so that the pool
  # list holds only what callers make, as on 16.2 (whose device_health_metrics pool is kept off too).
  if in_root ceph-conf -c /dev/null --show-config-value mgr_pool >/dev/null 2>&1; then
    EXTRA_GLOBAL+=$'mgr_pool = false\n'
  fi
  wipe_dir

  trap up_failed EXIT
  log "bootstrapping a $RELEASE cluster (daemons from $CROOT) in $DIR on $ADDR (mon v2 :$PORT_V2 v1 :$PORT_V1, daemons :$PORT_BASE-$PORT_MAX)"
  mkdir -p "$DIR"/{data/mon.a,data/mgr.x,data/osd.0,data/crash,log,run}
  : >"${DIR:?}/$MARKER"
  echo "$CROOT" >"$DIR/$ROOT_FILE"
  FSID=$(cat /proc/sys/kernel/random/uuid)
  local osd_uuid kr tmp=$DIR/run
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  write_conf

  # All keys are created offline and imported into the mon's auth database
  # by `ceph-mon --mkfs`, so the mgr and OSD can start right after the mon.
  local monkr=$tmp/mon.keyring # mkfs copies it to the (must be empty) mon_data
  keyring "$ADMIN_KEYRING" client.admin --cap mon 'allow *' --cap osd 'allow *' \
    --cap mds 'allow *' --cap mgr 'allow *'
  keyring "$DIR/data/mgr.x/keyring" mgr.x --cap mon 'allow profile mgr' \
    --cap osd 'allow *' --cap mds 'allow *'
  keyring "$DIR/data/osd.0/keyring" osd.0 --cap mon 'allow profile osd' \
    --cap mgr 'allow profile osd' --cap osd 'allow *'
  keyring "$monkr" mon. --cap mon 'allow *'
  for kr in "$ADMIN_KEYRING" "$DIR/data/mgr.x/keyring" "$DIR/data/osd.0/keyring"; do
    in_root ceph-authtool "$monkr" --import-keyring "$kr" >/dev/null
  done

  in_root monmaptool --create --fsid "$FSID" --enable-all-features --set-min-mon-release "$RELEASE" "${MONMAP_ARGS[@]}" \
    --addv a "[v2:$ADDR_URL:$PORT_V2,v1:$ADDR_URL:$PORT_V1]" "$tmp/monmap" >/dev/null
  in_root ceph-mon --cluster ceph --conf "$CONF" --id a --mkfs --monmap "$tmp/monmap" \
    --keyring "$monkr" --setuser root --setgroup root >>"$DIR/log/mon.a.out" 2>&1 ||
    die "ceph-mon --mkfs failed; see $DIR/log/mon.a.out"
  [[ -d $DIR/data/mon.a/store.db ]] || die "ceph-mon --mkfs created no store; see $DIR/log/mon.a.out"
  in_root ceph-osd --cluster ceph --conf "$CONF" --id 0 --mkfs --no-mon-config --osd-uuid "$osd_uuid" \
    --setuser root --setgroup root >>"$DIR/log/osd.0.out" 2>&1 ||
    die "ceph-osd --mkfs failed; see $DIR/log/osd.0.out"
  rm -f "$tmp/monmap" "$monkr"

  log "starting mon.a and mgr.x"
  start_daemon mon.a
  start_daemon mgr.x
  rados_helper prepare "$osd_uuid" "${MUTE[@]}" || die "could not register osd.0 with the mon"
  log "starting osd.0"
  start_daemon osd.0
  log "waiting for osd.0 up+in and an active mgr (timeout ${UP_TIMEOUT}s)"
  rados_helper wait || die "cluster did not become ready; logs in $DIR/log"
  trap - EXIT
  log "cluster up in $((SECONDS - t0))s: ceph -c $CONF -s"
}

# EXIT trap while `up` bootstraps: leave no daemon behind, keep the logs.
up_failed() {
  local rc=$?
  trap - EXIT
  ((rc)) || return 0
  log "up failed; stopping what was started (logs kept in $DIR/log)"
  STOP_TIMEOUT=3 stop_daemons || true
  exit "$rc"
}

cmd_down() {
  stop_daemons
  if [[ -e $DIR/$MARKER ]]; then
    wipe_dir
    log "cluster in $DIR stopped and removed"
  else
    log "no cluster in $DIR"
  fi
}

cmd_status() {
  local d
  for d in "${DAEMONS[@]}"; do
    [[ -n $(cluster_pids "${d%%.*}") ]] || { log "$d is not running"; return 1; }
  done
  ceph --conf "$CONF" --connect-timeout 10 -s || return 1
  UP_TIMEOUT=10 rados_helper health || { log "not healthy"; return 1; }
}

# kill|start|pause|resume one daemon (fault injection)
cmd_daemon() {
  local cmd=$1 name=$2 type=${2%%.*} pid
  [[ " ${DAEMONS[*]} " == *" $name "* ]] || die "unknown daemon $name (one of ${DAEMONS[*]})"
  case $cmd in
    kill) for pid in $(cluster_pids "$type"); do kill -KILL "$pid"; done
          for pid in $(cluster_pids "$type"); do signal_wait KILL 5 "$pid" || die "$name survived SIGKILL"; done ;;
    start) [[ -z $(cluster_pids "$type") ]] || die "$name is running"; recorded_root; start_daemon "$name" ;;
    pause) for pid in $(cluster_pids "$type"); do kill -STOP "$pid"; done ;;
    resume) for pid in $(cluster_pids "$type"); do kill -CONT "$pid"; done ;;
  esac
  log "$cmd $name"
}

main() {
  (($# >= 2)) || usage
  local cmd=$1
  setup "$2"
  case $cmd in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    kill|start|pause|resume) (($# == 3)) || usage; cmd_daemon "$cmd" "$3" ;;
    *) usage ;;
  esac
}

main "$@"
