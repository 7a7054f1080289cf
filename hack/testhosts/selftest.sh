#!/usr/bin/env bash
# End-to-end check of the test hosts: prepare, two Debian hosts and one rpm host
# on a bridge of its own, the package flows the operator will drive, a running
# TCG domain, and a clean teardown. Leaves nothing running.
#   hack/testhosts/selftest.sh      (root; bridge rbdhx0 10.254.7.1/24 unless
#                                    SELFTEST_BRIDGE / SELFTEST_NET=10.254.7 say otherwise)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
th=$here/testhost.sh
bridge=${SELFTEST_BRIDGE:-rbdhx0}
net=${SELFTEST_NET:-10.254.7}
hosts=(st-d1 st-d2 st-r1)
passed=0 failed=0

cleanup() {
  for h in "${hosts[@]}"; do "$th" down "$h" || true; done
  "$th" repo-down || true
  "$root/hack/net.sh" down "$bridge" || true
}
trap cleanup EXIT

check() { # check DESCRIPTION CMD...
  local what=$1; shift
  if "$@" >/tmp/selftest.$$.out 2>&1; then
    passed=$((passed + 1)); echo "ok    $what"
  else
    failed=$((failed + 1)); echo "FAIL  $what"; sed 's/^/      /' /tmp/selftest.$$.out | tail -15
  fi
  rm -f /tmp/selftest.$$.out
}
on() { local h=$1; shift; "$th" ssh "$h" "$@"; }
timed() { local t0=$SECONDS; "$@"; echo "      ($((SECONDS - t0)) s)"; }

"$root/hack/net.sh" up "$bridge" "$net.1/24"
timed check "prepare" "$th" prepare
timed check "up st-d1 (debian)" "$th" up st-d1 "$bridge" "$net.51/24" debian
check "up st-d2 (debian)" "$th" up st-d2 "$bridge" "$net.52/24" debian
check "up st-r1 (rpm)" "$th" up st-r1 "$bridge" "$net.53/24" rpm
check "up is idempotent" "$th" up st-d1 "$bridge" "$net.51/24" debian

run=$root/.cache/testhosts/run/st-d1
check "key files and env" bash -c "[ \$(stat -c %a $run/id_ed25519) = 600 ] && grep -q '^ssh-ed25519 ' $run/host_ed25519.pub \
  && grep -qx 'PORT=22' $run/env && grep -qx 'OS_FAMILY=debian' $run/env"
check "ssh with the key and the pinned host key" \
  ssh -i "$run/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$run/known_hosts" \
  "root@$net.51" 'test "$(hostname)" = st-d1'
check "only publickey authentication offered" bash -c "ssh -o BatchMode=yes -o PubkeyAuthentication=no -o StrictHostKeyChecking=yes \
  -o UserKnownHostsFile=$run/known_hosts root@$net.51 true 2>&1 | grep -q 'Permission denied (publickey)'"
check "hosts have distinct host keys" bash -c "! cmp -s $run/host_ed25519.pub $root/.cache/testhosts/run/st-d2/host_ed25519.pub"
check "virsh list + secret-list over ssh" on st-d1 'virsh -c qemu:///system list && virsh secret-list'
check "virsh secret-define/set-value" on st-d1 'f=$(mktemp); echo "<secret ephemeral=\"no\" private=\"no\"><usage type=\"ceph\"><name>client.libvirt secret</name></usage></secret>" >$f
  u=$(virsh secret-define $f | awk "{print \$2}"); printf QVFBQQ== >$f.v; virsh secret-set-value $u --file $f.v >/dev/null
  virsh secret-get-value $u | grep -q QVFBQQ=='
check "no qemu-block-extra/ceph-common in the base" on st-d1 '! dpkg -s qemu-block-extra ceph-common librbd1 >/dev/null 2>&1 && ! test -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so'
timed check "apt-get install qemu-block-extra ceph-common (local repo)" on st-d1 \
  'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-block-extra ceph-common >/dev/null'
check "rbd block driver present" on st-d1 'qemu-img --help | grep -qw rbd && test -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so && ceph --version'
check "--no-install-recommends install works too" on st-d2 \
  'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-block-extra ceph-common >/dev/null'
timed check "a TCG domain runs" bash -c "$th ssh st-d2 'virsh define /dev/stdin >/dev/null && virsh start tiny >/dev/null && sleep 1 && virsh domstate tiny | grep -qx running' <$here/tiny-domain.xml"
check "systemctl restart libvirtd keeps the domain" on st-d2 'systemctl restart libvirtd && systemctl is-active libvirtd && virsh domstate tiny | grep -qx running'

check "rpm host identity" on st-r1 '. /etc/os-release && [ "$ID" = centos ] && ! command -v apt-get && command -v dnf && command -v yum && test -z "$(rpm -qa)"'
check "dnf install qemu-kvm qemu-img (pulls libvirt)" on st-r1 'dnf -y -q install qemu-kvm qemu-img && rpm -q libvirt && rpm -qf /etc/libvirt/libvirtd.conf'
check "dnf remove qemu-kvm qemu-img leaves libvirtd.conf.rpmsave" on st-r1 \
  'echo "log_level = 1 # local" >>/etc/libvirt/libvirtd.conf && dnf -y -q remove qemu-kvm qemu-img && ! rpm -q libvirt && grep -q "# local" /etc/libvirt/libvirtd.conf.rpmsave && ! test -e /etc/libvirt/libvirtd.conf'
check "yum install qemu-kvm-rhev qemu-img-rhev from a priority= repo" on st-r1 "printf '[rhev]\nname=rhev\nbaseurl=http://$net.1:${TESTHOST_REPO_PORT:-8765}/rpm\ngpgcheck=0\npriority=10\n' >/etc/yum.repos.d/rhev.repo
  yum -y -q install qemu-kvm-rhev qemu-img-rhev && rpm -q libvirt qemu-kvm-rhev && qemu-img --help | grep -qw rbd
  cp /etc/libvirt/libvirtd.conf.rpmsave /etc/libvirt/libvirtd.conf && systemctl restart libvirtd && virsh -c qemu:///system list"

for h in "${hosts[@]}"; do "$th" down "$h"; done
check "down leaves no process, mount or netns" bash -c "! ip netns list | grep -q '^rbdh-st-' && ! grep -q '$root/.cache/testhosts/run/st-' /proc/mounts \
  && ! ip link show | grep -q 'rbdh-st-' && ! pgrep -f 'guest=tin[y]'"
echo "selftest: $passed passed, $failed failed"
[ "$failed" = 0 ]
