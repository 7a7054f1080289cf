"""The test cluster runs the Ceph release CEPH_RELEASE asks for (hack/ceph.sh, default reef), and the
client side stays this machine's own (the operator and these tests use the host's librados)."""

from __future__ import annotations

import json
import os
import re
import subprocess

from .harness import ROOT, Operator

# release -> the major.minor Debian carries it as (hack/ceph-root.sh)
RELEASES = {"pacific": "16.2", "reef": "18.2", "tentacle": "20.2"}
# "ceph version 18.2.7 (6b0e9880...) reef (stable)", "... tentacle (stable - RelWithDebInfo)"
VERSION = re.compile(r"^ceph version (\d+\.\d+\.\d+)\S* \([0-9a-f]+\) (\w+) \([^()]+\)$")


def test_every_daemon_runs_the_release_asked_for(platform, record_property):
    release = os.environ.get("CEPH_RELEASE", "reef")
    versions = json.loads(platform.ceph_cli("versions", "--format", "json"))
    for daemon in ("mon", "mgr", "osd"):
        assert len(versions.get(daemon) or {}) == 1, f"{daemon}: {versions.get(daemon)}"
    (overall, count), = versions["overall"].items()
    assert count == 3, versions
    match = VERSION.match(overall)
    assert match, overall
    number, name = match.groups()
    assert name == release, f"CEPH_RELEASE={release}, the cluster runs {overall}"
    assert number.startswith(RELEASES[release] + "."), overall
    record_property("ceph_version", overall)  # read by bench/ceph_matrix.py from the junit XML


def test_the_operator_uses_this_machines_client_libraries(platform):
    """Only the daemons change between releases: the operator process maps the host's librados and
    librbd (Debian's packages of this machine, not a release root under .cache/ceph-root).

    An operator process of its own, started and stopped here: the session's operator is not started
    this early (test_crds relies on no operator running when it makes its storage)."""
    op = Operator(platform, replica=9, resync_seconds=60, verbose=False)
    op.start()
    try:
        maps = {line.split()[-1] for line in open(f"/proc/{op.proc.pid}/maps") if "/lib" in line}
    finally:
        op.stop()
    for lib in ("librados.so", "librbd.so"):
        paths = {m for m in maps if os.path.basename(m).startswith(lib)}
        assert paths, f"the operator has no {lib} mapped"
        assert all(not m.startswith(str(ROOT / ".cache")) for m in paths), paths
        owner = subprocess.run(["dpkg-query", "-S", sorted(paths)[0]], capture_output=True, text=True)
        assert owner.returncode == 0, f"{paths}: not from a Debian package of this machine"
    # and those talk to the release's daemons: the host's CLI (same libraries) reaches the mon
    assert platform.ceph_cli("fsid").strip()


def test_a_release_no_debian_suite_carries_is_refused(tmp_path):
    """Squid (19.2) is in no Debian suite: hack/ceph.sh says so and starts nothing (fail closed)."""
    out = subprocess.run([str(ROOT / "hack" / "ceph.sh"), "up", str(tmp_path / "ceph")], capture_output=True,
                         text=True, env={**os.environ, "CEPH_RELEASE": "squid"}, timeout=60)
    assert out.returncode != 0 and "no Debian suite" in out.stderr, out.stderr
    assert not (tmp_path / "ceph").exists()
