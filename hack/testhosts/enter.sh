#!/usr/bin/env bash
# Stage 2 of `testhost.sh up`: runs as PID 1 of a fresh PID namespace, in fresh
# mount/UTS/IPC namespaces, inside the host's network namespace
# (`ip netns exec NS unshare ... enter.sh ROOT NAME KVM`). Builds the host's
# private mounts on top of the overlay ROOT, pivots into it and execs the guest
# init under tini. Runs the machine's binaries until the pivot.
set -euo pipefail
root=$1 name=$2 kvm=${3:-0}

hostname "$name"
mount --make-rprivate /
cd "$root"
mountpoint -q . || { echo "enter: $root is not a mount point" >&2; exit 1; }

mount -t proc -o nosuid,nodev,noexec proc proc
# A sysfs mounted inside the netns shows that namespace's interfaces. Read-only,
# and no cgroup hierarchy under it: libvirt then runs QEMU without cgroups.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs sys

# A private /dev with only the usual nodes (not the machine's disks).
mount -t tmpfs -o nosuid,mode=0755,size=1m devtmp dev
for spec in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read -r n ma mi <<<"$spec"
  mknod -m 0666 "dev/$n" c "$ma" "$mi"
done
mkdir -p dev/net dev/pts dev/shm dev/mqueue
mknod -m 0666 dev/net/tun c 10 200
if [ "$kvm" = 1 ] && [ -c /dev/kvm ]; then mknod -m 0666 dev/kvm c 10 232; fi
ln -s /proc/self/fd dev/fd
ln -s /proc/self/fd/0 dev/stdin
ln -s /proc/self/fd/1 dev/stdout
ln -s /proc/self/fd/2 dev/stderr
ln -s pts/ptmx dev/ptmx
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 shm dev/shm
mount -t mqueue -o nosuid,nodev,noexec mqueue dev/mqueue
mount -t tmpfs -o nosuid,nodev,mode=0755,size=64m run run
mkdir -p run/lock run/sshd
chmod 1777 run/lock

# pivot_root . . stacks the old root on top of the new one; detach it.
pivot_root . .
umount -l .
cd /
exec /usr/bin/tini -g -- /usr/local/sbin/testhost-init
