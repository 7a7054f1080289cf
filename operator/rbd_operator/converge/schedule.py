"""RbdSnapshotSchedule: selected images (index) -> the due tick's RbdSnapshots created, the oldest beyond keep
deleted (reconcile/schedule.py decides) -> status. Deleting a schedule: its snapshots deleted (deletionPolicy
Delete) or released from its ownerReferences (Retain, so Kubernetes' garbage collector leaves them)."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from .. import GROUP, VERSION
from ..adapters import kube
from ..adapters.blocking import Pool, run_blocking
from ..api.enums import DeletionPolicy
from ..api.reasons import ConditionType, EventReason, Reason
from ..api.schedule import ScheduleSpec
from ..reconcile import schedule as plan_
from ..reconcile.selector import matches
from .outcome import Outcome

SNAPSHOTS = "rbdsnapshots"
KIND = "RbdSnapshotSchedule"


def selected(namespace: str, parsed: ScheduleSpec, images: Mapping[Any, Any]) -> tuple[list[str], set[str]]:
    """(the images the selector picks, the snapshot names a clone of the namespace depends on)."""
    chosen, parents = [], set()
    for entry in list(images.get(namespace, []) or []):
        parents.update(entry["parents"])
        if not entry["deleting"] and matches(parsed.selector, entry["labels"]):
            chosen.append(entry["name"])
    return chosen, parents


def existing(namespace: str, name: str, uid: str, scheduled: Mapping[Any, Any],
             parents: set[str]) -> list[plan_.Scheduled]:
    return [plan_.Scheduled(e["name"], str(e["image"]), e["tick"], e["deleting"],
                            e["hasClones"] or e["name"] in parents)
            for e in list(scheduled.get((namespace, name), []) or []) if uid in e["owners"]]


def snapshot_body(namespace: str, schedule: str, uid: str, snap: str, image: str, tick: int) -> dict:
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": schedule, "uid": uid, "controller": True,
             "blockOwnerDeletion": False}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RbdSnapshot",
            "metadata": {"name": snap, "namespace": namespace, "ownerReferences": [owner],
                         "labels": {plan_.SCHEDULE_LABEL: schedule, plan_.TICK_LABEL: str(tick)}},
            "spec": {"image": image, "deletionPolicy": "Delete"}}


async def reconcile(name: str, namespace: str, uid: str, parsed: ScheduleSpec, images: Mapping[Any, Any],
                    scheduled: Mapping[Any, Any], clock: Callable[[], float] = time.time) -> Outcome:
    chosen, parents = selected(namespace, parsed, images)
    todo = plan_.plan(name, parsed.interval, parsed.keep, clock(), chosen,
                      existing(namespace, name, uid, scheduled, parents))
    out = Outcome()
    for snap, image in todo.create:
        body = snapshot_body(namespace, name, uid, snap, image, todo.tick)
        if await run_blocking(kube.create_namespaced, GROUP, VERSION, SNAPSHOTS, namespace, body, timeout=30,
                              pool=Pool.KUBE):
            out.note(EventReason.SCHEDULED_SNAPSHOT_CREATED, f"RbdSnapshot {snap} of RbdImage {image}")
    for snap in todo.delete:
        if await run_blocking(kube.delete_namespaced, GROUP, VERSION, SNAPSHOTS, namespace, snap, timeout=30,
                              pool=Pool.KUBE):
            out.note(EventReason.SCHEDULED_SNAPSHOT_PRUNED, f"RbdSnapshot {snap} (beyond keep: {parsed.keep})")
    out.set(**todo.status)
    if todo.kept_with_clones:
        out.cond(ConditionType.READY, True, Reason.HAS_CLONES,
                 f"{len(chosen)} image(s) selected; kept beyond keep ({parsed.keep}) because clones depend on them: "
                 f"{', '.join(sorted(todo.kept_with_clones))}", event=False)
    else:
        out.cond(ConditionType.READY, True, Reason.CONVERGED,
                 f"{len(chosen)} image(s) selected, {todo.count} snapshot(s)", event=False)
    return out


async def release(name: str, namespace: str, uid: str, policy: DeletionPolicy) -> int:
    """A schedule being deleted: its snapshots deleted (Delete) or left without its ownerReference (Retain).
    Listed from the API server, not the index: one created a moment ago is not missed."""
    done = 0
    found = await run_blocking(kube.list_namespaced, GROUP, VERSION, SNAPSHOTS, namespace,
                               f"{plan_.SCHEDULE_LABEL}={name}", timeout=30, pool=Pool.KUBE)
    for item in found:
        meta = item.get("metadata") or {}
        if not any(r.get("uid") == uid for r in meta.get("ownerReferences") or []):
            continue
        if policy == DeletionPolicy.DELETE:
            done += await run_blocking(kube.delete_namespaced, GROUP, VERSION, SNAPSHOTS, namespace, meta["name"],
                                       timeout=30, pool=Pool.KUBE)
        else:
            done += await run_blocking(kube.drop_owner, GROUP, VERSION, SNAPSHOTS, namespace, meta["name"], uid,
                                       timeout=30, pool=Pool.KUBE)
    return done
