"""How much memory the objects the operator holds need, against the limit its Pod has (pure).

The formula is measured (bench/scale.py, docs/performance.md): a base for the process with its storages
and hosts, plus a cost per RbdImage and per RbdSnapshot held in kopf's state and the operator's indexes.
The limit comes from RBD_OPERATOR_MEMORY_LIMIT (deploy/deployment.yaml fills it from the container's
`limits.memory` through the downward API; a Kubernetes quantity or a number of bytes; unset, empty or 0:
no limit, no warning). The warning is given once the formula's figure reaches RBD_OPERATOR_MEMORY_WARN_RATIO
(default 0.8) of the limit: early enough to raise the limit before the kernel kills the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..api.quantity import parse_quantity

# Measured (docs/performance.md, bench/scale.py 2026-12-07): 138 MiB with 4 storages and no image; idle and
# after a restart 169-170 MiB with 2,000 RbdImages and 200 RbdSnapshots, 221-222 MiB with 10,000 and 1,000,
# ~295 MiB with 20,000 and 2,000 (the restart peak, since each RbdSnapshot no longer holds a set of every
# snapshot). 150 MiB + 12 KiB per object lies above every measured point (176 / 279 / 408 MiB): conservative.
# RBD_OPERATOR_MEMORY_BASE_MIB and RBD_OPERATOR_MEMORY_PER_OBJECT_KIB override them.
BASE_MIB = 150.0
PER_OBJECT_KIB = {"RbdImage": 12.0, "RbdSnapshot": 12.0}
WARN_RATIO = 0.8


@dataclass(frozen=True)
class Budget:
    limit_bytes: int | None          # None: no limit known, never a warning
    base_mib: float = BASE_MIB
    per_object_kib: float = PER_OBJECT_KIB["RbdImage"]
    warn_ratio: float = WARN_RATIO


@dataclass(frozen=True)
class Assessment:
    objects: int         # the objects the formula counts (RbdImages and RbdSnapshots)
    expected_mib: float  # what the formula says they need
    limit_mib: float | None
    allowed: int | None  # how many such objects fit below warn_ratio of the limit
    near: bool           # expected_mib >= warn_ratio * limit

    @property
    def message(self) -> str:
        if self.limit_mib is None:
            return f"{self.objects} objects, about {self.expected_mib:.0f} MiB expected; no memory limit set"
        return (f"{self.objects} RbdImages and RbdSnapshots need about {self.expected_mib:.0f} MiB by the measured "
                f"formula, against a memory limit of {self.limit_mib:.0f} MiB (warning from {self.allowed} objects); "
                "raise the operator's memory limit (deploy/deployment.yaml, docs/performance.md) before it is "
                "OOM-killed")


def parse_limit(value: str | None) -> int | None:
    """The limit in bytes from the environment: a quantity ("512Mi") or bytes (the downward API's
    resourceFieldRef gives "536870912"); None for unset, empty, 0 or anything unreadable."""
    if value is None or not value.strip():
        return None
    try:
        limit = parse_quantity(value.strip())
    except ValueError:
        return None
    return limit if limit > 0 else None


def budget_from(env: Mapping[str, str]) -> Budget:
    """The Budget the environment sets (RBD_OPERATOR_MEMORY_LIMIT, _BASE_MIB, _PER_OBJECT_KIB, _WARN_RATIO);
    unreadable numbers fall back to the measured defaults."""
    def number(key: str, default: float) -> float:
        try:
            value = float(env.get(key, ""))
        except ValueError:
            return default
        return value if value > 0 else default
    ratio = number("RBD_OPERATOR_MEMORY_WARN_RATIO", WARN_RATIO)
    return Budget(parse_limit(env.get("RBD_OPERATOR_MEMORY_LIMIT")),
                  number("RBD_OPERATOR_MEMORY_BASE_MIB", BASE_MIB),
                  number("RBD_OPERATOR_MEMORY_PER_OBJECT_KIB", PER_OBJECT_KIB["RbdImage"]),
                  ratio if ratio <= 1 else WARN_RATIO)


def counted(counts: Mapping[str, int]) -> int:
    """The objects the formula charges per object (the other kinds are in the base)."""
    return sum(max(0, int(counts.get(kind, 0))) for kind in PER_OBJECT_KIB)


def assess(counts: Mapping[str, int], budget: Budget) -> Assessment:
    objects = counted(counts)
    expected = budget.base_mib + objects * budget.per_object_kib / 1024
    if budget.limit_bytes is None:
        return Assessment(objects, expected, None, None, False)
    limit_mib = budget.limit_bytes / 2**20
    allowed = max(0, int((budget.warn_ratio * limit_mib - budget.base_mib) * 1024 / budget.per_object_kib))
    return Assessment(objects, expected, limit_mib, allowed, expected >= budget.warn_ratio * limit_mib)


def limit_for(objects: int, base_mib: float = BASE_MIB, per_object_kib: float = PER_OBJECT_KIB["RbdImage"],
              warn_ratio: float = WARN_RATIO) -> int:
    """The memory limit (MiB, rounded up to 64) at which `objects` stay below the warning: the sizing rule of
    docs/performance.md."""
    needed = (base_mib + objects * per_object_kib / 1024) / warn_ratio
    return int(-(-needed // 64) * 64)
