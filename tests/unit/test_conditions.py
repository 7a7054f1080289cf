from rbd_operator.api.conditions import Condition, merge_conditions


def test_transition_time_kept_while_status_unchanged():
    first = merge_conditions([], [Condition("Ready", False, "Waiting", "x")], 1, now="2026-01-01T00:00:00Z")
    second = merge_conditions(first, [Condition("Ready", False, "Other", "y")], 2, now="2026-01-02T00:00:00Z")
    assert second[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert second[0]["reason"] == "Other" and second[0]["observedGeneration"] == 2
    third = merge_conditions(second, [Condition("Ready", True, "Converged")], 2, now="2026-01-03T00:00:00Z")
    assert third[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z" and third[0]["status"] == "True"


def test_unchanged_reconcile_is_identical():
    first = merge_conditions([], [Condition("Ready", True, "Converged", "ok"), Condition("PoolReady", True, "P")], 1)
    again = merge_conditions(first, [Condition("Ready", True, "Converged", "ok")], 1, now="2099-01-01T00:00:00Z")
    assert again == first
    assert [c["type"] for c in again] == ["Ready", "PoolReady"]
