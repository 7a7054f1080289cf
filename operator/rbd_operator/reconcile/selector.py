"""Kubernetes label selectors (matchLabels + matchExpressions) over plain label maps."""

from __future__ import annotations

from typing import Any, Mapping


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """An empty or missing selector selects nothing (storages opt hosts in explicitly)."""
    if not selector or not (selector.get("matchLabels") or selector.get("matchExpressions")):
        return False
    return _match(selector, labels or {})


def matches_namespaces(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """Kubernetes semantics: a missing or empty selector selects every namespace."""
    return not selector or _match(selector, labels or {})


def _match(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
