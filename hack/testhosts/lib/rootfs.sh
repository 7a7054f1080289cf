# shellcheck shell=bash
# Sourced by testhost.sh: the cached root filesystems and the local package repositories (build,
# cache keys, `prepare`), and each host's overlay root on top of them.
# Uses from testhost.sh: here, cache, suite, mirror, security_mirror, log, die, rundir.

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

# host_root_mount NAME FAMILY: the host's root at run/NAME/root, an overlay of a fresh upper layer
# on the cached rootfs (rpm: the rpm layer on top of the Debian rootfs).
host_root_mount() {
  local name=$1 family=$2 run
  run=$(rundir "$name")
  mkdir -p "$run"
  rm -rf "$run/upper" "$run/work" "$run/root"
  mkdir -p "$run/upper" "$run/work" "$run/root"
  local lower=$cache/rootfs/debian
  [ "$family" = rpm ] && lower=$cache/rootfs/rpm:$lower
  mount -t overlay "testhost-$name" -o "lowerdir=$lower,upperdir=$run/upper,workdir=$run/work" "$run/root"
}

host_root_unmount() {
  local run _
  run=$(rundir "$1")
  if mountpoint -q "$run/root" 2>/dev/null; then
    for _ in $(seq 20); do umount "$run/root" 2>/dev/null && break; sleep 0.1; done
    mountpoint -q "$run/root" && umount -l "$run/root"
  fi
  return 0
}

# The upper layer goes with the host (keys, env and logs in run/NAME stay).
host_root_clean() {
  local run
  run=$(rundir "$1")
  if [ -d "$run" ] && ! mountpoint -q "$run/root" 2>/dev/null; then rm -rf "$run/upper" "$run/work" "$run/root"; fi
  return 0
}
