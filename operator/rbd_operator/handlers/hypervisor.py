"""HypervisorNode: verify the host key -> facts -> repos and packages -> /etc/ceph and libvirt secrets -> status."""

from __future__ import annotations

import base64
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..adapters import kube
from ..adapters.blocking import run_blocking
from ..adapters.host import Facts, Host, PackageError
from ..adapters.ssh import SshError, SshSession, fingerprint
from ..api.errors import SpecError
from ..api.hypervisor import HostSpec, parse_host, parse_host_key
from ..reconcile import host_plan
from ..reconcile.host_plan import HostStorage
from ..reconcile.selector import matches
from .common import RESYNC_SECONDS, StatusUpdate, backoff, busy, object_lock, release_lock

PLURAL = "hypervisornodes"
HOST_TIMEOUT = 1800.0
# Disruptive package changes happen on one host of the fleet at a time.
_disruption = threading.Lock()


@kopf.index(GROUP, VERSION, PLURAL)
def hypervisors(name: str, labels: kopf.Labels, status: kopf.Status, **_: Any) -> dict:
    """Hosts by name with their labels and what they hold (RbdStorage status summarises it)."""
    return {name: {"labels": dict(labels), "storages": [dict(s) for s in status.get("storages") or []]}}


@dataclass
class HostOutcome:
    facts: Facts | None = None
    family: str | None = None
    seen_key: tuple[str, bytes] | None = None
    conditions: list[tuple[str, bool, str, str]] = field(default_factory=list)
    storages: list[dict] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)

    def cond(self, type_: str, ok: bool, reason: str, message: str = "") -> None:
        self.conditions.append((type_, ok, reason, message))

    def note(self, reason: str, message: str) -> None:
        self.events.append(("Normal", reason, message))


def _selected(labels: dict, storages: kopf.Index) -> tuple[list[tuple[str, dict]], list[str]]:
    """RbdStorages selecting this host: (ready ones, names still waiting for their key/status)."""
    ready, waiting = [], []
    for name, entries in storages.items():
        for entry in entries:
            selector = (entry["spec"].get("hypervisors") or {}).get("nodeSelector")
            if entry["deleting"] or not matches(selector, labels):
                continue
            status = entry["status"] or {}
            if status.get("libvirtSecretUUID") and status.get("clientSecretRef") and status.get("monitors"):
                ready.append((name, entry))
            else:
                waiting.append(name)
    return sorted(ready, key=lambda x: x[0]), sorted(waiting)


async def _host_storages(selected: list[tuple[str, dict]]) -> tuple[list[HostStorage], list[str]]:
    out, missing = [], []
    for name, entry in selected:
        status = entry["status"]
        ref = status["clientSecretRef"]
        data, version = await run_blocking(kube.read_secret_versioned, ref["namespace"], ref["name"], timeout=30)
        if not data or not data.get("userKey"):
            missing.append(name)
            continue
        out.append(HostStorage(
            name=name, fsid=status["fsid"], monitors=host_plan.monitor_hosts(status["monitors"]),
            client=data.get("userID") or (entry["spec"].get("client") or {}).get("name", "vmmgr"),
            pool=status.get("pool") or name, secret_uuid=status["libvirtSecretUUID"], key=data["userKey"],
            key_version=version or ""))
    return out, missing


def _converge_packages(host: Host, spec: HostSpec, out: HostOutcome) -> bool:
    """Repositories, then removals (disruptive ones guarded), then installs. Returns whether packages changed."""
    family, facts = out.family, out.facts
    assert family and facts
    wanted_files = host_plan.repository_plan(spec, family)
    changed_repos = [f.path for f in wanted_files if host.ensure_file(f.path, f.content, f.mode)]
    existing = {d: host.ssh.listdir(d) for d in host_plan.MANAGED_DIRS[family]}
    for path in host_plan.stale_files(existing, wanted_files):
        host.ssh.remove(path)
        changed_repos.append(path)
    if changed_repos:
        out.note("RepositoriesConfigured", "wrote " + ", ".join(changed_repos))
        host.refresh_indexes(family)

    want = host_plan.desired_packages(spec, family)
    installed = host.installed(sorted(set(want) | set(spec.remove) | {"libvirt", "libvirt-daemon"}))
    to_remove = [p for p in spec.remove if p in installed]
    to_install = [p for p in want if p not in installed]
    risky = host_plan.disruptive(to_remove)
    changed = False
    if risky:
        if facts.running_domains and not spec.allow_disruption:
            out.cond("DisruptionBlocked", True, "RunningDomains",
                     f"removing {', '.join(risky)} would stop {facts.running_domains} running domain(s); "
                     "set spec.maintenance.allowDisruption: true to allow it")
            out.cond("PackagesReady", False, "DisruptionBlocked", "package changes wait for maintenance")
            return False
        if not _disruption.acquire(blocking=False):
            out.cond("DisruptionBlocked", True, "AnotherHostInMaintenance",
                     "another hypervisor is being changed disruptively; waiting for it to finish")
            out.cond("PackagesReady", False, "DisruptionBlocked", "package changes wait for the other host")
            return False
    try:
        out.cond("DisruptionBlocked", False, "NotBlocked")
        if to_remove:
            had_libvirt = bool(installed & {"libvirt", "libvirt-daemon"})
            host.remove(family, to_remove)
            out.note("PackagesRemoved", " ".join(to_remove))
            changed = True
            if family == "rhel" and had_libvirt and "libvirt" not in host.installed(["libvirt"]) \
                    and "libvirt" not in to_install:
                to_install.append("libvirt")  # the seed: removing qemu-kvm took libvirt with it
        if to_install:
            host.install(family, to_install)
            out.note("PackagesInstalled", " ".join(to_install))
            changed = True
        if changed and host.restore_rpmsave(host_plan.LIBVIRTD_CONF):
            out.note("ConfigRestored", f"{host_plan.LIBVIRTD_CONF} restored from .rpmsave")
            host.restart_libvirtd()
        elif changed and risky:
            host.restart_libvirtd()
    finally:
        if risky:
            _disruption.release()
    out.cond("PackagesReady", True, "Installed", " ".join(want) if want else "nothing required")
    return changed


def _converge_storages(host: Host, storages: list[HostStorage], previous: list[dict], out: HostOutcome) -> None:
    fsids = {s.fsid for s in storages}
    if len(fsids) > 1:
        out.cond("CephConfigured", False, "MultipleClusters",
                 f"storages of {len(fsids)} Ceph clusters select this host; /etc/ceph/ceph.conf holds one")
        out.cond("SecretsReady", False, "MultipleClusters", "")
        return
    if storages:
        if host.ensure_file(f"{host_plan.CEPH_DIR}/ceph.conf", host_plan.ceph_conf(storages), 0o644):
            out.note("CephConfigWritten", f"{host_plan.CEPH_DIR}/ceph.conf")
    defined = host.secrets()
    for storage in storages:
        if host.ensure_file(storage.keyring_path, host_plan.keyring(storage), 0o600):
            out.note("KeyringWritten", storage.keyring_path)
        if storage.secret_uuid not in defined:
            host.define_secret(storage.secret_uuid, host_plan.secret_xml(storage))
            out.note("SecretDefined", f"libvirt secret {storage.secret_uuid} for {storage.name}")
        if host.secret_value(storage.secret_uuid) != storage.key:
            host.set_secret_value(storage.secret_uuid, storage.key)
            out.note("SecretUpdated", f"libvirt secret {storage.secret_uuid} now holds the key of {storage.entity}")
        probe = (host.probe(storage.client, storage.keyring_path, storage.pool) if out.facts and out.facts.rbd_cli
                 else "skipped: the rbd CLI (ceph-common) is not installed")
        out.storages.append({"name": storage.name, "secretUUID": storage.secret_uuid, "keyVersion": storage.key_version,
                             "keyringPath": storage.keyring_path, "current": True, "probe": probe})
    keep_names = {s.name for s in storages}
    keep_uuids = {s.secret_uuid for s in storages}
    keep_paths = {s.keyring_path for s in storages}
    for old in previous:
        if old.get("name") in keep_names:
            continue
        if old.get("keyringPath") and old["keyringPath"] not in keep_paths \
                and old["keyringPath"].startswith(f"{host_plan.CEPH_DIR}/ceph.client."):
            host.ssh.remove(old["keyringPath"])
        if old.get("secretUUID") and old["secretUUID"] not in keep_uuids and old["secretUUID"] in defined:
            host.undefine_secret(old["secretUUID"])
        out.note("StorageRemoved", f"{old.get('name')}: keyring and libvirt secret removed")
    out.cond("CephConfigured", True, "Configured" if storages else "NoStoragesSelected",
             f"{len(storages)} storage(s): " + ", ".join(s.name for s in storages))
    failed = [s["name"] for s in out.storages if s["probe"].startswith("failed")]
    if failed:
        out.cond("SecretsReady", False, "ProbeFailed", f"probe as the storage's client failed for {', '.join(failed)}")
    else:
        out.cond("SecretsReady", True, "SecretsInSync", f"{len(storages)} libvirt secret(s) hold the current keys")


def _converge_host(spec: HostSpec, private_key: str, pinned: tuple[str, bytes] | None,
                   storages: list[HostStorage], previous: list[dict]) -> HostOutcome:
    """Runs in a worker thread: one SSH session for the whole reconcile."""
    out = HostOutcome()
    with SshSession(spec.address, spec.port, spec.user, private_key, pinned) as ssh:
        out.seen_key = ssh.seen_key
        out.cond("Reachable", True, "Connected", f"{spec.user}@{spec.address}:{spec.port}")
        out.cond("HostKeyVerified", True, "Pinned" if pinned else "TrustedOnFirstUse",
                 f"{ssh.seen_key[0]} {fingerprint(*ssh.seen_key)}" if ssh.seen_key else "")
        host = Host(ssh)
        out.facts = host.facts()
        out.family = host_plan.family_of(out.facts.os_id, out.facts.os_like)
        if spec.paused:
            return out
        if out.family is None:
            out.cond("PackagesReady", False, "UnsupportedOS", f"{out.facts.os_id!r} is neither Debian- nor RHEL-like")
        else:
            try:
                if _converge_packages(host, spec, out):
                    out.facts = host.facts()
            except PackageError as exc:  # the condition's change posts the Warning event
                out.cond("PackagesReady", False, exc.reason, exc.message)
        facts = out.facts
        if spec.profile == "qemu-rbd":
            out.cond("RbdCapable", facts.qemu_rbd, "QemuRbd" if facts.qemu_rbd else "NoQemuRbd",
                     f"qemu {facts.qemu_version or '?'} {'has' if facts.qemu_rbd else 'lacks'} the rbd block driver")
        elif spec.profile == "kernel-rbd":
            out.cond("RbdCapable", facts.krbd, "KernelRbd" if facts.krbd else "NoKernelRbd",
                     f"kernel {facts.kernel} {'has' if facts.krbd else 'lacks'} the rbd module")
        else:
            out.cond("RbdCapable", facts.qemu_rbd or facts.krbd, "ProfileNone",
                     f"qemu rbd: {facts.qemu_rbd}, krbd: {facts.krbd}")
        _converge_storages(host, storages, previous, out)
    return out


def _ssh_material(spec: HostSpec, status: dict) -> tuple[str, tuple[str, bytes] | None]:
    try:
        data = kube.read_secret(spec.ssh_key.namespace, spec.ssh_key.name)
    except ApiException as exc:
        raise SshError("AuthenticationFailed", f"cannot read Secret {spec.ssh_key.namespace}/{spec.ssh_key.name}: "
                       f"HTTP {exc.status} {exc.reason}") from None
    if not data or not data.get("ssh-privatekey"):
        raise SshError("AuthenticationFailed",
                       f"Secret {spec.ssh_key.namespace}/{spec.ssh_key.name} has no ssh-privatekey")
    if spec.host_key:
        pinned = parse_host_key(spec.host_key)
    elif status.get("pinnedHostKey"):
        pinned = parse_host_key(status["pinnedHostKey"], "status.pinnedHostKey")
    else:
        pinned = None  # TrustOnFirstUse, first contact
    return data["ssh-privatekey"], pinned


async def converge(name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status, labels: kopf.Labels,
                   patch: kopf.Patch, storages: kopf.Index, logger: logging.Logger, retry: int = 0,
                   timer: bool = False) -> None:
    update = StatusUpdate(body, patch, timer=timer)
    try:
        parsed = parse_host(name, spec)
    except SpecError as exc:
        return update.fail(exc.reason, exc.message)
    if parsed.paused:
        update.condition("Ready", False, "Paused", "spec.paused is true: the host is left alone", event=False)
        update.flush()
        return
    selected, waiting = _selected(dict(labels), storages)
    try:
        host_storages, missing = await _host_storages(selected)
        key, pinned = await run_blocking(_ssh_material, parsed, dict(status), timeout=30)
        out = await run_blocking(_converge_host, parsed, key, pinned, host_storages,
                                 list(status.get("storages") or []), timeout=HOST_TIMEOUT)
    except SshError as exc:
        reached = exc.reason not in ("HostUnreachable", "AuthenticationFailed")
        update.condition("Reachable", reached, "Connected" if reached else exc.reason,
                         "" if reached else exc.message, event=False)
        if exc.reason == "HostKeyMismatch":
            update.condition("HostKeyVerified", False, exc.reason, exc.message)
        return update.fail(exc.reason, exc.message, backoff(retry))
    except TimeoutError:
        return update.fail("Timeout", f"converging {parsed.address} took longer than {HOST_TIMEOUT:.0f}s",
                           backoff(retry))

    for kind, reason, message in out.events:
        kopf.event(body, type=kind, reason=reason, message=message)
    if out.seen_key:
        key_type, blob = out.seen_key
        update.set(hostKeyFingerprint=f"{key_type} {fingerprint(key_type, blob)}")
        if parsed.host_key_policy == "TrustOnFirstUse" and not parsed.host_key and not status.get("pinnedHostKey"):
            update.set(pinnedHostKey=f"{key_type} {base64.b64encode(blob).decode()}")
            kopf.event(body, type="Normal", reason="HostKeyPinned",
                       message=f"trusting {key_type} {fingerprint(key_type, blob)} from now on")
    if out.facts:
        update.set(facts=out.facts.as_status(out.family))
    update.set(storages=out.storages)
    for type_, ok, reason, message in out.conditions:
        update.condition(type_, ok, reason, message, bad=ok if type_ == "DisruptionBlocked" else None)
    pending = waiting + missing
    required = ("PackagesReady", "RbdCapable", "CephConfigured", "SecretsReady")
    failing = [(t, r, m) for t, ok, r, m in out.conditions if t in required and not ok]
    if failing:
        type_, reason, message = failing[0]
        update.condition("Ready", False, reason, f"{type_}: {message}")
    elif pending:
        update.condition("Ready", False, "StoragesPending", f"waiting for {', '.join(pending)} to publish a key")
    else:
        update.condition("Ready", True, "Converged", f"{out.family} host ready for RBD")
    update.flush()
    if failing and not timer:
        raise kopf.TemporaryError(failing[0][2], delay=backoff(retry))


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
async def reconcile(name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status, labels: kopf.Labels,
                    patch: kopf.Patch, uid: str, retry: int, storages: kopf.Index, logger: logging.Logger,
                    **_: Any) -> None:
    async with object_lock(uid):
        await converge(name, body, spec, status, labels, patch, storages, logger, retry)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync(name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status, labels: kopf.Labels,
                 patch: kopf.Patch, uid: str, meta: kopf.Meta, storages: kopf.Index, logger: logging.Logger,
                 **_: Any) -> None:
    """Drift, key rotation and storages that start or stop selecting this host."""
    if meta.get("deletionTimestamp") or busy(uid):
        return
    async with object_lock(uid):
        await converge(name, body, spec, status, labels, patch, storages, logger, timer=True)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget(uid: str, **_: Any) -> None:
    """Deleting a HypervisorNode leaves the host as it is (no finalizer needed)."""
    release_lock(uid)
