#!/usr/bin/env bash
# Docker for `make image` and `make e2e`, on a machine without a service manager:
#   hack/docker.sh up         install Debian's docker.io if needed, start dockerd (idempotent)
#   hack/docker.sh cli ARGS   run the docker CLI against it
#   hack/docker.sh env        the environment other tools (kind) need to use it, as NAME=VALUE lines
#   hack/docker.sh down       stop the dockerd this script started
#
# Two things about this machine are handled here:
#  - `--privileged` containers (kind nodes) fail with "unable to apply caps": CAP_SYS_RESOURCE is not
#    in the machine's capability bounding set. dockerd's default runtime is a wrapper around runc that
#    removes CAP_SYS_RESOURCE from the bundle's config.json (create/run) and from --process files (exec).
#  - dockerd sets the iptables FORWARD policy to DROP (and bridged traffic goes through iptables): the
#    project's bridges (rbdop0..9: Ceph, test hosts) are allowed explicitly in DOCKER-USER, so that
#    `make test` keeps working and kind nodes reach Ceph and the test hosts.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state=${RBD_DOCKER_STATE:-/var/lib/rbd-operator-docker}
sock=/var/run/docker.sock
wrapper=$state/runc-nosysresource
api=1.41  # Debian bookworm's docker.io 20.10
. "$root/hack/lib/debs.sh"

cli() {
  if [ -x /usr/bin/docker ]; then DOCKER_API_VERSION=$api /usr/bin/docker "$@"; else DOCKER_API_VERSION=$api docker "$@"; fi
}

running() { [ -S "$sock" ] && cli version >/dev/null 2>&1; }

write_wrapper() {
  mkdir -p "$state"
  cat > "$wrapper.tmp" <<'EOF'
#!/usr/bin/env python3
"""runc, minus CAP_SYS_RESOURCE (absent from this machine's bounding set) in every spec it is given."""
import json, os, sys

CAP = "CAP_SYS_RESOURCE"


def strip(path):
    try:
        with open(path) as fh:
            spec = json.load(fh)
    except (OSError, ValueError):
        return
    caps = spec.get("capabilities") if "capabilities" in spec and "args" in spec else \
        (spec.get("process") or {}).get("capabilities")
    if not caps:
        return
    changed = False
    for key, values in caps.items():
        if isinstance(values, list) and CAP in values:
            caps[key] = [v for v in values if v != CAP]
            changed = True
    if changed:
        with open(path + ".tmp", "w") as fh:
            json.dump(spec, fh)
        os.replace(path + ".tmp", path)


args = sys.argv[1:]
bundle = None
for i, arg in enumerate(args):
    if arg in ("--bundle", "-b") and i + 1 < len(args):
        bundle = args[i + 1]
    elif arg.startswith("--bundle="):
        bundle = arg.split("=", 1)[1]
    elif arg in ("--process", "-p") and i + 1 < len(args):
        strip(args[i + 1])
    elif arg.startswith("--process="):
        strip(arg.split("=", 1)[1])
if ("create" in args or "run" in args) and bundle:
    strip(os.path.join(bundle, "config.json"))
os.execv("/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else "/usr/bin/runc", ["runc"] + args)
EOF
  chmod +x "$wrapper.tmp"
  mv "$wrapper.tmp" "$wrapper"
  cat > "$state/daemon.json" <<EOF
{"runtimes": {"runc-nosysresource": {"path": "$wrapper"}}, "default-runtime": "runc-nosysresource",
 "storage-driver": "overlay2", "log-driver": "json-file", "log-opts": {"max-size": "10m"}}
EOF
}

allow_bridges() {
  iptables -N DOCKER-USER 2>/dev/null || true
  for dir in -i -o; do
    iptables -C DOCKER-USER "$dir" 'rbdop+' -j ACCEPT 2>/dev/null || iptables -I DOCKER-USER "$dir" 'rbdop+' -j ACCEPT
  done
}

up() {
  ensure_debs docker.sh docker.io iptables
  if running; then allow_bridges; return 0; fi
  write_wrapper
  allow_bridges  # before dockerd turns FORWARD to DROP: no window where the test bridges are cut
  echo "docker.sh: starting dockerd (log: $state/dockerd.log)" >&2
  setsid nohup dockerd --config-file "$state/daemon.json" --oom-score-adjust=0 --pidfile "$state/dockerd.pid" \
    > "$state/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 120); do running && break; sleep 0.5; done
  running || { tail -20 "$state/dockerd.log" >&2; echo "docker.sh: dockerd did not start" >&2; exit 1; }
  allow_bridges
}

case "${1:-}" in
  up) up ;;
  cli) shift; cli "$@" ;;
  env) echo "DOCKER_API_VERSION=$api"; [ -x /usr/bin/docker ] && echo "PATH=/usr/bin:$PATH" || true ;;
  down)
    if [ -e "$state/dockerd.pid" ]; then kill "$(cat "$state/dockerd.pid")" 2>/dev/null || true; fi ;;
  *) echo "usage: $0 up|cli ARGS|env|down" >&2; exit 2 ;;
esac
