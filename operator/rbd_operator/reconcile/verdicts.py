"""The drift sweep's quiet verdicts, remembered with everything they were made from (pure; the sweep in
converge/image.py).

Every interval the sweep decides, for every image of a storage, whether its status still tells the truth
(image_plan.sweep_verdict: the image's whole plan). At 20,000 images that was ~57 µs per image on this
machine (its spec parsed, ~17 µs; its plan, ~40 µs): ~1.1 s of a core per interval, a fifth of the idle CPU
budget of issue #25, spent re-deriving "nothing to do" from the very inputs of the interval before.

plan_image is pure, so a verdict is reused only when all of its inputs are equal:
- the index entry (reconcile/tracking.Tracked: spec, Ready, acceptedGeneration, WithinLimits, ...; kopf's
  index makes a new one on every event of the object),
- the image's header as read in this very sweep, every field (header_key),
- the namespace's uid and labels and the namespace's usage (perNamespace limits), per image,
- the storage's parsed spec and the cluster identity, per sweep (a change drops the storage's memo).
Only a quiet verdict (no reconcile needed) is kept, and only one made without asking whether another object
is live: the header's owner record is this object's own (check_image_owner decides before any lookup).
Anything else is decided afresh every interval, as before. Entries live for one sweep: the next one keeps
those it looked up again, so the memo is as large as the storages' quiet images (~160 B each, measured
with tracemalloc over 5,000).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .image_plan import ObservedImage
from .tracking import Tracked


def _items(value: Mapping[Any, Any] | None) -> tuple | None:
    return None if value is None else tuple(sorted(value.items()))


def header_key(header: ObservedImage) -> tuple:
    """Every field of the header, comparable with == (tests/unit/test_verdicts.py checks none is left out)."""
    return (header.size, header.features, header.id, _items(header.parent), tuple(header.watchers), header.owner,
            _items(header.qos), header.old_format, header.flags, _items(header.snapshots))


@dataclass(frozen=True, slots=True)
class _Quiet:
    tracked: Tracked
    name: str        # the image's name in Ceph (from its parsed spec)
    header: tuple    # header_key
    context: Any     # the namespace's uid and labels, its usage


class VerdictMemo:
    """Quiet verdicts by storage and RbdImage uid. Used from the event loop only (the sweep's own code, not its
    Ceph calls)."""

    def __init__(self) -> None:
        self._quiet: dict[str, dict[str, _Quiet]] = {}
        self._basis: dict[str, Any] = {}

    def sweep(self, storage: str, basis: Any) -> "SweepVerdicts":
        """One sweep of `storage`; `basis`: what every image's verdict depends on (the storage's parsed spec, the
        cluster identity). A basis unequal to the last sweep's starts from nothing."""
        kept = self._quiet.get(storage, {}) if storage in self._basis and self._basis[storage] == basis else {}
        return SweepVerdicts(self, storage, basis, kept)

    def _done(self, storage: str, basis: Any, quiet: dict[str, _Quiet]) -> None:
        self._quiet[storage], self._basis[storage] = quiet, basis

    def forget(self, storage: str) -> None:
        """The storage has no images (left) to sweep."""
        self._quiet.pop(storage, None)
        self._basis.pop(storage, None)

    def __len__(self) -> int:
        return sum(len(q) for q in self._quiet.values())


class SweepVerdicts:
    """The memo as one sweep sees it: the last sweep's entries to look up, this sweep's to keep (`done`)."""

    def __init__(self, memo: VerdictMemo, storage: str, basis: Any, last: dict[str, _Quiet]) -> None:
        self._memo, self._storage, self._basis, self._last = memo, storage, basis, last
        self._next: dict[str, _Quiet] = {}

    def name_of(self, tracked: Tracked) -> str | None:
        """The image's name in Ceph, when this very index entry was parsed before (None: parse it)."""
        entry = self._last.get(tracked.uid)
        return entry.name if entry is not None and entry.tracked == tracked else None

    def quiet(self, tracked: Tracked, header: ObservedImage | None, context: Any) -> bool:
        """The last sweep found nothing to do with exactly these inputs (kept for the next sweep too)."""
        entry = self._last.get(tracked.uid)
        if entry is None or header is None or entry.tracked != tracked or entry.context != context \
                or entry.header != header_key(header):
            return False
        self._next[tracked.uid] = entry
        return True

    def remember(self, tracked: Tracked, name: str, header: ObservedImage, context: Any) -> None:
        """A quiet verdict made from these inputs, without any liveness lookup (the caller's word)."""
        self._next[tracked.uid] = _Quiet(tracked, name, header_key(header), context)

    def done(self) -> None:
        """The sweep went through: its entries replace the last sweep's (images gone or no longer quiet drop)."""
        self._memo._done(self._storage, self._basis, self._next)
