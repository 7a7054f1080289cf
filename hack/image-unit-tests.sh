#!/usr/bin/env bash
# The unit tests (tests/unit) inside the operator's image, on the image's Python (3.13 on Debian 13)
# against the package as the image installed it — the venv of this machine runs them on 3.11.
#   hack/image-unit-tests.sh IMAGE [PYTEST ARGS...]
# pytest and the test-only packages (the versions in .venv, else the newest) are fetched here as
# wheels for the image's Python and glibc, unpacked into .cache/image-test-site and put on
# PYTHONPATH: nothing is installed into the image. The container runs as the image's
# user, read-only, without network, with the repository mounted read-only at /src.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
image=${1:?usage: $0 IMAGE [PYTEST ARGS...]}
shift
# The image's user (not root) reads the checkout through the bind mount: a checkout only root may enter
# (mktemp -d makes 0700 directories) would fail deep inside pytest with EACCES; say so here.
if (( (8#$(stat -c %a "$root") & 5) != 5 )); then
  echo "image-unit-tests: $root is not readable by other users (mode $(stat -c %a "$root")); the image's user" \
    "reads it through the mount: chmod o+rx $root" >&2
  exit 1
fi
docker() { "$root/hack/docker.sh" cli "$@"; }

read -r py glibc < <(docker run --rm --entrypoint python "$image" -c \
  'import platform, sys; print("%d.%d" % sys.version_info[:2], platform.libc_ver()[1])')
pkgs=(pytest pytest-asyncio pytest-timeout kmock hypothesis)
pins=()
for p in "${pkgs[@]}"; do
  v=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$p'))" 2>/dev/null || true)
  pins+=("$p${v:+==$v}")
done
site=.cache/image-test-site/$py
key=$(echo "${pins[*]}" | sha256sum | cut -c1-12)
if [ "$(cat "$site/.key" 2>/dev/null)" != "$key" ]; then
  venv=.cache/image-venv
  [ -x "$venv/bin/pip" ] || /usr/bin/python3 -m venv "$venv"
  rm -rf "$site" "$site.wheels"
  platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  for ((minor = ${glibc#*.}; minor >= 5; minor--)); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  "$venv/bin/pip" download -q --disable-pip-version-check --dest "$site.wheels" --only-binary=:all: \
    --python-version "$py" --implementation cp "${platforms[@]}" "${pins[@]}"
  mkdir -p "$site"
  for w in "$site.wheels"/*.whl; do /usr/bin/python3 -m zipfile -e "$w" "$site"; done
  rm -rf "$site.wheels"
  echo "$key" >"$site/.key"
fi

echo "image-unit-tests: tests/unit in $image (Python $py; ${pins[*]})" >&2
docker run --rm --network none --read-only --tmpfs /tmp -e HOME=/tmp -e PYTHONDONTWRITEBYTECODE=1 \
  -e PYTHONPATH=/testsite -v "$root:/src:ro" -v "$root/$site:/testsite:ro" -w /src --entrypoint python "$image" \
  -m pytest -p no:cacheprovider -ra tests/unit "$@"
