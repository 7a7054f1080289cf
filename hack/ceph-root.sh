#!/usr/bin/env bash
# The Ceph daemons of one release, from Debian's packages: prints the directory they run from.
#
#   hack/ceph-root.sh RELEASE     -> /  (this machine's own packages) or .cache/ceph-root/<key>
#   hack/ceph-root.sh --list      the releases, their Debian suites and what is cached
#
# RELEASE is pacific (Debian 12 bookworm, 16.2), reef (Debian 13 trixie, 18.2) or tentacle
# (Debian testing, 20.2). Squid (19.2) is in no Debian suite and is refused.
#
# A release whose major version this machine's own ceph-mon has (pacific on a Debian 12 machine,
# which `make deps` installs) runs from / : the same binaries a root would hold. Any other release
# runs from a root made with debootstrap (minbase) plus ceph-mon, ceph-mgr, ceph-osd and ceph-common
# at exactly the versions the suite's index names now (resolved first with apt against a private
# state dir, so a new point release makes a new root), under
#   .cache/ceph-root/<release>-<ceph version>-<recipe hash>/
# Built once (about a minute and a half), reused until the versions or this recipe change; older
# roots of the release are removed when no process runs from them. With the mirror unreachable the
# newest complete root of the release is used (with a warning). CEPH_HOST_PACKAGES=0 makes a root
# even where this machine's packages would do. Needs root, debootstrap, unshare (util-linux).
# CEPH_MIRROR / CEPH_SECURITY_MIRROR override Debian's archive.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cache=$top/.cache/ceph-root
mirror=${CEPH_MIRROR:-http://deb.debian.org/debian}
security_mirror=${CEPH_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PKGS=(ceph-mon ceph-mgr ceph-osd ceph-common)

log() { echo "ceph-root: $*" >&2; }
die() { echo "ceph-root: error: $*" >&2; exit 1; }

# release -> SUITE, MAJOR
release_info() {
  case $1 in
    pacific) SUITE=bookworm MAJOR=16.2 ;;
    reef) SUITE=trixie MAJOR=18.2 ;;
    tentacle) SUITE=testing MAJOR=20.2 ;;
    squid) die "Squid (19.2) is in no Debian suite: untested here (pacific, reef or tentacle)" ;;
    *) die "unknown CEPH_RELEASE '$1' (pacific, reef or tentacle)" ;;
  esac
}

sources_list() {
  local suite=$1
  echo "deb $mirror $suite main"
  if [[ $suite != testing ]]; then
    echo "deb $mirror $suite-updates main"
    echo "deb $security_mirror $suite-security main"
  fi
}

# apt with a private state (lists, cache) for SUITE: never this machine's own sources.
apt_priv() {
  local suite=$1 tool=$2; shift 2
  local d=$cache/apt/$suite
  "$tool" -o Dir::Etc::SourceList="$d/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$d/lists" -o Dir::Cache="$d/cache" -o Dir::State::Status=/dev/null \
    -o Acquire::Check-Valid-Until=false -o APT::Sandbox::User=root "$@"
}

# The candidate version of every package of PKGS in SUITE's index, fetched now ("" if unreachable).
resolve_versions() {
  local suite=$1 d=$cache/apt/$1 p v out=()
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  sources_list "$suite" >"$d/sources.list"
  if ! apt_priv "$suite" apt-get update -qq >"$d/update.log" 2>&1 || grep -q '^[EW]:' "$d/update.log"; then
    log "could not read the $suite index from $mirror: $(grep -m1 '^[EW]:' "$d/update.log" || tail -n1 "$d/update.log")"
    return 0
  fi
  for p in "${PKGS[@]}"; do
    v=$(apt_priv "$suite" apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
    [[ -n $v && $v != "(none)" ]] || die "$p has no candidate in $suite"
    out+=("$p=$v")
  done
  echo "${out[*]}"
}

# chroot_run DIR CMD...: CMD in chroot DIR, in private mount+PID namespaces (as hack/testhosts).
chroot_run() {
  local dir=$1; shift
  unshare --mount --pid --fork --kill-child --propagation private -- bash -euc '
    dir=$1; shift
    mount --rbind /dev "$dir/dev"
    mount -t proc proc "$dir/proc"
    mount -t tmpfs tmpfs "$dir/run"
    if [ -n "${APT_CACHE:-}" ]; then
      mkdir -p "$APT_CACHE/partial"
      mount --bind "$APT_CACHE" "$dir/var/cache/apt/archives"
    fi
    cp /etc/resolv.conf "$dir/run/resolv.conf.build"
    mount --bind "$dir/run/resolv.conf.build" "$dir/etc/resolv.conf" 2>/dev/null || true
    exec chroot "$dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive "$@"
  ' chroot_run "$dir" "$@"
}

# Debian 13's ceph-mgr 18.2 imports bcrypt in mgr_util.py, which every module imports, and
# Debian 13's bcrypt is a PyO3 extension, which refuses to load in a second Python sub-interpreter:
# every mgr module but the first fails (MGR_MODULE_DEPENDENCY, "PyO3 modules do not yet support
# subinterpreters"; 20.2 moved bcrypt out of the mgr's process). Upstream's own 18.2 builds ship
# a C bcrypt and load their modules. Where that is so, the root shadows bcrypt for the mgr only
# (a stub in /usr/share/ceph/mgr, ahead of dist-packages on the mgr's path) whose functions raise:
# mgr_util uses bcrypt only to hash dashboard passwords, and no dashboard is installed.
mgr_bcrypt_stub() {
  local t=$1 so
  grep -q '^import bcrypt' "$t/usr/share/ceph/mgr/mgr_util.py" 2>/dev/null || return 0
  so=$(ls "$t"/usr/lib/python3/dist-packages/bcrypt/_bcrypt*.so 2>/dev/null | head -n1)
  [[ -n $so ]] && grep -q PyO3 "$so" || return 0
  cat >"$t/usr/share/ceph/mgr/bcrypt.py" <<'PY'
"""Written by hack/ceph-root.sh: Debian's bcrypt (PyO3) cannot load in the mgr's sub-interpreters."""


def _unavailable(*_args, **_kwargs):
    raise NotImplementedError("bcrypt is not available in this test cluster's mgr (hack/ceph-root.sh)")


gensalt = hashpw = checkpw = kdf = _unavailable
PY
  echo "usr/share/ceph/mgr/bcrypt.py: stub (Debian's bcrypt is PyO3: no mgr module would load)" >>"$t/.ceph-root-patches"
}

recipe_hash() {
  { declare -f sources_list chroot_run build mgr_bcrypt_stub; echo "${PKGS[*]}|$mirror"; } | sha256sum | cut -c1-8
}

# True if some process runs from (has its root in) DIR.
in_use() {
  local d=$1 p
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/root" 2>/dev/null) == "$d" ]] && return 0
  done
  return 1
}

build() {
  local release=$1 suite=$2 out=$3 pins=$4 t=$3.tmp
  local debs=$cache/debs/$suite
  rm -rf "$t"
  mkdir -p "$debs/partial"
  log "building $release ($suite: ${pins// /, }) in $out"
  debootstrap --variant=minbase --components=main --cache-dir="$debs" "$suite" "$t" "$mirror" \
    >"$t.log" 2>&1 || { tail -n 20 "$t.log" >&2; die "debootstrap $suite failed (log: $t.log)"; }
  # Package scripts never start services; no docs.
  printf '#!/bin/sh\nexit 101\n' >"$t/usr/sbin/policy-rc.d"
  chmod 0755 "$t/usr/sbin/policy-rc.d"
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
    >"$t/etc/dpkg/dpkg.cfg.d/90-slim"
  sources_list "$suite" >"$t/etc/apt/sources.list"
  # shellcheck disable=SC2086 # pins: one word per package
  APT_CACHE=$debs chroot_run "$t" sh -euc '
    apt-get -o Acquire::Check-Valid-Until=false update -qq
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "$@"
    apt-get clean
  ' sh $pins >>"$t.log" 2>&1 || { tail -n 20 "$t.log" >&2; die "installing Ceph into the $suite root failed (log: $t.log)"; }
  local p want got
  for p in $pins; do
    want=${p#*=}
    got=$(chroot "$t" dpkg-query -W -f='${Version}' "${p%%=*}")
    [[ $got == "$want" ]] || die "${p%%=*} $got installed in the root, $want wanted"
  done
  mgr_bcrypt_stub "$t"
  rm -rf "$t"/var/lib/apt/lists/* "$t/debootstrap"
  echo "$pins" >"$t/.ceph-root-packages"
  mv "$t.log" "$t/.ceph-root-build.log"
  mv "$t" "$out"
}

cmd_root() {
  local release=$1 suite major
  release_info "$release"
  suite=$SUITE major=$MAJOR
  # This machine's own packages, where they are that release.
  if [[ ${CEPH_HOST_PACKAGES:-auto} != 0 ]]; then
    local hv
    hv=$(dpkg-query -W -f='${Version}' ceph-mon 2>/dev/null || true)
    if [[ -n $hv && ${hv%%+*} == "$major".* ]] && command -v ceph-mon >/dev/null; then
      echo /
      return 0
    fi
  fi
  [[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot)"
  command -v debootstrap >/dev/null || die "debootstrap is required (hack/install-deps.sh installs it)"
  mkdir -p "$cache"
  exec 9>"$cache/.lock-$release"
  flock 9
  local pins out ver key
  pins=$(resolve_versions "$suite")
  if [[ -z $pins ]]; then
    out=$(ls -1dt "$cache/$release"-*/ 2>/dev/null | while read -r d; do
      [[ $d != *.tmp/ && -e $d/.ceph-root-packages ]] && { echo "${d%/}"; break; }; done)
    [[ -n $out ]] || die "no $release root cached and the $suite index cannot be read"
    log "warning: using the cached root $out (the $suite index could not be read)"
    echo "$out"
    return 0
  fi
  ver=${pins%% *}
  ver=${ver#*=}
  [[ ${ver%%+*} == "$major".* ]] ||
    die "Debian $suite now carries Ceph $ver, not $release ($major): the release map in $0 needs an update"
  key="$release-$ver-$(recipe_hash)"
  out=$cache/$key
  if [[ ! -e $out/.ceph-root-packages || $(cat "$out/.ceph-root-packages") != "$pins" ]]; then
    rm -rf "$out"
    build "$release" "$suite" "$out" "$pins"
  fi
  # Older roots of this release go once nothing runs from them.
  local d
  for d in "$cache/$release"-*; do
    [[ -d $d && $d != "$out" ]] || continue
    if in_use "$d"; then continue; fi
    log "removing the old root $d"
    rm -rf "$d" "$d.log"
  done
  echo "$out"
}

cmd_list() {
  local r suite major hv
  hv=$(dpkg-query -W -f='${Version}' ceph-mon 2>/dev/null || echo none)
  echo "this machine's ceph-mon: $hv"
  for r in pacific reef tentacle; do
    release_info "$r"
    suite=$SUITE major=$MAJOR
    printf '%-9s Debian %-9s Ceph %s  cached: %s\n' "$r" "$suite" "$major" \
      "$(cd "$cache" 2>/dev/null && ls -1d "$r"-* 2>/dev/null | grep -v '\.tmp' | tr '\n' ' ')"
  done
  echo "squid     (no Debian suite: untested)"
}

case ${1:-} in
  --list) cmd_list ;;
  pacific|reef|tentacle|squid) cmd_root "$1" ;;
  *) echo "usage: $0 pacific|reef|tentacle | --list" >&2; exit 2 ;;
esac
