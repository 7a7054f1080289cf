"""Metrics record what a handler wrote (pure: prometheus_client's registry, no server)."""

from prometheus_client import REGISTRY

from rbd_operator import metrics


class Patch:
    def __init__(self, status):
        self.status = status


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_reason_labels_are_bounded():
    assert metrics.reason_label("ShrinkNotAllowed") == "ShrinkNotAllowed"
    assert metrics.reason_label("anything a Ceph error could say") == "other"
    assert metrics.reason_label(None) == "none"


def test_handler_outcome_from_the_patch_then_the_body():
    before = value("rbd_operator_reconciles_total", kind="RbdImage", reason="ShrinkNotAllowed")
    errors = value("rbd_operator_reconcile_errors_total", kind="RbdImage", reason="ShrinkNotAllowed")
    patch = Patch({"conditions": [{"type": "Ready", "status": "False", "reason": "ShrinkNotAllowed"}]})
    metrics.handler_done("RbdImage", {}, patch, 0.2, failed=False)
    assert value("rbd_operator_reconciles_total", kind="RbdImage", reason="ShrinkNotAllowed") == before + 1
    assert value("rbd_operator_reconcile_errors_total", kind="RbdImage", reason="ShrinkNotAllowed") == errors + 1

    # Nothing patched (the status already said so): the body's Ready counts.
    body = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Converged"}]}}
    ok_errors = value("rbd_operator_reconcile_errors_total", kind="RbdStorage", reason="Converged")
    metrics.handler_done("RbdStorage", body, Patch({}), 0.1, failed=False)
    assert value("rbd_operator_reconciles_total", kind="RbdStorage", reason="Converged") >= 1
    assert value("rbd_operator_reconcile_errors_total", kind="RbdStorage", reason="Converged") == ok_errors


def test_storage_figures_and_removal():
    metrics.storage_figures("s1", {"storedBytes": 10, "maxAvailBytes": 20, "quotaMaxBytes": 0},
                            {"selected": 3, "current": 2})
    assert value("rbd_operator_pool_stored_bytes", storage="s1") == 10
    assert value("rbd_operator_storage_hosts_current", storage="s1") == 2
    metrics.storage_gone("s1")
    assert REGISTRY.get_sample_value("rbd_operator_pool_stored_bytes", {"storage": "s1"}) is None


def test_call_latency_per_pool():
    metrics.call_done("ceph", "create_image", 0.01)
    metrics.call_done("ssh", "converge", 2.0, timed_out=True)
    metrics.call_done("kube", "read_secret", 0.01)  # no histogram for the API client
    assert value("rbd_operator_ceph_call_seconds_count", call="create_image") >= 1
    assert value("rbd_operator_call_timeouts_total", pool="ssh", call="converge") >= 1
