"""RbdSnapshotSchedule: RbdSnapshots of the selected RbdImages of its namespace, every spec.interval, the
newest spec.keep of each image kept (contract in crds/rbdsnapshotschedules.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from .enums import DeletionPolicy
from .errors import SpecError
from .image import parse_duration
from .names import is_k8s_label

DELETION_POLICIES = tuple(DeletionPolicy)
MIN_INTERVAL_ENV = "RBD_OPERATOR_MIN_SCHEDULE_INTERVAL"
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def min_interval() -> int:
    """The shortest spec.interval accepted: 60 s. The environment variable lowers it for tests only."""
    try:
        return max(1, int(os.environ.get(MIN_INTERVAL_ENV, "60")))
    except ValueError:
        return 60


@dataclass(frozen=True)
class ScheduleSpec:
    selector: dict                 # a label selector over the RbdImages of the namespace
    interval: int                  # seconds
    keep: int                      # snapshots kept per image (older ones deleted unless they have clones)
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN  # the schedule's snapshots when it is deleted


def _selector(raw: Any) -> dict:
    if not isinstance(raw, Mapping) or not (raw.get("matchLabels") or raw.get("matchExpressions")):
        raise SpecError("spec.selector", "must have matchLabels or matchExpressions (an empty selector would "
                        "select every image)")
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in labels.items()):
        raise SpecError("spec.selector.matchLabels", "must map label keys to string values")
    exprs = raw.get("matchExpressions") or []
    if not isinstance(exprs, list) or not all(isinstance(e, Mapping) and isinstance(e.get("key"), str)
                                              and e.get("operator") in SELECTOR_OPERATORS for e in exprs):
        raise SpecError("spec.selector.matchExpressions",
                        f"each needs a key and an operator ({', '.join(SELECTOR_OPERATORS)})")
    return {"matchLabels": dict(labels), "matchExpressions": [dict(e) for e in exprs]}


def parse_schedule(name: str, spec: Mapping[str, Any]) -> ScheduleSpec:
    if not is_k8s_label(name):
        raise SpecError("metadata.name", f"{name!r} must be a DNS label of at most 63 characters (it is the "
                        "value of the label rbd-operator.io/schedule on the snapshots)")
    selector = _selector(spec.get("selector"))
    interval = spec.get("interval")
    seconds = parse_duration(interval if isinstance(interval, str) else "", "spec.interval")
    if seconds < min_interval():
        raise SpecError("spec.interval", f"{interval!r} is shorter than the minimum of {min_interval()} s")
    keep = spec.get("keep")
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise SpecError("spec.keep", f"{keep!r} is not a whole number of at least 1")
    policy = spec.get("deletionPolicy") or DeletionPolicy.RETAIN
    if policy not in DELETION_POLICIES:
        raise SpecError("spec.deletionPolicy", f"{policy!r} is not one of {', '.join(DELETION_POLICIES)}")
    return ScheduleSpec(selector, seconds, keep, DeletionPolicy(policy))
