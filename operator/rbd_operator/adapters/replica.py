"""Which replica works: the `rbd_operator_active` gauge and an `ActiveReplica` Event.

kopf (1.45) pauses and resumes a replica through an internal toggle set that no handler, setting or
public function exposes (its peering observer flips it; daemons and watchers merely obey it). So
this module derives the same answer from the same data with kopf's own rule
(kopf/_core/engines/peering.py, process_peering_event): a replica works while no *other live* peer
in the ClusterKopfPeering has a priority greater than or equal to its own (equal: kopf pauses all of
them); a peer is dead once `lastseen + lifetime` has passed; without the peering object kopf stays
paused. The object is read with list/watch (the RBAC kopf already needs), in a thread of its own, so
a slow API server never delays kopf's loop. The answer can lag kopf's by the time between two watch
events (kopf re-evaluates when a blocking peer's entry expires by touching its own entry: that touch
is an event here too); tests/integration/test_deploy_ha.py checks it against kopf's own log lines.

On becoming active, a replica posts a Normal Event `ActiveReplica` on its Pod (the operator's
namespace; `kubectl get events -n rbd-operator --field-selector reason=ActiveReplica`) naming the
pod and its peering identity, and logs it; the gauge reads 1 there and 0 on the standby.
"""

from __future__ import annotations

import datetime
import getpass
import logging
import os
import secrets
import socket
import threading
from typing import Any, Mapping

import kubernetes
from .. import metrics
from . import kube
from ..api.reasons import EventReason

log = logging.getLogger("rbd_operator.replica")

GROUP, VERSION, PLURAL = "kopf.dev", "v1", "clusterkopfpeerings"
MAX_WATCH_SECONDS = 30


def new_identity() -> str:
    """kopf's peering identity for this process: $POD_ID (deploy/: the pod's uid), else kopf's own
    format (user@host/time/random). Passed to kopf.run, so this module knows which entry is ours."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S")
    return f"{getpass.getuser()}@{socket.gethostname()}/{now}/{secrets.token_hex(2)}"


IDENTITY = new_identity()


def _parse_time(value: Any, now: datetime.datetime) -> datetime.datetime:
    if not isinstance(value, str):
        return now  # kopf: an entry without lastseen counts as seen now
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return now
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def standing(peering: Mapping[str, Any] | None, identity: str, priority: int,
             now: datetime.datetime) -> tuple[bool, float | None, list[str]]:
    """(active, seconds until the answer can change by time alone, identities that hold us back).

    `peering` is the ClusterKopfPeering object (None: it does not exist, so kopf stays paused)."""
    if peering is None:
        return False, None, []
    blockers: list[tuple[str, float]] = []
    for peer_id, info in ((peering.get("status") or {}) if isinstance(peering.get("status"), Mapping) else {}).items():
        if peer_id == identity or not isinstance(info, Mapping):
            continue
        try:
            peer_priority = int(info.get("priority", 0))
            lifetime = int(info.get("lifetime", 60))
        except (TypeError, ValueError):
            continue
        deadline = _parse_time(info.get("lastseen"), now) + datetime.timedelta(seconds=lifetime)
        if deadline <= now:
            continue  # dead: kopf ignores it (and cleans it up)
        if peer_priority >= priority:
            blockers.append((peer_id, (deadline - now).total_seconds()))
    if not blockers:
        return True, None, []
    return False, min(left for _, left in blockers), [peer_id for peer_id, _ in blockers]


class Monitor(threading.Thread):
    """Follows the ClusterKopfPeering and keeps the gauge (and the Event) in step with `standing`."""

    def __init__(self, peering: str, identity: str, priority: int) -> None:
        super().__init__(name="replica-monitor", daemon=True)
        self.peering, self.identity, self.priority = peering, identity, priority
        self.pod = os.environ.get("POD_NAME") or socket.gethostname()
        self.active: bool | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        api = kubernetes.client.CustomObjectsApi(kube.core().api_client)
        selector = f"metadata.name={self.peering}"
        failures = 0
        while not self.stopping.is_set():
            try:
                listed = api.list_cluster_custom_object(GROUP, VERSION, PLURAL, field_selector=selector,
                                                        _request_timeout=30)
                items = listed.get("items") or []
                recheck = self.evaluate(items[0] if items else None)
                seconds = MAX_WATCH_SECONDS if recheck is None else max(1, min(MAX_WATCH_SECONDS, int(recheck) + 1))
                stream = kubernetes.watch.Watch().stream(
                    api.list_cluster_custom_object, GROUP, VERSION, PLURAL, field_selector=selector,
                    resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=seconds,
                    _request_timeout=(10, seconds + 15))
                for event in stream:
                    if event.get("type") == "ERROR":
                        break  # e.g. 410 Gone: list again
                    self.evaluate(None if event.get("type") == "DELETED" else event.get("object"))
                    if self.stopping.is_set():
                        break
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the API may be away; keep the last answer, as kopf does
                failures += 1
                status = getattr(exc, "status", None)
                log.debug("reading ClusterKopfPeering %s failed (%s)", self.peering,
                          f"HTTP {status}" if status else type(exc).__name__)
                self.stopping.wait(min(30, 2 ** min(failures, 5)))

    def evaluate(self, peering: Mapping[str, Any] | None) -> float | None:
        now = datetime.datetime.now(datetime.timezone.utc)
        active, recheck, blockers = standing(peering, self.identity, self.priority, now)
        if active != self.active:
            self.active = active
            metrics.ACTIVE.set(1 if active else 0)
            if active:
                log.info("replica %s (peering identity %s) is the active one", self.pod, self.identity)
                self.announce()
            else:
                log.info("replica %s (peering identity %s) stands by (in favour of %s)", self.pod, self.identity,
                         ", ".join(blockers) or f"a missing ClusterKopfPeering {self.peering}")
        return recheck

    def announce(self) -> None:
        """The Event `ActiveReplica` on this replica's Pod; best effort (the gauge and the log stay)."""
        namespace = kube.operator_namespace()
        now = datetime.datetime.now(datetime.timezone.utc)
        involved = {"apiVersion": "v1", "kind": "Pod", "namespace": namespace, "name": self.pod}
        if os.environ.get("POD_ID"):
            involved["uid"] = os.environ["POD_ID"]
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{self.pod}.activereplica.", "namespace": namespace},
            "involvedObject": involved, "type": "Normal", "reason": EventReason.ACTIVE_REPLICA,
            "message": f"{self.pod} is the active replica (kopf peering {self.peering}, identity {self.identity}); "
                       f"the other replicas stand by",
            "source": {"component": "rbd-operator"},
            "reportingComponent": "rbd-operator", "reportingInstance": self.pod[:128],
            "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
        }
        try:
            kube.core().create_namespaced_event(namespace, body, _request_timeout=30)
        except Exception as exc:  # noqa: BLE001 - urllib3's errors are not OSErrors
            log.warning("could not post the ActiveReplica event: %s", getattr(exc, "status", type(exc).__name__))


_monitor: Monitor | None = None


def start(peering: str | None, standalone: bool, priority: int) -> None:
    """Called at startup: standalone, this process is the only one and works; peered, follow the peering."""
    global _monitor
    if standalone or not peering:
        metrics.ACTIVE.set(1)
        return
    metrics.ACTIVE.set(0)
    _monitor = Monitor(peering, IDENTITY, priority)
    _monitor.start()


def stop() -> None:
    if _monitor is not None:
        _monitor.stopping.set()
