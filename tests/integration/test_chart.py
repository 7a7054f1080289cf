"""The Helm chart as the real API server sees it: `helm lint`, then `helm template` with the default
values and with charts/rbd-operator/ci/all-values.yaml (every optional part on) applied with
`kubectl apply --dry-run=server` against the test control plane, where the CRDs are installed
(hack/bootstrap.sh). Admission, schema validation and defaulting run; nothing is stored.
The ServiceMonitor kind comes from the Prometheus Operator: a local, schema-less stand-in CRD
makes the API server accept it (no schema is fetched from anywhere). Object-by-object equality with
deploy/ is tests/unit/test_chart_render.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .harness import OPERATOR_NAMESPACE, ROOT, sh, wait_for

CHART = ROOT / "charts" / "rbd-operator"
ALL_ON = CHART / "ci" / "all-values.yaml"
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
             "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor",
                       "listKind": "ServiceMonitorList"},
             "versions": [{"name": "v1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {"type": "object",
                                                          "x-kubernetes-preserve-unknown-fields": True}}}]}}


@pytest.fixture(scope="module")
def helm() -> str:
    return str(Path(sh(str(ROOT / "hack" / "build-helm.sh"), timeout=3600).stdout.strip().splitlines()[-1]) / "helm")


@pytest.fixture(scope="module")
def service_monitor_kind(platform):
    created = platform.get("crd", SERVICE_MONITOR_CRD["metadata"]["name"]) is None
    if created:
        platform.apply(SERVICE_MONITOR_CRD)
        wait_for(lambda: "True" in platform.kubectl(
            "get", "crd", SERVICE_MONITOR_CRD["metadata"]["name"],
            "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}").stdout, 30, what="CRD established")
    yield
    if created:
        platform.delete("crd", SERVICE_MONITOR_CRD["metadata"]["name"])


def template(helm: str, *args: str) -> list[dict]:
    out = sh(helm, "template", "rbd-operator", str(CHART), "--namespace", OPERATOR_NAMESPACE, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def dry_run(platform, docs: list[dict]) -> dict[tuple[str, str], dict]:
    out = platform.kubectl("apply", "--dry-run=server", "-f", "-", "-o", "json", input=yaml.safe_dump_all(docs))
    items = json.loads(out.stdout)
    items = items.get("items", [items])
    return {(i["kind"], i["metadata"]["name"]): i for i in items}


def test_helm_lint(helm):
    for args in ([], ["--values", str(ALL_ON)]):
        out = sh(helm, "lint", "--strict", str(CHART), "--namespace", OPERATOR_NAMESPACE, *args).stdout
        assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_default_values_validate(platform, helm):
    docs = template(helm)
    stored = dry_run(platform, docs)
    assert sorted(stored) == sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    deployment = stored[("Deployment", "rbd-operator")]
    # defaulted by the server: the chart's Deployment is complete and valid
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == \
        f"rbd-operator:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
    crds = [k for k in stored if k[0] == "CustomResourceDefinition"]
    assert len(crds) == 6  # five rbd-operator.io kinds and kopf's ClusterKopfPeering


def test_everything_on_validates(platform, helm, service_monitor_kind):
    docs = template(helm, "--values", str(ALL_ON))
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceMonitor", "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"} <= kinds
    stored = dry_run(platform, docs)
    assert sorted(stored) == sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert stored[("ServiceMonitor", "rbd-operator")]["spec"]["endpoints"][0]["interval"] == "15s"
    assert stored[("Deployment", "rbd-operator")]["spec"]["replicas"] == 3
    assert all(o["metadata"]["labels"]["example.com/team"] == "storage" for o in stored.values())


def test_the_server_rejects_a_broken_rendering(platform, helm):
    """The dry run is a real check: a value the schema refuses fails it."""
    docs = template(helm, "--set", "replicas=-1")
    result = platform.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs), check=False)
    assert result.returncode != 0 and "replicas" in result.stderr
