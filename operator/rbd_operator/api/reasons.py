"""Every condition reason the operator reports, documented, with what it means for a person.

`Health` says how GitOps tools (Argo CD's health checks in deploy/argocd) should read a
`Ready=False` condition with that reason:

- PROGRESSING: transient; the operator retries by itself (unreachable Ceph or host, waiting for
  a storage, a deletion waiting for watchers, ...).
- DEGRADED: a person has to act (invalid spec, refused shrink, host key mismatch, ownership
  conflicts, ...). It never clears by waiting.
- SUSPENDED: the object asks the operator to leave it alone.
- HEALTHY: the reason of a True condition.

Reasons of conditions other than Ready (PoolReady, SecretsReady, ...) are listed too: a failing
sub-condition's reason becomes Ready's reason. A unit test keeps this table and the code in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Health(str, Enum):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"


STORAGE, IMAGE, HOST, SNAPSHOT = "RbdStorage", "RbdImage", "HypervisorNode", "RbdSnapshot"
ALL = (STORAGE, IMAGE, HOST, SNAPSHOT)


@dataclass(frozen=True)
class Reason:
    name: str
    kinds: tuple[str, ...]
    health: Health
    doc: str


_P, _D, _H, _S = Health.PROGRESSING, Health.DEGRADED, Health.HEALTHY, Health.SUSPENDED

REASONS: tuple[Reason, ...] = (
    # -- healthy --------------------------------------------------------------------------------
    Reason("Converged", ALL, _H, "Ceph (or the host) matches the spec."),
    Reason("PoolConverged", (STORAGE,), _H, "PoolReady: the pool matches the spec."),
    Reason("ClientConverged", (STORAGE,), _H, "ClientReady: the cephx client has the wanted caps."),
    Reason("CanBlocklist", (STORAGE,), _H, "CapsWeak=False: the client may blocklist dead peers."),
    Reason("Connected", (HOST,), _H, "Reachable: SSH connected and authenticated."),
    Reason("Pinned", (HOST,), _H, "HostKeyVerified: the host presented the key of spec.hostKey."),
    Reason("TrustedOnFirstUse", (HOST,), _H,
           "HostKeyVerified: the host presented the key pinned at first contact (status.pinnedHostKey)."),
    Reason("Installed", (HOST,), _H, "PackagesReady: the wanted packages are installed."),
    Reason("QemuRbd", (HOST,), _H, "RbdCapable: QEMU has its rbd block driver."),
    Reason("KernelRbd", (HOST,), _H, "RbdCapable: the kernel has the rbd module."),
    Reason("ProfileNone", (HOST,), _H, "RbdCapable: profile none, capabilities only reported."),
    Reason("Configured", (HOST,), _H, "CephConfigured: /etc/ceph holds the selected storages."),
    Reason("NoStoragesSelected", (HOST,), _H, "CephConfigured: no RbdStorage selects this host."),
    Reason("SecretsInSync", (HOST,), _H, "SecretsReady: libvirt secrets hold the current keys."),
    Reason("NotBlocked", (HOST,), _H, "DisruptionBlocked=False."),
    Reason("Within", (IMAGE,), _H, "WithinLimits: the image is within its storage's spec.imageLimits."),
    # -- transient: the operator retries -----------------------------------------------------
    Reason("CephUnreachable", (STORAGE, IMAGE, SNAPSHOT), _P, "No answer from the monitors in time; retried."),
    Reason("SecretWriteFailed", (STORAGE,), _P, "The client Secret could not be written; retried."),
    Reason("PoolNotEmpty", (STORAGE,), _P,
           "Deletion with deletionPolicy Delete waits until the pool (all namespaces) holds no image, "
           "trashed image or object."),
    Reason("StorageNotFound", (IMAGE, SNAPSHOT), _P, "The RbdStorage named in spec.storage does not exist (yet)."),
    Reason("StorageNotReady", (IMAGE, SNAPSHOT), _P, "The RbdStorage has not created its pool yet, or is invalid."),
    Reason("SourceNotFound", (IMAGE,), _P, "The clone source image does not exist (yet)."),
    Reason("SnapshotNotFound", (IMAGE,), _P, "The clone source snapshot does not exist (yet)."),
    Reason("ImageNotFound", (IMAGE, SNAPSHOT), _P,
           "The image vanished while being converged, or a snapshot's RbdImage does not exist (yet); retried."),
    Reason("InUse", (IMAGE,), _P, "Deletion waits until the image has no watchers (no VM uses it)."),
    Reason("HasClones", (SNAPSHOT,), _P,
           "Deletion waits until the snapshot's dependent clones are flattened or gone (the message names them)."),
    Reason("URLUnreachable", (IMAGE,), _P, "The import's URL could not be fetched (completely); retried with backoff."),
    Reason("SnapshotPending", (IMAGE,), _P, "The RbdSnapshot a clone names does not exist or is not ready yet."),
    Reason("ApiError", (STORAGE, IMAGE, HOST, SNAPSHOT), _P,
           "The Kubernetes API failed a request the operator needed (fail closed: nothing done); retried."),
    Reason("HostUnreachable", (HOST,), _P, "No TCP connection or SSH handshake with the host; retried."),
    Reason("CommandTimedOut", (HOST,), _P, "A command on the host did not finish in time; retried."),
    Reason("Timeout", (HOST,), _P, "Converging the host took too long; retried."),
    Reason("RepositoryUnreachable", (HOST,), _P, "A package repository could not be reached; retried."),
    Reason("PackageManagerBusy", (HOST,), _P, "apt/dnf is locked by another run on the host; retried."),
    Reason("LibvirtUnavailable", (HOST,), _P, "libvirtd did not answer on the host; retried."),
    Reason("AnotherHostInMaintenance", (HOST,), _P,
           "A disruptive package change waits while another host is being changed (one at a time, across "
           "replicas: Lease rbd-operator-disruption; a Lease that cannot be read counts as held), or until no "
           "package transaction runs any more on the host the Lease names (unreachable or unknown: it waits)."),
    Reason("DisruptionLeaseLost", (HOST,), _P,
           "A disruptive package step was not started: this replica's last renewal of Lease rbd-operator-disruption "
           "is too old by its own clock (it was frozen or cut off from the API server), or another replica holds "
           "it now; retried once the Lease is held again."),
    Reason("DomainsUnknown", (HOST,), _P,
           "A package change would remove qemu/libvirt and libvirt cannot tell which domains run: it waits "
           "(fail closed) unless spec.maintenance.allowDisruption."),
    Reason("UnexpectedError", ALL, _P,
           "An unexpected failure (its traceback is in the operator's log); retried with backoff."),
    Reason("StoragesPending", (HOST,), _P, "A selected RbdStorage has not published its key yet."),
    Reason("HostKeyPinned", (HOST,), _P,
           "TrustOnFirstUse: the key seen at first contact was pinned; nothing was sent in that pass."),
    # -- a person has to act -----------------------------------------------------------------
    Reason("InvalidSpec", ALL, _D, "The spec cannot work as written; the message names the field."),
    Reason("InvalidName", (STORAGE, IMAGE, SNAPSHOT), _D, "A pool, image or client name breaks the naming rules."),
    Reason("InvalidSize", (IMAGE,), _D, "spec.size is not a positive quantity."),
    Reason("InvalidFeatures", (IMAGE,), _D, "Unknown image features or a missing dependency."),
    Reason("InvalidPackage", (HOST,), _D, "A package name is not valid."),
    Reason("AuthFailed", (STORAGE, IMAGE, SNAPSHOT), _D,
           "The admin Secret is missing, unreadable or holds a key Ceph refuses."),
    Reason("CephCommandFailed", (STORAGE, IMAGE, SNAPSHOT), _D, "Ceph refused a command; the message says why."),
    Reason("PoolNotFound", (STORAGE, IMAGE), _D, "The storage's pool is gone from Ceph."),
    Reason("CachePoolNotFound", (STORAGE,), _D, "spec.client.cachePool names a pool that does not exist."),
    Reason("DataPoolNotFound", (IMAGE,), _D, "spec.dataPool names a pool that does not exist."),
    Reason("SizeExceedsQuota", (IMAGE,), _D, "spec.size is larger than the pool's quota."),
    Reason("ShrinkNotAllowed", (IMAGE,), _D, "Shrinking loses data; needs spec.allowShrink."),
    Reason("NotOwned", (STORAGE, IMAGE, SNAPSHOT), _D,
           "The pool, client or image exists in Ceph and was not made by the operator: set the adopt "
           "field to take it over; nothing was changed."),
    Reason("OwnedByOther", (STORAGE, IMAGE, SNAPSHOT), _D,
           "The pool, client or image belongs to another object of the operator; nothing was changed."),
    Reason("SecretOutsideNamespace", (STORAGE, HOST), _D,
           "A Secret reference names a namespace other than the operator's; nothing was read."),
    Reason("SecretConflict", (STORAGE,), _D,
           "spec.client.secretName names an existing Secret the storage does not own; it is not written."),
    Reason("NamespaceNotAllowed", (IMAGE,), _D,
           "The storage's spec.imageNamespaces does not admit the image's namespace."),
    Reason("ImportNotAllowed", (IMAGE,), _D,
           "spec.source.url (or a redirect) is not under the storage's spec.imports.allowedURLPrefixes; nothing "
           "was fetched."),
    Reason("ChecksumMismatch", (IMAGE,), _D, "The download's sha256 differs from spec.source.sha256; nothing kept."),
    Reason("UnsupportedImageFormat", (IMAGE,), _D,
           "The template is a qcow2 the importer does not read (backing file, encryption, compression, ...)."),
    Reason("SourceNotAllowed", (IMAGE,), _D,
           "A clone source must be an image owned by an RbdImage in the same namespace."),
    Reason("AuthenticationFailed", (HOST,), _D, "The SSH key Secret is missing or the host refused the key."),
    Reason("HostKeyMismatch", (HOST,), _D, "The host presented a key other than the pinned one; nothing ran."),
    Reason("CommandFailed", (HOST,), _D, "A command on the host failed; the message says why."),
    Reason("PackageNotFound", (HOST,), _D, "A wanted package is in no configured repository."),
    Reason("PackageCommandFailed", (HOST,), _D, "apt/dnf failed; the message holds its last lines."),
    Reason("UnsupportedOS", (HOST,), _D, "The host is neither Debian- nor RHEL-like."),
    Reason("NoQemuRbd", (HOST,), _D, "QEMU lacks the rbd block driver after the package step."),
    Reason("NoKernelRbd", (HOST,), _D, "The kernel lacks the rbd module (profile kernel-rbd)."),
    Reason("MultipleClusters", (HOST,), _D, "Storages of several Ceph clusters select one host."),
    Reason("ProbeFailed", (HOST,), _D, "`rbd ls` as the storage's client failed on the host."),
    Reason("UnsafeValue", (STORAGE, IMAGE, HOST, SNAPSHOT), _D,
           "A value about to reach a host path, file or command (from a spec, a status, a Secret or Ceph) failed "
           "validation; nothing of it was sent."),
    Reason("HostKeyPinLost", (HOST,), _D,
           "status.pinnedHostKey vanished although a key was pinned (annotation rbd-operator.io/pinned-host-key): "
           "not re-trusted; set spec.hostKey or remove the annotation."),
    Reason("AdoptionNotAllowed", (IMAGE,), _D,
           "The image exists and no live RbdImage of this cluster owns it (made by hand, left by a deleted object of "
           "another namespace, or recorded by another Kubernetes cluster): adopting it needs the storage's grant "
           "(spec.adoption.namespaces) for this namespace; nothing was changed."),
    Reason("LimitExceeded", (IMAGE,), _D,
           "The spec goes beyond the storage's spec.imageLimits (the message names the field and the limit); nothing "
           "was written in Ceph."),
    Reason("DataPoolNotAllowed", (IMAGE,), _D,
           "spec.dataPool is not listed in the storage's spec.imageLimits.dataPools; nothing was written in Ceph."),
    Reason("HostFileNotOwned", (HOST,), _D,
           "A file the operator would write on the host (the message names the path) exists and was not written by "
           "it; set spec.adopt: true to take it over. Nothing was written."),
    Reason("RunningDomains", (HOST,), _D,
           "Removing qemu/libvirt packages would stop running domains: needs "
           "spec.maintenance.allowDisruption."),
    # -- suspended -----------------------------------------------------------------------------
    Reason("Paused", (HOST,), _S, "spec.paused: the operator leaves the host alone."),
    # -- other conditions' reasons (not Ready's) ---------------------------------------------
    Reason("CannotBlocklist", (STORAGE,), _D,
           "CapsWeak=True: the client's mon caps cannot blocklist a dead client (a warning; Ready stays True)."),
)

BY_NAME = {r.name: r for r in REASONS}

# Reasons of Events only (Normal events narrating what was done; Warnings repeat a condition's reason).
EVENT_REASONS = {
    "PoolCreated": "A pool was created (under its staging name, marked, renamed into place).",
    "PoolUpdated": "A pool setting was set to the spec's value.",
    "QuotaUpdated": "A pool quota was set to the spec's value.",
    "PoolInitialized": "rbd pool init ran on the pool.",
    "ApplicationEnabled": "An application was enabled on the pool.",
    "PoolAdopted": "An existing pool was adopted: its owner recorded in Ceph.",
    "ClientOwnerRecorded": "The storage was recorded as an owner of its cephx user.",
    "ClientCreated": "A cephx user was created.",
    "CapsCorrected": "A cephx user's caps were set to what the spec wants.",
    "ClientSecretUpdated": "The client Secret was created or updated.",
    "KeyRotated": "spec.client.rotateKeyGeneration was raised: the user has a new key in Ceph.",
    "HostsCurrent": "Every selected host holds the client's current key (a rotation's rollout is complete).",
    "Deleted": "What the storage owned was deleted.",
    "Created": "An image was created.",
    "Cloned": "An image was cloned.",
    "Resized": "An image was resized.",
    "Flattened": "A clone was flattened.",
    "FeaturesUpdated": "Dynamic image features were enabled or disabled.",
    "SnapshotProtected": "A clone source snapshot was protected.",
    "Adopted": "An existing image was adopted: its owner tag set.",
    "QosUpdated": "The image's rbd_qos_* limits were set to the spec's (or the storage's imageDefaults).",
    "Trashed": "An image was moved to the RBD trash.",
    "Imported": "A template was imported from its URL into the image.",
    "SnapshotCreated": "A snapshot was taken (its owner recorded in the image's metadata first).",
    "SnapshotAdopted": "An existing snapshot was adopted by an RbdSnapshot.",
    "SnapshotRemoved": "A snapshot was removed (unprotected first).",
    "RepositoriesConfigured": "Repository files were written or removed on a host.",
    "PackageDatabaseRepaired": "An interrupted dpkg run was completed (dpkg --configure -a).",
    "PackagesRemoved": "Packages were removed from a host.",
    "PackagesInstalled": "Packages were installed on a host.",
    "ConfigRestored": "libvirtd.conf was restored from its .rpmsave copy.",
    "CephConfigWritten": "/etc/ceph/ceph.conf was written on a host.",
    "KeyringWritten": "A client keyring was written on a host (0600).",
    "SecretDefined": "A libvirt secret was defined on a host.",
    "SecretUpdated": "A libvirt secret's value was set to the client's key.",
    "StorageRemoved": "A storage's keyring and libvirt secret were removed from a host.",
    "HostKeyPinned": "Trust on first use: the host key seen at first contact is pinned.",
    "HostCleaned": "deletionPolicy Delete: the operator's files and secrets were removed from the host.",
    "UnsafeValue": "A status entry failed validation and was ignored.",
    "TrashPurged": "An image this operator moved to the trash was removed for good after its retention (in the "
                   "background, apart from the storage's reconcile).",
    "RotationResumed": "A key rotation cut short after Ceph took the new key was completed with that key (no second "
                       "new key).",
    "OwnerRecordUpgraded": "An owner record in Ceph written by an earlier release was rewritten with this cluster's "
                           "identity.",
    "HostFileAdopted": "A host file the operator did not write was taken over (spec.adopt): its own settings kept.",
    "ActiveReplica": "This replica became the one that works (the other replicas stand by).",
}


def health_of(reason: str) -> Health:
    """How a Ready=False condition with this reason should be read; unknown reasons are DEGRADED (fail closed)."""
    entry = BY_NAME.get(reason)
    return entry.health if entry else Health.DEGRADED
