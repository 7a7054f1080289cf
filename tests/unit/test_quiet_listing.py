"""kopf_fixes 5, the quiet first listing of RbdImages: which listed images kopf is not handed (it would do nothing
for them) and which it still gets; hostile bodies go to kopf; only the first listing of a start is quiet; any
handler that could act without a cause (a resume handler, a filter) makes every image go to kopf."""
from __future__ import annotations

import asyncio
import copy

import kopf
import pytest
from kopf._cogs.clients import watching
from kopf._cogs.structs import bodies, references
from kopf._core.intents import registries

from rbd_operator import GROUP, VERSION, kopf_fixes
from rbd_operator.handlers import image  # noqa: F401 - registers the RbdImage handlers in kopf's default registry
from rbd_operator.handlers.settings import persistence

IMAGES = references.Resource(group=GROUP, version=VERSION, plural="rbdimages", kind="RbdImage",
                             namespaced=True)
FINALIZER = f"{GROUP}/finalizer"


def _merge(into: dict, patch: dict) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    persistence(settings)
    return settings


def handled(uid: str = "u1", **spec: object) -> dict:
    """An RbdImage as kopf leaves it once handled: finalizer, diffbase of its spec."""
    raw = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdImage",
           "metadata": {"name": f"img-{uid}", "namespace": "vms", "uid": uid, "finalizers": [FINALIZER]},
           "spec": {"storage": "s1", "size": "1Gi", **spec},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    settings = _settings()
    essence = settings.persistence.diffbase_storage.build(body=bodies.Body(raw), extra_fields=set())
    patch = kopf.Patch()
    settings.persistence.diffbase_storage.store(body=bodies.Body(raw), patch=patch, essence=essence)
    _merge(raw, dict(patch))
    return raw


@pytest.fixture
def quiet() -> kopf_fixes.Quiet:
    q = kopf_fixes.Quiet()
    q.arm(_settings(), registries.get_default_registry())
    return q


def test_the_operators_image_handlers_let_kopf_skip_idle_images(quiet):
    assert quiet.unfit(IMAGES) is None


def test_a_handled_unchanged_image_is_idle_and_every_other_is_not(quiet):
    assert quiet.idle(IMAGES, handled())
    edited = handled()
    edited["spec"]["size"] = "2Gi"
    assert not quiet.idle(IMAGES, edited), "changed since it was handled: an update"
    fresh = handled()
    del fresh["status"]["kopf"]
    assert not quiet.idle(IMAGES, fresh), "never handled: a creation"
    deleting = handled()
    deleting["metadata"]["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    assert not quiet.idle(IMAGES, deleting), "being deleted"
    unfinalized = handled()
    unfinalized["metadata"]["finalizers"] = ["someone.else/finalizer"]
    assert not quiet.idle(IMAGES, unfinalized), "kopf must add its finalizer"
    retrying = handled()
    retrying["status"]["kopf"]["progress"] = {"reconcile": {"retries": 1, "delayed": "2026-12-07T00:00:00Z"}}
    assert not quiet.idle(IMAGES, retrying), "a handler is still in progress"
    status_only = handled()
    status_only["status"]["usedBytes"] = 12345
    status_only["metadata"]["resourceVersion"] = "999"
    assert quiet.idle(IMAGES, status_only), "status and the resourceVersion are not in kopf's essence"
    labelled = handled()
    labelled["metadata"]["labels"] = {"anything": "else"}
    assert not quiet.idle(IMAGES, labelled), "labels are in kopf's essence"


@pytest.mark.parametrize("hostile", [
    {"metadata": ["not", "a", "dict"]},
    {"metadata": {"finalizers": FINALIZER}},  # a string, not a list: "in" would find a substring
    {"status": {"kopf": {"diffbase": "{not json"}}},
    {"status": {"kopf": "a string"}},
    {"status": ["x"]},
    {"spec": "a string"},
    {"metadata": {"uid": "u1", "finalizers": [FINALIZER], "deletionTimestamp": ""}},
])
def test_hostile_bodies_go_to_kopf(quiet, hostile):
    raw = handled()
    for key, value in hostile.items():
        raw[key] = value
    assert not quiet.idle(IMAGES, raw)


def test_a_resume_handler_or_a_filter_makes_every_image_go_to_kopf():
    registry = kopf.OperatorRegistry()
    q = kopf_fixes.Quiet()
    q.arm(_settings(), registry)

    @kopf.on.create(GROUP, VERSION, "rbdimages", registry=registry)
    @kopf.on.update(GROUP, VERSION, "rbdimages", registry=registry)
    def reconcile(**_: object) -> None: ...

    assert q.unfit(IMAGES) == "no delete handler requiring the finalizer"

    @kopf.on.delete(GROUP, VERSION, "rbdimages", registry=registry)
    def delete(**_: object) -> None: ...

    assert q.unfit(IMAGES) is None

    @kopf.on.resume(GROUP, VERSION, "rbdimages", registry=registry)
    def resume(**_: object) -> None: ...

    assert "handler" in q.unfit(IMAGES)
    registry2 = kopf.OperatorRegistry()
    kopf.on.delete(GROUP, VERSION, "rbdimages", registry=registry2, labels={"a": "b"})(delete)
    q.arm(_settings(), registry2)
    assert "filters" in q.unfit(IMAGES)
    registry3 = kopf.OperatorRegistry()
    kopf.on.delete(GROUP, VERSION, "rbdimages", registry=registry3)(delete)
    kopf.timer(GROUP, VERSION, "rbdimages", registry=registry3, interval=60)(delete)
    q.arm(_settings(), registry3)
    assert q.unfit(IMAGES) == "spawning handlers"


class _Sink:
    def __init__(self) -> None:
        self.seen: list[tuple[str | None, str]] = []

    def listing_started(self) -> None: ...

    def listing_ended(self) -> None: ...

    def apply(self, event_type: str | None, raw: dict) -> None:
        self.seen.append((event_type, raw["metadata"]["uid"]))


def _run(quiet: kopf_fixes.Quiet, *listings: list) -> list[list]:
    """What kopf gets of each call of continuous_watch (one per listing: a start, a relisting)."""
    key = (GROUP, "rbdimages")
    saved = kopf_fixes._QUIET.get(key)
    kopf_fixes._QUIET[key] = quiet
    try:
        out = []
        for events in listings:
            async def source(**_: object):
                for event in events:
                    if isinstance(event, Exception):
                        raise event
                    yield event

            async def collect() -> list:
                got = []
                try:
                    async for event in kopf_fixes._tapped(source)(resource=IMAGES, namespace=None):
                        got.append(event if event is watching.Bookmark.LISTED else
                                   (event["type"], event["object"]["metadata"]["uid"]))
                except ConnectionError:
                    got.append("cut")
                return got
            out.append(asyncio.run(collect()))
        return out
    finally:
        if saved is None:
            del kopf_fixes._QUIET[key]
        else:
            kopf_fixes._QUIET[key] = saved


def test_only_the_first_listing_is_quiet_and_watch_events_always_reach_kopf(quiet):
    listed = lambda raw: {"type": None, "object": raw}  # noqa: E731 - kopf's listing events have no type
    edited = handled("u2")
    edited["spec"]["size"] = "2Gi"
    first, relisting = _run(
        quiet,
        [listed(handled("u1")), listed(edited), listed(handled("u3")), watching.Bookmark.LISTED,
         {"type": "MODIFIED", "object": handled("u1")}],
        [listed(handled("u1")), watching.Bookmark.LISTED])
    assert first == [(None, "u2"), watching.Bookmark.LISTED, ("MODIFIED", "u1")]
    assert relisting == [(None, "u1"), watching.Bookmark.LISTED], "a later listing is kopf's as it always was"
    assert (quiet.skipped, quiet.listed, quiet.done, quiet.passed) == (2, 3, True, set())


def test_an_image_handed_to_kopf_in_a_listing_cut_short_is_handed_again(quiet):
    listed = lambda raw: {"type": None, "object": raw}  # noqa: E731
    fresh = handled("u1")
    del fresh["status"]["kopf"]
    cut, repeated = _run(quiet, [listed(fresh), ConnectionError("cut")],
                         [listed(handled("u1")), listed(handled("u2")), watching.Bookmark.LISTED])
    assert cut == [(None, "u1"), "cut"]
    # u1 is handled by now (its worker may still wait for its own patch): kopf gets it again; u2 is idle
    assert repeated == [(None, "u1"), watching.Bookmark.LISTED]


def test_the_index_gets_every_listed_image_quiet_or_not(quiet):
    sink = _Sink()
    key = (GROUP, "rbdimages")
    kopf_fixes._TAPS.setdefault(key, []).append(sink)
    try:
        _run(quiet, [{"type": None, "object": handled("u1")}, {"type": None, "object": handled("u2")},
                     watching.Bookmark.LISTED])
    finally:
        kopf_fixes._TAPS[key].remove(sink)
    assert sink.seen == [(None, "u1"), (None, "u2")]
    assert quiet.skipped == 2


def test_unarmed_or_namespaced_nothing_is_skipped():
    unarmed = kopf_fixes.Quiet()
    assert _run(unarmed, [{"type": None, "object": handled("u1")}]) == [[(None, "u1")]]
