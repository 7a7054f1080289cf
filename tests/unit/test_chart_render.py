"""The Helm chart (charts/rbd-operator) against its one source, deploy/ and crds/: with default values
`helm template` renders the objects of `kubectl kustomize deploy/`, with the optional parts enabled
those of an overlay with deploy/components/*, object by object, after removing only Helm's own
labels (helm.sh/chart, app.kubernetes.io/managed-by, -instance, -version) and its keep annotation.
The chart's CRD templates are generated from crds/ (`make generate`, hack/gen-chart.py) and render
to exactly crds/. Needs the helm (hack/build-helm.sh) and kubectl (hack/build-kube.sh) binaries that
`make deps` builds; nothing talks to a cluster here (tests/integration/test_chart.py does)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "rbd-operator"
NAMESPACE = "rbd-operator"
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
               "app.kubernetes.io/version"}
HELM_ANNOTATIONS = {"helm.sh/resource-policy"}
COMPONENTS = {"finalizer-policy": ["--set", "finalizerPolicy.enabled=true"],
              "servicemonitor": ["--set", "metrics.serviceMonitor.enabled=true"]}


def _bin(script: str, name: str) -> str:
    out = subprocess.run([str(ROOT / "hack" / script)], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0 and shutil.which("go") is None:
        # the unit tests on the image's Python (hack/image-unit-tests.sh): no Go there, nothing built
        pytest.skip(f"{name} is not built and Go is not installed here (`make deps` builds it)")
    assert out.returncode == 0, out.stderr
    return str(Path(out.stdout.strip().splitlines()[-1]) / name)


@pytest.fixture(scope="module")
def helm() -> str:
    return _bin("build-helm.sh", "helm")


@pytest.fixture(scope="module")
def kubectl() -> str:
    return _bin("build-kube.sh", "kubectl")


def run(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args[0]} {args[1]} failed: {result.stderr}"
    return result.stdout


def objects(text: str) -> dict[tuple[str, str, str], dict]:
    out = {}
    for doc in yaml.safe_load_all(text):
        if doc:
            key = (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
            assert key not in out, f"{key} rendered twice"
            out[key] = doc
    return out


def render(helm: str, *args: str) -> dict[tuple[str, str, str], dict]:
    return objects(run(helm, "template", "rbd-operator", str(CHART), "--namespace", NAMESPACE, *args))


# Cluster-scoped kinds this kustomize does not know as such: an overlay's `namespace:` lands on them (the API
# server ignores it for a cluster-scoped kind); removed from kustomize's output before comparing.
CLUSTER_SCOPED = {"MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"}


def kustomize(kubectl: str, directory: Path) -> dict[tuple[str, str, str], dict]:
    docs = list(objects(run(kubectl, "kustomize", str(directory))).values())
    for doc in docs:
        if doc["kind"] in CLUSTER_SCOPED:
            doc["metadata"].pop("namespace", None)
        # kustomize re-serialises the policy's folded (`>`) CEL expression with an empty line inserted
        # after its first line (whitespace to CEL); the source file parses to the chart's value exactly
        # (test_finalizer_policy_is_the_component_verbatim).
        for mutation in (doc.get("spec") or {}).get("mutations") or [] if doc["kind"] == "MutatingAdmissionPolicy" else []:
            patch = mutation["jsonPatch"]
            patch["expression"] = re.sub(r"\n\n+", "\n", patch["expression"])
    return objects(yaml.safe_dump_all(docs))


def strip_helm(obj: dict) -> dict:
    """The object without Helm's own labels and annotations (a copy)."""
    obj = yaml.safe_load(yaml.safe_dump(obj))
    meta = obj["metadata"]
    for field, names in (("labels", HELM_LABELS), ("annotations", HELM_ANNOTATIONS)):
        kept = {k: v for k, v in (meta.get(field) or {}).items() if k not in names}
        if kept:
            meta[field] = kept
        else:
            meta.pop(field, None)
    return obj


def assert_same(chart: dict, kust: dict) -> None:
    assert sorted(chart) == sorted(kust), "objects differ: " \
        f"only in the chart {sorted(set(chart) - set(kust))}, only in kustomize {sorted(set(kust) - set(chart))}"
    for key in kust:
        assert strip_helm(chart[key]) == kust[key], f"{key} differs from deploy/"


def overlay(tmp_path: Path, components: list[str]) -> Path:
    """A kustomize overlay of deploy/ with these deploy/components, as the comments there describe."""
    def rel(path: Path) -> str:  # kustomize takes no absolute roots
        return os.path.relpath(path, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": NAMESPACE, "resources": [rel(ROOT / "deploy")],
        "components": [rel(ROOT / "deploy" / "components" / c) for c in components]}))
    return tmp_path


def test_default_values_render_deploy(helm, kubectl):
    kust = kustomize(kubectl, ROOT / "deploy")
    # The Namespace is `helm install --create-namespace` (or namespace.create): the release's own.
    namespace = ("Namespace", "", NAMESPACE)
    assert namespace in kust
    chart = render(helm)
    assert namespace not in chart
    kust.pop(namespace)
    assert_same(chart, kust)


def test_namespace_create_renders_it_kept(helm, kubectl):
    chart = render(helm, "--set", "namespace.create=true")
    assert_same(chart, kustomize(kubectl, ROOT / "deploy"))
    ns = chart[("Namespace", "", NAMESPACE)]
    assert ns["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


@pytest.mark.parametrize("components", [["finalizer-policy"], ["servicemonitor"], sorted(COMPONENTS)])
def test_components_render_the_overlay(helm, kubectl, tmp_path, components):
    kust = kustomize(kubectl, overlay(tmp_path, components))
    kust.pop(("Namespace", "", NAMESPACE))
    flags = [f for c in components for f in COMPONENTS[c]]
    assert_same(render(helm, *flags), kust)
    # the component's objects exist only with its value
    assert len(kust) > len(render(helm))


def test_every_component_has_a_value():
    assert sorted(p.name for p in (ROOT / "deploy" / "components").iterdir() if p.is_dir()) == sorted(COMPONENTS)


def test_values_take_effect(helm):
    chart = render(helm, "--namespace", "storage-system", "--set", "image.repository=registry.example/rbd-operator",
                   "--set", "image.tag=9.9.9", "--set", "image.pullPolicy=Always", "--set", "replicas=3",
                   "--set", "resources.limits.memory=2Gi", "--set", "extraLabels.team=storage",
                   "--set", "networkPolicy.enabled=false", "--set", "podDisruptionBudget.enabled=false",
                   "--set", "metrics.service=false")
    deployment = chart[("Deployment", "storage-system", "rbd-operator")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/rbd-operator:9.9.9"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert deployment["spec"]["replicas"] == 3
    # extra labels everywhere but in selectors (a Deployment's selector is immutable)
    for obj in chart.values():
        assert obj["metadata"]["labels"]["team"] == "storage", obj["metadata"]["name"]
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "storage"
    assert deployment["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "rbd-operator"}}
    kinds = {k[0] for k in chart}
    assert not kinds & {"NetworkPolicy", "PodDisruptionBudget", "Service"}
    # every namespaced object in the release namespace, and the binding's subjects with them
    assert {k[1] for k in chart if k[1]} == {"storage-system"}
    binding = chart[("ClusterRoleBinding", "", "rbd-operator")]
    assert binding["subjects"][0]["namespace"] == "storage-system"


def test_extra_labels_are_strings(helm):
    """`--set extraLabels.tier=2` parses 2 as a number; a label value must be a string."""
    chart = render(helm, "--set", "extraLabels.tier=2", "--set", "extraLabels.on=true")
    deployment = chart[("Deployment", NAMESPACE, "rbd-operator")]
    for labels in (deployment["metadata"]["labels"], deployment["spec"]["template"]["metadata"]["labels"]):
        assert labels["tier"] == "2" and labels["on"] == "true", labels


def test_namespace_value_overrides_the_release_namespace(helm):
    chart = render(helm, "--set", "namespace.name=ops")
    assert {k[1] for k in chart if k[1]} == {"ops"}


def test_service_monitor_needs_the_service(helm):
    result = subprocess.run([helm, "template", "x", str(CHART), "--set", "metrics.serviceMonitor.enabled=true",
                             "--set", "metrics.service=false"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "metrics.serviceMonitor.enabled needs metrics.service" in result.stderr


def crd_sources() -> dict[str, dict]:
    docs = [yaml.safe_load((ROOT / "crds" / name).read_text())
            for name in yaml.safe_load((ROOT / "crds" / "kustomization.yaml").read_text())["resources"]]
    docs.append(yaml.safe_load((ROOT / "deploy" / "peering.yaml").read_text()))
    return {d["metadata"]["name"]: d for d in docs}


def test_chart_crds_are_crds_verbatim(helm):
    chart = render(helm)
    crds = {k[2]: strip_helm(v) for k, v in chart.items() if k[0] == "CustomResourceDefinition"}
    assert crds == crd_sources()
    for key, obj in chart.items():
        if key[0] == "CustomResourceDefinition":
            assert obj["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}, key


def test_crds_install_and_keep_values(helm):
    assert not [k for k in render(helm, "--set", "crds.install=false") if k[0] == "CustomResourceDefinition"]
    unkept = render(helm, "--set", "crds.keep=false")
    crds = [v for k, v in unkept.items() if k[0] == "CustomResourceDefinition"]
    assert crds and all("annotations" not in c["metadata"] for c in crds)


def test_chart_crd_templates_are_generated():
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "gen-chart.py"), "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_versions_agree():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version
    deployment = next(d for d in yaml.safe_load_all((ROOT / "deploy" / "deployment.yaml").read_text())
                      if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"rbd-operator:{version}"


def test_helm_lint(helm):
    out = run(helm, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in out
    run(helm, "lint", "--strict", str(CHART), "--set", "finalizerPolicy.enabled=true",
        "--set", "metrics.serviceMonitor.enabled=true", "--set", "namespace.create=true")


def test_finalizer_policy_is_the_component_verbatim(helm):
    source = ROOT / "deploy" / "components" / "finalizer-policy" / "finalizer-policy.yaml"
    expected = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(source.read_text()) if d}
    chart = render(helm, *COMPONENTS["finalizer-policy"])
    rendered = {(k[0], k[2]): strip_helm(v) for k, v in chart.items() if k[0] in CLUSTER_SCOPED}
    assert rendered == expected
