"""Manifest builders shared by the integration tests."""

from __future__ import annotations

from typing import Any

from .harness import OPERATOR_NAMESPACE, Platform

API = "rbd-operator.io/v1alpha1"


def storage(platform: Platform, name: str, *, pool: dict | None = None, client: dict | None = None,
            secret: str = "ceph-admin", monitors: list[str] | None = None, **spec: Any) -> dict:
    body: dict[str, Any] = {
        "cluster": {"monitors": monitors or platform.monitors,
                    "adminSecretRef": {"name": secret, "namespace": OPERATOR_NAMESPACE}},
        "pool": {"pgNum": 8} if pool is None else pool,
        "client": {"name": f"c-{name}"} if client is None else client,
    }
    body.update(spec)
    return {"apiVersion": API, "kind": "RbdStorage", "metadata": {"name": name}, "spec": body}


def image(obj_name: str, storage_name: str, /, *, namespace: str = "default", **spec: Any) -> dict:
    return {"apiVersion": API, "kind": "RbdImage", "metadata": {"name": obj_name, "namespace": namespace},
            "spec": {"storage": storage_name, **spec}}
