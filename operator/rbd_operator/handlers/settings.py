"""Operator-wide kopf settings."""

from __future__ import annotations

import logging

import kopf

from .. import GROUP


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: object) -> None:
    # kopf's own bookkeeping goes into status.kopf (declared in the CRDs): a reconcile then costs one
    # status write instead of a status write plus an annotations write (and no kopf-managed marker).
    # Objects handled by an older version (annotations) are handled once more after an upgrade.
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Handlers post their own events (kopf.event); kopf's own events (handler failures) from WARNING up.
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    # Ride out an API server restart or outage of several minutes: a request kopf gives up on (after
    # its default ~54 s) ends the timer of the object it was for (found by make faults: a host's resync
    # timer died with a status PATCH during an API server restart). ~8 min of retries instead.
    settings.networking.error_backoffs = (1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 60, 60, 60, 60, 60, 60, 60)
    settings.watching.server_timeout = 300
    settings.peering.standalone = True
