"""metav1.Condition bookkeeping: set one condition, keep transition times stable."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    current: Iterable[dict] | None,
    updates: Iterable[Condition],
    generation: int | None,
    now: str | None = None,
) -> list[dict]:
    """Return the conditions list with `updates` applied.

    lastTransitionTime changes only when a condition's status changes, so an
    unchanged reconcile produces an identical list (and thus no API write).
    Conditions not mentioned in `updates` are kept as they are.
    """
    now = now or now_rfc3339()
    by_type = {c["type"]: dict(c) for c in (current or []) if isinstance(c, dict) and "type" in c}
    order = [c["type"] for c in (current or []) if isinstance(c, dict) and "type" in c]
    for cond in updates:
        status = "True" if cond.status else "False"
        old = by_type.get(cond.type)
        transition = old["lastTransitionTime"] if old and old.get("status") == status and old.get("lastTransitionTime") else now
        by_type[cond.type] = {
            "type": cond.type,
            "status": status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": transition,
            "observedGeneration": generation,
        }
        if cond.type not in order:
            order.append(cond.type)
    return [by_type[t] for t in order]


def get_condition(conditions: Iterable[dict] | None, type_: str) -> dict | None:
    for cond in conditions or []:
        if cond.get("type") == type_:
            return cond
    return None
