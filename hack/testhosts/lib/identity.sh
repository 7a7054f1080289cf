# shellcheck shell=bash
# Sourced by testhost.sh: who a host is and how to reach it — hostname, /etc/hosts, a fresh host key
# and client key per `up`, known_hosts pinning the host key, root's authorized_keys, the env file
# (run/NAME/env) that tests read, and ssh with all of that.
# Uses from testhost.sh: cache, die, rundir; netns (network.sh).

# host_identity NAME ADDR ROOT: written into the host's upper layer and into run/NAME.
host_identity() {
  local name=$1 addr=$2 r=$3 run
  run=$(rundir "$name")
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
}

# host_env NAME ADDR FAMILY BRIDGE GATEWAY REPO_URL: run/NAME/env (shell syntax).
host_env() {
  local name=$1 addr=$2 family=$3 bridge=$4 gw=$5 url=$6 run
  run=$(rundir "$name")
  cat >"$run/env" <<EOT
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
EOT
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
