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
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=$root/.cache/testhosts
suite=bookworm
mirror=${TESTHOST_MIRROR:-http://deb.debian.org/debian}
security_mirror=${TESTHOST_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
repo_port=${TESTHOST_REPO_PORT:-8765}

# Packages of the base rootfs (no qemu-block-extra/librbd1/ceph-common: the
# operator installs those from the local repository).
# qemu-utils is in: a Debian KVM host has it (qemu-system-x86 recommends it), and
# `qemu-img --help` then lists rbd only once qemu-block-extra is installed.
BASE_PKGS=(openssh-server libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  libvirt-daemon-system libvirt-daemon-system-sysv qemu-system-x86 qemu-utils
  python3-minimal tini iproute2 procps netcat-openbsd)
# What the local Debian repository offers (plus every dependency and recommended
# package not already in the base rootfs).
REPO_DEBS=(qemu-utils qemu-block-extra librbd1 librados2 ceph-common
  libvirt-daemon-driver-storage-rbd)
# Tools this script needs on the machine.
MACHINE_PKGS=(debootstrap debian-archive-keyring dpkg-dev rpm dnf createrepo-c iproute2 openssh-client
  util-linux curl python3 procps)

log() { echo "testhost: $*" >&2; }
die() { echo "testhost: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------- prepare

ensure_machine_pkgs() {
  local missing=() p
  for p in "${MACHINE_PKGS[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing on the machine: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# chroot_run DIR CMD...: CMD in chroot DIR, in private mount+PID namespaces
# (proc, /dev bound; everything unmounted and killed when it returns). With
# LOWER=dir set, DIR is used as the upper layer of an overlay over LOWER; with
# APT_CACHE=dir set, that dir is apt's archive cache (kept between builds).
chroot_run() {
  local dir=$1 rc=0; shift
  unshare --mount --pid --fork --kill-child --propagation private -- bash -euc '
    dir=$1; shift
    target=$dir
    if [ -n "${LOWER:-}" ]; then
      mkdir -p "$dir.work" "$dir.merged"
      mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$dir,workdir=$dir.work" "$dir.merged"
      target=$dir.merged
    fi
    mount --rbind /dev "$target/dev"
    mount -t proc proc "$target/proc"
    mount -t tmpfs tmpfs "$target/run"
    if [ -n "${APT_CACHE:-}" ]; then
      mkdir -p "$APT_CACHE/partial"
      mount --bind "$APT_CACHE" "$target/var/cache/apt/archives"
    fi
    cp /etc/resolv.conf "$target/run/resolv.conf.build"
    mount --bind "$target/run/resolv.conf.build" "$target/etc/resolv.conf" 2>/dev/null || true
    exec chroot "$target" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive "$@"
  ' chroot_run "$dir" "$@" || rc=$?
  if [ -n "${LOWER:-}" ]; then rm -rf "$dir.work" "$dir.merged"; fi
  return $rc
}

sources_list() {
  cat <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security_mirror $suite-security main
EOF
}

# A rootfs must not be replaced while hosts use it as their lower layer.
no_running_hosts() {
  local m
  m=$(awk -v p="$cache/run/" 'index($2, p) == 1 {print $2}' /proc/mounts)
  [ -z "$m" ] || die "the rootfs must be rebuilt, but hosts are up (down them first): $(echo "$m" | tr '\n' ' ')"
}

# A key that changes whenever the recipe (a function's text) or inputs change.
recipe_key() { { for f in "$@"; do declare -f "$f"; done; echo "${BASE_PKGS[*]}|${REPO_DEBS[*]}|$suite"; } | sha256sum | cut -c1-16; }

build_base() {
  local out=$cache/rootfs/debian repo=$cache/repo/debian
  local key; key=$(recipe_key build_base chroot_run sources_list)
  if [ "$(cat "$out.key" 2>/dev/null)" = "$key" ] && [ -f "$repo/Release" ]; then return 0; fi
  no_running_hosts
  log "building the Debian rootfs and repository (debootstrap $suite; a few minutes)"
  local t=$out.tmp rt=$repo.tmp
  rm -rf "$t" "$rt"
  mkdir -p "$cache/rootfs" "$cache/repo" "$cache/debs"
  debootstrap --foreign --cache-dir="$cache/debs" --variant=minbase --components=main "$suite" "$t" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; die "debootstrap (first stage) failed, log: $cache/debootstrap.log"; }
  # Package scripts must never start services (they would run on the machine).
  printf '#!/bin/sh\nexit 101\n' >"$t/usr/sbin/policy-rc.d"
  chmod 0755 "$t/usr/sbin/policy-rc.d"
  chroot_run "$t" /debootstrap/debootstrap --second-stage >>"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; die "debootstrap (second stage) failed, log: $cache/debootstrap.log"; }
  sources_list >"$t/etc/apt/sources.list"
  log "installing the base packages into the rootfs"
  mkdir -p "$t/var/cache/testhost-debs/partial"
  APT_CACHE=$cache/debs chroot_run "$t" sh -euc '
    apt-get update -qq
    apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "$@"
  ' sh "${BASE_PKGS[@]}" >"$cache/base-install.log" 2>&1 \
    || { tail -20 "$cache/base-install.log" >&2; die "base package install failed, log: $cache/base-install.log"; }
  log "downloading the repository packages (${REPO_DEBS[*]} + dependencies)"
  chroot_run "$t" apt-get install -y -qq --download-only -o Dir::Cache::archives=/var/cache/testhost-debs \
    "${REPO_DEBS[@]}" >"$cache/repo-download.log" 2>&1 \
    || { tail -20 "$cache/repo-download.log" >&2; die "download failed, log: $cache/repo-download.log"; }
  mkdir -p "$rt"
  mv "$t"/var/cache/testhost-debs/*.deb "$rt/"
  rm -rf "$t/var/cache/testhost-debs"
  index_deb_repo "$rt"

  # Hosts have no network source of their own: `up` points apt at the local repo.
  chroot_run "$t" apt-get clean
  rm -rf "$t"/var/lib/apt/lists/* "$t/debootstrap"
  echo "# written by testhost.sh up" >"$t/etc/apt/sources.list"
  rm -f "$t/usr/sbin/policy-rc.d" "$t"/etc/ssh/ssh_host_*
  : >"$t/etc/resolv.conf"
  # Fresh host keys come per host; key-only root logins.
  cat >"$t/etc/ssh/sshd_config.d/testhost.conf" <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
EOF
  # No default NAT network (it would want dnsmasq and iptables in the host).
  rm -f "$t/etc/libvirt/qemu/networks/autostart/default.xml"
  rm -rf "$out" "$repo"
  mv "$t" "$out"
  mv "$rt" "$repo"
  echo "$key" >"$out.key"
  rm -f "$cache/rootfs/rpm.key" # the rpm layer sits on this rootfs
}

index_deb_repo() {
  local dir=$1
  (
    cd "$dir"
    dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null
    gzip -9nkf Packages
    {
      echo "Origin: rbd-operator-testhosts"
      echo "Label: rbd-operator-testhosts"
      echo "Date: $(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S UTC')"
      echo "SHA256:"
      for f in Packages Packages.gz; do echo " $(sha256sum "$f" | cut -d' ' -f1) $(stat -c %s "$f") $f"; done
    } >Release
  )
}

# The rpm host: an overlay layer on the Debian rootfs with rpm + dnf, a
# RHEL-like identity and its own rpm database in /var/lib/rpm.
build_rpm_layer() {
  local out=$cache/rootfs/rpm base=$cache/rootfs/debian
  local key; key=$(recipe_key build_rpm_layer chroot_run sources_list; cat "$base.key")
  [ "$(cat "$out.key" 2>/dev/null)" = "$key" ] && return 0
  no_running_hosts
  log "building the rpm layer (dnf, rpm, RHEL-like os-release)"
  local t=$out.tmp
  rm -rf "$t" "$t.work" "$t.merged"
  mkdir -p "$t"
  sources_list >"$cache/sources.list.build"
  LOWER=$base APT_CACHE=$cache/debs chroot_run "$t" sh -euc '
    cat > /etc/apt/sources.list
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends dnf rpm
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
    echo "# written by testhost.sh" > /etc/apt/sources.list
    # Debian rpm keeps its database in ~/.rpmdb; a RHEL host in /var/lib/rpm.
    mkdir -p /etc/rpm /var/lib/rpm /etc/yum.repos.d /etc/dnf/vars
    echo "%_dbpath /var/lib/rpm" > /etc/rpm/macros
    rpm --initdb
    echo 7 > /etc/dnf/vars/releasever
    ln -sf dnf-3 /usr/bin/yum
    rm -f /etc/os-release /usr/lib/os-release /etc/debian_version
    cat > /etc/os-release <<EOF
NAME="CentOS Linux"
VERSION="7 (Core)"
ID="centos"
ID_LIKE="rhel fedora"
VERSION_ID="7"
PRETTY_NAME="CentOS Linux 7 (Core) (rbd-operator test host)"
ANSI_COLOR="0;31"
CPE_NAME="cpe:/o:centos:centos:7"
EOF
    cp /etc/os-release /usr/lib/os-release
    echo "CentOS Linux release 7.9.2009 (Core)" > /etc/centos-release
    ln -sf centos-release /etc/redhat-release
    ln -sf centos-release /etc/system-release
    # Owned by the libvirt rpm (stand-in) once installed.
    rm -f /etc/libvirt/libvirtd.conf
    # No apt/dpkg on a RHEL host.
    rm -f /usr/bin/apt /usr/bin/apt-get /usr/bin/apt-cache /usr/bin/apt-config /usr/bin/apt-mark \
      /usr/bin/dpkg /usr/bin/dpkg-query /usr/bin/dpkg-deb /usr/bin/dpkg-divert /usr/bin/dpkg-split
  ' <"$cache/sources.list.build" >"$cache/rpm-layer.log" 2>&1 \
    || { tail -20 "$cache/rpm-layer.log" >&2; die "rpm layer failed, log: $cache/rpm-layer.log"; }
  rm -rf "$out"
  mv "$t" "$out"
  echo "$key" >"$out.key"
}

build_rpm_repo() {
  local out=$cache/repo/rpm spec=$here/rpm/standins.spec
  local key; key=$(recipe_key build_rpm_repo; sha256sum "$spec")
  [ "$(cat "$out.key" 2>/dev/null)" = "$key" ] && return 0
  log "building the rpm repository (rpmbuild + createrepo_c)"
  local t=$out.tmp
  rm -rf "$t" "$cache/rpmbuild"
  mkdir -p "$t"
  rpmbuild -bb --define "_topdir $cache/rpmbuild" "$spec" >"$cache/rpmbuild.log" 2>&1 \
    || { tail -20 "$cache/rpmbuild.log" >&2; die "rpmbuild failed, log: $cache/rpmbuild.log"; }
  mv "$cache"/rpmbuild/RPMS/*/*.rpm "$t/"
  rm -rf "$cache/rpmbuild"
  createrepo_c -q "$t" >/dev/null
  rm -rf "$out"
  mv "$t" "$out"
  echo "$key" >"$out.key"
}

# A flat Debian repository of two tiny packages for the disruption fence's tests (repo-url fence):
# qemu-fence-old, and qemu-fence-new, which conflicts with and replaces it (so installing it removes
# a qemu* package: a disruptive change). Their scripts log to /var/log/qemu-fence.log on the host
# (`<event> <epoch seconds.ns>`); qemu-fence-new's postinst sleeps the seconds in /etc/qemu-fence-sleep
# (absent: 0), which makes a package transaction slow and observable.
fence_script() {
  local pkg=$1 script=$2
  echo '#!/bin/sh'
  case "$script" in
    prerm) echo "echo \"$pkg-prerm \$(date +%s.%N)\" >>/var/log/qemu-fence.log" ;;
    postinst)
      echo '[ "$1" = configure ] || exit 0'
      if [ "$pkg" = qemu-fence-new ]; then
        echo 'echo "qemu-fence-new-postinst-start $(date +%s.%N)" >>/var/log/qemu-fence.log'
        echo 'sleep "$(cat /etc/qemu-fence-sleep 2>/dev/null || echo 0)"'
        echo 'echo "qemu-fence-new-postinst-end $(date +%s.%N)" >>/var/log/qemu-fence.log'
      else
        echo 'echo "qemu-fence-old-postinst $(date +%s.%N)" >>/var/log/qemu-fence.log'
      fi ;;
  esac
}

build_fence_repo() {
  local out=$cache/repo/fence
  local key; key=$(recipe_key build_fence_repo fence_script index_deb_repo)
  [ "$(cat "$out.key" 2>/dev/null)" = "$key" ] && [ -f "$out/Release" ] && return 0
  log "building the fence test repository (qemu-fence-old, qemu-fence-new)"
  local t=$out.tmp pkg d s
  rm -rf "$t"
  mkdir -p "$t"
  for pkg in qemu-fence-old qemu-fence-new; do
    d=$t/build/$pkg
    mkdir -p "$d/DEBIAN" "$d/usr/share/doc/$pkg"
    echo "rbd-operator test package $pkg" >"$d/usr/share/doc/$pkg/README"
    {
      echo "Package: $pkg"
      echo "Version: 1.0"
      echo "Architecture: all"
      echo "Maintainer: rbd-operator tests <tests@rbd-operator.invalid>"
      if [ "$pkg" = qemu-fence-new ]; then echo "Conflicts: qemu-fence-old"; echo "Replaces: qemu-fence-old"; fi
      echo "Description: rbd-operator disruption fence test package"
    } >"$d/DEBIAN/control"
    for s in prerm postinst; do
      fence_script "$pkg" "$s" >"$d/DEBIAN/$s"
      chmod 0755 "$d/DEBIAN/$s"
    done
    dpkg-deb --root-owner-group -Zgzip --build "$d" "$t/${pkg}_1.0_all.deb" >/dev/null
  done
  rm -rf "$t/build"
  index_deb_repo "$t"
  rm -rf "$out"
  mv "$t" "$out"
  echo "$key" >"$out.key"
}

prepare() {
  mkdir -p "$cache"
  (
    flock 9
    ensure_machine_pkgs
    build_base
    build_rpm_layer
    build_rpm_repo
    build_fence_repo
  ) 9>"$cache/.prepare.lock"
}

# ---------------------------------------------------------------- repositories

http_pidfile() { echo "$cache/http/$1.pid"; }
http_pid() {
  local f pid
  f=$(http_pidfile "$1")
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null && grep -qa http.server "/proc/$pid/cmdline" || return 1
  echo "$pid"
}

# repo_url FAMILY IP: the URL, starting an HTTP server on IP:port if needed.
repo_url() {
  local family=$1 ip=$2
  case "$family" in debian | rpm | fence) ;; *) die "repo must be debian, rpm or fence, not $family" ;; esac
  [[ "$ip" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "bad IPv4 address $ip"
  [[ "$(ip -4 -o addr show)" == *" inet $ip/"* ]] || die "$ip is not an address of this machine (create the bridge first)"
  [ -f "$cache/repo/debian/Release" ] && [ -d "$cache/repo/rpm/repodata" ] && [ -f "$cache/repo/fence/Release" ] \
    || prepare
  mkdir -p "$cache/http"
  (
    flock 9
    if ! http_pid "$ip" >/dev/null; then
      setsid /usr/bin/python3 -m http.server --bind "$ip" --directory "$cache/repo" "$repo_port" \
        >"$cache/http/$ip.log" 2>&1 </dev/null 8>&- 9>&- &
      echo $! >"$(http_pidfile "$ip")"
      local _
      for _ in $(seq 50); do
        curl -fsS -o /dev/null "http://$ip:$repo_port/debian/Release" 2>/dev/null && break
        sleep 0.1
      done
      curl -fsS -o /dev/null "http://$ip:$repo_port/debian/Release" \
        || { cat "$cache/http/$ip.log" >&2; die "the repository server on $ip:$repo_port did not come up"; }
    fi
  ) 9>"$cache/http/.lock"
  echo "http://$ip:$repo_port/$family"
}

# Stops the HTTP servers that no running host uses: test runs of several slots (and the sandbox)
# share this machine, and one's teardown must not take another's package source away mid-run.
repo_down() {
  local f pid ip env used
  for f in "$cache"/http/*.pid; do
    [ -e "$f" ] || continue
    ip=$(basename "$f" .pid)
    used=
    for env in "$cache"/run/*/env; do
      [ -e "$env" ] || continue
      # shellcheck disable=SC1090
      if [ "$(. "$env"; echo "$GATEWAY")" = "$ip" ] && host_running "$(basename "$(dirname "$env")")"; then
        used=$(basename "$(dirname "$env")")
        break
      fi
    done
    if [ -n "$used" ]; then
      log "repository server on $ip kept: host $used uses it"
      continue
    fi
    if pid=$(http_pid "$ip"); then kill "$pid" 2>/dev/null || true; fi
    rm -f "$f"
  done
}

# ---------------------------------------------------------------- hosts

check_name() { [[ "$1" =~ ^[a-z0-9][a-z0-9-]{0,8}$ ]] || die "host name must match [a-z0-9][a-z0-9-]{0,8} (got '$1')"; }
rundir() { echo "$cache/run/$1"; }
netns() { echo "rbdh-$1"; }

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

host_up() {
  local name=$1 bridge=$2 cidr=$3 family=${4:-debian}
  check_name "$name"
  case "$family" in debian | rpm) ;; *) die "OS family must be debian or rpm, not $family" ;; esac
  [[ "$cidr" =~ ^([0-9]+\.[0-9]+\.[0-9]+\.[0-9]+)/([0-9]+)$ ]] || die "ADDR must be IPv4/PREFIX (got $cidr)"
  local addr=${BASH_REMATCH[1]}
  ip link show "$bridge" type bridge >/dev/null 2>&1 || die "bridge $bridge does not exist"
  local gw
  gw=$(ip -4 -o addr show dev "$bridge" | awk '{split($4, a, "/"); print a[1]; exit}')
  [ -n "$gw" ] || die "bridge $bridge has no IPv4 address"
  [ "$gw" != "$addr" ] || die "$addr is the bridge's own address"

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
  local other
  for other in "$cache"/run/*/env; do
    [ -e "$other" ] || continue
    [ "$(basename "$(dirname "$other")")" != "$name" ] || continue
    # shellcheck disable=SC1090
    if [ "$(. "$other"; echo "$ADDR")" = "$addr" ] && host_running "$(. "$other"; echo "$NAME")"; then
      die "$addr is taken by host $(. "$other"; echo "$NAME")"
    fi
  done

  prepare
  local url; url=$(repo_url "$family" "$gw")
  # From here on a failure takes the half-started host down again.
  failing_host=$name
  trap '[ -z "${failing_host:-}" ] || host_down "$failing_host" quiet' EXIT
  local t0=$SECONDS
  log "starting host $name ($family, $addr on $bridge)"
  mkdir -p "$run"
  rm -rf "$run/upper" "$run/work" "$run/root"
  mkdir -p "$run/upper" "$run/work" "$run/root"
  local lower=$cache/rootfs/debian
  [ "$family" = rpm ] && lower=$cache/rootfs/rpm:$lower
  mount -t overlay "testhost-$name" -o "lowerdir=$lower,upperdir=$run/upper,workdir=$run/work" "$run/root"
  local r=$run/root

  # Identity, keys, package source, init: written into the upper layer.
  echo "$name" >"$r/etc/hostname"
  printf '127.0.0.1\tlocalhost\n%s\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$addr" "$name" >"$r/etc/hosts"
  rm -f "$run"/id_ed25519 "$run"/id_ed25519.pub
  ssh-keygen -q -t ed25519 -N '' -C "testhost-client-$name" -f "$run/id_ed25519"
  chmod 0600 "$run/id_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C "root@$name" -f "$r/etc/ssh/ssh_host_ed25519_key"
  cut -d' ' -f1,2 "$r/etc/ssh/ssh_host_ed25519_key.pub" >"$run/host_ed25519.pub"
  echo "$addr $(cat "$run/host_ed25519.pub")" >"$run/known_hosts"
  install -d -m 0700 "$r/root/.ssh"
  install -m 0600 "$run/id_ed25519.pub" "$r/root/.ssh/authorized_keys"
  install -m 0755 "$here/guest/testhost-init" "$r/usr/local/sbin/testhost-init"
  install -m 0755 "$here/guest/testhost-svc" "$r/usr/local/sbin/testhost-svc"
  ln -sf ../sbin/testhost-svc "$r/usr/local/bin/systemctl"
  if [ "${TESTHOST_NO_REPO:-0}" != 1 ]; then
    if [ "$family" = debian ]; then
      echo "deb [trusted=yes] $url ./" >"$r/etc/apt/sources.list"
    else
      printf '[testhost]\nname=rbd-operator test packages\nbaseurl=%s\nenabled=1\ngpgcheck=0\n' "$url" \
        >"$r/etc/yum.repos.d/testhost.repo"
    fi
  fi
  cat >"$run/env" <<EOF
NAME=$name
ADDR=$addr
PORT=22
OS_FAMILY=$family
BRIDGE=$bridge
GATEWAY=$gw
NETNS=$(netns "$name")
REPO_URL=$url
KEY=$run/id_ed25519
KNOWN_HOSTS=$run/known_hosts
EOF

  # Network: veth, outer end on the bridge, inner end eth0 in the netns.
  local ns veth
  ns=$(netns "$name") veth=rbdh-$name
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$bridge" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$cidr" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$gw"

  # Processes: PID 1 (tini) in fresh mount/PID/UTS/IPC namespaces, in the netns.
  setsid ip netns exec "$ns" unshare --mount --pid --uts --ipc --fork --kill-child --propagation private \
    bash "$here/enter.sh" "$r" "$name" "${TESTHOST_KVM:-0}" \
    >"$run/console.log" 2>&1 </dev/null 8>&- &
  echo $! >"$run/pid"

  local i init ok=0
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
  if [ -n "${TESTHOST_PREINSTALL:-}" ]; then
    log "preinstalling on $name: $TESTHOST_PREINSTALL"
    if [ "$family" = debian ]; then
      host_exec "$name" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $TESTHOST_PREINSTALL" >&2
    else
      host_exec "$name" sh -c "dnf -y -q install $TESTHOST_PREINSTALL" >&2
    fi
  fi
  failing_host=
  log "host $name is up in $((SECONDS - t0))s: ssh -i $run/id_ed25519 -o UserKnownHostsFile=$run/known_hosts root@$addr"
  exec 8>&-
}

host_down() {
  local name=$1 quiet=${2:-}
  check_name "$name"
  local run ns pid init _
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
  if mountpoint -q "$run/root" 2>/dev/null; then
    for _ in $(seq 20); do umount "$run/root" 2>/dev/null && break; sleep 0.1; done
    mountpoint -q "$run/root" && umount -l "$run/root"
  fi
  # Deleting the outer veth end first is synchronous; a netns goes away lazily.
  if ip link show "rbdh-$name" >/dev/null 2>&1; then ip link del "rbdh-$name" 2>/dev/null || true; fi
  if [ -e "/run/netns/$ns" ]; then ip netns del "$ns"; fi
  if [ -d "$run" ] && ! mountpoint -q "$run/root" 2>/dev/null; then rm -rf "$run/upper" "$run/work" "$run/root"; fi
  return 0
}

# ssh_cmd NAME [REMOTE CMD...]: ssh as root with the host's key, host key pinned.
ssh_cmd() {
  local name=$1; shift
  local run; run=$(rundir "$name")
  [ -f "$run/env" ] || die "host $name has no env file"
  local addr; addr=$(. "$run/env"; echo "$ADDR")
  ssh -i "$run/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="$run/known_hosts" -o ConnectTimeout=5 -o LogLevel=ERROR "root@$addr" "$@"
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
