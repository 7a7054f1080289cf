"""status.usedBytes: which images the drift sweep measures, and what a measurement says (pure).

An image is measured only with a valid fast-diff object map (librbd's diff_iterate with whole_object then
reads the object map, one object, instead of listing every data object of the image). Whole-object
granularity: an image's used bytes change only when an object comes into existence or goes away, and
librbd writes the object map (rbd_object_map.<id>) exactly then; its mtime (one stat per image, in
parallel) tells the sweep which images to measure again. A stamp so recent that a later write in the same
second (or a writer's skewed clock) could hide behind it keeps the image due until it is older.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable, Sequence

from .actions import ClaimImage, CloneImage, CreateImage, ImportImage, Resize, Step

FEATURE_OBJECT_MAP = 1 << 3
FEATURE_FAST_DIFF = 1 << 4
FLAG_OBJECT_MAP_INVALID = 1 << 0
FLAG_FAST_DIFF_INVALID = 1 << 1
RECENT_SECONDS = 120.0
IDLE_SECONDS = 300.0  # between two looks at an idle storage's object maps (UsedCache.look_due)


def measurable(features: int, flags: int | None) -> bool:
    """fast-diff on, and neither the object map nor fast-diff flagged invalid (flags unknown: not measured)."""
    wanted = FEATURE_OBJECT_MAP | FEATURE_FAST_DIFF
    invalid = FLAG_OBJECT_MAP_INVALID | FLAG_FAST_DIFF_INVALID
    return flags is not None and features & wanted == wanted and not flags & invalid


def after_steps(steps: Sequence[Step], features: int) -> str:
    """What a pass that took these steps knows of the image's used bytes: "zero" (just made empty: a new image,
    or a clone, whose parent's data is not its own), "measure" (imported, resized, adopted: diff_iterate once),
    "" (nothing changed, or no fast-diff: the sweep's business)."""
    if not steps or not measurable(features, 0):
        return ""
    if any(isinstance(s, (ImportImage, Resize, ClaimImage)) for s in steps):
        return "measure"
    return "zero" if any(isinstance(s, (CreateImage, CloneImage)) for s in steps) else ""


def whole_object_used(extents: Iterable[tuple[int, int, bool]]) -> int:
    """The sum of the extents diff_iterate reports as existing (offset, length, exists)."""
    return sum(length for _, length, exists in extents if exists)


@dataclass(frozen=True)
class Seen:
    stamp: float  # the object map's mtime when measured
    used: int


class UsedCache:
    """What the sweep measured, by (storage, image id): process memory (after a restart everything is due
    once, at the sweep's bounded rate); and per storage when it last looked at the object maps."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], Seen] = {}
        self._looked: dict[str, tuple[float, bool]] = {}  # storage -> (when, whether anything was measured)
        self._lock = threading.Lock()

    def look_due(self, storage: str, now: float, idle_seconds: float) -> bool:
        """Whether this sweep stats the storage's object maps: always while it is catching up (the last look
        measured something), at a start, and otherwise once per `idle_seconds` (a stat per image and sweep was
        the largest per-image cost of an idle sweep; a write shows in usedBytes at most that much later)."""
        with self._lock:
            last = self._looked.get(storage)
        return last is None or last[1] or now - last[0] >= idle_seconds

    def looked(self, storage: str, now: float, measured: bool) -> None:
        with self._lock:
            self._looked[storage] = (now, measured)

    def due(self, key: tuple[str, str], stamp: float, now: float) -> int:
        """0: not due; 1: changed since measured (first); 2: never measured (after the changed ones)."""
        with self._lock:
            seen = self._seen.get(key)
        if seen is None:
            return 2
        return 1 if seen.stamp != stamp or stamp > now - RECENT_SECONDS else 0

    def known(self, key: tuple[str, str], stamp: float) -> int | None:
        """The used bytes measured at this very stamp (None: not measured, or measured at another one)."""
        with self._lock:
            seen = self._seen.get(key)
        return seen.used if seen is not None and seen.stamp == stamp else None

    def record(self, key: tuple[str, str], stamp: float, used: int) -> None:
        with self._lock:
            self._seen[key] = Seen(stamp, used)

    def keep_only(self, storage: str, ids: Iterable[str]) -> None:
        """Forget the storage's images that are gone (the cache stays as large as the storage)."""
        live = set(ids)
        with self._lock:
            for key in [k for k in self._seen if k[0] == storage and k[1] not in live]:
                del self._seen[key]


def pick(cache: UsedCache, storage: str, stamps: dict[str, float], now: float, budget: int) -> list[str]:
    """The image ids to measure in this sweep, at most `budget`: changed ones first, then never measured
    ones (oldest stamp first, so that a restarted operator catches up in a stable order)."""
    ranked = []
    for image_id, stamp in stamps.items():
        rank = cache.due((storage, image_id), stamp, now)
        if rank:
            ranked.append((rank, stamp, image_id))
    ranked.sort()
    return [image_id for _, _, image_id in ranked[:max(budget, 0)]]
