"""RbdSnapshotSchedule, pure: which tick is due, the snapshot each selected image gets for it (a name
derived from the tick alone, so restarts and replicas agree), and which snapshots go beyond spec.keep.

Ticks are the multiples of the interval since the Unix epoch. A pass takes the latest tick at or before
now: after downtime only the latest missed one is taken. Exactly one snapshot per image and tick comes
from the name: creating it again is AlreadyExists.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from typing import Iterable

MAX_NAME = 63
SCHEDULE_LABEL = "rbd-operator.io/schedule"
TICK_LABEL = "rbd-operator.io/schedule-tick"


def latest_tick(now: float, interval: int) -> int:
    """The last tick at or before `now` (Unix seconds)."""
    return int(now // interval) * interval


def rfc3339(tick: int) -> str:
    return datetime.datetime.fromtimestamp(tick, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot_name(schedule: str, image: str, tick: int) -> str:
    """`<schedule>-<image>-<tick>`, or when longer than 63 characters a shortened prefix, a hash of the
    full name and the tick (still a DNS label, still one name per schedule, image and tick)."""
    full = f"{schedule}-{image}-{tick}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:10]
    tail = f"-{digest}-{tick}"
    head = full[:MAX_NAME - len(tail)].rstrip("-.")
    return f"{head}{tail}"


@dataclass(frozen=True)
class Scheduled:
    """An RbdSnapshot a schedule made (from the index)."""
    name: str
    image: str
    tick: int
    deleting: bool = False
    has_clones: bool = False   # an RbdImage clones from it, or its deletion waits for clones (HasClones)


@dataclass
class Plan:
    tick: int
    next_tick: int
    create: list[tuple[str, str]] = field(default_factory=list)   # (snapshot name, image)
    delete: list[str] = field(default_factory=list)
    kept_with_clones: list[str] = field(default_factory=list)     # beyond keep, kept for their clones
    count: int = 0                                                # snapshots of the schedule after the pass

    @property
    def status(self) -> dict:
        return {"lastTick": rfc3339(self.tick), "nextTick": rfc3339(self.next_tick), "snapshots": self.count,
                "keptWithClones": sorted(self.kept_with_clones)}


def plan(schedule: str, interval: int, keep: int, now: float, images: Iterable[str],
         existing: Iterable[Scheduled]) -> Plan:
    """What a pass at `now` does: the due tick's snapshot of each selected image, then the oldest beyond
    `keep` per image deleted (never one with clones; snapshots of images no longer selected are pruned too)."""
    tick = latest_tick(now, interval)
    out = Plan(tick, tick + interval)
    existing = list(existing)
    have = {(s.image, s.tick) for s in existing}
    by_image: dict[str, list[Scheduled]] = {}
    for s in existing:
        by_image.setdefault(s.image, []).append(s)
    for image in sorted(set(images)):
        if (image, tick) not in have:
            name = snapshot_name(schedule, image, tick)
            out.create.append((name, image))
            by_image.setdefault(image, []).append(Scheduled(name, image, tick))
    for image, snaps in sorted(by_image.items()):
        live = sorted((s for s in snaps if not s.deleting), key=lambda s: (s.tick, s.name), reverse=True)
        out.kept_with_clones += [s.name for s in snaps if s.deleting and s.has_clones]
        for s in live[keep:]:
            (out.kept_with_clones if s.has_clones else out.delete).append(s.name)
        out.count += len(live) - len([s for s in live[keep:] if not s.has_clones])
    return out
