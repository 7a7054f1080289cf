#!/usr/bin/env bash
# Test hosts: network namespaces with their own overlay rootfs (Debian bookworm),
# real sshd and libvirtd, and local package repositories served over HTTP.
#   testhost.sh prepare                              build/cache rootfs + repos
#   testhost.sh up NAME BRIDGE ADDR/PREFIX [debian|rpm]   start host (idempotent)
#   testhost.sh down NAME                            stop host (safe if not up)
#   testhost.sh repo-url debian|rpm|fence BRIDGE_IP  print repo URL (starts HTTP)
#   testhost.sh repo-down                            stop the HTTP servers
#   testhost.sh status                               list running hosts
#   testhost.sh exec NAME CMD...                     run CMD inside NAME (no SSH)
#   testhost.sh ssh NAME [CMD...]                    ssh into NAME as root
# State: .cache/testhosts/ (see README.md beside this file).
# The parts, sourced below (one concern each):
#   lib/rootfs.sh    the cached rootfs(es) and local repositories (prepare), a host's overlay root
#   lib/repo.sh      the repositories' HTTP servers (repo-url, repo-down), a host's package source
#   lib/identity.sh  hostname, hosts, host and client keys, known_hosts, authorized_keys, env; ssh
#   lib/network.sh   netns, veth on the bridge, address, default route
#   lib/start.sh     PID 1 in its namespaces, readiness, preinstall, stop; exec, status
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=$root/.cache/testhosts
suite=bookworm
mirror=${TESTHOST_MIRROR:-http://deb.debian.org/debian}
security_mirror=${TESTHOST_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
repo_port=${TESTHOST_REPO_PORT:-8765}

log() { echo "testhost: $*" >&2; }
die() { echo "testhost: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

check_name() { [[ "$1" =~ ^[a-z0-9][a-z0-9-]{0,8}$ ]] || die "host name must match [a-z0-9][a-z0-9-]{0,8} (got '$1')"; }
rundir() { echo "$cache/run/$1"; }

for part in rootfs repo identity network start; do
  # shellcheck source=/dev/null
  . "$here/lib/$part.sh"
done

# host_up NAME BRIDGE ADDR/PREFIX [FAMILY]: checks, then the parts in order under the host's lock
# (fd 8); from the overlay mount on, a failure takes the half-started host down again.
host_up() {
  local name=$1 bridge=$2 cidr=$3 family=${4:-debian}
  check_name "$name"
  case "$family" in debian | rpm) ;; *) die "OS family must be debian or rpm, not $family" ;; esac
  [[ "$cidr" =~ ^([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)/([0-9]+)$ ]] || die "ADDR must be IPv4/PREFIX (got $cidr)"
  local addr=${BASH_REMATCH[1]} gw
  gw=$(bridge_gateway "$bridge" "$addr")

  local run; run=$(rundir "$name")
  mkdir -p "$cache/run"
  exec 8>"$cache/run/$name.lock"
  flock 8
  if host_running "$name"; then
    # shellcheck disable=SC1091
    local cur; cur=$(. "$run/env"; echo "$ADDR $BRIDGE $OS_FAMILY")
    [ "$cur" = "$addr $bridge $family" ] || die "host $name runs already with a different setup ($cur)"
    exec 8>&-
    return 0
  fi
  host_down "$name" quiet # leftovers of a failed or crashed start
  addr_free "$name" "$addr"

  prepare
  local url; url=$(repo_url "$family" "$gw")
  failing_host=$name
  trap '[ -z "${failing_host:-}" ] || host_down "$failing_host" quiet' EXIT
  local t0=$SECONDS
  log "starting host $name ($family, $addr on $bridge)"
  host_root_mount "$name" "$family"
  # Identity, keys, package source, init: written into the upper layer.
  host_identity "$name" "$addr" "$run/root"
  host_guest_init "$run/root"
  [ "${TESTHOST_NO_REPO:-0}" = 1 ] || host_repo_source "$run/root" "$family" "$url"
  host_env "$name" "$addr" "$family" "$bridge" "$gw" "$url"
  net_up "$name" "$bridge" "$cidr" "$gw"
  host_launch "$name"
  host_wait_ready "$name"
  host_preinstall "$name" "$family"
  failing_host=
  log "host $name is up in $((SECONDS - t0))s: ssh -i $run/id_ed25519 -o UserKnownHostsFile=$run/known_hosts root@$addr"
  exec 8>&-
}

# host_down NAME [quiet]: processes, overlay root, network, upper layer; safe when nothing runs.
host_down() {
  local name=$1 quiet=${2:-}
  check_name "$name"
  host_stop "$name" "$quiet"
  host_root_unmount "$name"
  net_down "$name"
  host_root_clean "$name"
}

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

cmd=${1:-}
[ -n "$cmd" ] || usage
shift
case "$cmd" in
  prepare) [ $# -eq 0 ] || usage; prepare ;;
  up) [ $# -ge 3 ] && [ $# -le 4 ] || usage; host_up "$@" ;;
  down)
    [ $# -eq 1 ] || usage
    check_name "$1"
    mkdir -p "$cache/run"
    (flock 8; host_down "$1") 8>"$cache/run/$1.lock" ;;
  repo-url) [ $# -eq 2 ] || usage; repo_url "$1" "$2" ;;
  repo-down) repo_down ;;
  status) status ;;
  exec) [ $# -ge 2 ] || usage; host_exec "$@" ;;
  ssh) [ $# -ge 1 ] || usage; ssh_cmd "$@" ;;
  *) usage ;;
esac
