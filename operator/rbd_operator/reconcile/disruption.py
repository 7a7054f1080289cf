"""When a disruption Lease counts as expired, and whether its holder may still start a step.

Both are judged on the judging replica's own monotonic clock, never on a time another replica wrote:

- an observer remembers the Lease record it last saw (holder, renewTime, resourceVersion) and when,
  on its own clock, it first saw that record; the Lease is expired once that record has stood
  unchanged for leaseDurationSeconds (as client-go's leader election does). A renewTime written by a
  replica whose clock is wrong changes nothing: only the fact that the record changed counts, so
  clock skew between replicas cannot shorten a Lease. A replica that has just started (or never
  looked) waits a full duration: fail closed.
- the holder counts its Lease from the moment it *sent* its last successful take or renewal: every
  observer saw that record later, so none can take the Lease before `sent + duration`. A disruptive
  step starts only while that point is at least `margin` seconds away.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

Clock = Callable[[], float]


@dataclass(frozen=True)
class LeaseRecord:
    holder: str              # "" when nobody holds it (released)
    renew_time: str          # as written by the holder: compared, never subtracted from a local time
    resource_version: str
    duration: float          # leaseDurationSeconds


class LeaseObserver:
    """Expiry of a Lease as this replica sees it (one per Lease, kept for the process's life)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: tuple[str, str, str] | None = None
        self._since = 0.0

    def remaining(self, record: LeaseRecord) -> float:
        """Seconds until the Lease may be taken (<= 0: now). A free Lease (no holder) may be taken at once."""
        key = (record.holder, record.renew_time, record.resource_version)
        now = self._clock()
        with self._lock:
            if key != self._seen:
                self._seen, self._since = key, now
            since = self._since
        if not record.holder:
            return 0.0
        return since + record.duration - now


class Tenure:
    """The holder's side: how long its Lease is safe, by its own clock."""

    def __init__(self, duration: float, clock: Clock, margin: float) -> None:
        self.duration, self.margin = float(duration), float(margin)
        self._clock = clock
        self._lock = threading.Lock()
        self._sent: float | None = None
        self._lost: str | None = None

    def now(self) -> float:
        return self._clock()

    def renewed(self, sent_at: float) -> None:
        """A take or renewal sent at `sent_at` (this clock) succeeded."""
        with self._lock:
            if self._lost is None and (self._sent is None or sent_at > self._sent):
                self._sent = sent_at

    def lose(self, why: str) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = why

    def left(self) -> float:
        """Seconds the Lease is still certainly ours (<= 0: it may be someone else's now)."""
        with self._lock:
            if self._lost is not None or self._sent is None:
                return 0.0
            return self._sent + self.duration - self._clock()

    def may_start(self) -> str | None:
        """None if a disruptive step may start now; otherwise why not."""
        with self._lock:
            lost = self._lost
        if lost is not None:
            return lost
        left = self.left()
        if left < self.margin:
            return (f"the Lease was last renewed {self.duration - left:.0f}s ago by this replica's clock "
                    f"(duration {self.duration:.0f}s, a step needs {self.margin:.0f}s left)")
        return None
