"""Plan for an RbdStorage: the pool and the client as Ceph should have them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..api.errors import SpecError
from ..api.storage import StorageSpec
from .actions import Action
from .caps import same_caps

POOL_FLAGS = frozenset({"noscrub", "nodeep-scrub", "nodelete", "nopgchange", "nosizechange"})
TOP_LEVEL_SETTINGS = frozenset({"min_size", "pg_autoscale_mode"})


@dataclass
class ObservedPool:
    """The subset of `ceph osd dump` we converge, for one pool."""
    id: int
    pg_num_target: int
    size: int
    quota_max_bytes: int
    quota_max_objects: int
    applications: tuple[str, ...]
    settings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_osd_dump(cls, pool: Mapping[str, Any]) -> "ObservedPool":
        settings = {k: _norm(v) for k, v in (pool.get("options") or {}).items()}
        for key in TOP_LEVEL_SETTINGS:
            if key in pool:
                settings[key] = _norm(pool[key])
        flags = set((pool.get("flags_names") or "").split(","))
        for flag in POOL_FLAGS:
            settings[flag] = "true" if flag in flags else "false"
        return cls(
            id=int(pool["pool"]),
            pg_num_target=int(pool.get("pg_num_target", pool.get("pg_num", 0))),
            size=int(pool.get("size", 0)),
            quota_max_bytes=int(pool.get("quota_max_bytes", 0)),
            quota_max_objects=int(pool.get("quota_max_objects", 0)),
            applications=tuple(sorted((pool.get("application_metadata") or {}).keys())),
            settings=settings,
        )


def _norm(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _same_setting(want: str, have: str | None) -> bool:
    if have is None:
        return False
    if want.lower() in ("true", "false", "1", "0") and have.lower() in ("true", "false", "1", "0"):
        return (want.lower() in ("true", "1")) == (have.lower() in ("true", "1"))
    try:
        return float(want) == float(have)
    except ValueError:
        return want == have


def desired_settings(spec: StorageSpec) -> dict[str, str]:
    # A pool with an explicit pgNum must not have the autoscaler fight it.
    settings = {"pg_autoscale_mode": "off"}
    settings.update(spec.pool.parameters)
    return settings


def plan_pool(spec: StorageSpec, observed: ObservedPool | None, pools: Mapping[str, ObservedPool]) -> list[Action]:
    """Steps that create or correct the pool. Raises SpecError before any step if the spec can't work."""
    pool = spec.pool
    if spec.client.cache_pool and spec.client.cache_pool not in pools:
        raise SpecError("spec.client.cachePool", f"pool {spec.client.cache_pool!r} does not exist", reason="CachePoolNotFound")
    actions: list[Action] = []
    if observed is None:
        actions.append(Action("create-pool", pool.name, {"pg_num": pool.pg_num}))
        observed = ObservedPool(-1, pool.pg_num, 0, 0, 0, ())
    elif observed.pg_num_target != pool.pg_num:
        actions.append(Action("set-pool", pool.name, {"var": "pg_num", "val": str(pool.pg_num)}))
        actions.append(Action("set-pool", pool.name, {"var": "pgp_num", "val": str(pool.pg_num)}))
    if pool.replicas is not None and observed.size != pool.replicas:
        actions.append(Action("set-pool", pool.name, {"var": "size", "val": str(pool.replicas)}))
    for key, want in desired_settings(spec).items():
        if not _same_setting(want, observed.settings.get(key)):
            actions.append(Action("set-pool", pool.name, {"var": key, "val": want}))
    want_bytes = pool.quota_max_bytes or 0
    if observed.quota_max_bytes != want_bytes:
        actions.append(Action("set-quota", pool.name, {"field": "max_bytes", "val": str(want_bytes)}))
    want_objects = pool.quota_max_objects or 0
    if observed.quota_max_objects != want_objects:
        actions.append(Action("set-quota", pool.name, {"field": "max_objects", "val": str(want_objects)}))
    if pool.application not in observed.applications:
        if pool.application == "rbd":
            actions.append(Action("rbd-pool-init", pool.name))
        else:
            actions.append(Action("enable-application", pool.name, {"app": pool.application}))
    return actions


def plan_client(entity: str, want_caps: Mapping[str, str], have_caps: Mapping[str, str] | None) -> list[Action]:
    """Steps that create the client or correct its caps (`have_caps` None: absent)."""
    if have_caps is None:
        return [Action("create-client", entity, {"caps": dict(want_caps)})]
    if not same_caps(want_caps, have_caps):
        return [Action("set-caps", entity, {"caps": dict(want_caps)})]
    return []
