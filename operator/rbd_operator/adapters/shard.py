"""The process's shard (RBD_OPERATOR_SHARD; reconcile/shard.py decides what it means) and the two reads a
sharded operator makes beyond its own objects: every RbdStorage (owners and sharers of pools and cephx
users may sit in another shard) and objects that carry no shard label (handled by no shard)."""

from __future__ import annotations

import os
from typing import Any

import kubernetes
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..api.errors import OperatorError
from ..api.reasons import Reason
from ..reconcile.shard import UNSHARDED, parse_shard
from . import kube

# Read once, at import: __main__ sets it from --shard before the handlers are imported.
SHARD: str | None = parse_shard(os.environ.get("RBD_OPERATOR_SHARD"))


def _api() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(kube.core().api_client)


def all_storages() -> dict[str, list[dict[str, Any]]]:
    """Every RbdStorage of the cluster, whatever its shard, shaped like the `storages` index (name ->
    [{spec, status, uid, deleting}]): who else owns or shares a pool or cephx user is known across shards, so
    an owner in another shard is never taken for a gone one, nor its caps dropped from a shared client."""
    try:
        listed = _api().list_cluster_custom_object(GROUP, VERSION, "rbdstorages", _request_timeout=30)
    except ApiException as exc:
        raise OperatorError(Reason.API_ERROR, f"listing the RbdStorages of every shard: HTTP {exc.status}") from None
    out: dict[str, list[dict[str, Any]]] = {}
    for item in listed.get("items") or []:
        meta = item.get("metadata") or {}
        out[meta.get("name", "")] = [{"spec": item.get("spec") or {}, "status": item.get("status") or {},
                                      "uid": meta.get("uid"), "deleting": bool(meta.get("deletionTimestamp"))}]
    return out


def unlabelled(plural: str, limit: int = 20) -> tuple[list[str], bool]:
    """Up to `limit` objects of a kind without a shard label ("namespace/name" or "name"), and whether there
    are more."""
    listed = _api().list_cluster_custom_object(GROUP, VERSION, plural, label_selector=UNSHARDED, limit=limit,
                                               _request_timeout=30)
    names = []
    for item in listed.get("items") or []:
        meta = item.get("metadata") or {}
        names.append(f"{meta['namespace']}/{meta.get('name')}" if meta.get("namespace") else str(meta.get("name")))
    return names, bool((listed.get("metadata") or {}).get("continue"))
