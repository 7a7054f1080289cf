"""Operator-wide kopf settings."""

from __future__ import annotations

import logging

import kopf

from .. import GROUP


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: object) -> None:
    # Keep status for our schema-declared fields: kopf's own bookkeeping goes to annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Handlers post their own events (kopf.event); kopf's own events (handler failures) from WARNING up.
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 300
    settings.peering.standalone = True
