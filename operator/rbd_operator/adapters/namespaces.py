"""Namespaces as the operator needs them: their uids (owner records in Ceph name the namespace by uid
too, so a namespace deleted and made again is not mistaken for the old one) and labels (a storage's
spec.imageNamespaces and spec.adoption select namespaces by label), and this cluster's identity: the
uid of its kube-system namespace, written into every owner record (a second Kubernetes cluster pointing
at the same Ceph never takes another cluster's records for gone objects of its own).

The handlers keep a kopf index over namespaces (list/watch; handlers/indexes.py): no API request per
reconcile. A namespace the index has not seen yet is read once from the API; a namespace that cannot
be read fails closed (ApiError).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kubernetes.client.rest import ApiException

from . import kube
from .blocking import Pool, run_blocking
from ..api.errors import OperatorError
from ..api.reasons import Reason

IDENTITY_NAMESPACE = "kube-system"


@dataclass(frozen=True)
class NamespaceInfo:
    uid: str
    labels: Mapping[str, str]


async def namespace_info(index: Mapping[str, Any], name: str) -> NamespaceInfo | None:
    """The namespace's uid and labels (None: it does not exist)."""
    for entry in list(index.get(name, [])):
        return entry
    try:
        found = await run_blocking(kube.read_namespace, name, timeout=30, pool=Pool.KUBE)
    except ApiException as exc:  # fail closed: without it, no decision
        raise OperatorError(Reason.API_ERROR, f"cannot read namespace {name!r}: HTTP {exc.status}") from None
    return NamespaceInfo(found[0], found[1]) if found else None


async def cluster_identity(index: Mapping[str, Any]) -> str:
    """This Kubernetes cluster's identity: the uid of its kube-system namespace."""
    info = await namespace_info(index, IDENTITY_NAMESPACE)
    if info is None:
        raise OperatorError(Reason.API_ERROR, f"cannot tell which Kubernetes cluster this is: namespace "
                            f"{IDENTITY_NAMESPACE} does not exist (its uid is the cluster's identity in Ceph's "
                            "owner records); nothing was done")
    return info.uid
