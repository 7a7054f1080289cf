"""Which images' watchers the drift sweep lists in one interval (pure; the sweep in converge/image.py).

Listing an image's watchers means opening it read-only (the Python rados binding has no list-watchers
call for the header object): measured ~4 ms of CPU per image here, against ~0.03 ms to read its header's
omap in parallel. At every interval for every image that alone was ~90 % of a core at 20,000 images
(issue #25), so each sweep lists at most `budget` images of a storage: the ones listed least recently
first (never listed by this process: first of all, in image-id order, so a restarted operator goes round
in a stable order). Every image's status.watchers / usedBy is thus refreshed at least every
ceil(images / budget) intervals. What does not wait for the rota:
- VMs on HypervisorNodes: libvirt's lifecycle events re-read the host's running domains at once
  (converge/propagation.py DomainWatch), and usedBy follows within seconds;
- deletion, shrink and revert list the watchers themselves right before they act (adapters/ceph/images.py):
  a stale status never lets a destructive step through;
- an image the handler reconciles for any other reason reads its watchers afresh.
"""

from __future__ import annotations

import threading
from typing import Iterable, Mapping

DEFAULT_PER_SWEEP = 50


class WatcherRota:
    """When this process last listed each image's watchers, by (storage, image id): a sweep number (any
    increasing figure). As large as the storages' images (keep_only drops the ones gone)."""

    def __init__(self) -> None:
        self._listed: dict[tuple[str, str], int] = {}
        self._sweeps: dict[str, int] = {}
        self._lock = threading.Lock()

    def pick(self, storage: str, ids: Mapping[str, str], budget: int) -> dict[str, str]:
        """At most `budget` of `ids` (name -> image id) to list now: never listed first, then the least
        recently listed; ties by image id."""
        with self._lock:
            listed = {i: self._listed.get((storage, i), -1) for i in ids.values()}
        ranked = sorted(ids.items(), key=lambda item: (listed[item[1]], item[1]))
        return dict(ranked[:max(budget, 0)])

    def record(self, storage: str, image_ids: Iterable[str]) -> None:
        """These were listed in this storage's sweep (one sweep number per call)."""
        with self._lock:
            sweep = self._sweeps[storage] = self._sweeps.get(storage, 0) + 1
            for image_id in image_ids:
                self._listed[(storage, image_id)] = sweep

    def keep_only(self, storage: str, image_ids: Iterable[str]) -> None:
        """Forget the storage's images that are gone."""
        live = set(image_ids)
        with self._lock:
            for key in [k for k in self._listed if k[0] == storage and k[1] not in live]:
                del self._listed[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._listed)
