"""HypervisorNode: verify the host key -> facts -> repos and packages -> /etc/ceph and libvirt secrets -> status."""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION
from ..adapters import kube, libvirt_conn
from ..adapters.blocking import executor as blocking_executor
from ..adapters.lease import DisruptionFence, Held, LeaseLock, LeaseLost
from ..adapters.blocking import check_cancelled, run_blocking
from ..adapters.host import Facts, Host, PackageError
from ..adapters.ssh import SshError, SshSession, fingerprint
from ..adapters.ssh import first_contact as ssh_first_contact
from ..api.errors import OperatorError, Refused, SpecError
from ..api.hypervisor import HostSpec, parse_host, parse_host_key
from ..reconcile import host_plan
from ..reconcile.host_plan import HostStorage
from ..reconcile.selector import matches
from .common import reported, RESYNC_SECONDS, StatusUpdate, backoff, busy, object_lock, release_lock, settle

PLURAL = "hypervisornodes"
# Set with status.pinnedHostKey: a pin that vanished from the status is noticed, never re-trusted.
PIN_ANNOTATION = f"{GROUP}/pinned-host-key"
HOST_TIMEOUT = 1800.0
# Disruptive package changes happen on one host of the fleet at a time (this process and the Lease).
_fence = DisruptionFence()


@kopf.index(GROUP, VERSION, PLURAL)
async def hypervisors(name: str, labels: kopf.Labels, spec: kopf.Spec, status: kopf.Status, **_: Any) -> dict:
    """Hosts by name with their labels, address and what they hold (RbdStorage status summarises it;
    RbdImage status.usedBy names hosts by address)."""
    return {name: {"labels": dict(labels), "address": spec.get("address"),
                   "storages": [dict(s) for s in status.get("storages") or []]}}


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


@dataclass
class Selection:
    """RbdStorages as this host sees them (read from the index on the event loop)."""
    ready: list[tuple[str, dict]]      # selecting, with status to converge from
    waiting: list[str]                 # selecting, no key/status published yet
    selecting: set[str]                # every storage selecting the host (incl. ones being deleted)
    existing: set[str]                 # every RbdStorage object
    policies: dict[str, str]           # deletionPolicy per selecting storage


def _selected(labels: dict, storages: kopf.Index) -> Selection:
    """Storages being deleted still select: a blocked deletion must not take keys off hosts."""
    sel = Selection([], [], set(), set(), {})
    for name, entries in list(storages.items()):
        for entry in entries:
            sel.existing.add(name)
            selector = (entry["spec"].get("hypervisors") or {}).get("nodeSelector")
            if not matches(selector, labels):
                continue
            sel.selecting.add(name)
            sel.policies[name] = entry["spec"].get("deletionPolicy") or "Retain"
            status = entry["status"] or {}
            if status.get("libvirtSecretUUID") and status.get("clientSecretRef") and status.get("monitors"):
                sel.ready.append((name, entry))
            else:
                sel.waiting.append(name)
    sel.ready.sort(key=lambda x: x[0])
    sel.waiting.sort()
    return sel


async def _host_storages(selected: list[tuple[str, dict]]) -> tuple[list[HostStorage], dict[str, tuple[str, str]]]:
    """The selected storages' keys and settings, validated; problems (reason, message) by storage name.

    A storage with a problem keeps whatever the host holds of it."""
    out, problems = [], {}
    for name, entry in selected:
        status = entry["status"]
        ref = status.get("clientSecretRef") or {}
        try:
            data, version = await run_blocking(kube.read_secret_versioned, ref.get("namespace"), ref.get("name"),
                                               timeout=30, pool="kube")
            if not data or not data.get("userKey"):
                problems[name] = ("StoragesPending", f"{name}: client Secret {ref.get('name')} has no key yet")
                continue
            out.append(host_plan.host_storage(name, status, data, version or "",
                                              (entry["spec"].get("client") or {}).get("name", "vmmgr")))
        except OperatorError as exc:
            problems[name] = (exc.reason, f"{name}: {exc.message}")
        except ApiException as exc:
            problems[name] = ("StoragesPending", f"{name}: client Secret unreadable (HTTP {exc.status})")
    return out, problems


def _not_owned(out: HostOutcome, type_: str, paths: list[str]) -> None:
    out.cond(type_, False, "HostFileNotOwned",
             f"{', '.join(paths)} exist{'s' if len(paths) == 1 else ''} and w{'as' if len(paths) == 1 else 'ere'} "
             "not written by rbd-operator; set spec.adopt: true to take over (the operator's settings are merged "
             "in, everything else is kept). Nothing of this step was written")


def _write(host: Host, plan: host_plan.FilesPlan, out: HostOutcome) -> list[host_plan.FileStep]:
    """Write what plan_files decided (only ever a plan without refusals)."""
    for step in plan.writes:
        assert step.content is not None
        host.write_file(step.path, step.content, step.mode)
        if step.how is host_plan.Ownership.FOREIGN:
            out.note("HostFileAdopted", f"{step.path}: taken over (spec.adopt); its other settings kept")
    return plan.writes


def _wait_for_other(out: HostOutcome, message: str) -> None:
    out.cond("DisruptionBlocked", True, "AnotherHostInMaintenance", message)
    out.cond("PackagesReady", False, "AnotherHostInMaintenance", f"package changes wait: {message}")


def _converge_packages(host: Host, spec: HostSpec, node: str, out: HostOutcome) -> bool:
    """Repositories, then removals (disruptive ones fenced), then installs. Returns whether packages changed."""
    family, facts = out.family, out.facts
    assert family and facts
    wanted_files = host_plan.repository_plan(spec, family)
    plan = host_plan.plan_files(wanted_files, {f.path: host.read_file(f.path) for f in wanted_files},
                                adopt=spec.adopt)
    if plan.refused:
        _not_owned(out, "PackagesReady", plan.refused)
        return False
    changed_repos = [step.path for step in _write(host, plan, out)]
    existing = {d: host.ssh.listdir(d) for d in host_plan.MANAGED_DIRS[family]}
    for path in host_plan.stale_files(existing, wanted_files):
        host.remove_file(path)
        changed_repos.append(path)
    if changed_repos:
        out.note("RepositoriesConfigured", "wrote " + ", ".join(changed_repos))
        host.refresh_indexes(family)

    if host.repair_package_db(family):
        out.note("PackageDatabaseRepaired", "an interrupted dpkg run was completed (dpkg --configure -a)")
    want = host_plan.desired_packages(spec, family)
    installed = host.installed(sorted(set(want) | set(spec.remove) | {"libvirt", "libvirt-daemon"}))
    to_remove = [p for p in spec.remove if p in installed]
    to_install = [p for p in want if p not in installed]
    # What apt/dnf would really take away (dependents, conflicts), not just the names in the spec.
    would_remove = host.simulate(family, to_install, to_remove)
    risky = host_plan.disruptive(would_remove)
    lease: LeaseLock | None = None
    if risky:
        if facts.running_domains != 0 and not spec.allow_disruption:
            if facts.running_domains is None:
                message = (f"removing {', '.join(risky)} could stop running domains, and libvirt does not answer "
                           "to tell; set spec.maintenance.allowDisruption: true to proceed anyway")
                reason = "DomainsUnknown"
            else:
                message = (f"removing {', '.join(risky)} would stop {facts.running_domains} running domain(s); "
                           "set spec.maintenance.allowDisruption: true to allow it")
                reason = "RunningDomains"
            out.cond("DisruptionBlocked", True, reason, message)
            out.cond("PackagesReady", False, reason, f"package changes wait for maintenance: {message}")
            return False
        # Across replicas (and a replica killed or frozen mid-change): the Lease, held until this change ends.
        got = _fence.acquire(spec.address)
        if isinstance(got, Held):
            _wait_for_other(out, f"another disruptive change holds Lease {_fence.name} ({got.holder}, "
                                 f"{max(got.expires_in, 0):.0f}s left); waiting for it to finish")
            return False
        lease = got
    clean = lease is None
    try:
        if lease is not None:
            if lease.pending:
                # The host the Lease names may still run a transaction its holder started: none may start
                # elsewhere before it has ended (the previous holder may be frozen, not dead).
                other, address = lease.pending
                busy = _package_activity(host, node, other, address)
                if busy:
                    _wait_for_other(out, f"HypervisorNode {other} ({address}), where the previous holder of Lease "
                                         f"{_fence.name} changed packages: {busy}; waiting until it has ended")
                    return False
            lease.record_host(node, spec.address)
        step = lease.check if lease is not None else (lambda _what: None)
        out.cond("DisruptionBlocked", False, "NotBlocked")
        changed = False
        if to_remove:
            had_libvirt = bool(installed & {"libvirt", "libvirt-daemon"})
            step(f"removing {' '.join(to_remove)}")
            host.remove(family, to_remove)
            out.note("PackagesRemoved", " ".join(to_remove))
            changed = True
            if family == "rhel" and had_libvirt and "libvirt" not in host.installed(["libvirt"]) \
                    and "libvirt" not in to_install:
                to_install.append("libvirt")  # the seed: removing qemu-kvm took libvirt with it
        if to_install:
            step(f"installing {' '.join(to_install)}")
            host.install(family, to_install)
            out.note("PackagesInstalled", " ".join(to_install))
            changed = True
        if changed and host.restore_rpmsave(host_plan.LIBVIRTD_CONF):
            out.note("ConfigRestored", f"{host_plan.LIBVIRTD_CONF} restored from .rpmsave")
            step("restarting libvirtd")
            host.restart_libvirtd()
        elif changed and risky:
            step("restarting libvirtd")
            host.restart_libvirtd()
        clean = True
    except LeaseLost as exc:
        clean = True  # every command it ran came back: nothing of it runs on the host
        logging.getLogger(__name__).warning("HypervisorNode %s: DisruptionLeaseLost: %s", node, exc.message)
        out.cond("DisruptionBlocked", True, "DisruptionLeaseLost", exc.message)
        out.cond("PackagesReady", False, "DisruptionLeaseLost", exc.message)
        return False
    except PackageError:
        clean = True  # the package command ended (with an exit status)
        raise
    finally:
        if lease is not None:
            _fence.release(lease, clean)
    out.cond("PackagesReady", True, "Installed", " ".join(want) if want else "nothing required")
    return changed


def _package_activity(host: Host, node: str, other: str, address: str) -> str | None:
    """What package transaction still runs on the host the Lease names (None: none runs). A host that
    cannot be asked counts as busy: fail closed."""
    if other == node and address == host.ssh.address:
        try:
            return host.package_activity()
        except OperatorError as exc:
            return f"cannot tell ({exc.reason}: {exc.message})"
    try:
        obj = kubernetes.client.CustomObjectsApi(kube.core().api_client).get_cluster_custom_object(
            GROUP, VERSION, PLURAL, other)
    except ApiException as exc:
        return f"the HypervisorNode cannot be read (HTTP {exc.status}), so it cannot be asked"
    except Exception as exc:  # noqa: BLE001 - cannot know: wait
        return f"the HypervisorNode cannot be read ({type(exc).__name__}), so it cannot be asked"
    try:
        spec = dict(obj.get("spec") or {})
        theirs = parse_host(other, {**spec, "address": address or spec.get("address")})  # validates the address
        pinned = _pin(theirs, dict(obj.get("status") or {}), dict((obj.get("metadata") or {}).get("annotations") or {}))
        if pinned is None:
            return "its host key was never pinned, so it cannot be asked"
        with SshSession(theirs.address, theirs.port, theirs.user, _ssh_key(theirs), pinned) as ssh:
            return Host(ssh).package_activity()
    except OperatorError as exc:
        return f"unreachable or unknown ({exc.reason}: {exc.message})"


def _converge_storages(host: Host, storages: list[HostStorage], previous: host_plan.PreviousStorages,
                       policies: dict[str, str], adopt: bool, out: HostOutcome) -> None:
    fsids = {s.fsid for s in storages}
    if len(fsids) > 1:
        out.cond("CephConfigured", False, "MultipleClusters",
                 f"storages of {len(fsids)} Ceph clusters select this host; /etc/ceph/ceph.conf holds one")
        out.cond("SecretsReady", False, "MultipleClusters", "")
        out.storages.extend({**e, "current": False} for e in previous.entries)  # nothing removed either
        return
    recorded = {e["keyringPath"] for e in previous.entries if e.get("keyringPath")}
    if storages:
        # Every file of this step is judged before any is written: one that is someone else's stops it all.
        files = host_plan.storage_files(storages)
        plan = host_plan.plan_files(files, {f.path: host.read_file(f.path) for f in files}, adopt=adopt,
                                    recorded=recorded)
        if plan.refused:
            _not_owned(out, "CephConfigured", plan.refused)
            out.cond("SecretsReady", False, "HostFileNotOwned", "")
            out.storages.extend({**e, "current": False} for e in previous.entries)  # nothing removed either
            return
        for step in _write(host, plan, out):
            conf = step.path == files[0].path
            out.note("CephConfigWritten" if conf else "KeyringWritten", step.path)
    defined = host.secrets()
    for storage in storages:
        if storage.secret_uuid not in defined:
            host.define_secret(storage.secret_uuid, host_plan.secret_xml(storage))
            out.note("SecretDefined", f"libvirt secret {storage.secret_uuid} for {storage.name}")
        if host.secret_value(storage.secret_uuid) != storage.key:
            host.set_secret_value(storage.secret_uuid, storage.key)
            out.note("SecretUpdated", f"libvirt secret {storage.secret_uuid} now holds the key of {storage.entity}")
        probe = (host.probe(storage.client, storage.keyring_path, storage.pool) if out.facts and out.facts.rbd_cli
                 else "skipped: the rbd CLI (ceph-common) is not installed")
        out.storages.append({"name": storage.name, "secretUUID": storage.secret_uuid, "keyVersion": storage.key_version,
                             "keyringPath": storage.keyring_path, "current": True, "probe": probe,
                             "deletionPolicy": policies.get(storage.name, "Retain")})
    out.storages.extend(previous.carry)
    keep_uuids = {s.get("secretUUID") for s in out.storages}
    keep_paths = {s.get("keyringPath") for s in out.storages}
    for old in previous.remove:
        what = "libvirt secret removed"
        path = old.get("keyringPath")
        if path and path not in keep_paths:
            if _remove_keyring(host, path):
                what = "keyring and " + what
            else:
                what += f"; {path} left on the host (adopted, or not the operator's)"
        if old.get("secretUUID") and old["secretUUID"] not in keep_uuids and old["secretUUID"] in defined:
            host.undefine_secret(old["secretUUID"])
        out.note("StorageRemoved", f"{old.get('name')}: {what}")
    out.cond("CephConfigured", True, "Configured" if storages else "NoStoragesSelected",
             f"{len(storages)} storage(s): " + ", ".join(s.name for s in storages))
    failed = [s["name"] for s in out.storages if str(s.get("probe", "")).startswith("failed") and s.get("current")]
    if failed:
        out.cond("SecretsReady", False, "ProbeFailed", f"probe as the storage's client failed for {', '.join(failed)}")
    else:
        out.cond("SecretsReady", True, "SecretsInSync", f"{len(storages)} libvirt secret(s) hold the current keys")


def _remove_keyring(host: Host, path: str) -> bool:
    """Remove a keyring recorded in status.storages if it is the operator's own (adopted ones stay)."""
    content = host.read_file(path)
    if content is None or not host_plan.removable(content, host_plan.keyring_settings_for(path), recorded=True):
        return False
    return host.remove_file(path)


def _libvirt(host: Host, spec: HostSpec, uid: str, private_key: str, pinned: tuple[str, bytes],
             facts: Facts) -> None:
    """Attach the host's libvirt connection and count its running domains through it.

    No libvirt installed yet: nothing can run (0). Installed but not answering: unknown (None), and the
    disruption guard fails closed."""
    try:
        host.virt = libvirt_conn.connections.get(uid, spec.address, spec.port, spec.user, private_key, pinned)
        facts.running_domains = host.running_domains()
    except SshError as exc:
        if exc.reason == "HostKeyMismatch":
            raise
        host.virt = None
        facts.running_domains = None if facts.libvirt_version else 0


def _converge_host(name: str, spec: HostSpec, uid: str, private_key: str, pinned: tuple[str, bytes],
                   storages: list[HostStorage], previous: host_plan.PreviousStorages,
                   policies: dict[str, str]) -> HostOutcome:
    """Runs in a worker thread: one SSH session (to the pinned key only) for the whole reconcile, plus the
    host's kept-open libvirt connection."""
    out = HostOutcome()
    with SshSession(spec.address, spec.port, spec.user, private_key, pinned) as ssh:
        out.seen_key = ssh.seen_key
        out.cond("Reachable", True, "Connected", f"{spec.user}@{spec.address}:{spec.port}")
        out.cond("HostKeyVerified", True, "Pinned" if spec.host_key else "TrustedOnFirstUse",
                 f"{pinned[0]} {fingerprint(*pinned)}")
        host = Host(ssh)
        out.facts = host.facts()
        _libvirt(host, spec, uid, private_key, pinned, out.facts)
        out.family = host_plan.family_of(out.facts.os_id, out.facts.os_like)
        if out.family is None:
            out.cond("PackagesReady", False, "UnsupportedOS", f"{out.facts.os_id!r} is neither Debian- nor RHEL-like")
        else:
            try:
                if _converge_packages(host, spec, name, out):
                    out.facts = host.facts()
                    _libvirt(host, spec, uid, private_key, pinned, out.facts)  # libvirtd may have restarted
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
        if host.virt is None and (storages or previous.remove):
            host.virt = libvirt_conn.connections.get(uid, spec.address, spec.port, spec.user, private_key, pinned)
        _converge_storages(host, storages, previous, policies, spec.adopt, out)
    return out


def _ssh_key(spec: HostSpec) -> str:
    """The private key from the Secret the spec names (only in the operator's namespace)."""
    ref = spec.ssh_key
    namespace = kube.check_secret_namespace(ref.namespace, ref.name)
    try:
        data = kube.read_secret(namespace, ref.name, fresh=True)  # a replaced key works at once
    except ApiException as exc:
        raise SshError("AuthenticationFailed", f"cannot read Secret {namespace}/{ref.name}: "
                       f"HTTP {exc.status} {exc.reason}") from None
    if not data or not data.get("ssh-privatekey"):
        raise SshError("AuthenticationFailed", f"Secret {namespace}/{ref.name} has no ssh-privatekey")
    return data["ssh-privatekey"]


def _pin(spec: HostSpec, status: dict, annotations: dict) -> tuple[str, bytes] | None:
    """The host key to insist on; None only for a first contact under TrustOnFirstUse.

    A pin once recorded (the annotation, set with the status field) and now missing from the
    status is refused, never silently re-trusted: Refused(HostKeyPinLost).
    """
    if spec.host_key:
        return parse_host_key(spec.host_key)
    if status.get("pinnedHostKey"):
        return parse_host_key(status["pinnedHostKey"], "status.pinnedHostKey")
    if annotations.get(PIN_ANNOTATION):
        raise Refused("HostKeyPinLost", f"status.pinnedHostKey is gone but a key was pinned before "
                      f"({annotations[PIN_ANNOTATION]}); not trusting whoever answers now. Set spec.hostKey, or "
                      f"remove the annotation {PIN_ANNOTATION} to trust on first use again. Nothing was sent")
    return None


async def _first_contact(spec: HostSpec, update: StatusUpdate, body: kopf.Body, patch: kopf.Patch) -> None:
    """Trust on first use: learn and pin the key; nothing is sent to the host in this pass."""
    key_type, blob = await run_blocking(ssh_first_contact, spec.address, spec.port, timeout=60,
                                        reason="HostUnreachable", pool="ssh")
    shown = f"{key_type} {fingerprint(key_type, blob)}"
    update.set(pinnedHostKey=f"{key_type} {base64.b64encode(blob).decode()}", hostKeyFingerprint=shown)
    patch.metadata.setdefault("annotations", {})[PIN_ANNOTATION] = shown
    kopf.event(body, type="Normal", reason="HostKeyPinned", message=f"trusting {shown} from now on")
    update.condition("HostKeyVerified", True, "TrustedOnFirstUse", shown, event=False)
    update.condition("Ready", False, "HostKeyPinned",
                     f"pinned {shown} at first contact; nothing was sent yet, the next pass converges", event=False)


async def converge(name: str, uid: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status, labels: kopf.Labels,
                   patch: kopf.Patch, storages: kopf.Index, logger: logging.Logger, retry: int = 0,
                   timer: bool = False) -> None:
    update = StatusUpdate(body, patch, timer=timer)
    try:
        parsed = parse_host(name, spec)
    except SpecError as exc:
        return update.error(exc, retry)
    if parsed.paused:
        update.condition("Ready", False, "Paused", "spec.paused is true: the host is left alone", event=False)
        update.flush()
        return
    sel = _selected(dict(labels), storages)
    try:
        await settle(uid)
        pinned = _pin(parsed, dict(status), dict(body.get("metadata", {}).get("annotations") or {}))
        if pinned is None:  # first contact: needs no key, sends nothing
            await _first_contact(parsed, update, body, patch)
            update.flush()
            if not timer:
                raise kopf.TemporaryError("host key pinned; converging next", delay=1)
            return
        key = await run_blocking(_ssh_key, parsed, timeout=30, pool="kube")
        host_storages, problems = await _host_storages(sel.ready)
        previous = host_plan.plan_previous_storages(list(status.get("storages") or []),
                                                    {s.name for s in host_storages}, sel.selecting, sel.existing)
        _names[uid] = name
        out = await run_blocking(_converge_host, name, parsed, uid, key, pinned, host_storages, previous, sel.policies,
                                 timeout=HOST_TIMEOUT, pool="ssh")
    except OperatorError as exc:
        if isinstance(exc, SshError) or exc.reason in ("HostUnreachable", "Timeout"):
            reached = exc.reason not in ("HostUnreachable", "AuthenticationFailed", "Timeout")
            update.condition("Reachable", reached, "Connected" if reached else exc.reason,
                             "" if reached else exc.message, event=False)
        if exc.reason in ("HostKeyMismatch", "HostKeyPinLost"):
            update.condition("HostKeyVerified", False, exc.reason, exc.message)
        return update.error(exc, retry)

    for problem in previous.rejected:
        kopf.event(body, type="Warning", reason="UnsafeValue", message=f"{problem}; ignored, nothing removed")
    for kind, reason, message in out.events:
        kopf.event(body, type=kind, reason=reason, message=message)
    if out.seen_key:
        update.set(hostKeyFingerprint=f"{out.seen_key[0]} {fingerprint(*out.seen_key)}")
    if out.facts:
        update.set(facts=out.facts.as_status(out.family))
    update.set(storages=out.storages)
    for type_, ok, reason, message in out.conditions:
        update.condition(type_, ok, reason, message, bad=ok if type_ == "DisruptionBlocked" else None)
    required = ("PackagesReady", "RbdCapable", "CephConfigured", "SecretsReady")
    failing = [(t, r, m) for t, ok, r, m in out.conditions if t in required and not ok]
    unsafe = [(r, m) for r, m in problems.values() if r != "StoragesPending"]
    pending = sel.waiting + [m for r, m in problems.values() if r == "StoragesPending"]
    if failing:
        type_, reason, message = failing[0]
        update.condition("Ready", False, reason, f"{type_}: {message}")
    elif unsafe:
        update.condition("Ready", False, unsafe[0][0], "; ".join(m for _, m in unsafe))
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
@reported()
async def reconcile(name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status, labels: kopf.Labels,
                    patch: kopf.Patch, uid: str, retry: int, storages: kopf.Index, logger: logging.Logger,
                    **_: Any) -> None:
    async with object_lock(uid):
        await converge(name, uid, body, spec, status, labels, patch, storages, logger, retry)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
@reported(timer=True)
async def resync(name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status, labels: kopf.Labels,
                 patch: kopf.Patch, uid: str, meta: kopf.Meta, storages: kopf.Index, logger: logging.Logger,
                 **_: Any) -> None:
    """Drift, key rotation and storages that start or stop selecting this host."""
    if meta.get("deletionTimestamp") or busy(uid):
        return
    async with object_lock(uid):
        await converge(name, uid, body, spec, status, labels, patch, storages, logger, timer=True)


def _clean_host(spec: HostSpec, uid: str, private_key: str, pinned: tuple[str, bytes], held: list[dict]) -> list[str]:
    """Remove what the operator made on the host: keyrings, libvirt secrets, repository files, ceph.conf.

    Adopted files (spec.adopt) stay as they are: they held someone else's settings first, and the
    host's other users of them (VMmanager's ceph.conf, its keyring) keep working."""
    removed = []
    with SshSession(spec.address, spec.port, spec.user, private_key, pinned) as ssh:
        host = Host(ssh, libvirt_conn.connections.get(uid, spec.address, spec.port, spec.user, private_key, pinned))
        defined = host.secrets()
        for entry in held:
            path = entry.get("keyringPath")
            if path and host_plan.keyring_settings_for(path) and _remove_keyring(host, path):
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


# -- changes reach hosts in seconds ----------------------------------------------------------------
# Every event of an RbdStorage (its status carries the key version, secret UUID and monitors) is
# compared with what each HypervisorNode reports; hosts that must change are poked (an annotation:
# kopf reconciles them now) instead of waiting for their next resync. Hosts converge in parallel,
# bounded by the SSH pool.
_POKE_AGAIN_SECONDS = 60.0
_poked: dict[tuple[str, str], tuple[tuple, float]] = {}
_seen: dict[str, tuple] = {}  # the last state of each storage (monitors changes concern every host)


def hosts_to_update(name: str, deleted: bool, spec: dict, status: dict, hypervisors: dict) -> list[str]:
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


@kopf.on.event(GROUP, VERSION, "rbdstorages")
async def propagate(type: str | None, name: str, body: kopf.Body, hypervisors: kopf.Index, logger: logging.Logger,
                    **_: Any) -> None:
    spec, status = dict(body.get("spec") or {}), dict(body.get("status") or {})
    deleted = type == "DELETED"
    state = (deleted, status.get("keyVersion"), status.get("libvirtSecretUUID"),
             repr(status.get("monitors")), repr((spec.get("hypervisors") or {}).get("nodeSelector")))
    now = time.monotonic()
    monitors_changed = name in _seen and _seen[name][3] != state[3]
    _seen[name] = state
    targets = hosts_to_update(name, deleted, spec, status, {h: list(e) for h, e in list(hypervisors.items())})
    if monitors_changed and not deleted:
        selector = (spec.get("hypervisors") or {}).get("nodeSelector")
        targets = sorted(set(targets) | {h for h, entries in list(hypervisors.items())
                                          for e in entries if matches(selector, e["labels"])})
    for host in targets:
        last = _poked.get((host, name))
        if last and last[0] == state and now - last[1] < _POKE_AGAIN_SECONDS:
            continue
        _poked[(host, name)] = (state, now)
        logger.info("RbdStorage %s changed: reconciling HypervisorNode %s now", name, host)
        try:
            await run_blocking(kube.poke, GROUP, VERSION, PLURAL, None, host, timeout=30, pool="kube")
        except (ApiException, OperatorError) as exc:  # the host's own resync catches up
            logger.warning("could not poke HypervisorNode %s: %s", host, getattr(exc, "status", exc))
    if deleted:
        _seen.pop(name, None)


def _delete_policy(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("deletionPolicy") == "Delete"


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_delete_policy)
@reported()
async def clean(name: str, body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, uid: str,
                retry: int, logger: logging.Logger, **_: Any) -> None:
    """deletionPolicy Delete: take the operator's files and secrets off the host before the object goes."""
    update = StatusUpdate(body, patch)
    async with object_lock(uid):
        try:
            await settle(uid)
            parsed = parse_host(name, spec)
            pinned = _pin(parsed, dict(status), dict(body.get("metadata", {}).get("annotations") or {}))
            if pinned is None:
                logger.info("host %s was never pinned, so it received nothing: nothing to remove", parsed.address)
            else:
                key = await run_blocking(_ssh_key, parsed, timeout=30, pool="kube")
                removed = await run_blocking(_clean_host, parsed, uid, key, pinned, list(status.get("storages") or []),
                                             timeout=600, reason="Timeout", pool="ssh")
                kopf.event(body, type="Normal", reason="HostCleaned",
                           message="removed " + (", ".join(removed) if removed else "nothing (already clean)"))
        except OperatorError as exc:
            # The object stays (finalizer) until the host is clean; a person may set deletionPolicy: Retain.
            return update.fail(exc.reason, f"cleaning the host before deletion: {exc.message}",
                               min(300.0, backoff(retry)))
    release_lock(uid)
    libvirt_conn.connections.forget(uid)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
async def forget(uid: str, **_: Any) -> None:
    """deletionPolicy Retain (default): the host keeps what it has (no finalizer needed)."""
    release_lock(uid)
    libvirt_conn.connections.forget(uid)
    _names.pop(uid, None)


# -- running domains follow libvirt's lifecycle events ------------------------------------------------
_names: dict[str, str] = {}  # HypervisorNode uid -> name, for events coming from its connection


def _domains_changed(uid: str) -> None:
    """From libvirt's event thread: count the host's running domains again and put it in status.facts."""
    name = _names.get(uid)
    conn = libvirt_conn.connections.peek(uid)
    if name is None or conn is None:
        return

    def update() -> None:
        try:
            count = libvirt_conn.running_domains(conn)
            kube.patch_cluster_status(GROUP, VERSION, PLURAL, name, {"facts": {"runningDomains": count}})
        except Exception as exc:  # noqa: BLE001 - the next resync corrects it
            logging.getLogger(__name__).debug("running domains of %s not refreshed: %s", name, type(exc).__name__)
    blocking_executor("kube").submit(update)


libvirt_conn.connections.on_lifecycle = _domains_changed
