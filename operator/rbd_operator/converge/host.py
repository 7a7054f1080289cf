"""HypervisorNode: verify the host key -> facts -> repositories and packages (converge/packages.py) ->
/etc/ceph and libvirt secrets -> what status says. One SSH session (to the pinned key only) per pass, plus
the host's kept-open libvirt connection."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from kubernetes.client.rest import ApiException

from ..api.enums import DeletionPolicy, Profile
from ..adapters import kube, libvirt_conn
from ..adapters.blocking import Pool, run_blocking
from ..adapters.host import Facts, Host, PackageError
from ..adapters.lease import DisruptionFence
from ..adapters.ssh import SshError, SshSession, fingerprint
from ..adapters.ssh import first_contact as ssh_first_contact
from ..api.errors import OperatorError
from ..api.hypervisor import HostSpec
from ..api.reasons import ConditionType, EventReason, Reason
from ..reconcile import host_plan
from ..reconcile.host_plan import HostStorage, PreviousStorages
from ..reconcile.hosts import PIN_ANNOTATION, REQUIRED, Selection, pin, selected
from .credentials import ssh_key
from .outcome import Cond, Outcome
from .packages import converge_packages, not_owned, write

HOST_TIMEOUT = 1800.0
CLEAN_TIMEOUT = 600.0


@dataclass
class HostOutcome(Outcome):
    facts: Facts | None = None
    family: str | None = None
    seen_key: tuple[str, bytes] | None = None
    storages: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Pass:
    """What one pass over a host works from (everything validated, read on the event loop)."""
    name: str
    uid: str
    spec: HostSpec
    key: str = field(repr=False)
    pinned: tuple[str, bytes]
    storages: list[HostStorage]
    previous: PreviousStorages
    policies: dict[str, str]


# -- in a worker thread -------------------------------------------------------------------------------
def in_host(work: Pass, fence: DisruptionFence) -> HostOutcome:
    """One SSH session (to the pinned key only) for the whole pass, plus the host's kept-open libvirt
    connection."""
    spec, out = work.spec, HostOutcome()
    with SshSession(spec.address, spec.port, spec.user, work.key, work.pinned) as ssh:
        out.seen_key = ssh.seen_key
        out.cond(ConditionType.REACHABLE, True, Reason.CONNECTED, f"{spec.user}@{spec.address}:{spec.port}")
        out.cond(ConditionType.HOST_KEY_VERIFIED, True, Reason.PINNED if spec.host_key else Reason.TRUSTED_ON_FIRST_USE,
                 f"{work.pinned[0]} {fingerprint(*work.pinned)}")
        host = Host(ssh)
        out.facts = host.facts()
        _libvirt(host, work, out.facts)
        out.family = host_plan.family_of(out.facts.os_id, out.facts.os_like)
        _packages(host, work, fence, out)
        _capability(spec, out.facts, out)
        if host.virt is None and (work.storages or work.previous.remove):
            host.virt = _connection(work)
        converge_storages(host, work, out)
    return out


def _connection(work: Pass) -> Any:
    spec = work.spec
    return libvirt_conn.connections.get(work.uid, spec.address, spec.port, spec.user, work.key, work.pinned)


def _libvirt(host: Host, work: Pass, facts: Facts) -> None:
    """Attach the host's libvirt connection and count its running domains through it.

    No libvirt installed yet: nothing can run (0). Installed but not answering: unknown (None), and the
    disruption guard fails closed."""
    try:
        host.virt = _connection(work)
        facts.running_domains = host.running_domains()
    except SshError as exc:
        if exc.reason == Reason.HOST_KEY_MISMATCH:
            raise
        host.virt = None
        facts.running_domains = None if facts.libvirt_version else 0


def _packages(host: Host, work: Pass, fence: DisruptionFence, out: HostOutcome) -> None:
    assert out.facts is not None
    if out.family is None:
        out.cond(ConditionType.PACKAGES_READY, False, Reason.UNSUPPORTED_OS,
                 f"{out.facts.os_id!r} is neither Debian- nor RHEL-like")
        return
    try:
        if converge_packages(host, work.spec, work.name, out.facts, out.family, fence, out):
            out.facts = host.facts()
            _libvirt(host, work, out.facts)  # libvirtd may have restarted
    except PackageError as exc:  # the condition's change posts the Warning event
        out.cond(ConditionType.PACKAGES_READY, False, exc.reason, exc.message)


def _capability(spec: HostSpec, facts: Facts, out: Outcome) -> None:
    if spec.profile == Profile.QEMU_RBD:
        out.cond(ConditionType.RBD_CAPABLE, facts.qemu_rbd, Reason.QEMU_RBD if facts.qemu_rbd else Reason.NO_QEMU_RBD,
                 f"qemu {facts.qemu_version or '?'} {'has' if facts.qemu_rbd else 'lacks'} the rbd block driver")
    elif spec.profile == Profile.KERNEL_RBD:
        out.cond(ConditionType.RBD_CAPABLE, facts.krbd, Reason.KERNEL_RBD if facts.krbd else Reason.NO_KERNEL_RBD,
                 f"kernel {facts.kernel} {'has' if facts.krbd else 'lacks'} the rbd module")
    else:
        out.cond(ConditionType.RBD_CAPABLE, facts.qemu_rbd or facts.krbd, Reason.PROFILE_NONE,
                 f"qemu rbd: {facts.qemu_rbd}, krbd: {facts.krbd}")


def converge_storages(host: Host, work: Pass, out: HostOutcome) -> None:
    """/etc/ceph/ceph.conf, one keyring and one libvirt secret per selected storage; what left the selection
    leaves the host."""
    storages, previous = work.storages, work.previous
    fsids = {s.fsid for s in storages}
    if len(fsids) > 1:
        out.cond(ConditionType.CEPH_CONFIGURED, False, Reason.MULTIPLE_CLUSTERS,
                 f"storages of {len(fsids)} Ceph clusters select this host; /etc/ceph/ceph.conf holds one")
        out.cond(ConditionType.SECRETS_READY, False, Reason.MULTIPLE_CLUSTERS, "")
        out.storages.extend({**e, "current": False} for e in previous.entries)  # nothing removed either
        return
    if storages and not _files(host, work, out):
        return
    defined = host.secrets()
    for storage in storages:
        _secret(host, storage, defined, out)
        probe = (host.probe(storage.client, storage.keyring_path, storage.pool) if out.facts and out.facts.rbd_cli
                 else "skipped: the rbd CLI (ceph-common) is not installed")
        out.storages.append({"name": storage.name, "secretUUID": storage.secret_uuid, "keyVersion": storage.key_version,
                             "keyringPath": storage.keyring_path, "current": True, "probe": probe,
                             "deletionPolicy": work.policies.get(storage.name, DeletionPolicy.RETAIN)})
    out.storages.extend(previous.carry)
    _removals(host, previous, defined, out)
    _storage_conditions(storages, out)


def _files(host: Host, work: Pass, out: HostOutcome) -> bool:
    """Every file of this step is judged before any is written: one that is someone else's stops it all."""
    recorded = {e["keyringPath"] for e in work.previous.entries if e.get("keyringPath")}
    files = host_plan.storage_files(work.storages)
    plan = host_plan.plan_files(files, {f.path: host.read_file(f.path) for f in files}, adopt=work.spec.adopt,
                                recorded=recorded)
    if plan.refused:
        not_owned(out, ConditionType.CEPH_CONFIGURED, plan.refused)
        out.cond(ConditionType.SECRETS_READY, False, Reason.HOST_FILE_NOT_OWNED, "")
        out.storages.extend({**e, "current": False} for e in work.previous.entries)  # nothing removed either
        return False
    for step in write(host, plan, out):
        conf = step.path == files[0].path
        out.note(EventReason.CEPH_CONFIG_WRITTEN if conf else EventReason.KEYRING_WRITTEN, step.path)
    return True


def _secret(host: Host, storage: HostStorage, defined: set[str], out: Outcome) -> None:
    if storage.secret_uuid not in defined:
        host.define_secret(storage.secret_uuid, host_plan.secret_xml(storage))
        out.note(EventReason.SECRET_DEFINED, f"libvirt secret {storage.secret_uuid} for {storage.name}")
    if host.secret_value(storage.secret_uuid) != storage.key:
        host.set_secret_value(storage.secret_uuid, storage.key)
        out.note(EventReason.SECRET_UPDATED, f"libvirt secret {storage.secret_uuid} now holds the key of "
                 f"{storage.entity}")


def _removals(host: Host, previous: PreviousStorages, defined: set[str], out: HostOutcome) -> None:
    keep_uuids = {s.get("secretUUID") for s in out.storages}
    keep_paths = {s.get("keyringPath") for s in out.storages}
    for old in previous.remove:
        what = "libvirt secret removed"
        path = old.get("keyringPath")
        if path and path not in keep_paths:
            if remove_keyring(host, path):
                what = "keyring and " + what
            else:
                what += f"; {path} left on the host (adopted, or not the operator's)"
        if old.get("secretUUID") and old["secretUUID"] not in keep_uuids and old["secretUUID"] in defined:
            host.undefine_secret(old["secretUUID"])
        out.note(EventReason.STORAGE_REMOVED, f"{old.get('name')}: {what}")


def _storage_conditions(storages: list[HostStorage], out: HostOutcome) -> None:
    out.cond(ConditionType.CEPH_CONFIGURED, True, Reason.CONFIGURED if storages else Reason.NO_STORAGES_SELECTED,
             f"{len(storages)} storage(s): " + ", ".join(s.name for s in storages))
    failed = [s["name"] for s in out.storages if str(s.get("probe", "")).startswith("failed") and s.get("current")]
    if failed:
        out.cond(ConditionType.SECRETS_READY, False, Reason.PROBE_FAILED,
                 f"probe as the storage's client failed for {', '.join(failed)}")
    else:
        out.cond(ConditionType.SECRETS_READY, True, Reason.SECRETS_IN_SYNC,
                 f"{len(storages)} libvirt secret(s) hold the current keys")


def remove_keyring(host: Host, path: str) -> bool:
    """Remove a keyring recorded in status.storages if it is the operator's own (adopted ones stay)."""
    content = host.read_file(path)
    if content is None or not host_plan.removable(content, host_plan.keyring_settings_for(path), recorded=True):
        return False
    return host.remove_file(path)


# -- on the event loop -------------------------------------------------------------------------------
async def host_storages(chosen: list[tuple[str, dict]]) -> tuple[list[HostStorage], dict[str, tuple[str, str]]]:
    """The selected storages' keys and settings, validated; problems (reason, message) by storage name.

    A storage with a problem keeps whatever the host holds of it."""
    out, problems = [], {}
    for name, entry in chosen:
        status = entry["status"]
        ref = status.get("clientSecretRef") or {}
        try:
            data, version = await run_blocking(kube.read_secret_versioned, ref.get("namespace"), ref.get("name"),
                                               timeout=30, pool=Pool.KUBE)
            if not data or not data.get("userKey"):
                problems[name] = (Reason.STORAGES_PENDING, f"{name}: client Secret {ref.get('name')} has no key yet")
                continue
            out.append(host_plan.host_storage(name, status, data, version or "",
                                              (entry["spec"].get("client") or {}).get("name", "vmmgr")))
        except OperatorError as exc:
            problems[name] = (exc.reason, f"{name}: {exc.message}")
        except ApiException as exc:
            problems[name] = (Reason.STORAGES_PENDING, f"{name}: client Secret unreadable (HTTP {exc.status})")
    return out, problems


async def first_contact(spec: HostSpec) -> Outcome:
    """Trust on first use: learn and pin the key; nothing is sent to the host in this pass."""
    key_type, blob = await run_blocking(ssh_first_contact, spec.address, spec.port, timeout=60,
                                        reason=Reason.HOST_UNREACHABLE, pool=Pool.SSH)
    shown = f"{key_type} {fingerprint(key_type, blob)}"
    out = Outcome(annotations={PIN_ANNOTATION: shown}, retry="host key pinned; converging next", retry_in=1.0)
    out.set(pinnedHostKey=f"{key_type} {base64.b64encode(blob).decode()}", hostKeyFingerprint=shown)
    out.note(EventReason.HOST_KEY_PINNED, f"trusting {shown} from now on")
    out.cond(ConditionType.HOST_KEY_VERIFIED, True, Reason.TRUSTED_ON_FIRST_USE, shown, event=False)
    out.cond(ConditionType.READY, False, Reason.HOST_KEY_PINNED,
             f"pinned {shown} at first contact; nothing was sent yet, the next pass converges", event=False)
    return out


async def reconcile(name: str, uid: str, spec: HostSpec, body: Mapping[str, Any], labels: Mapping[str, str],
                    storages: Mapping[Any, Any], fence: DisruptionFence) -> Outcome:
    """One pass over a HypervisorNode; raises OperatorError (failure_conditions tells what else it means)."""
    if spec.paused:
        out = Outcome()
        out.cond(ConditionType.READY, False, Reason.PAUSED, "spec.paused is true: the host is left alone", event=False)
        return out
    status = dict(body.get("status") or {})
    sel = selected(labels, storages)
    pinned = pin(spec, status, dict((body.get("metadata") or {}).get("annotations") or {}))
    if pinned is None:  # first contact: needs no key, sends nothing
        return await first_contact(spec)
    key = await run_blocking(ssh_key, spec, timeout=30, pool=Pool.KUBE)
    chosen, problems = await host_storages(sel.ready)
    previous = host_plan.plan_previous_storages(list(status.get("storages") or []), {s.name for s in chosen},
                                                sel.selecting, sel.existing)
    work = Pass(name, uid, spec, key, pinned, chosen, previous, sel.policies)
    out = await run_blocking(in_host, work, fence, timeout=HOST_TIMEOUT, pool=Pool.SSH)
    return summarize(out, previous, problems, sel)


def summarize(out: HostOutcome, previous: PreviousStorages, problems: dict[str, tuple[str, str]],
              sel: Selection) -> Outcome:
    """Status fields, events and Ready from what the pass found (the first failing condition decides)."""
    for problem in previous.rejected:
        out.warn(Reason.UNSAFE_VALUE, f"{problem}; ignored, nothing removed")
    if out.seen_key:
        out.set(hostKeyFingerprint=f"{out.seen_key[0]} {fingerprint(*out.seen_key)}")
    if out.facts:
        out.set(facts=out.facts.as_status(out.family))
    out.set(storages=out.storages)
    out.conditions = [Cond(c.type, c.ok, c.reason, c.message, c.ok if c.type == ConditionType.DISRUPTION_BLOCKED
                           else None, c.event) for c in out.conditions]
    failing = out.failing(REQUIRED)
    unsafe = [(r, m) for r, m in problems.values() if r != Reason.STORAGES_PENDING]
    pending = sel.waiting + [m for r, m in problems.values() if r == Reason.STORAGES_PENDING]
    if failing:
        out.cond(ConditionType.READY, False, failing[0].reason, f"{failing[0].type}: {failing[0].message}")
        out.retry, out.retry_in = failing[0].message, None
    elif unsafe:
        out.cond(ConditionType.READY, False, Reason(unsafe[0][0]), "; ".join(m for _, m in unsafe))
    elif pending:
        out.cond(ConditionType.READY, False, Reason.STORAGES_PENDING, f"waiting for {', '.join(pending)} to publish "
                 "a key")
    else:
        out.cond(ConditionType.READY, True, Reason.CONVERGED, f"{out.family} host ready for RBD")
    return out


def failure_conditions(exc: OperatorError) -> list[Cond]:
    """What an error of the pass also means for the Reachable and HostKeyVerified conditions."""
    conds = []
    if isinstance(exc, SshError) or exc.reason in (Reason.HOST_UNREACHABLE, Reason.TIMEOUT):
        reached = exc.reason not in (Reason.HOST_UNREACHABLE, Reason.AUTHENTICATION_FAILED, Reason.TIMEOUT)
        conds.append(Cond(ConditionType.REACHABLE, reached, Reason.CONNECTED if reached else Reason(exc.reason),
                          "" if reached else exc.message, event=False))
    if exc.reason in (Reason.HOST_KEY_MISMATCH, Reason.HOST_KEY_PIN_LOST):
        conds.append(Cond(ConditionType.HOST_KEY_VERIFIED, False, Reason(exc.reason), exc.message))
    return conds


# -- deletion (deletionPolicy Delete) --------------------------------------------------------------------
def clean_in_host(spec: HostSpec, uid: str, private_key: str, pinned: tuple[str, bytes], held: list[dict]) -> list[str]:
    """Remove what the operator made on the host: keyrings, libvirt secrets, repository files, ceph.conf.

    Adopted files (spec.adopt) stay as they are: they held someone else's settings first, and the host's
    other users of them (VMmanager's ceph.conf, its keyring) keep working."""
    removed = []
    with SshSession(spec.address, spec.port, spec.user, private_key, pinned) as ssh:
        host = Host(ssh, libvirt_conn.connections.get(uid, spec.address, spec.port, spec.user, private_key, pinned))
        defined = host.secrets()
        for entry in held:
            path = entry.get("keyringPath")
            if path and host_plan.keyring_settings_for(path) and remove_keyring(host, path):
                removed.append(path)
            if entry.get("secretUUID") in defined:
                host.undefine_secret(entry["secretUUID"])
                removed.append(f"libvirt secret {entry['secretUUID']}")
        existing = {d: host.ssh.listdir(d) for dirs in host_plan.MANAGED_DIRS.values() for d in dirs}
        for path in host_plan.stale_files(existing, []):
            host.remove_file(path)
            removed.append(path)
        conf = f"{host_plan.CEPH_DIR}/ceph.conf"
        if (host.read_file(conf) or b"").startswith(host_plan.OWNED_HEADER.encode()):
            host.remove_file(conf)
            removed.append(conf)
    return removed


async def clean(uid: str, spec: HostSpec, body: Mapping[str, Any], logger: logging.Logger) -> list[str] | None:
    """What was removed from the host (None: it was never pinned, so it received nothing)."""
    status = dict(body.get("status") or {})
    pinned = pin(spec, status, dict((body.get("metadata") or {}).get("annotations") or {}))
    if pinned is None:
        logger.info("host %s was never pinned, so it received nothing: nothing to remove", spec.address)
        return None
    key = await run_blocking(ssh_key, spec, timeout=30, pool=Pool.KUBE)
    return await run_blocking(clean_in_host, spec, uid, key, pinned, list(status.get("storages") or []),
                              timeout=CLEAN_TIMEOUT, reason=Reason.TIMEOUT, pool=Pool.SSH)
