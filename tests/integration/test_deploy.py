"""deploy/ as users apply it, checked by the real API server (server-side dry run): the
PodDisruptionBudget, the NetworkPolicy for /metrics and the Deployment they go with. The eviction
behaviour of the budget is tested in the kind e2e (tests/e2e: it needs kubelets and running pods);
the NetworkPolicy's meaning is evaluated here, since kind's bridge CNI does not enforce policies."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import pytest
import yaml

from .harness import OPERATOR_NAMESPACE, ROOT, sh

SCRAPER_LABEL = "rbd-operator.io/metrics-scraper"


@pytest.fixture(scope="module")
def dry_run(platform) -> dict[tuple[str, str], dict]:
    """Every object of `kubectl apply -k deploy/` as the API server would store it (admission,
    validation and defaulting done; nothing stored)."""
    out = platform.kubectl("apply", "--dry-run=server", "-k", str(ROOT / "deploy"), "-o", "json")
    items = json.loads(out.stdout)
    items = items.get("items", [items])
    return {(i["kind"], i["metadata"]["name"]): i for i in items}


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist) against a label set."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def admits(policy: dict, pod_labels: Mapping[str, str], source_ns_labels: Mapping[str, str], protocol: str,
           port: int) -> bool:
    """Whether a NetworkPolicy (alone) admits a connection from a pod in a namespace with these labels
    to a pod with `pod_labels` on protocol/port, by the Kubernetes NetworkPolicy semantics."""
    spec = policy["spec"]
    if not _selects(spec["podSelector"], pod_labels) or "Ingress" not in spec.get("policyTypes", ["Ingress"]):
        return True  # not isolated by this policy
    for rule in spec.get("ingress") or []:
        peers = rule.get("from") or []
        peer_ok = not peers or any(
            "namespaceSelector" in p and "podSelector" not in p and "ipBlock" not in p
            and _selects(p["namespaceSelector"], source_ns_labels) for p in peers)
        ports = rule.get("ports") or []
        port_ok = not ports or any(
            p.get("protocol", "TCP") == protocol
            and ("port" not in p or p["port"] <= port <= p.get("endPort", p["port"])) for p in ports)
        if peer_ok and port_ok:
            return True
    return False


def test_deploy_is_accepted_by_the_api_server(dry_run):
    kinds = {kind for kind, _ in dry_run}
    assert {"Deployment", "PodDisruptionBudget", "NetworkPolicy", "Service", "ServiceAccount", "ClusterRole",
            "CustomResourceDefinition"} <= kinds, sorted(kinds)


def test_the_budget_lets_one_replica_go_at_a_time_and_rollouts_proceed(dry_run):
    deployment = dry_run["Deployment", "rbd-operator"]
    pdb = dry_run["PodDisruptionBudget", "rbd-operator"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(pdb["spec"]["selector"], pod_labels), "the budget covers the operator's pods"
    replicas = deployment["spec"]["replicas"]
    assert pdb["spec"]["minAvailable"] == 1 and replicas == 2, "one of the two may be disrupted at a time"
    # A broken (not Ready) replica never blocks a drain.
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # A rollout replaces one pod at a time without a surge: it needs one disruption, which the budget has.
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] <= replicas - pdb["spec"]["minAvailable"]
    # Both replicas are Ready (the standby too): readiness is the health endpoint, not the peering.
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] == "health"
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in container["ports"]


def test_metrics_only_from_labelled_namespaces_everything_else_unaffected(dry_run):
    policy = dry_run["NetworkPolicy", "rbd-operator"]
    deployment = dry_run["Deployment", "rbd-operator"]
    pod = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    metrics, health = ports["metrics"], ports["health"]
    scraper = {"kubernetes.io/metadata.name": "monitoring", SCRAPER_LABEL: "true"}
    other = {"kubernetes.io/metadata.name": "tenant-a"}
    assert admits(policy, pod, scraper, "TCP", metrics)
    assert not admits(policy, pod, other, "TCP", metrics), "/metrics from an unlabelled namespace"
    assert not admits(policy, pod, {**other, SCRAPER_LABEL: "yes"}, "TCP", metrics), "only the documented value"
    for source in (scraper, other):
        for port in (health, 1, 22, 443, metrics - 1, metrics + 1, 65535):
            assert admits(policy, pod, source, "TCP", port), f"TCP {port} from {source}"
        assert admits(policy, pod, source, "UDP", metrics) and admits(policy, pod, source, "UDP", 53)
    # Other pods are not isolated, and egress (API server, Ceph, SSH) is not restricted.
    assert admits(policy, {"app": "something-else"}, other, "TCP", metrics)
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "egress" not in policy["spec"]
    # The label is the one the README documents.
    assert f'{SCRAPER_LABEL}: "true"' in (ROOT / "README.md").read_text()


def test_the_evaluator_can_tell_a_wrong_policy(dry_run):
    """admits() itself: an open policy, a metrics rule without the namespace selector, a wrong label."""
    policy = dry_run["NetworkPolicy", "rbd-operator"]
    pod = dry_run["Deployment", "rbd-operator"]["spec"]["template"]["metadata"]["labels"]
    other = {"kubernetes.io/metadata.name": "tenant-a"}
    open_policy = {"spec": {**policy["spec"], "ingress": [{}]}}
    assert admits(open_policy, pod, other, "TCP", 9090)
    no_selector = json.loads(json.dumps(policy))
    del no_selector["spec"]["ingress"][0]["from"]
    assert admits(no_selector, pod, other, "TCP", 9090)
    wrong_range = json.loads(json.dumps(policy))
    wrong_range["spec"]["ingress"][1]["ports"][1]["port"] = 9090
    assert admits(wrong_range, pod, other, "TCP", 9090)


# -- hack/bootstrap.sh: waits for what it needs, bounded, and says why it gave up ----------------------------------


def test_bootstrap_gives_up_in_time_with_the_reason(platform, tmp_path):
    """Against an API server that does not answer: it fails within its bound, naming what it waited for."""
    conf = yaml.safe_load(platform.kubeconfig.read_text())
    conf["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:9"  # discard: nothing listens
    dead = tmp_path / "kubeconfig"
    dead.write_text(yaml.safe_dump(conf))
    started = time.monotonic()
    result = sh(str(ROOT / "hack" / "bootstrap.sh"), str(dead), str(platform.ceph_dir), check=False,
                env={"KUBECTL": str(platform.bin_dir / "kubectl"), "BOOTSTRAP_TIMEOUT": "3"})
    assert result.returncode == 1
    assert time.monotonic() - started < 30
    assert "timed out after 3s" in result.stderr and "/readyz" in result.stderr, result.stderr
    assert "refused" in result.stderr, "the last answer is shown"


def test_bootstrap_again_on_a_running_server(platform):
    """What every upgrade and every second `make sandbox-up` does: one try, the policy in effect after it."""
    result = sh(str(ROOT / "hack" / "bootstrap.sh"), str(platform.kubeconfig), str(platform.ceph_dir),
                OPERATOR_NAMESPACE, env={"KUBECTL": str(platform.bin_dir / "kubectl")})
    assert "CRDs established and served" in result.stderr
    served = '"name":"mutatingadmissionpolicies"' in platform.kubectl(
        "get", "--raw", "/apis/admissionregistration.k8s.io/v1", check=False).stdout
    if served and os.environ.get("RBD_FINALIZER_POLICY") != "0":  # installed, and in effect once it returns
        probe = json.dumps({"apiVersion": "rbd-operator.io/v1alpha1", "kind": "RbdImage",
                            "metadata": {"name": "bootstrap-test", "namespace": "default"},
                            "spec": {"storage": "probe", "size": "1Gi"}})
        out = platform.kubectl("create", "--dry-run=server", "-o", "jsonpath={.metadata.finalizers}", "-f", "-",
                               input=probe)
        assert "rbd-operator.io/finalizer" in out.stdout
        assert "policy in effect" in result.stderr
