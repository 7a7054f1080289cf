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
from enum import Enum, StrEnum


class Health(str, Enum):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"


class Kind(StrEnum):
    STORAGE = "RbdStorage"
    IMAGE = "RbdImage"
    HOST = "HypervisorNode"
    SNAPSHOT = "RbdSnapshot"
    SCHEDULE = "RbdSnapshotSchedule"


STORAGE, IMAGE, HOST, SNAPSHOT, SCHEDULE = Kind.STORAGE, Kind.IMAGE, Kind.HOST, Kind.SNAPSHOT, Kind.SCHEDULE
ALL = (STORAGE, IMAGE, HOST, SNAPSHOT, SCHEDULE)


class ConditionType(StrEnum):
    """The conditions the operator sets (metav1.Condition types); Ready summarises the others."""
    READY = "Ready"
    POOL_READY = "PoolReady"
    CLIENT_READY = "ClientReady"
    CAPS_WEAK = "CapsWeak"
    WITHIN_LIMITS = "WithinLimits"
    REACHABLE = "Reachable"
    HOST_KEY_VERIFIED = "HostKeyVerified"
    PACKAGES_READY = "PackagesReady"
    RBD_CAPABLE = "RbdCapable"
    CEPH_CONFIGURED = "CephConfigured"
    SECRETS_READY = "SecretsReady"
    DISRUPTION_BLOCKED = "DisruptionBlocked"


class Reason(StrEnum):
    """Every reason of a condition the operator reports (documented in REGISTRY below)."""
    CONVERGED = 'Converged'
    POOL_CONVERGED = 'PoolConverged'
    CLIENT_CONVERGED = 'ClientConverged'
    CAN_BLOCKLIST = 'CanBlocklist'
    CONNECTED = 'Connected'
    PINNED = 'Pinned'
    TRUSTED_ON_FIRST_USE = 'TrustedOnFirstUse'
    INSTALLED = 'Installed'
    QEMU_RBD = 'QemuRbd'
    KERNEL_RBD = 'KernelRbd'
    PROFILE_NONE = 'ProfileNone'
    CONFIGURED = 'Configured'
    NO_STORAGES_SELECTED = 'NoStoragesSelected'
    SECRETS_IN_SYNC = 'SecretsInSync'
    NOT_BLOCKED = 'NotBlocked'
    WITHIN = 'Within'
    CEPH_UNREACHABLE = 'CephUnreachable'
    SECRET_WRITE_FAILED = 'SecretWriteFailed'
    POOL_NOT_EMPTY = 'PoolNotEmpty'
    STORAGE_NOT_FOUND = 'StorageNotFound'
    STORAGE_NOT_READY = 'StorageNotReady'
    SOURCE_NOT_FOUND = 'SourceNotFound'
    SNAPSHOT_NOT_FOUND = 'SnapshotNotFound'
    IMAGE_NOT_FOUND = 'ImageNotFound'
    IN_USE = 'InUse'
    GUEST_RESIZE_PENDING = 'GuestResizePending'
    HAS_CLONES = 'HasClones'
    URL_UNREACHABLE = 'URLUnreachable'
    IMPORT_STALLED = 'ImportStalled'
    SNAPSHOT_PENDING = 'SnapshotPending'
    API_ERROR = 'ApiError'
    HOST_UNREACHABLE = 'HostUnreachable'
    COMMAND_TIMED_OUT = 'CommandTimedOut'
    TIMEOUT = 'Timeout'
    REPOSITORY_UNREACHABLE = 'RepositoryUnreachable'
    PACKAGE_MANAGER_BUSY = 'PackageManagerBusy'
    LIBVIRT_UNAVAILABLE = 'LibvirtUnavailable'
    ANOTHER_HOST_IN_MAINTENANCE = 'AnotherHostInMaintenance'
    DISRUPTION_LEASE_LOST = 'DisruptionLeaseLost'
    DOMAINS_UNKNOWN = 'DomainsUnknown'
    UNEXPECTED_ERROR = 'UnexpectedError'
    STORAGES_PENDING = 'StoragesPending'
    HOST_KEY_PINNED = 'HostKeyPinned'
    INVALID_SPEC = 'InvalidSpec'
    INVALID_NAME = 'InvalidName'
    INVALID_SIZE = 'InvalidSize'
    INVALID_FEATURES = 'InvalidFeatures'
    INVALID_PACKAGE = 'InvalidPackage'
    AUTH_FAILED = 'AuthFailed'
    CEPH_COMMAND_FAILED = 'CephCommandFailed'
    POOL_NOT_FOUND = 'PoolNotFound'
    CACHE_POOL_NOT_FOUND = 'CachePoolNotFound'
    DATA_POOL_NOT_FOUND = 'DataPoolNotFound'
    SIZE_EXCEEDS_QUOTA = 'SizeExceedsQuota'
    SHRINK_NOT_ALLOWED = 'ShrinkNotAllowed'
    NOT_OWNED = 'NotOwned'
    OWNED_BY_OTHER = 'OwnedByOther'
    SECRET_OUTSIDE_NAMESPACE = 'SecretOutsideNamespace'
    SECRET_CONFLICT = 'SecretConflict'
    NAMESPACE_NOT_ALLOWED = 'NamespaceNotAllowed'
    IMPORT_NOT_ALLOWED = 'ImportNotAllowed'
    CHECKSUM_MISMATCH = 'ChecksumMismatch'
    UNSUPPORTED_IMAGE_FORMAT = 'UnsupportedImageFormat'
    INVALID_IMAGE = 'InvalidImage'
    SOURCE_NOT_ALLOWED = 'SourceNotAllowed'
    NOT_IN_TRASH = 'NotInTrash'
    AUTHENTICATION_FAILED = 'AuthenticationFailed'
    HOST_KEY_MISMATCH = 'HostKeyMismatch'
    COMMAND_FAILED = 'CommandFailed'
    PACKAGE_NOT_FOUND = 'PackageNotFound'
    PACKAGE_COMMAND_FAILED = 'PackageCommandFailed'
    UNSUPPORTED_OS = 'UnsupportedOS'
    NO_QEMU_RBD = 'NoQemuRbd'
    NO_KERNEL_RBD = 'NoKernelRbd'
    MULTIPLE_CLUSTERS = 'MultipleClusters'
    PROBE_FAILED = 'ProbeFailed'
    UNSAFE_VALUE = 'UnsafeValue'
    HOST_KEY_PIN_LOST = 'HostKeyPinLost'
    ADOPTION_NOT_ALLOWED = 'AdoptionNotAllowed'
    LIMIT_EXCEEDED = 'LimitExceeded'
    DATA_POOL_NOT_ALLOWED = 'DataPoolNotAllowed'
    HOST_FILE_NOT_OWNED = 'HostFileNotOwned'
    RUNNING_DOMAINS = 'RunningDomains'
    PAUSED = 'Paused'
    CANNOT_BLOCKLIST = 'CannotBlocklist'
    LIBVIRT_SECRET_UUID_IN_USE = 'LibvirtSecretUUIDInUse'


class EventReason(StrEnum):
    """Reasons of Events that narrate what was done (Warnings repeat a condition's Reason)."""
    POOL_CREATED = 'PoolCreated'
    POOL_UPDATED = 'PoolUpdated'
    QUOTA_UPDATED = 'QuotaUpdated'
    POOL_INITIALIZED = 'PoolInitialized'
    APPLICATION_ENABLED = 'ApplicationEnabled'
    POOL_ADOPTED = 'PoolAdopted'
    CLIENT_OWNER_RECORDED = 'ClientOwnerRecorded'
    CLIENT_CREATED = 'ClientCreated'
    CAPS_CORRECTED = 'CapsCorrected'
    CLIENT_SECRET_UPDATED = 'ClientSecretUpdated'
    KEY_ROTATED = 'KeyRotated'
    HOSTS_CURRENT = 'HostsCurrent'
    DELETED = 'Deleted'
    CREATED = 'Created'
    CLONED = 'Cloned'
    RESIZED = 'Resized'
    FLATTENED = 'Flattened'
    FEATURES_UPDATED = 'FeaturesUpdated'
    SNAPSHOT_PROTECTED = 'SnapshotProtected'
    ADOPTED = 'Adopted'
    QOS_UPDATED = 'QosUpdated'
    TRASHED = 'Trashed'
    IMPORTED = 'Imported'
    SNAPSHOT_CREATED = 'SnapshotCreated'
    SNAPSHOT_ADOPTED = 'SnapshotAdopted'
    SNAPSHOT_REMOVED = 'SnapshotRemoved'
    REPOSITORIES_CONFIGURED = 'RepositoriesConfigured'
    PACKAGE_DATABASE_REPAIRED = 'PackageDatabaseRepaired'
    PACKAGES_REMOVED = 'PackagesRemoved'
    PACKAGES_INSTALLED = 'PackagesInstalled'
    CONFIG_RESTORED = 'ConfigRestored'
    CEPH_CONFIG_WRITTEN = 'CephConfigWritten'
    KEYRING_WRITTEN = 'KeyringWritten'
    SECRET_DEFINED = 'SecretDefined'
    SECRET_UPDATED = 'SecretUpdated'
    STORAGE_REMOVED = 'StorageRemoved'
    HOST_KEY_PINNED = 'HostKeyPinned'
    HOST_CLEANED = 'HostCleaned'
    TRASH_PURGED = 'TrashPurged'
    ROTATION_RESUMED = 'RotationResumed'
    OWNER_RECORD_UPGRADED = 'OwnerRecordUpgraded'
    HOST_FILE_ADOPTED = 'HostFileAdopted'
    ACTIVE_REPLICA = 'ActiveReplica'
    FAST_PATH_DISABLED = 'FastPathDisabled'
    GUEST_DISK_RESIZED = 'GuestDiskResized'
    GUEST_RESIZE_BY_OWNER = 'GuestResizeByOwner'
    REVERTED = 'Reverted'
    RESTORED = 'Restored'
    SCHEDULED_SNAPSHOT_CREATED = 'ScheduledSnapshotCreated'
    SCHEDULED_SNAPSHOT_PRUNED = 'ScheduledSnapshotPruned'
    SCHEDULE_RELEASED = 'ScheduleReleased'
    MEMORY_NEAR_LIMIT = 'MemoryNearLimit'


@dataclass(frozen=True)
class Documented:
    reason: Reason
    kinds: tuple[Kind, ...]
    health: Health
    doc: str

    @property
    def name(self) -> str:
        return self.reason.value


_P, _D, _H, _S = Health.PROGRESSING, Health.DEGRADED, Health.HEALTHY, Health.SUSPENDED

REASONS: tuple[Documented, ...] = (
    Documented(Reason.CONVERGED, ALL, _H,
               'Ceph (or the host) matches the spec.'),
    Documented(Reason.POOL_CONVERGED, (STORAGE,), _H,
               'PoolReady: the pool matches the spec.'),
    Documented(Reason.CLIENT_CONVERGED, (STORAGE,), _H,
               'ClientReady: the cephx client has the wanted caps.'),
    Documented(Reason.CAN_BLOCKLIST, (STORAGE,), _H,
               'CapsWeak=False: the client may blocklist dead peers.'),
    Documented(Reason.CONNECTED, (HOST,), _H,
               'Reachable: SSH connected and authenticated.'),
    Documented(Reason.PINNED, (HOST,), _H,
               'HostKeyVerified: the host presented the key of spec.hostKey.'),
    Documented(Reason.TRUSTED_ON_FIRST_USE, (HOST,), _H,
               'HostKeyVerified: the host presented the key pinned at first contact (status.pinnedHostKey).'),
    Documented(Reason.INSTALLED, (HOST,), _H,
               'PackagesReady: the wanted packages are installed.'),
    Documented(Reason.QEMU_RBD, (HOST,), _H,
               'RbdCapable: QEMU has its rbd block driver.'),
    Documented(Reason.KERNEL_RBD, (HOST,), _H,
               'RbdCapable: the kernel has the rbd module.'),
    Documented(Reason.PROFILE_NONE, (HOST,), _H,
               'RbdCapable: profile none, capabilities only reported.'),
    Documented(Reason.CONFIGURED, (HOST,), _H,
               'CephConfigured: /etc/ceph holds the selected storages.'),
    Documented(Reason.NO_STORAGES_SELECTED, (HOST,), _H,
               'CephConfigured: no RbdStorage selects this host.'),
    Documented(Reason.SECRETS_IN_SYNC, (HOST,), _H,
               'SecretsReady: libvirt secrets hold the current keys.'),
    Documented(Reason.NOT_BLOCKED, (HOST,), _H,
               'DisruptionBlocked=False.'),
    Documented(Reason.WITHIN, (IMAGE,), _H,
               "WithinLimits: the image is within its storage's spec.imageLimits."),
    Documented(Reason.CEPH_UNREACHABLE, (STORAGE, IMAGE, SNAPSHOT), _P,
               'No answer from the monitors in time; retried.'),
    Documented(Reason.SECRET_WRITE_FAILED, (STORAGE,), _P,
               'The client Secret could not be written; retried.'),
    Documented(Reason.POOL_NOT_EMPTY, (STORAGE,), _P,
               'Deletion with deletionPolicy Delete waits until the pool (all namespaces) holds no image, '
               'trashed image or object.'),
    Documented(Reason.STORAGE_NOT_FOUND, (IMAGE, SNAPSHOT), _P,
               'The RbdStorage named in spec.storage does not exist (yet).'),
    Documented(Reason.STORAGE_NOT_READY, (IMAGE, SNAPSHOT), _P,
               'The RbdStorage has not created its pool yet, or is invalid.'),
    Documented(Reason.SOURCE_NOT_FOUND, (IMAGE,), _P,
               'The clone source image does not exist (yet).'),
    Documented(Reason.SNAPSHOT_NOT_FOUND, (IMAGE,), _P,
               'The clone source snapshot does not exist (yet).'),
    Documented(Reason.IMAGE_NOT_FOUND, (IMAGE, SNAPSHOT), _P,
               "The image vanished while being converged, or a snapshot's RbdImage does not exist (yet); "
               'retried.'),
    Documented(Reason.IN_USE, (IMAGE,), _P,
               'Deletion, a shrink or a revert waits until the image has no watchers (no VM uses it; the message '
               'names them); nothing was changed.'),
    Documented(Reason.GUEST_RESIZE_PENDING, (IMAGE,), _P,
               'The image grew, but the disk of a running domain on a HypervisorNode using it could not be resized '
               '(libvirt block resize; the message names node, domain and why). The image itself is grown; the '
               'resize is retried.'),
    Documented(Reason.HAS_CLONES, (SNAPSHOT, SCHEDULE), _P,
               "Deletion waits until the snapshot's dependent clones are flattened or gone (the message names "
               'them). On an RbdSnapshotSchedule, Ready stays True: snapshots beyond spec.keep are kept because '
               'clones depend on them (the message and status.keptWithClones name them).'),
    Documented(Reason.URL_UNREACHABLE, (IMAGE,), _P,
               "The import's URL could not be fetched (completely); retried with backoff."),
    Documented(Reason.IMPORT_STALLED, (IMAGE,), _P,
               "The download moved less than 64 KiB in the storage's spec.imports.stallTimeout (default 2m), or "
               'outlived its deadline; its connection was closed and its import slot freed; retried with backoff.'),
    Documented(Reason.SNAPSHOT_PENDING, (IMAGE,), _P,
               'The RbdSnapshot a clone names does not exist or is not ready yet.'),
    Documented(Reason.API_ERROR, ALL, _P,
               'The Kubernetes API failed a request the operator needed (fail closed: nothing done); retried.'),
    Documented(Reason.HOST_UNREACHABLE, (HOST,), _P,
               'No TCP connection or SSH handshake with the host; retried.'),
    Documented(Reason.COMMAND_TIMED_OUT, (HOST,), _P,
               'A command on the host did not finish in time; retried.'),
    Documented(Reason.TIMEOUT, (HOST,), _P,
               'Converging the host took too long; retried.'),
    Documented(Reason.REPOSITORY_UNREACHABLE, (HOST,), _P,
               'A package repository could not be reached; retried.'),
    Documented(Reason.PACKAGE_MANAGER_BUSY, (HOST,), _P,
               'apt/dnf is locked by another run on the host; retried.'),
    Documented(Reason.LIBVIRT_UNAVAILABLE, (HOST,), _P,
               'libvirtd did not answer on the host; retried.'),
    Documented(Reason.ANOTHER_HOST_IN_MAINTENANCE, (HOST,), _P,
               'A disruptive package change waits while another host is being changed (one at a time, across '
               'replicas: Lease rbd-operator-disruption; a Lease that cannot be read counts as held), or until '
               'no package transaction runs any more on the host the Lease names (unreachable or unknown: it '
               'waits).'),
    Documented(Reason.DISRUPTION_LEASE_LOST, (HOST,), _P,
               "A disruptive package step was not started: this replica's last renewal of Lease "
               'rbd-operator-disruption is too old by its own clock (it was frozen or cut off from the API '
               'server), or another replica holds it now; retried once the Lease is held again.'),
    Documented(Reason.DOMAINS_UNKNOWN, (HOST,), _P,
               'A package change would remove qemu/libvirt and libvirt cannot tell which domains run: it waits '
               '(fail closed) unless spec.maintenance.allowDisruption.'),
    Documented(Reason.UNEXPECTED_ERROR, ALL, _P,
               "An unexpected failure (its traceback is in the operator's log); retried with backoff."),
    Documented(Reason.STORAGES_PENDING, (HOST,), _P,
               'A selected RbdStorage has not published its key yet.'),
    Documented(Reason.HOST_KEY_PINNED, (HOST,), _P,
               'TrustOnFirstUse: the key seen at first contact was pinned; nothing was sent in that pass.'),
    Documented(Reason.INVALID_SPEC, ALL, _D,
               'The spec cannot work as written; the message names the field.'),
    Documented(Reason.INVALID_NAME, (STORAGE, IMAGE, SNAPSHOT), _D,
               'A pool, image or client name breaks the naming rules, or starts with `rbdop-` (the '
               "operator's own staging and probe names in Ceph)."),
    Documented(Reason.INVALID_SIZE, (IMAGE,), _D,
               'spec.size is not a positive quantity.'),
    Documented(Reason.INVALID_FEATURES, (IMAGE,), _D,
               'Unknown image features or a missing dependency.'),
    Documented(Reason.INVALID_PACKAGE, (HOST,), _D,
               'A package name is not valid.'),
    Documented(Reason.AUTH_FAILED, (STORAGE, IMAGE, SNAPSHOT), _D,
               'The admin Secret is missing, unreadable or holds a key Ceph refuses.'),
    Documented(Reason.CEPH_COMMAND_FAILED, (STORAGE, IMAGE, SNAPSHOT), _D,
               'Ceph refused a command; the message says why.'),
    Documented(Reason.POOL_NOT_FOUND, (STORAGE, IMAGE), _D,
               "The storage's pool is gone from Ceph."),
    Documented(Reason.CACHE_POOL_NOT_FOUND, (STORAGE,), _D,
               'spec.client.cachePool names a pool that does not exist.'),
    Documented(Reason.DATA_POOL_NOT_FOUND, (IMAGE,), _D,
               'spec.dataPool names a pool that does not exist.'),
    Documented(Reason.SIZE_EXCEEDS_QUOTA, (IMAGE,), _D,
               "spec.size is larger than the pool's quota."),
    Documented(Reason.SHRINK_NOT_ALLOWED, (IMAGE,), _D,
               'Shrinking loses data; needs spec.allowShrink.'),
    Documented(Reason.NOT_OWNED, (STORAGE, IMAGE, SNAPSHOT), _D,
               'The pool, client or image exists in Ceph and was not made by the operator: set the adopt field '
               'to take it over; nothing was changed.'),
    Documented(Reason.OWNED_BY_OTHER, (STORAGE, IMAGE, SNAPSHOT), _D,
               'The pool, client or image belongs to another object of the operator; nothing was changed.'),
    Documented(Reason.SECRET_OUTSIDE_NAMESPACE, (STORAGE, HOST), _D,
               "A Secret reference names a namespace other than the operator's; nothing was read."),
    Documented(Reason.SECRET_CONFLICT, (STORAGE,), _D,
               'spec.client.secretName names an existing Secret the storage does not own; it is not written.'),
    Documented(Reason.NAMESPACE_NOT_ALLOWED, (IMAGE,), _D,
               "The storage's spec.imageNamespaces does not admit the image's namespace."),
    Documented(Reason.IMPORT_NOT_ALLOWED, (IMAGE,), _D,
               "spec.source.url (or a redirect) is not under the storage's spec.imports.allowedURLPrefixes, is "
               'not in the form a server reads it (dot segments, duplicate slashes, backslashes, escaped unreserved '
               'characters, a fragment, userinfo), or its host resolves to a loopback, link-local, unspecified or '
               'multicast address the URL does not name literally; nothing was fetched.'),
    Documented(Reason.CHECKSUM_MISMATCH, (IMAGE,), _D,
               "The download's sha256 differs from spec.source.sha256; nothing kept."),
    Documented(Reason.UNSUPPORTED_IMAGE_FORMAT, (IMAGE,), _D,
               'The template is in a format the importer refuses (not raw, qcow2, binary vmdk, vhdx or vpc) or has '
               'a backing file, an external data file, encryption or extent files; nothing was opened or written.'),
    Documented(Reason.INVALID_IMAGE, (IMAGE,), _D,
               'qemu-img found the template malformed (or it needs more than the conversion limits); not retried.'),
    Documented(Reason.SOURCE_NOT_ALLOWED, (IMAGE,), _D,
               'A clone source must be an image owned by an RbdImage in the same namespace; spec.revert must name '
               'an RbdSnapshot of the same RbdImage. Nothing was changed.'),
    Documented(Reason.NOT_IN_TRASH, (IMAGE,), _D,
               'spec.source.trash: the RBD trash holds no image a deleted RbdImage of this namespace and name left '
               'there (never restored: another namespace\'s or another cluster\'s image); nothing was created.'),
    Documented(Reason.AUTHENTICATION_FAILED, (HOST,), _D,
               'The SSH key Secret is missing or the host refused the key.'),
    Documented(Reason.HOST_KEY_MISMATCH, (HOST,), _D,
               'The host presented a key other than the pinned one; nothing ran.'),
    Documented(Reason.COMMAND_FAILED, (HOST,), _D,
               'A command on the host failed; the message says why.'),
    Documented(Reason.PACKAGE_NOT_FOUND, (HOST,), _D,
               'A wanted package is in no configured repository.'),
    Documented(Reason.PACKAGE_COMMAND_FAILED, (HOST,), _D,
               'apt/dnf failed; the message holds its last lines.'),
    Documented(Reason.UNSUPPORTED_OS, (HOST,), _D,
               'The host is neither Debian- nor RHEL-like.'),
    Documented(Reason.NO_QEMU_RBD, (HOST,), _D,
               'QEMU lacks the rbd block driver after the package step.'),
    Documented(Reason.NO_KERNEL_RBD, (HOST,), _D,
               'The kernel lacks the rbd module (profile kernel-rbd).'),
    Documented(Reason.MULTIPLE_CLUSTERS, (HOST,), _D,
               'Storages of several Ceph clusters select one host.'),
    Documented(Reason.PROBE_FAILED, (HOST,), _D,
               "`rbd ls` as the storage's client failed on the host."),
    Documented(Reason.UNSAFE_VALUE, ALL, _D,
               'A value about to reach a host path, file or command (from a spec, a status, a Secret or Ceph) '
               'failed validation; nothing of it was sent.'),
    Documented(Reason.HOST_KEY_PIN_LOST, (HOST,), _D,
               'status.pinnedHostKey vanished although a key was pinned (annotation '
               'rbd-operator.io/pinned-host-key): not re-trusted; set spec.hostKey or remove the annotation.'),
    Documented(Reason.ADOPTION_NOT_ALLOWED, (IMAGE,), _D,
               'The image exists and no live RbdImage of this cluster owns it (made by hand, left by a deleted '
               'object of another namespace, or recorded by another Kubernetes cluster): adopting it needs the '
               "storage's grant (spec.adoption.namespaces) for this namespace; nothing was changed."),
    Documented(Reason.LIMIT_EXCEEDED, (IMAGE,), _D,
               "The spec goes beyond the storage's spec.imageLimits (the message names the field and the limit); "
               'nothing was written in Ceph.'),
    Documented(Reason.DATA_POOL_NOT_ALLOWED, (IMAGE,), _D,
               "spec.dataPool is not listed in the storage's spec.imageLimits.dataPools; nothing was written in "
               'Ceph.'),
    Documented(Reason.HOST_FILE_NOT_OWNED, (HOST,), _D,
               'A file the operator would write on the host (the message names the path) exists and was not '
               'written by it; set spec.adopt: true to take it over. Nothing was written.'),
    Documented(Reason.RUNNING_DOMAINS, (HOST,), _D,
               'Removing qemu/libvirt packages would stop running domains: needs '
               'spec.maintenance.allowDisruption.'),
    Documented(Reason.PAUSED, (HOST,), _S,
               'spec.paused: the operator leaves the host alone.'),
    Documented(Reason.LIBVIRT_SECRET_UUID_IN_USE, (STORAGE,), _D,
               'spec.hypervisors.libvirtSecretUUID would change the libvirt secret UUID of a storage hosts already '
               'hold (domains name the secret by it); nothing was changed. Put the previous value back, or first take '
               'the storage off its hosts (until no HypervisorNode reports the old UUID in status.storages).'),
    Documented(Reason.CANNOT_BLOCKLIST, (STORAGE,), _D,
               "CapsWeak=True: the client's mon caps cannot blocklist a dead client (a warning; Ready stays "
               'True).'),
)

BY_NAME = {r.name: r for r in REASONS}
assert set(BY_NAME) == {r.value for r in Reason}, "every Reason is documented exactly once"

EVENT_REASONS: dict[EventReason, str] = {
    EventReason.POOL_CREATED:
        'A pool was created (under its staging name, marked, renamed into place).',
    EventReason.POOL_UPDATED:
        "A pool setting was set to the spec's value.",
    EventReason.QUOTA_UPDATED:
        "A pool quota was set to the spec's value.",
    EventReason.POOL_INITIALIZED:
        'rbd pool init ran on the pool.',
    EventReason.APPLICATION_ENABLED:
        'An application was enabled on the pool.',
    EventReason.POOL_ADOPTED:
        'An existing pool was adopted: its owner recorded in Ceph.',
    EventReason.CLIENT_OWNER_RECORDED:
        'The storage was recorded as an owner of its cephx user.',
    EventReason.CLIENT_CREATED:
        'A cephx user was created.',
    EventReason.CAPS_CORRECTED:
        "A cephx user's caps were set to what the spec wants.",
    EventReason.CLIENT_SECRET_UPDATED:
        'The client Secret was created or updated.',
    EventReason.KEY_ROTATED:
        'spec.client.rotateKeyGeneration was raised: the user has a new key in Ceph.',
    EventReason.HOSTS_CURRENT:
        "Every selected host holds the client's current key (a rotation's rollout is complete).",
    EventReason.DELETED:
        'What the storage owned was deleted.',
    EventReason.CREATED:
        'An image was created.',
    EventReason.CLONED:
        'An image was cloned.',
    EventReason.RESIZED:
        'An image was resized.',
    EventReason.FLATTENED:
        'A clone was flattened.',
    EventReason.FEATURES_UPDATED:
        'Dynamic image features were enabled or disabled.',
    EventReason.SNAPSHOT_PROTECTED:
        'A clone source snapshot was protected.',
    EventReason.ADOPTED:
        'An existing image was adopted: its owner tag set.',
    EventReason.QOS_UPDATED:
        "The image's rbd_qos_* limits were set to the spec's (or the storage's imageDefaults).",
    EventReason.TRASHED:
        'An image was moved to the RBD trash.',
    EventReason.IMPORTED:
        'A template was imported from its URL into the image.',
    EventReason.SNAPSHOT_CREATED:
        "A snapshot was taken (its owner recorded in the image's metadata first).",
    EventReason.SNAPSHOT_ADOPTED:
        'An existing snapshot was adopted by an RbdSnapshot.',
    EventReason.SNAPSHOT_REMOVED:
        'A snapshot was removed (unprotected first).',
    EventReason.REPOSITORIES_CONFIGURED:
        'Repository files were written or removed on a host.',
    EventReason.PACKAGE_DATABASE_REPAIRED:
        'An interrupted dpkg run was completed (dpkg --configure -a).',
    EventReason.PACKAGES_REMOVED:
        'Packages were removed from a host.',
    EventReason.PACKAGES_INSTALLED:
        'Packages were installed on a host.',
    EventReason.CONFIG_RESTORED:
        'libvirtd.conf was restored from its .rpmsave copy.',
    EventReason.CEPH_CONFIG_WRITTEN:
        '/etc/ceph/ceph.conf was written on a host.',
    EventReason.KEYRING_WRITTEN:
        'A client keyring was written on a host (0600).',
    EventReason.SECRET_DEFINED:
        'A libvirt secret was defined on a host.',
    EventReason.SECRET_UPDATED:
        "A libvirt secret's value was set to the client's key.",
    EventReason.STORAGE_REMOVED:
        "A storage's keyring and libvirt secret were removed from a host.",
    EventReason.HOST_KEY_PINNED:
        'Trust on first use: the host key seen at first contact is pinned.',
    EventReason.HOST_CLEANED:
        "deletionPolicy Delete: the operator's files and secrets were removed from the host.",
    EventReason.TRASH_PURGED:
        'An image this operator moved to the trash was removed for good after its retention (in the '
        "background, apart from the storage's reconcile).",
    EventReason.ROTATION_RESUMED:
        'A key rotation cut short after Ceph took the new key was completed with that key (no second new '
        'key).',
    EventReason.OWNER_RECORD_UPGRADED:
        "An owner record in Ceph written by an earlier release was rewritten with this cluster's "
        'identity.',
    EventReason.HOST_FILE_ADOPTED:
        'A host file the operator did not write was taken over (spec.adopt): its own settings kept.',
    EventReason.FAST_PATH_DISABLED:
        'A Warning: librbd\'s object layout on a Ceph cluster differs from what the operator\'s fast path (its own '
        'object steps: rename, header reads, owner tag) expects; librbd\'s calls are used there from now on '
        '(metric rbd_operator_fastpath_disabled).',
    EventReason.ACTIVE_REPLICA:
        'This replica became the one that works (the other replicas stand by).',
    EventReason.GUEST_DISK_RESIZED:
        "An image grew and the disk of a running domain using it (named with its HypervisorNode) was resized "
        "through libvirt's block resize: the guest sees the new size without a restart.",
    EventReason.GUEST_RESIZE_BY_OWNER:
        'An image grew while a client that is not a HypervisorNode has it open (the message names its '
        'address): the guest there must be resized by its owner.',
    EventReason.REVERTED:
        'spec.revert.generation was raised: the image was rolled back to the RbdSnapshot it names (status.revert).',
    EventReason.RESTORED:
        'spec.source.trash: the image a deleted RbdImage of this namespace and name left in the RBD trash was '
        'restored (same id and data) instead of a new one made.',
    EventReason.SCHEDULED_SNAPSHOT_CREATED:
        "An RbdSnapshotSchedule's tick came: an RbdSnapshot of a selected image was created (named from the "
        'schedule, the image and the tick).',
    EventReason.SCHEDULED_SNAPSHOT_PRUNED:
        'An RbdSnapshot an RbdSnapshotSchedule made was deleted: it was older than the newest spec.keep of its '
        'image (never one with clones).',
    EventReason.SCHEDULE_RELEASED:
        'An RbdSnapshotSchedule was deleted: its RbdSnapshots were deleted (deletionPolicy Delete) or kept without '
        'their ownerReference to it (Retain, the default), so that the garbage collector leaves them.',
    EventReason.MEMORY_NEAR_LIMIT:
        'Warning on the operator\'s Pod: the RbdImages and RbdSnapshots it holds need, by the measured formula '
        '(docs/performance.md), at least RBD_OPERATOR_MEMORY_WARN_RATIO (0.8) of its memory limit; raise the limit '
        'before the process is OOM-killed. Posted once per crossing; metric rbd_operator_objects.',
}
assert set(EVENT_REASONS) == set(EventReason), "every EventReason is documented"


def health_of(reason: str) -> Health:
    """How a Ready=False condition with this reason should be read; unknown reasons are DEGRADED (fail closed)."""
    entry = BY_NAME.get(reason)
    return entry.health if entry else Health.DEGRADED
