"""Changes reach hosts in seconds, and running domains follow libvirt's lifecycle events.

Every event of an RbdStorage (its status carries the key version, secret UUID and monitors) is compared
with what each HypervisorNode reports; hosts that must change are poked (an annotation: kopf reconciles
them now) instead of waiting for their next resync. Hosts converge in parallel, bounded by the SSH pool.

Both keep state for the whole process: one object each, made at startup (handlers/runtime.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..adapters import kube, libvirt_conn
from ..adapters.blocking import Pool, run_blocking
from ..adapters.blocking import executor as blocking_executor
from ..api.errors import OperatorError
from ..reconcile.hosts import hosts_to_update, selected_hosts

HOSTS = "hypervisornodes"
POKE_AGAIN_SECONDS = 60.0


class Propagation:
    """Which hosts were poked for which state of a storage, and the last state of each storage."""

    def __init__(self) -> None:
        self._poked: dict[tuple[str, str], tuple[tuple, float]] = {}
        self._seen: dict[str, tuple] = {}  # the last state of each storage (monitors concern every host)

    async def storage_changed(self, type_: str | None, name: str, body: Mapping[str, Any],
                              hypervisors: Mapping[str, Any], logger: logging.Logger) -> None:
        spec, status = dict(body.get("spec") or {}), dict(body.get("status") or {})
        deleted = type_ == "DELETED"
        state = (deleted, status.get("keyVersion"), status.get("libvirtSecretUUID"),
                 repr(status.get("monitors")), repr((spec.get("hypervisors") or {}).get("nodeSelector")))
        monitors_changed = name in self._seen and self._seen[name][3] != state[3]
        self._seen[name] = state
        hosts = {h: list(e) for h, e in list(hypervisors.items())}
        targets = set(hosts_to_update(name, deleted, spec, status, hosts))
        if monitors_changed and not deleted:
            targets |= selected_hosts(spec, hosts)
        for host in sorted(targets):
            await self._poke(host, name, state, logger)
        if deleted:
            self._seen.pop(name, None)

    async def _poke(self, host: str, storage: str, state: tuple, logger: logging.Logger) -> None:
        now = time.monotonic()
        last = self._poked.get((host, storage))
        if last and last[0] == state and now - last[1] < POKE_AGAIN_SECONDS:
            return
        self._poked[(host, storage)] = (state, now)
        logger.info("RbdStorage %s changed: reconciling HypervisorNode %s now", storage, host)
        try:
            await run_blocking(kube.poke, GROUP, VERSION, HOSTS, None, host, timeout=30, pool=Pool.KUBE)
        except (ApiException, OperatorError) as exc:  # the host's own resync catches up
            logger.warning("could not poke HypervisorNode %s: %s", host, getattr(exc, "status", exc))


class DomainWatch:
    """libvirt lifecycle events (libvirt's event thread) -> the host's running-domain count in status.facts.
    Wired to the libvirt connections at startup (handlers/runtime.py)."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}  # HypervisorNode uid -> name, for events coming from its connection

    def track(self, uid: str, name: str) -> None:
        self._names[uid] = name

    def forget(self, uid: str) -> None:
        self._names.pop(uid, None)

    def domains_changed(self, uid: str) -> None:
        """From libvirt's event thread: count the host's running domains again and put it in status.facts."""
        name = self._names.get(uid)
        conn = libvirt_conn.connections.peek(uid)
        if name is None or conn is None:
            return

        def update() -> None:
            try:
                count = libvirt_conn.running_domains(conn)
                kube.patch_cluster_status(GROUP, VERSION, HOSTS, name, {"facts": {"runningDomains": count}})
            except Exception as exc:  # noqa: BLE001 - the next resync corrects it
                logging.getLogger(__name__).debug("running domains of %s not refreshed: %s", name, type(exc).__name__)
        blocking_executor(Pool.KUBE).submit(update)
