"""Changes reach hosts in seconds, and running domains follow libvirt's lifecycle events.

Every event of an RbdStorage (its status carries the key version, secret UUID and monitors) is compared
with what each HypervisorNode reports; hosts that must change are poked (an annotation: kopf reconciles
them now) instead of waiting for their next resync. Hosts converge in parallel, bounded by the SSH pool.

Both keep state for the whole process: one object each, made at startup (handlers/runtime.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..adapters import kube, libvirt_conn
from ..adapters.blocking import Pool, run_blocking
from ..adapters.blocking import executor as blocking_executor
from ..api.errors import OperatorError, SpecError
from ..api.image import parse_image
from ..reconcile import domains, tracking
from ..reconcile.hosts import hosts_to_update, selected_hosts

HOSTS = "hypervisornodes"
IMAGES = "rbdimages"
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
    """libvirt lifecycle events (libvirt's event thread) -> the host's running-domain count in status.facts,
    and which RbdImages its running domains use: an image whose users changed is reconciled now (its
    status.usedBy follows in seconds, nobody touching it). Wired to the libvirt connections at startup
    (handlers/runtime.py); the indexes come with each host's reconcile (track)."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}  # HypervisorNode uid -> name, for events coming from its connection
        self._hosts: dict[str, dict[str, dict[str, str]]] = {}  # host name -> domain -> {"pool/image": dev}
        self._gone: dict[tuple[str, str], float] = {}  # (host, "pool/image") -> when its last domain went
        self._lock = threading.Lock()
        self._scanning: dict[str, threading.Lock] = {}
        self._images: Mapping[Any, Any] = {}
        self._storages: Mapping[Any, Any] = {}

    def track(self, uid: str, name: str, images: Mapping[Any, Any] | None = None,
              storages: Mapping[Any, Any] | None = None) -> None:
        self._names[uid] = name
        if images is not None and storages is not None:
            self._images, self._storages = images, storages

    def scanned(self, uid: str) -> bool:
        return self._names.get(uid) in self._hosts

    def forget(self, uid: str) -> None:
        name = self._names.pop(uid, None)
        with self._lock:
            self._hosts.pop(name or "", None)
            self._scanning.pop(uid, None)

    def uid_of(self, host: str) -> str | None:
        return next((uid for uid, name in list(self._names.items()) if name == host), None)

    def using(self, key: str) -> tuple[dict[str, dict[str, dict[str, str]]], dict[str, float]]:
        """The hosts' running domains (a copy) and when each host's last domain using `key` went."""
        with self._lock:
            hosts = {h: {d: dict(disks) for d, disks in doms.items()} for h, doms in self._hosts.items()}
            gone = {h: t for (h, k), t in self._gone.items() if k == key}
        return hosts, gone

    def domains_changed(self, uid: str) -> None:
        """From libvirt's event thread (or a host's first reconcile): look at the host's running domains
        again, off the event thread."""
        if self._names.get(uid) is not None and libvirt_conn.connections.peek(uid) is not None:
            blocking_executor(Pool.KUBE).submit(self._rescan, uid)

    def _rescan(self, uid: str) -> None:
        """One host at a time (rescans run in a pool: a slow one must not overwrite a newer one)."""
        with self._lock:
            lock = self._scanning.setdefault(uid, threading.Lock())
        with lock:
            self._rescan_now(uid)

    def _rescan_now(self, uid: str) -> None:
        name, conn = self._names.get(uid), libvirt_conn.connections.peek(uid)
        if name is None or conn is None:
            return
        logger = logging.getLogger(__name__)
        try:
            xmls = libvirt_conn.domain_xmls(conn)
            kube.patch_cluster_status(GROUP, VERSION, HOSTS, name, {"facts": {"runningDomains": len(xmls)}})
        except Exception as exc:  # noqa: BLE001 - the next event or resync corrects it
            logger.debug("running domains of %s not refreshed: %s", name, type(exc).__name__)
            return
        after = {domain: domains.rbd_disks(xml) for domain, xml in xmls.items()}
        with self._lock:
            first = name not in self._hosts
            before = self._hosts.get(name, {})
            self._hosts[name] = after
            now = time.monotonic()
            for key in domains.released(before, after):
                self._gone[(name, key)] = now
            self._gone = {k: t for k, t in self._gone.items() if now - t < domains.WATCH_LINGER_SECONDS}
        changed = domains.changed_images(before, after)
        for namespace, image in self._rbd_images(changed):
            logger.info("%s: a domain using RbdImage %s/%s %s on HypervisorNode %s", "found" if first else "changed",
                        namespace, image, "runs" if first else "started or stopped", name)
            try:
                kube.poke(GROUP, VERSION, IMAGES, namespace, image)
            except (ApiException, OperatorError) as exc:  # the storage's sweep catches up
                logger.warning("could not poke RbdImage %s/%s: %s", namespace, image, getattr(exc, "status", exc))

    def _rbd_images(self, keys: set[str]) -> list[tuple[str, str]]:
        """RbdImages (namespace, name) standing for these "pool/image" keys (from the indexes)."""
        if not keys:
            return []
        pools: dict[str, list[str]] = {}
        for storage, entries in list(self._storages.items()):
            for entry in list(entries)[:1]:
                pool = ((entry.get("spec") or {}).get("pool") or {}).get("name") or storage  # its default
                if isinstance(pool, str):
                    pools.setdefault(pool, []).append(storage)
        out = []
        for key in sorted(keys):
            pool, image = key.split("/", 1)
            for storage in pools.get(pool, []):
                for t in list(tracking.by_storage(self._images).get(storage, [])):
                    if _ceph_name(t) == image:
                        out.append((t.namespace, t.name))
        return out


def _ceph_name(t: tracking.Tracked) -> str | None:
    try:
        return parse_image(t.name, t.spec).name
    except SpecError:
        return None
