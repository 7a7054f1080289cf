"""Scaling fixes for kopf 1.45, applied before kopf.run (docs/performance.md, "Restart").

1. The start's wake-ups (below).
2. Bodies without `metadata.managedFields`: kopf keeps every listed object's raw body, its `Body` views and
   its `Patch` alive until all kinds are indexed (the peak of a restart), and each event's body until its
   worker is done. managedFields (server-side apply's field ownership: several KiB per object once a client
   and the operator's status patches each own fields) is read by neither kopf nor the operator, so every
   raw event's object is stripped of it as it leaves kopf's watch stream, before anything holds it. kopf
   patches with merge patches on named fields, never with a whole body, so nothing is written back without it.
3. A listed object waits for the indexes without its views: kopf's processing makes an object's Body, Patch
   and three loggers, indexes the object and then waits, holding them, until every kind is indexed; at a
   start every listed object waits so. Here each one is indexed first with views that end with that call,
   waits holding only its raw event, and goes through kopf's processing (which indexes it again: the index
   functions are cheap and idempotent) once the wait is over. Measured at 5,500 objects, three restarts
   each: peak RSS 284.6/284.1/283.4 MiB without, 271.2/274.5/272.5 MiB with (-4 %); at 22,000 objects
   884.0 -> 826.3 MiB (-6.5 %, one restart each).
4. Taps: an index the operator keeps itself (reconcile/informer.py, RbdImages) is fed from kopf's own watch
   stream of its kind: every raw event as it leaves the stream (managedFields already dropped), the start of
   every listing and its end (kopf's LISTED bookmark). One stream, no second list or watch of the kind. Only
   for cluster-wide streams: a namespaced stream of a tapped kind is refused loudly and the index never
   becomes complete (its readers wait: fail closed).
5. A quiet first listing (`quiet_first_listing`, RbdImages): in the process's first listing of such a kind, an
   object kopf would do nothing for is not handed to kopf at all (its taps still get it). kopf would make it a
   worker, a per-object memory that lives as long as the object, a Body, a Patch and three loggers, only to
   find no cause. "Nothing to do" is kopf's own decision computed the way kopf computes it: not being
   deleted, the finalizer present, no handler's progress record, and the stored diffbase *equal* to the
   essence built from the body (kopf's diffbase and progress storages, its extra fields) -- i.e. a NOOP or a
   RESUME without handlers, after which kopf writes nothing. Only while every handler of the kind is an
   unfiltered create/update/delete handler with a finalizer-requiring delete (then a NOOP is the same for
   every object), and the kind has no index, event, daemon or timer handler; otherwise every object goes to
   kopf (logged once). Only in the first listing (no kopf worker exists for a listed object yet), and an
   object handed to kopf once in it (a listing cut short and repeated) is handed again.

The start's wake-ups, in detail:

While kopf lists the objects at a start, it adds a toggle per listed object to `operator_indexed` (a
ToggleSet: "every kind and object indexed") and every object's worker, once it has indexed its object, drops
its toggle and then waits on the set's asyncio.Condition until the set is on. `make_toggle` and
`drop_toggle` call `notify_all()` on every call, so each of N objects wakes every worker waiting so far:
O(N^2) wake-ups, each re-taking the condition's lock. Measured: every image re-verified 28.6 s after a
restart at 2,000 RbdImages, 580.6 s at 10,000. The waiters' predicate is the set's overall state
(`is_on() == wanted`), so notifying only when that state changes wakes them exactly when they can
proceed; a toggle's own state change notifies by itself, as before.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Callable, Protocol

from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import watching
from kopf._cogs.structs import bodies
from kopf._core.actions import loggers
from kopf._core.engines import indexing
from kopf._core.intents import causes, registries
from kopf._core.reactor import processing


async def _make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> Any:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: Any, toggle: Any) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != before:
            self._condition.notify_all()


def strip_managed_fields(raw_event: Any) -> Any:
    """The raw watch event with its object's metadata.managedFields dropped (in place); anything else as is."""
    obj = raw_event.get("object") if isinstance(raw_event, dict) else None
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return raw_event


def _projected(infinite_watch: Any) -> Any:
    async def infinite_watch_without_managed_fields(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for raw_event in infinite_watch(*args, **kwargs):
            yield strip_managed_fields(raw_event)
    infinite_watch_without_managed_fields.__wrapped__ = infinite_watch  # type: ignore[attr-defined]
    return infinite_watch_without_managed_fields


class Sink(Protocol):
    """What a tap feeds (reconcile/informer.Informed and its owners)."""

    def listing_started(self) -> None: ...

    def apply(self, event_type: str | None, raw: Any) -> None: ...

    def listing_ended(self) -> None: ...


_TAPS: dict[tuple[str, str], list[Sink]] = {}
log = logging.getLogger(__name__)


def tap(group: str, plural: str, sink: Sink) -> None:
    """Feed `sink` from kopf's watch stream of group/plural (registered before kopf starts watching; installs
    the tap into kopf if it is not yet). Raises RuntimeError if kopf changed so that it no longer fits: the
    sink would never be fed, and its readers would wait forever."""
    if not _apply_taps():
        raise RuntimeError("kopf's watching.continuous_watch is not what kopf_fixes taps: cannot keep "
                           f"the index of {plural}.{group}")
    sinks = _TAPS.setdefault((group, plural), [])
    if sink not in sinks:
        sinks.append(sink)


class Quiet:
    """The quiet first listing of one kind (5. above): armed at each start with kopf's settings and registry."""

    def __init__(self) -> None:
        self.settings: Any = None
        self.registry: Any = None
        self.done = True  # unarmed: nothing skipped
        self.passed: set[str] = set()  # uids handed to kopf during the first listing
        self.skipped = self.listed = 0
        self._views: dict[Any, tuple[tuple[str, ...], Any]] = {}  # resource -> what `idle` reads of the registry

    def arm(self, settings: Any, registry: Any) -> None:
        self.settings, self.registry, self.done = settings, registry, False
        self.passed = set()
        self.skipped = self.listed = 0
        self._views = {}

    def _view(self, resource: Any) -> tuple[tuple[str, ...], Any]:
        """The kind's changing-handler ids and kopf's extra essence fields: the same for every object of a
        listing (looked up once per start, not per listed object)."""
        view = self._views.get(resource)
        if view is None:
            registry = self.registry
            ids = tuple(handler.id for handler in registry._changing.get_resource_handlers(resource=resource))
            extra = registry._watching.get_extra_fields(resource=resource) \
                | registry._changing.get_extra_fields(resource=resource) \
                | registry._spawning.get_extra_fields(resource=resource)
            view = self._views[resource] = (ids, extra)
        return view

    def unfit(self, resource: Any) -> str | None:
        """Why kopf's handlers of `resource` could act on an object without a cause (None: they cannot)."""
        registry = self.registry
        for name in ("_indexing", "_watching", "_spawning", "_webhooks"):
            sub = getattr(registry, name, None)
            if sub is None or sub.has_handlers(resource=resource):
                return f"{name.strip('_')} handlers"
        if getattr(self.settings.persistence, "finalizer", None) is None:
            return "no finalizer"
        handlers = registry._changing.get_resource_handlers(resource=resource)
        deletes = 0
        for handler in handlers:
            if handler.reason not in (causes.Reason.CREATE, causes.Reason.UPDATE, causes.Reason.DELETE):
                return f"handler {handler.id} for {handler.reason}"
            if any(getattr(handler, f) is not None for f in ("labels", "annotations", "when", "field", "value",
                                                               "old", "new")):
                return f"handler {handler.id} has filters"
            deletes += handler.reason == causes.Reason.DELETE and bool(handler.requires_finalizer)
        return None if deletes else "no delete handler requiring the finalizer"

    def idle(self, resource: Any, raw: dict) -> bool:
        """Whether kopf would do nothing at all for this listed object (any doubt: False, kopf decides)."""
        try:
            meta = raw.get("metadata")
            persistence = self.settings.persistence
            finalizers = meta.get("finalizers") if isinstance(meta, dict) else None
            if not isinstance(meta, dict) or meta.get("deletionTimestamp") is not None \
                    or not isinstance(finalizers, list) or persistence.finalizer not in finalizers:
                return False
            body = bodies.Body(raw)
            progress = persistence.progress_storage
            ids, extra = self._view(resource)
            if any(progress.fetch(key=handler_id, body=body) is not None for handler_id in ids):
                return False
            old = persistence.diffbase_storage.fetch(body=body)
            if old is None:
                return False
            new = persistence.diffbase_storage.build(body=body, extra_fields=extra)
            return bool(progress.clear(essence=old) == progress.clear(essence=new))
        except Exception:  # noqa: BLE001 - a body this cannot judge goes to kopf, which reports what is wrong
            return False


_QUIET: dict[tuple[str, str], Quiet] = {}


def quiet_first_listing(group: str, plural: str) -> None:
    """Hand kopf only the objects of group/plural with something to do in the first listing of each start
    (5. above; `arm_quiet` at the start). Raises RuntimeError if kopf changed so that it no longer fits."""
    if not _apply_taps():
        raise RuntimeError("kopf's watching.continuous_watch is not what kopf_fixes taps: cannot quiet the "
                           f"listing of {plural}.{group}")
    _QUIET.setdefault((group, plural), Quiet())


def arm_quiet(settings: Any) -> None:
    """At each start (a startup handler): the next listing of each quiet kind is its first."""
    for quiet in _QUIET.values():
        quiet.arm(settings, registries.get_default_registry())


def _quieted(quiet: Quiet | None, resource: Any, namespace: Any) -> Quiet | None:
    if quiet is None or quiet.done or namespace is not None:
        return None
    why = quiet.unfit(resource)
    if why is not None:
        log.warning("every listed %s goes to kopf (%s: kopf could act without a cause)", resource, why)
        quiet.done = True
        return None
    return quiet


def _tapped(continuous_watch: Any) -> Any:
    async def continuous_watch_tapped(*, resource: Any, namespace: Any, **kwargs: Any) -> AsyncIterator[Any]:
        key = (getattr(resource, "group", None), getattr(resource, "plural", None))
        sinks = _TAPS.get(key)  # type: ignore[arg-type]
        if sinks and namespace is not None:
            log.error("%s is watched in namespace %s, not cluster-wide: its index is never complete", resource,
                      namespace)
            sinks = []
        quiet = _quieted(_QUIET.get(key), resource, namespace)  # type: ignore[arg-type]
        for sink in sinks or ():
            sink.listing_started()
        async for event in continuous_watch(resource=resource, namespace=namespace, **kwargs):
            handed = True  # to kopf
            if event is watching.Bookmark.LISTED:
                for sink in sinks or ():
                    sink.listing_ended()
                if quiet is not None:
                    log.info("first listing of %s: %d of %d objects had nothing for kopf to do (not handed to "
                             "it)", resource, quiet.skipped, quiet.listed)
                    quiet.done, quiet.passed, quiet = True, set(), None
            elif isinstance(event, dict) and event.get("type") in (None, "ADDED", "MODIFIED", "DELETED") \
                    and isinstance(event.get("object"), dict):
                if sinks or quiet is not None:
                    strip_managed_fields(event)
                for sink in sinks or ():
                    sink.apply(event["type"], event["object"])
                if quiet is not None and event["type"] is None:
                    handed = _hand_to_kopf(quiet, resource, event["object"])
            if handed:
                yield event
    continuous_watch_tapped.__wrapped__ = continuous_watch  # type: ignore[attr-defined]
    return continuous_watch_tapped


def _hand_to_kopf(quiet: Quiet, resource: Any, raw: dict) -> bool:
    """Whether a listed object goes to kopf in a quiet first listing; once handed, always handed."""
    quiet.listed += 1
    meta = raw.get("metadata")
    uid = meta.get("uid") if isinstance(meta, dict) else None
    if isinstance(uid, str) and uid not in quiet.passed and quiet.idle(resource, raw):
        quiet.skipped += 1
        return False
    if isinstance(uid, str):
        quiet.passed.add(uid)
    return True


def _wrap(module: Any, name: str, wrapper: Callable[[Any], Any]) -> bool:
    """Replace kopf's `module.name` with `wrapper(it)` once (a function already wrapped is left as it is);
    False if it is not kopf's own function any more (kopf changed: the fix no longer fits, nothing replaced)."""
    current = getattr(module, name, None)
    if current is not None and hasattr(current, "__wrapped__"):
        return True
    if current is None or getattr(current, "__module__", "") != module.__name__:
        return False
    setattr(module, name, wrapper(current))
    return True


def _apply_taps() -> bool:
    return _wrap(watching, "continuous_watch", _tapped)


async def _index_only(*, indexers: Any, registry: Any, settings: Any, memories: Any, memobase: Any,
                      resource: Any, raw_event: Any) -> None:
    """Index one listed object as kopf's processing does first, with views that end with this call."""
    raw_body = raw_event["object"]
    memory = await memories.recall(raw_body, noticed_by_listing=raw_event["type"] is None, memobase=memobase)
    body = bodies.Body(raw_body)
    await indexing.index_resource(registry=registry, indexers=indexers, settings=settings, resource=resource,
                                  raw_event=raw_event, body=body, memo=memory.memo,
                                  memory=memory.indexing_memory,
                                  logger=loggers.TerseObjectLogger(body=body, settings=settings))


def _light(process: Any) -> Any:
    async def process_resource_event(*, indexers: Any, registry: Any, settings: Any, memories: Any, memobase: Any,
                                     resource: Any, raw_event: Any, resource_indexed: Any = None,
                                     operator_indexed: Any = None, **kwargs: Any) -> Any:
        if operator_indexed is not None and not operator_indexed.is_on():
            try:
                await _index_only(indexers=indexers, registry=registry, settings=settings, memories=memories,
                                  memobase=memobase, resource=resource, raw_event=raw_event)
            except Exception:  # noqa: BLE001 - kopf's own path (below, toggles as they came) indexes, waits, reports
                pass
            else:
                if resource_indexed is not None:
                    await operator_indexed.drop_toggle(resource_indexed)
                await operator_indexed.wait_for(True)
                resource_indexed = operator_indexed = None  # indexed and waited: kopf's processing indexes again
        return await process(indexers=indexers, registry=registry, settings=settings, memories=memories,
                             memobase=memobase, resource=resource, raw_event=raw_event,
                             resource_indexed=resource_indexed, operator_indexed=operator_indexed, **kwargs)
    process_resource_event.__wrapped__ = process  # type: ignore[attr-defined]
    return process_resource_event


def _apply_light_wait() -> bool:
    return _wrap(processing, "process_resource_event", _light)


def apply() -> bool:
    """All fixes (again: nothing more); False if kopf changed so that one of them no longer fits (that one is
    then not applied)."""
    toggles = _apply_toggles()
    light = _apply_light_wait()
    taps = _apply_taps()
    return _apply_projection() and toggles and light and taps


def _apply_projection() -> bool:
    return _wrap(watching, "infinite_watch", _projected)


def _apply_toggles() -> bool:
    """Replace ToggleSet.drop_toggle where it is kopf's own notify-always version; False if kopf changed."""
    toggle_set = aiotoggles.ToggleSet
    current = getattr(toggle_set, "drop_toggle", None)
    if current is _drop_toggle:
        return True
    if current is None or getattr(current, "__module__", "") != aiotoggles.__name__ \
            or not hasattr(toggle_set(all), "_condition"):
        return False
    toggle_set.drop_toggle = _drop_toggle
    toggle_set.make_toggle = _make_toggle
    return True
