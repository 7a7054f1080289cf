#!/usr/bin/env bash
# A bridge in the root network namespace that local services (Ceph) listen on
# and that test hosts in their own network namespaces attach to with veth pairs.
#   hack/net.sh up BRIDGE ADDR/PREFIX   (idempotent)
#   hack/net.sh down BRIDGE
set -euo pipefail

usage() { echo "usage: $0 up BRIDGE ADDR/PREFIX | down BRIDGE" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 bridge=$2
[[ "$bridge" =~ ^[a-z0-9-]{1,15}$ ]] || { echo "net.sh: bad bridge name $bridge" >&2; exit 2; }

case "$cmd" in
  up)
    [ $# -eq 3 ] || usage
    addr=$3
    if ! ip link show "$bridge" >/dev/null 2>&1; then
      ip link add "$bridge" type bridge
    fi
    if ! ip -4 addr show dev "$bridge" | grep -qw "inet ${addr}"; then
      ip addr add "$addr" dev "$bridge"
    fi
    ip link set "$bridge" up
    ;;
  down)
    if ip link show "$bridge" >/dev/null 2>&1; then
      ip link del "$bridge"
    fi
    ;;
  *) usage ;;
esac
