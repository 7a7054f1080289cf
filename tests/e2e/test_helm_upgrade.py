"""The upgrade today's users make (issue #24 item 2): the previous release as it shipped — v0.1.0,
installed with `kubectl apply -k deploy/` from its own tree, its own image built from that commit —
runs objects of every kind it knows (RbdStorage with a hypervisor selector, RbdImage, RbdSnapshot, a
clone, HypervisorNode); then Helm takes the installation over (docs/helm.md, "Upgrade from kustomize":
the commands there are run as written) and upgrades it to the working tree's chart and image.
Checked: every object stays Ready all through the upgrade (polled), Ceph is the same before and after
(cephstate.dump: pools, auth entities with caps and key digests, images with sizes, features,
parents, snapshots and metadata, trash), and a kind new since v0.1.0 works afterwards
(RbdSnapshotSchedule). Runs first in `make e2e` (conftest orders it): it needs a cluster in which
nothing was installed yet. Leaves the Helm release in place; tests/e2e/test_e2e.py then applies
deploy/ over it (the same objects). A second `helm upgrade` (chart to chart, --reuse-values and a changed
value) is watched the same way. Writes helm_upgrade: {from, to, passed} to .e2e/results.json.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import rados
import yaml

from tests.integration.harness import BRIDGE, HOST_PREFIX, NET, ROOT, sh, wait_for
from tests.integration.labhosts import LABEL, TESTHOST, LabHost, debian_packages, hypervisor, ssh_secret
from tests.integration.manifests import image, storage

from . import cephstate
from .conftest import CLUSTER, IMAGE, NAMESPACE, docker_env, record, version

PREVIOUS = "v0.1.0"
PREVIOUS_COMMIT = "08f345d9ff338704afaa9ccb7cb9831d572bb803"  # what v0.1.0 points at, if a clone lacks the tag
PREVIOUS_IMAGE = "rbd-operator:0.1.0"  # as v0.1.0's deploy/deployment.yaml names it
RELEASE = "rbd-operator"
DOC = ROOT / "docs" / "helm.md"
KINDS = ("rbdstorages", "rbdimages", "rbdsnapshots", "rbdsnapshotschedules", "hypervisornodes")


@pytest.fixture(scope="module")
def helm_dir() -> Path:
    return Path(sh(str(ROOT / "hack" / "build-helm.sh"), timeout=3600).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def previous(kind_cluster) -> Path:
    """v0.1.0's source tree, its image built and loaded into kind."""
    assert PREVIOUS_IMAGE != IMAGE, "the working tree must not carry the previous release's version"
    started = time.monotonic()
    out = sh(str(ROOT / "hack" / "kind" / "build-release-image.sh"), PREVIOUS, PREVIOUS_COMMIT, PREVIOUS_IMAGE,
             timeout=3600).stdout.strip().splitlines()[-1]
    commit, src = out.split()
    env = {"KUBECONFIG": str(kind_cluster.kubeconfig), **docker_env()}
    sh(kind_cluster.kind, "load", "docker-image", PREVIOUS_IMAGE, "--name", CLUSTER, env=env, timeout=600)
    record(helm_upgrade_previous_image_s=round(time.monotonic() - started, 1), helm_upgrade_previous_commit=commit)
    return Path(src)


@pytest.fixture(scope="module")
def ceph(platform):
    cluster = rados.Rados(conffile=str(platform.ceph_conf), conf={"client_mount_timeout": "15"})
    cluster.connect(timeout=15)
    yield cluster
    cluster.shutdown()


def ready_reason(cluster, kind: str, name: str, namespace: str | None = None) -> str | None:
    """None when Ready is True, else what it is."""
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    out = cluster.kubectl(*args, check=False)
    if out.returncode:
        return f"get failed: {out.stderr.strip()[:200]}"
    for cond in (json.loads(out.stdout).get("status") or {}).get("conditions", []):
        if cond["type"] == "Ready":
            return None if cond["status"] == "True" else f"Ready={cond['status']} {cond.get('reason')}"
    return "no Ready condition"


def apply(cluster, manifest: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


class ReadyWatch:
    """Polls every object's Ready condition in a thread; keeps every observation that was not Ready."""

    def __init__(self, cluster, objects: list[tuple[str, str, str | None]]) -> None:
        self.cluster, self.objects = cluster, objects
        self.not_ready: list[str] = []
        self.unreadable: list[str] = []  # the API server did not answer (not a statement about the object)
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for kind, name, ns in self.objects:
                reason = ready_reason(self.cluster, kind, name, ns)
                if reason:
                    seen = f"{time.strftime('%H:%M:%S')} {kind}/{name}: {reason}"
                    (self.unreadable if reason.startswith("get failed") else self.not_ready).append(seen)
            self.polls += 1
            self._stop.wait(0.5)

    def __enter__(self) -> "ReadyWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


def doc_block(marker: str) -> str:
    """The shell block that follows `<!-- marker -->` in docs/helm.md: the test runs what users read."""
    text = DOC.read_text()
    match = re.search(rf"<!-- {marker} -->\s*```(?:sh|bash)\n(.*?)```", text, re.S)
    assert match, f"docs/helm.md has no block after <!-- {marker} -->"
    return match.group(1)


def run_doc_block(cluster, helm_dir: Path, marker: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
           "PATH": f"{helm_dir}:{cluster.bin_dir}:{os.environ['PATH']}"}
    script = "set -euo pipefail\n" + doc_block(marker)
    return sh("bash", "-c", script, env=env, timeout=900).stdout


def deployment(cluster) -> dict:
    return json.loads(cluster.kubectl("get", "deploy", "rbd-operator", "-n", NAMESPACE, "-o", "json").stdout)


def rolled_out_to(cluster, image_ref: str) -> bool:
    dep = deployment(cluster)
    status = dep.get("status") or {}
    return dep["spec"]["template"]["spec"]["containers"][0]["image"] == image_ref \
        and status.get("observedGeneration") == dep["metadata"]["generation"] \
        and status.get("updatedReplicas") == dep["spec"]["replicas"] == status.get("readyReplicas") \
        and not status.get("unavailableReplicas") \
        and all(p["spec"]["containers"][0]["image"] == image_ref for p in cluster.pods()
                if not p["metadata"].get("deletionTimestamp"))


# Setup (the kind cluster, the previous release's image) and a hypervisor converging under v0.1.0 count too.
@pytest.mark.timeout(1800)
def test_upgrade_from_the_previous_release(kind_cluster, platform, previous, helm_dir, ceph):
    record(helm_upgrade={"from": PREVIOUS, "to": version(), "passed": False})
    k = kind_cluster
    # The platform's bootstrap applied this tree's CRDs; v0.1.0 is installed into a cluster without them.
    k.kubectl("delete", "crd", *[f"{c}.rbd-operator.io" for c in KINDS], "--ignore-not-found", "--wait=true",
              "--timeout=120s")
    k.kubectl("apply", "-k", str(previous / "deploy"))
    k.kubectl("rollout", "status", "-n", NAMESPACE, "deploy/rbd-operator", "--timeout=300s")
    wait_for(lambda: rolled_out_to(k, PREVIOUS_IMAGE), 300, interval=2, what=f"{PREVIOUS} running")
    assert k.kubectl("get", "crd", "rbdsnapshotschedules.rbd-operator.io", check=False).returncode != 0, \
        f"{PREVIOUS} has no RbdSnapshotSchedule"

    host = LabHost(f"{HOST_PREFIX}u1", f"{NET}.12", "debian")
    sh(TESTHOST, "prepare", timeout=1800)
    sh(TESTHOST, "up", host.name, BRIDGE, f"{host.address}/24", "debian", env={"TESTHOST_NO_REPO": "1"}, timeout=900)
    name = f"up-{uuid.uuid4().hex[:6]}"
    disk, snap, clone = f"{name}-disk", f"{name}-snap", f"{name}-clone"
    try:
        apply(k, ssh_secret(host))
        apply(k, storage(platform, name, client={"name": name},
                         hypervisors={"nodeSelector": {"matchLabels": {LABEL: name}}}))
        apply(k, hypervisor(host, {LABEL: name}, packages=debian_packages()))
        apply(k, {**image(disk, name, size="1Gi"), "metadata": {"name": disk, "namespace": "default",
                                                                "labels": {"backup": name}}})
        objects = [("rbds", name, None), ("hvn", host.name, None), ("rbdimg", disk, "default")]
        wait_for(lambda: ready_reason(k, "rbdimg", disk, "default") is None, 240, interval=2, what="disk Ready")
        apply(k, {"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdSnapshot",
                  "metadata": {"name": snap, "namespace": "default"}, "spec": {"image": disk}})
        wait_for(lambda: ready_reason(k, "rbdsnap", snap, "default") is None, 120, interval=2, what="snapshot Ready")
        apply(k, image(clone, name, source={"rbdSnapshot": snap}))
        objects += [("rbdsnap", snap, "default"), ("rbdimg", clone, "default")]
        for kind, obj, ns in objects:
            wait_for(lambda: ready_reason(k, kind, obj, ns) is None, 900, interval=3, what=f"{kind}/{obj} Ready")
        before = cephstate.dump(ceph, [name])
        assert before["images"][name][clone]["parent"], "the clone has its parent"

        started = time.monotonic()
        with ReadyWatch(k, objects) as watch:
            out = run_doc_block(k, helm_dir, "helm-adopt")
            record(helm_upgrade_adopted=len([line for line in out.splitlines() if "annotated" in line]))
            run_doc_block(k, helm_dir, "helm-takeover")
            wait_for(lambda: rolled_out_to(k, IMAGE), 600, interval=2, what=f"{IMAGE} rolled out")
            upgraded = time.monotonic()
            # the new replicas settle (one active) while the objects are still watched
            time.sleep(30)
            # chart to chart (later releases): `helm upgrade --reuse-values` with a changed value rolls the
            # pods again (server-side apply, "auto" = as the release was installed)
            sh(str(helm_dir / "helm"), "upgrade", RELEASE, str(ROOT / "charts" / "rbd-operator"), "--namespace",
               NAMESPACE, "--reuse-values", "--set", "extraLabels.e2e-revision=2",
               env={"KUBECONFIG": str(k.kubeconfig)}, timeout=600)
            wait_for(lambda: rolled_out_to(k, IMAGE) and all(
                p["metadata"]["labels"].get("e2e-revision") == "2" for p in k.pods()), 600, interval=2,
                what="the second revision rolled out")
            time.sleep(20)
        record(helm_upgrade_s=round(upgraded - started, 1), helm_upgrade_polls=watch.polls,
               helm_upgrade_unreadable=len(watch.unreadable))
        assert watch.polls >= 10, "the objects were polled during the upgrade"
        assert not watch.not_ready, f"not Ready during the upgrade: {watch.not_ready[:20]}"

        releases = json.loads(sh(str(helm_dir / "helm"), "list", "-n", NAMESPACE, "-o", "json",
                                 env={**os.environ, "KUBECONFIG": str(k.kubeconfig)}).stdout)
        assert [(r["name"], r["status"], r["app_version"], r["revision"]) for r in releases] == \
            [(RELEASE, "deployed", version(), "2")]
        crd = json.loads(k.kubectl("get", "crd", "rbdimages.rbd-operator.io", "-o", "json").stdout)
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert "revert" in json.dumps(crd["spec"]), "the CRDs were upgraded with the chart"
        for kind, obj, ns in objects:
            assert ready_reason(k, kind, obj, ns) is None, f"{kind}/{obj} after the upgrade"

        after = cephstate.dump(ceph, [name])
        assert before == after, f"Ceph changed by the upgrade: {cephstate.differences(before, after)}"

        # New since v0.1.0: RbdSnapshotSchedule (its CRD came with the chart), working.
        schedule = f"{name}-sched"
        apply(k, {"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdSnapshotSchedule",
                  "metadata": {"name": schedule, "namespace": "default"},
                  "spec": {"selector": {"matchLabels": {"backup": name}}, "interval": "1m", "keep": 1,
                           "deletionPolicy": "Delete"}})
        wait_for(lambda: ready_reason(k, "rbdsnapshotschedules", schedule, "default") is None, 120, interval=2,
                 what="schedule Ready")

        def scheduled() -> list[str]:
            items = json.loads(k.kubectl("get", "rbdsnap", "-n", "default", "-o", "json").stdout)["items"]
            return [i["metadata"]["name"] for i in items if i["spec"].get("image") == disk
                    and i["metadata"]["name"] != snap
                    and any(c["type"] == "Ready" and c["status"] == "True"
                            for c in (i.get("status") or {}).get("conditions", []))]
        wait_for(scheduled, 180, interval=2, what="a scheduled snapshot of the disk, Ready")
        with ceph.open_ioctx(name) as ioctx:
            snaps = cephstate.image_state(ioctx, disk)["snapshots"]
        assert len(snaps) == len(before["images"][name][disk]["snapshots"]) + 1, "the scheduled snapshot is in Ceph"
        record(helm_upgrade={"from": PREVIOUS, "to": version(), "passed": True})
        k.kubectl("delete", "rbdsnapshotschedules", schedule, "-n", "default", "--wait=false")
    finally:
        for kind, obj in (("rbdimg", clone), ("rbdsnap", snap), ("rbdimg", disk)):
            k.kubectl("delete", kind, obj, "-n", "default", "--ignore-not-found", "--wait=false", check=False)
        k.kubectl("delete", "hvn", host.name, "--ignore-not-found", "--wait=true", "--timeout=180s", check=False)
        k.kubectl("delete", "rbds", name, "--ignore-not-found", "--wait=false", check=False)
        sh(TESTHOST, "down", host.name, check=False)
        sh(TESTHOST, "repo-down", check=False)
