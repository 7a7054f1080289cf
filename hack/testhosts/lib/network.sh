# shellcheck shell=bash
# Sourced by testhost.sh: a host's network — its netns rbdh-NAME, a veth pair (outer end rbdh-NAME on
# the bridge, inner end eth0 at ADDR), the default route via the bridge's address.
# Uses from testhost.sh: cache, die; host_running (start.sh).

netns() { echo "rbdh-$1"; }

# bridge_gateway BRIDGE ADDR: prints the bridge's first IPv4 address, the hosts' gateway.
bridge_gateway() {
  local bridge=$1 addr=$2 gw
  ip link show "$bridge" type bridge >/dev/null 2>&1 || die "bridge $bridge does not exist"
  gw=$(ip -4 -o addr show dev "$bridge" | awk '{split($4, a, "/"); print a[1]; exit}')
  [ -n "$gw" ] || die "bridge $bridge has no IPv4 address"
  [ "$gw" != "$addr" ] || die "$addr is the bridge's own address"
  echo "$gw"
}

# addr_free NAME ADDR: fails if another running host has ADDR.
addr_free() {
  local name=$1 addr=$2 other
  for other in "$cache"/run/*/env; do
    [ -e "$other" ] || continue
    [ "$(basename "$(dirname "$other")")" != "$name" ] || continue
    # shellcheck disable=SC1090
    if [ "$(. "$other"; echo "$ADDR")" = "$addr" ] && host_running "$(. "$other"; echo "$NAME")"; then
      die "$addr is taken by host $(. "$other"; echo "$NAME")"
    fi
  done
}

# net_up NAME BRIDGE ADDR/PREFIX GATEWAY: veth, outer end on the bridge, inner end eth0 in the netns.
net_up() {
  local name=$1 bridge=$2 cidr=$3 gw=$4 ns veth
  ns=$(netns "$name") veth=rbdh-$name
  ip netns add "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns"
  ip link set "$veth" master "$bridge" up
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$cidr" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$gw"
}

# net_down NAME: deleting the outer veth end first is synchronous; a netns goes away lazily.
net_down() {
  local name=$1 ns
  ns=$(netns "$name")
  if ip link show "rbdh-$name" >/dev/null 2>&1; then ip link del "rbdh-$name" 2>/dev/null || true; fi
  if [ -e "/run/netns/$ns" ]; then ip netns del "$ns"; fi
}
