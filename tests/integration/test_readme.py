"""The manifests the README shows users are accepted by the real API server as written (server-side dry
run against the CRDs, nothing stored): a field renamed or a schema rule tightened in a CRD fails here, not
in a user's first `kubectl apply`. Placeholders a README cannot fill in (a host key, a checksum) are
replaced by values of their form; everything else is applied exactly as the README shows it."""

from __future__ import annotations

import re

import pytest
import yaml

from .harness import ROOT

GROUP = "rbd-operator.io/"
# README placeholder -> a value of the form the CRD requires
PLACEHOLDERS = {"ssh-ed25519 AAAA…": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIReadmeExampleHostKeyReadmeExampleKey",
                "sha256: 0f3c...": "sha256: " + "0f3c" * 16}


def readme_manifests() -> list[dict]:
    """Every complete object of the operator's kinds in the README's yaml blocks (apiVersion, kind, spec)."""
    text = (ROOT / "README.md").read_text()
    for placeholder, value in PLACEHOLDERS.items():
        assert placeholder in text, f"placeholder {placeholder!r} no longer in the README: update PLACEHOLDERS"
        text = text.replace(placeholder, value)
    docs = []
    for block in re.findall(r"^```yaml\n(.*?)^```", text, re.S | re.M):
        docs += [d for d in yaml.safe_load_all(block)
                 if isinstance(d, dict) and str(d.get("apiVersion", "")).startswith(GROUP) and "spec" in d]
    return docs


def test_the_readme_shows_every_kind():
    kinds = {d["kind"] for d in readme_manifests()}
    assert kinds == {"RbdStorage", "RbdImage", "RbdSnapshot", "RbdSnapshotSchedule", "HypervisorNode"}, kinds
    assert len(readme_manifests()) >= 10, "the scan found too little: it is broken"


def test_readme_manifests_pass_a_server_side_dry_run(platform):
    docs = readme_manifests()
    namespaces = sorted({d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")})
    made = [ns for ns in namespaces if platform.kubectl("get", "namespace", ns, check=False).returncode != 0]
    for ns in made:
        platform.kubectl("create", "namespace", ns)
    try:
        refused = []
        for doc in docs:
            result = platform.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
            if result.returncode != 0:
                refused.append(f"{doc['kind']} {doc['metadata'].get('name')}: {result.stderr.strip()}")
        assert not refused, "README manifests the API server refuses:\n" + "\n".join(refused)
    finally:
        for ns in made:
            platform.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_broken_manifest_is_refused(platform):
    """The dry run judges: the README's first storage with a field of the wrong type is refused."""
    storage = next(d for d in readme_manifests() if d["kind"] == "RbdStorage")
    broken = {**storage, "spec": {**storage["spec"], "pool": {"pgNum": "many"}}}
    result = platform.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(broken), check=False)
    assert result.returncode != 0 and "pgNum" in result.stderr, result.stdout + result.stderr
