"""A host's repositories and packages: repository files (ownership rule), what apt/dnf would really remove,
the disruption guard (running domains; one host at a time across replicas: the fenced Lease), the
transaction, RHEL's libvirt re-install and .rpmsave restore (the seed's manual steps)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import kubernetes
from kubernetes.client.rest import ApiException

from ..api.enums import Family
from .. import GROUP, VERSION
from ..adapters import kube
from ..adapters.host import Facts, Host, PackageError
from ..adapters.lease import DisruptionFence, Held, LeaseLock, LeaseLost
from ..adapters.ssh import SshSession
from ..api.errors import OperatorError
from ..api.hypervisor import HostSpec, parse_host
from ..api.reasons import ConditionType, EventReason, Reason
from ..reconcile import host_plan
from ..reconcile.hosts import pin
from .credentials import ssh_key
from .outcome import Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    want: list[str]
    installed: set[str]
    to_remove: list[str]
    to_install: list[str]
    risky: list[str]  # what the change would take away that runs VMs (qemu, libvirt)


def not_owned(out: Outcome, type_: ConditionType, paths: list[str]) -> None:
    out.cond(type_, False, Reason.HOST_FILE_NOT_OWNED,
             f"{', '.join(paths)} exist{'s' if len(paths) == 1 else ''} and w{'as' if len(paths) == 1 else 'ere'} "
             "not written by rbd-operator; set spec.adopt: true to take over (the operator's settings are merged "
             "in, everything else is kept). Nothing of this step was written")


def write(host: Host, plan: host_plan.FilesPlan, out: Outcome) -> list[host_plan.FileStep]:
    """Write what plan_files decided (only ever a plan without refusals)."""
    for step in plan.writes:
        assert step.content is not None
        host.write_file(step.path, step.content, step.mode)
        if step.how is host_plan.Ownership.FOREIGN:
            out.note(EventReason.HOST_FILE_ADOPTED, f"{step.path}: taken over (spec.adopt); its other settings kept")
    return plan.writes


def converge_packages(host: Host, spec: HostSpec, node: str, facts: Facts, family: str, fence: DisruptionFence,
                      out: Outcome) -> bool:
    """Repositories, then removals (disruptive ones fenced), then installs. Returns whether packages changed."""
    if not _repositories(host, spec, family, out):
        return False
    if host.repair_package_db(family):
        out.note(EventReason.PACKAGE_DATABASE_REPAIRED, "an interrupted dpkg run was completed (dpkg --configure -a)")
    change = _change(host, spec, family)
    lease: LeaseLock | None = None
    if change.risky:
        blocked = _blocked(change, spec, facts)
        if blocked:
            out.cond(ConditionType.DISRUPTION_BLOCKED, True, blocked[0], blocked[1])
            out.cond(ConditionType.PACKAGES_READY, False, blocked[0], f"package changes wait for maintenance: "
                     f"{blocked[1]}")
            return False
        # Across replicas (and a replica killed or frozen mid-change): the Lease, held until this change ends.
        got = fence.acquire(spec.address)
        if isinstance(got, Held):
            _wait_for_other(out, f"another disruptive change holds Lease {fence.name} ({got.holder}, "
                                 f"{max(got.expires_in, 0):.0f}s left); waiting for it to finish")
            return False
        lease = got
    return _transaction(host, node, spec.address, family, change, lease, fence, out)


def _repositories(host: Host, spec: HostSpec, family: str, out: Outcome) -> bool:
    """Repository files (the operator's by their name prefix, the rest by the ownership rule); False: refused."""
    wanted = host_plan.repository_plan(spec, family)
    plan = host_plan.plan_files(wanted, {f.path: host.read_file(f.path) for f in wanted}, adopt=spec.adopt)
    if plan.refused:
        not_owned(out, ConditionType.PACKAGES_READY, plan.refused)
        return False
    changed = [step.path for step in write(host, plan, out)]
    existing = {d: host.ssh.listdir(d) for d in host_plan.MANAGED_DIRS[family]}
    for path in host_plan.stale_files(existing, wanted):
        host.remove_file(path)
        changed.append(path)
    if changed:
        out.note(EventReason.REPOSITORIES_CONFIGURED, "wrote " + ", ".join(changed))
        host.refresh_indexes(family)
    return True


def _change(host: Host, spec: HostSpec, family: str) -> Change:
    want = host_plan.desired_packages(spec, family)
    installed = host.installed(sorted(set(want) | set(spec.remove) | {"libvirt", "libvirt-daemon"}))
    to_remove = [p for p in spec.remove if p in installed]
    to_install = [p for p in want if p not in installed]
    # What apt/dnf would really take away (dependents, conflicts), not just the names in the spec.
    risky = host_plan.disruptive(host.simulate(family, to_install, to_remove))
    return Change(want, installed, to_remove, to_install, risky)


def _blocked(change: Change, spec: HostSpec, facts: Facts) -> tuple[Reason, str] | None:
    """Why a disruptive change must wait for maintenance (None: it may go ahead)."""
    if facts.running_domains == 0 or spec.allow_disruption:
        return None
    if facts.running_domains is None:
        return Reason.DOMAINS_UNKNOWN, (f"removing {', '.join(change.risky)} could stop running domains, and libvirt "
                                        "does not answer to tell; set spec.maintenance.allowDisruption: true to "
                                        "proceed anyway")
    return Reason.RUNNING_DOMAINS, (f"removing {', '.join(change.risky)} would stop {facts.running_domains} running "
                                    "domain(s); set spec.maintenance.allowDisruption: true to allow it")


def _wait_for_other(out: Outcome, message: str) -> None:
    out.cond(ConditionType.DISRUPTION_BLOCKED, True, Reason.ANOTHER_HOST_IN_MAINTENANCE, message)
    out.cond(ConditionType.PACKAGES_READY, False, Reason.ANOTHER_HOST_IN_MAINTENANCE,
             f"package changes wait: {message}")


def _transaction(host: Host, node: str, address: str, family: str, change: Change, lease: LeaseLock | None,
                 fence: DisruptionFence, out: Outcome) -> bool:
    clean = lease is None
    try:
        if lease is not None and not _previous_host_idle(host, node, lease, fence, out):
            return False
        if lease is not None:
            lease.record_host(node, address)
        changed = _apply(host, family, change, lease.check if lease is not None else (lambda _what: None), out)
        clean = True
    except LeaseLost as exc:
        clean = True  # every command it ran came back: nothing of it runs on the host
        log.warning("HypervisorNode %s: DisruptionLeaseLost: %s", node, exc.message)
        out.cond(ConditionType.DISRUPTION_BLOCKED, True, Reason.DISRUPTION_LEASE_LOST, exc.message)
        out.cond(ConditionType.PACKAGES_READY, False, Reason.DISRUPTION_LEASE_LOST, exc.message)
        return False
    except PackageError:
        clean = True  # the package command ended (with an exit status)
        raise
    finally:
        if lease is not None:
            fence.release(lease, clean)
    out.cond(ConditionType.PACKAGES_READY, True, Reason.INSTALLED, " ".join(change.want) if change.want else
             "nothing required")
    return changed


def _previous_host_idle(host: Host, node: str, lease: LeaseLock, fence: DisruptionFence, out: Outcome) -> bool:
    """The host the Lease names may still run a transaction its holder started: none may start elsewhere before
    it has ended (the previous holder may be frozen, not dead)."""
    if not lease.pending:
        return True
    other, address = lease.pending
    busy = package_activity(host, node, other, address)
    if busy:
        _wait_for_other(out, f"HypervisorNode {other} ({address}), where the previous holder of Lease {fence.name} "
                             f"changed packages: {busy}; waiting until it has ended")
        return False
    return True


def _apply(host: Host, family: str, change: Change, step: Callable[[str], None], out: Outcome) -> bool:
    """Removals, then installs, then libvirtd (each disruptive step only while the Lease is held)."""
    out.cond(ConditionType.DISRUPTION_BLOCKED, False, Reason.NOT_BLOCKED)
    changed, to_install = False, list(change.to_install)
    if change.to_remove:
        had_libvirt = bool(change.installed & {"libvirt", "libvirt-daemon"})
        step(f"removing {' '.join(change.to_remove)}")
        host.remove(family, change.to_remove)
        out.note(EventReason.PACKAGES_REMOVED, " ".join(change.to_remove))
        changed = True
        if family == Family.RHEL and had_libvirt and "libvirt" not in host.installed(["libvirt"]) \
                and "libvirt" not in to_install:
            to_install.append("libvirt")  # the seed: removing qemu-kvm took libvirt with it
    if to_install:
        step(f"installing {' '.join(to_install)}")
        host.install(family, to_install)
        out.note(EventReason.PACKAGES_INSTALLED, " ".join(to_install))
        changed = True
    if changed and host.restore_rpmsave(host_plan.LIBVIRTD_CONF):
        out.note(EventReason.CONFIG_RESTORED, f"{host_plan.LIBVIRTD_CONF} restored from .rpmsave")
        step("restarting libvirtd")
        host.restart_libvirtd()
    elif changed and change.risky:
        step("restarting libvirtd")
        host.restart_libvirtd()
    return changed


def package_activity(host: Host, node: str, other: str, address: str) -> str | None:
    """What package transaction still runs on the host the Lease names (None: none runs). A host that
    cannot be asked counts as busy: fail closed."""
    if other == node and address == host.ssh.address:
        try:
            return host.package_activity()
        except OperatorError as exc:
            return f"cannot tell ({exc.reason}: {exc.message})"
    try:
        obj = kubernetes.client.CustomObjectsApi(kube.core().api_client).get_cluster_custom_object(
            GROUP, VERSION, "hypervisornodes", other)
    except ApiException as exc:
        return f"the HypervisorNode cannot be read (HTTP {exc.status}), so it cannot be asked"
    except Exception as exc:  # noqa: BLE001 - cannot know: wait
        return f"the HypervisorNode cannot be read ({type(exc).__name__}), so it cannot be asked"
    try:
        spec = dict(obj.get("spec") or {})
        theirs = parse_host(other, {**spec, "address": address or spec.get("address")})  # validates the address
        pinned = pin(theirs, dict(obj.get("status") or {}), dict((obj.get("metadata") or {}).get("annotations") or {}))
        if pinned is None:
            return "its host key was never pinned, so it cannot be asked"
        with SshSession(theirs.address, theirs.port, theirs.user, ssh_key(theirs), pinned) as ssh:
            return Host(ssh).package_activity()
    except OperatorError as exc:
        return f"unreachable or unknown ({exc.reason}: {exc.message})"
