# shellcheck shell=bash
# Sourced by testhost.sh: the local package repositories served over HTTP (one server per bridge
# address, shared by every host on it) and a host's package source pointing at them.
# Uses from testhost.sh: cache, repo_port, log, die; prepare (rootfs.sh), host_running (start.sh).

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

# host_repo_source ROOT FAMILY URL: the host's only package source, the local repository.
host_repo_source() {
  local r=$1 family=$2 url=$3
  if [ "$family" = debian ]; then
    echo "deb [trusted=yes] $url ./" >"$r/etc/apt/sources.list"
  else
    printf '[testhost]\nname=rbd-operator test packages\nbaseurl=%s\nenabled=1\ngpgcheck=0\n' "$url" \
      >"$r/etc/yum.repos.d/testhost.repo"
  fi
}
