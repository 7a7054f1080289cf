"""A HypervisorNode among the storages and the other hosts (pure): which storages select it, which key it
must insist on, which hosts a change of a storage concerns, and what its Ready says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..api.enums import DeletionPolicy
from ..api.errors import Refused
from ..api.hypervisor import HostSpec, parse_host_key
from ..api.reasons import ConditionType, Reason
from .selector import matches

# Set with status.pinnedHostKey: a pin that vanished from the status is noticed, never re-trusted.
PIN_ANNOTATION = "rbd-operator.io/pinned-host-key"
# The conditions Ready summarises (the first failing one becomes Ready's reason).
REQUIRED = (ConditionType.PACKAGES_READY, ConditionType.RBD_CAPABLE, ConditionType.CEPH_CONFIGURED,
            ConditionType.SECRETS_READY)


@dataclass
class Selection:
    """RbdStorages as this host sees them (read from the index on the event loop)."""
    ready: list[tuple[str, dict]] = field(default_factory=list)  # selecting, with status to converge from
    waiting: list[str] = field(default_factory=list)              # selecting, no key/status published yet
    selecting: set[str] = field(default_factory=set)              # every storage selecting it (deleted ones too)
    existing: set[str] = field(default_factory=set)               # every RbdStorage object
    policies: dict[str, str] = field(default_factory=dict)        # deletionPolicy per selecting storage


def selected(labels: Mapping[str, str], storages: Mapping[str, Iterable[dict]]) -> Selection:
    """Storages being deleted still select: a blocked deletion must not take keys off hosts."""
    sel = Selection()
    for name, entries in list(storages.items()):
        for entry in entries:
            sel.existing.add(name)
            if not matches((entry["spec"].get("hypervisors") or {}).get("nodeSelector"), labels):
                continue
            sel.selecting.add(name)
            sel.policies[name] = entry["spec"].get("deletionPolicy") or DeletionPolicy.RETAIN
            status = entry["status"] or {}
            if status.get("libvirtSecretUUID") and status.get("clientSecretRef") and status.get("monitors"):
                sel.ready.append((name, entry))
            else:
                sel.waiting.append(name)
    sel.ready.sort(key=lambda x: x[0])
    sel.waiting.sort()
    return sel


def pin(spec: HostSpec, status: Mapping[str, Any], annotations: Mapping[str, str]) -> tuple[str, bytes] | None:
    """The host key to insist on; None only for a first contact under TrustOnFirstUse.

    A pin once recorded (the annotation, set with the status field) and now missing from the
    status is refused, never silently re-trusted: Refused(HostKeyPinLost).
    """
    if spec.host_key:
        return parse_host_key(spec.host_key)
    if status.get("pinnedHostKey"):
        return parse_host_key(status["pinnedHostKey"], "status.pinnedHostKey")
    if annotations.get(PIN_ANNOTATION):
        raise Refused(Reason.HOST_KEY_PIN_LOST, f"status.pinnedHostKey is gone but a key was pinned before "
                      f"({annotations[PIN_ANNOTATION]}); not trusting whoever answers now. Set spec.hostKey, or "
                      f"remove the annotation {PIN_ANNOTATION} to trust on first use again. Nothing was sent")
    return None


def hosts_to_update(name: str, deleted: bool, spec: Mapping[str, Any], status: Mapping[str, Any],
                    hypervisors: Mapping[str, Iterable[dict]]) -> list[str]:
    """Hosts whose status shows they do not hold this storage as it is now (or hold it but should not)."""
    selector = (spec.get("hypervisors") or {}).get("nodeSelector")
    out = []
    for host, entries in hypervisors.items():
        for entry in entries:
            held = [s for s in entry["storages"] if s.get("name") == name and not s.get("retained")]
            if not deleted and matches(selector, entry["labels"]):
                if not status.get("keyVersion"):
                    continue  # no key published yet
                current = any(s.get("current") and s.get("keyVersion") == status.get("keyVersion")
                              and s.get("secretUUID") == status.get("libvirtSecretUUID") for s in held)
                if not current:
                    out.append(host)
            elif held:
                out.append(host)
    return sorted(set(out))


def selected_hosts(spec: Mapping[str, Any], hypervisors: Mapping[str, Iterable[dict]]) -> set[str]:
    selector = (spec.get("hypervisors") or {}).get("nodeSelector")
    return {h for h, entries in list(hypervisors.items()) for e in entries if matches(selector, e["labels"])}
