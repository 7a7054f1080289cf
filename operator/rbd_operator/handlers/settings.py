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
    settings.watching.server_timeout = 300
    settings.peering.standalone = True
