"""Shards (docs/scaling.md): two operator processes with different shards (RBD_OPERATOR_SHARD) and peering names
on one API server and one Ceph. Each converges its own storage, images, snapshot and HypervisorNode; neither
writes to the other's objects (resourceVersions unchanged while only the other shard runs, no status, no
finalizer, no annotation), nor logs a handler for them; an image whose label and storage disagree, and objects
without a shard label, get a clear signal; deleting an image is handled by its shard alone."""

import json
import time

import pytest
import rbd

from .harness import OPERATOR_NAMESPACE, ROOT, Operator, wait_for
from .manifests import API, image, storage

LABEL = "rbd-operator.io/shard"
PEERING = "rbd-operator-shards"


def labelled(manifest: dict, shard: str | None) -> dict:
    if shard is not None:
        manifest["metadata"].setdefault("labels", {})[LABEL] = shard
    return manifest


def snapshot(name: str, image_name: str) -> dict:
    return {"apiVersion": API, "kind": "RbdSnapshot", "metadata": {"name": name, "namespace": "default"},
            "spec": {"image": image_name}}


def host(name: str) -> dict:
    # No SSH key Secret of that name: its shard reports why it cannot reach the host; enough to see who writes.
    return {"apiVersion": API, "kind": "HypervisorNode", "metadata": {"name": name},
            "spec": {"address": "192.0.2.10", "hostKeyPolicy": "TrustOnFirstUse", "sshKeySecretRef": {"name": f"ssh-{name}", "namespace": OPERATOR_NAMESPACE}}}


class Fleet:
    """One shard's objects: a storage (and its pool), two images, a snapshot of the first, a host."""

    def __init__(self, shard: str, uniq: str) -> None:
        self.shard, self.name = shard, f"sh{shard}-{uniq}"
        self.images = [f"{self.name}-{i}" for i in range(2)]
        self.snapshot = f"{self.name}-snap"
        self.host = f"{self.name}-host"

    def manifests(self, platform) -> list[dict]:
        return [labelled(m, self.shard) for m in (
            [storage(platform, self.name, client={"name": self.name})]
            + [image(n, self.name, size="1Gi") for n in self.images]
            + [snapshot(self.snapshot, self.images[0]), host(self.host)])]

    def objects(self) -> list[tuple[str, str, str | None]]:
        return ([("rbds", self.name, None)] + [("rbdimg", n, "default") for n in self.images]
                + [("rbdsnap", self.snapshot, "default"), ("hvn", self.host, None)])

    def converged(self, platform) -> None:
        platform.wait_condition("rbds", self.name, "True", timeout=120)
        for n in self.images:
            platform.wait_condition("rbdimg", n, "True", namespace="default", timeout=120)
        platform.wait_condition("rbdsnap", self.snapshot, "True", namespace="default", timeout=120)
        wait_for(lambda: platform.condition("hvn", self.host) is not None, 120, what=f"{self.host} reported")


def state(platform, objects) -> dict:
    """What a write by an operator would change: resourceVersion, status, finalizers, annotations."""
    out = {}
    for kind, name, namespace in objects:
        obj = platform.get(kind, name, namespace)
        assert obj is not None, f"{kind} {name} is gone"
        meta = obj["metadata"]
        out[(kind, name)] = (meta["resourceVersion"], obj.get("status"), meta.get("finalizers"),
                             meta.get("annotations"))
    return out


def untouched(platform, objects) -> None:
    """Objects nobody handled: no status, no operator annotation, no finalizer but the one the API server's
    admission policy may put on an RbdImage at creation."""
    for (kind, name), (_, status, finalizers, annotations) in state(platform, objects).items():
        assert not status, f"{kind} {name} got a status: {status}"
        assert not [a for a in annotations or {} if "kopf" in a or "rbd-operator.io" in a], (kind, name, annotations)
        assert (finalizers or []) in ([], ["rbd-operator.io/finalizer"] if kind == "rbdimg" else []), (kind, finalizers)


def mentions(op: Operator, names: list[str]) -> list[str]:
    """Log lines naming any of these objects. The operator runs with --verbose: kopf logs every watch event's
    body it processes, so an object it received, handled or indexed is named in its log."""
    return [line for line in op.log_text().splitlines() if any(n in line for n in names)]


def pool_images(ceph, pool: str) -> list[str]:
    with ceph.open_ioctx(pool) as ioctx:
        return sorted(rbd.RBD().list(ioctx))


@pytest.fixture
def shards(platform, operator):
    """The session's unsharded operator steps aside (it would handle every shard's objects); shards a and b run
    under deploy/'s RBAC, each with its own peering (PEERING-a, PEERING-b)."""
    platform.kubectl("apply", "-f", str(ROOT / "deploy" / "peering.yaml"))
    platform.kubectl("wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
    operator.stop()
    pair = {s: Operator(platform, replica=r, peering=PEERING, env={"RBD_OPERATOR_SHARD": s})
            for r, s in ((1, "a"), (2, "b"))}
    try:
        yield pair
    finally:
        for op in pair.values():
            op.stop()
        for op in pair.values():
            forbidden = [line for line in op.log_text().splitlines() if " 403" in line or "Forbidden" in line]
            assert not forbidden, f"shard {op.env['RBD_OPERATOR_SHARD']} was refused:\n" + "\n".join(forbidden[:10])
        operator.start()


def test_two_shards_share_one_api_server_and_ceph_without_touching_each_other(platform, ceph, shards, uniq):
    a, b = Fleet("a", uniq), Fleet("b", uniq)
    stray = f"shx-{uniq}-stray"       # labelled a, but its storage is b's
    unlabelled = f"shx-{uniq}-none"   # no shard label: no shard handles it
    # What the other shard must never hear of (a's stray image names b's storage in its spec, so b.name is left
    # out for a; the unlabelled image is named in each shard's warning, checked apart).
    b_names = [*b.images, b.snapshot, b.host, f"{b.name}-late"]
    a_names = [a.name]  # every object of a's is named a.name + suffix
    try:
        # Phase 1: only shard a runs; every object of both shards exists.
        shards["a"].start()
        platform.apply({"apiVersion": "v1", "kind": "List", "items": a.manifests(platform) + b.manifests(platform) + [
            labelled(image(stray, b.name, size="1Gi"), "a"), image(unlabelled, a.name, size="1Gi")]})
        a.converged(platform)
        cond = platform.wait_condition("rbdimg", stray, "False", reason="StorageNotFound", namespace="default")
        assert "shard 'a'" in cond["message"] and LABEL in cond["message"], cond
        wait_for(lambda: f"default/{unlabelled}" in shards["a"].log_text(), 60,
                 what="a warning naming the unlabelled image")
        assert "handled by no shard" in shards["a"].log_text()
        before_b = state(platform, b.objects() + [("rbdimg", unlabelled, "default")])
        time.sleep(12)  # more than two resync intervals (5 s) of shard a
        assert state(platform, b.objects() + [("rbdimg", unlabelled, "default")]) == before_b, \
            "shard a wrote to shard b's objects"
        untouched(platform, b.objects() + [("rbdimg", unlabelled, "default")])
        assert b.name not in ceph.list_pools(), "shard a created shard b's pool"
        assert not mentions(shards["a"], b_names), mentions(shards["a"], b_names)[:5]
        assert pool_images(ceph, a.name) == sorted(a.images)

        # Phase 2: a stops, only b runs: b converges its own, a's objects stay exactly as a left them.
        shards["a"].stop()
        before_a = state(platform, a.objects())
        shards["b"].start()
        b.converged(platform)
        time.sleep(12)
        assert state(platform, a.objects()) == before_a, "shard b wrote to shard a's objects"
        assert not mentions(shards["b"], a_names), mentions(shards["b"], a_names)[:5]
        assert pool_images(ceph, b.name) == sorted(b.images)
        assert pool_images(ceph, a.name) == sorted(a.images)

        # Phase 3: both run, each in its own peering (neither pauses the other).
        shards["a"].start()
        for s in ("a", "b"):
            wait_for(lambda s=s: len((platform.get("clusterkopfpeering", f"{PEERING}-{s}") or {}).get("status") or {})
                     == 1, 60, what=f"shard {s} alone in its peering")
        platform.apply(labelled(image(f"{b.name}-late", b.name, size="1Gi"), "b"))
        platform.wait_condition("rbdimg", f"{b.name}-late", "True", namespace="default")
        # Deleting one of a's images: a moves it to the trash, b never hears of it.
        platform.delete("rbdimg", a.images[1], "default")
        wait_for(lambda: platform.get("rbdimg", a.images[1], "default") is None, 90, what="a's image deleted")
        assert pool_images(ceph, a.name) == [a.images[0]]
        assert mentions(shards["a"], [f"{a.name}/{a.images[1]} moved to the RBD trash"]), \
            "shard a did not handle its image's deletion"
        with ceph.open_ioctx(a.name) as ioctx:
            assert a.images[1] in [e["name"] for e in rbd.RBD().trash_list(ioctx)]
        assert not mentions(shards["b"], a_names), mentions(shards["b"], a_names)[:5]
        assert not mentions(shards["a"], b_names), mentions(shards["a"], b_names)[:5]
        for op in shards.values():  # the unlabelled image: named in warnings, never handled
            assert all("handled by no shard" in line for line in mentions(op, [unlabelled])), mentions(op, [unlabelled])
        assert pool_images(ceph, b.name) == sorted(b.images + [f"{b.name}-late"])

        # a's storage relabelled to b: b takes it over; a's timer for it (kopf keeps timers of an object that left
        # the watch) does nothing more: no sweep of it in a's log after b's first.
        platform.kubectl("label", "rbds", a.name, f"{LABEL}=b", "--overwrite")
        swept = f"image(s) of {a.name}:"  # a's sweep of its storage's image, every resync interval
        assert mentions(shards["a"], [swept])
        wait_for(lambda: mentions(shards["b"], [a.name]), 60, what="shard b receiving the storage")
        time.sleep(3)  # a sweep a's timer may have had under way at the relabel
        since = len(shards["a"].log_text().splitlines())
        time.sleep(12)  # more than two resync intervals
        later = [line for line in shards["a"].log_text().splitlines()[since:] if swept in line]
        assert not later, f"shard a still works on the storage it no longer owns: {later[:3]}"
    finally:
        for op in shards.values():
            if op.proc is None or op.proc.poll() is not None:
                op.start()
        for fleet in (a, b):
            platform.kubectl("delete", "rbdsnap", fleet.snapshot, "-n", "default", "--ignore-not-found", "--wait=false")
            for n in fleet.images + [f"{fleet.name}-late"]:
                platform.delete("rbdimg", n, "default")
            platform.delete("hvn", fleet.host)
        for n in (stray, unlabelled):  # never handled: their finalizer (admission policy) has no one to remove it
            platform.kubectl("patch", "rbdimg", n, "-n", "default", "--type=merge", "-p",
                             '{"metadata":{"finalizers":null}}', check=False)
            platform.delete("rbdimg", n, "default")
        for fleet in (a, b):
            wait_for(lambda f=fleet: not platform.get("rbdimg", f.images[0], "default"), 120,
                     what=f"{fleet.name}'s images deleted")
            platform.delete("rbds", fleet.name)


def test_the_shard_label_policy_refuses_what_no_shard_would_handle(platform, uniq):
    """examples/shards/policy.yaml: a new object must name a running shard, and its label never changes."""
    policy = ROOT / "examples" / "shards" / "policy.yaml"
    name = f"shp-{uniq}"

    def create(shard: str | None):
        return platform.kubectl("create", "--dry-run=server", "-f", "-", check=False,
                                input=json.dumps(labelled(image(name, "nowhere", size="1Gi"), shard)))
    platform.kubectl("apply", "-f", str(policy))
    try:
        wait_for(lambda: create(None).returncode != 0, 30, what="the policy in effect")
        refused = create(None)
        assert "must name a shard that runs (a, b)" in refused.stderr and 'got ""' in refused.stderr, refused.stderr
        assert "got \"c\"" in create("c").stderr
        assert create("a").returncode == 0 and create("b").returncode == 0
        platform.apply(labelled(image(name, "nowhere", size="1Gi"), "a"))
        moved = platform.kubectl("label", "--dry-run=server", "--overwrite", "rbdimg", name, "-n", "default",
                                 f"{LABEL}=b", check=False)
        assert moved.returncode != 0 and 'cannot change (from "a" to "b")' in moved.stderr, moved.stderr
        kept = platform.kubectl("label", "--dry-run=server", "rbdimg", name, "-n", "default", "other=x", check=False)
        assert kept.returncode == 0, kept.stderr
    finally:
        platform.kubectl("delete", "-f", str(policy), "--ignore-not-found")
        platform.delete("rbdimg", name, "default")
        platform.kubectl("patch", "rbdimg", name, "-n", "default", "--type=merge", "-p",
                         '{"metadata":{"finalizers":null}}', check=False)
        wait_for(lambda: platform.get("rbdimg", name, "default") is None, 60, what=f"{name} deleted")
        wait_for(lambda: create(None).returncode == 0, 30, what="the policy gone")


def test_the_example_overlay_makes_a_shard_deployment_the_api_server_accepts(platform):
    """examples/shards/a: deploy/ with its own names, RBD_OPERATOR_SHARD=a, selectors that pick only its pods."""
    out = platform.kubectl("apply", "--dry-run=server", "-k", str(ROOT / "examples" / "shards" / "a"), "-o", "json")
    items = {(i["kind"], i["metadata"]["name"]): i for i in json.loads(out.stdout)["items"]}
    deployment = items[("Deployment", "rbd-operator-a")]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert {"name": "RBD_OPERATOR_SHARD", "value": "a"} in container["env"]
    assert container["args"][container["args"].index("--peering") + 1] == "rbd-operator"  # the shard is appended
    assert deployment["spec"]["selector"]["matchLabels"][LABEL] == "a" == pod["metadata"]["labels"][LABEL]
    assert pod["spec"]["serviceAccountName"] == "rbd-operator-a"
    assert items[("PodDisruptionBudget", "rbd-operator-a")]["spec"]["selector"]["matchLabels"][LABEL] == "a"
    assert items[("Service", "rbd-operator-metrics-a")]["spec"]["selector"][LABEL] == "a"
    binding = items[("ClusterRoleBinding", "rbd-operator-a")]
    assert binding["roleRef"]["name"] == "rbd-operator-a" and binding["subjects"][0]["name"] == "rbd-operator-a"
    # Shared, identical in every shard's build: the CRDs and the Namespace keep their names.
    assert ("CustomResourceDefinition", "rbdimages.rbd-operator.io") in items and ("Namespace", "rbd-operator") in items
