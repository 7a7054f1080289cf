"""The memory budget (reconcile/memory.py): when the objects the operator holds near its memory limit."""

from __future__ import annotations

import pytest

from rbd_operator.reconcile import memory
from rbd_operator.reconcile.memory import Budget, assess, budget_from, limit_for, parse_limit

MIB = 2**20


@pytest.mark.parametrize("text, want", [
    ("536870912", 512 * MIB),     # the downward API's resourceFieldRef: bytes
    ("512Mi", 512 * MIB), ("1Gi", 1024 * MIB), (" 600M ", 600 * 10**6),
    (None, None), ("", None), ("0", None), ("-1", None), ("lots", None), ("1e999", None),
])
def test_limit_from_the_environment(text, want):
    assert parse_limit(text) == want


def test_no_limit_never_warns():
    verdict = assess({"RbdImage": 10**7}, Budget(None, 100.0, 10.0))
    assert not verdict.near and verdict.allowed is None and verdict.limit_mib is None
    assert verdict.expected_mib == pytest.approx(100 + 10**7 * 10 / 1024)


def test_threshold_is_the_warn_ratio_of_the_limit():
    budget = Budget(512 * MIB, base_mib=100.0, per_object_kib=16.0, warn_ratio=0.8)
    # 0.8 * 512 = 409.6 MiB; (409.6 - 100) MiB / 16 KiB = 19,814.4 objects
    verdict = assess({"RbdImage": 19_814}, budget)
    assert verdict.allowed == 19_814 and not verdict.near
    assert assess({"RbdImage": 19_815}, budget).near
    assert assess({"RbdImage": 18_000, "RbdSnapshot": 1_815}, budget).near  # snapshots count too
    assert not assess({"RbdImage": 19_000, "RbdStorage": 500, "HypervisorNode": 500}, budget).near  # in the base


def test_message_says_what_to_do():
    verdict = assess({"RbdImage": 30_000}, Budget(512 * MIB, 100.0, 16.0))
    assert verdict.near
    assert "30000" in verdict.message and "512 MiB" in verdict.message and "memory limit" in verdict.message


def test_budget_from_env_and_fallbacks():
    budget = budget_from({"RBD_OPERATOR_MEMORY_LIMIT": "1Gi", "RBD_OPERATOR_MEMORY_BASE_MIB": "90",
                          "RBD_OPERATOR_MEMORY_PER_OBJECT_KIB": "8.5", "RBD_OPERATOR_MEMORY_WARN_RATIO": "0.9"})
    assert budget == Budget(1024 * MIB, 90.0, 8.5, 0.9)
    broken = budget_from({"RBD_OPERATOR_MEMORY_BASE_MIB": "x", "RBD_OPERATOR_MEMORY_PER_OBJECT_KIB": "-3",
                          "RBD_OPERATOR_MEMORY_WARN_RATIO": "7"})
    assert broken == Budget(None, memory.BASE_MIB, memory.PER_OBJECT_KIB["RbdImage"], memory.WARN_RATIO)


def test_sizing_rule_keeps_the_fleet_below_the_warning():
    for objects in (0, 2_000, 22_000, 100_000):
        limit = limit_for(objects)
        assert limit % 64 == 0
        assert not assess({"RbdImage": objects}, Budget(limit * MIB)).near
        assert assess({"RbdImage": objects}, Budget((limit - 64) * MIB)).near or objects == 0


def test_object_locks_are_forgotten_once_nobody_uses_them():
    import asyncio

    from rbd_operator.handlers.common import ObjectLocks

    async def scenario() -> None:
        locks, order = ObjectLocks(), []

        async def user(tag: str) -> None:
            async with locks.hold("u1"):
                assert locks.busy("u1")
                order.append(f"{tag}+")
                await asyncio.sleep(0.01)
                order.append(f"{tag}-")

        await asyncio.gather(user("a"), user("b"), user("c"))
        assert order == ["a+", "a-", "b+", "b-", "c+", "c-"], "still one at a time"
        assert not locks.busy("u1") and locks._locks == {} and locks._users == {}
        with_cancel = asyncio.ensure_future(user("d"))
        async with locks.hold("u1"):
            await asyncio.sleep(0)
            with_cancel.cancel()  # cancelled while waiting for the lock
            await asyncio.sleep(0)
        assert locks._locks == {} and locks._users == {}

    asyncio.run(scenario())


def test_the_shipped_limits_hold_the_fleet_they_name():
    """deploy/ and the chart say their limit holds 20,000 RbdImages with 2,000 RbdSnapshots: the formula agrees."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    deployment = next(d for d in yaml.safe_load_all((root / "deploy" / "deployment.yaml").read_text())
                      if d and d.get("kind") == "Deployment")
    shipped = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    values = yaml.safe_load((root / "charts" / "rbd-operator" / "values.yaml").read_text())
    assert values["resources"]["limits"]["memory"] == shipped
    limit = parse_limit(shipped)
    assert limit_for(22_000) * MIB <= limit
    assert not assess({"RbdImage": 20_000, "RbdSnapshot": 2_000}, Budget(limit)).near
