"""Thin kopf wiring: handlers call the api, reconcile and adapters modules."""

from . import hypervisor, image, indexes, memory, runtime, schedule, settings, shard, snapshot, storage  # noqa: F401 - registers the handlers
