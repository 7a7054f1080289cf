"""What a hypervisor should hold: packages, repository files, /etc/ceph, libvirt secrets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from xml.sax.saxutils import escape

from ..api.enums import DeletionPolicy, Family, Profile
from ..api.cephx import valid_cephx_key
from ..api.errors import Refused, SpecError
from ..api.hypervisor import HostSpec, Repository
from ..api.names import check_client_name, check_pool_name, is_k8s_name
from ..api.reasons import Reason

MANAGED_PREFIX = "rbd-operator-"
CEPH_DIR = "/etc/ceph"
LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"

# What gives QEMU its rbd driver (plus librbd and the ceph CLI), per distro family.
PROFILE_PACKAGES = {
    (Profile.QEMU_RBD, Family.DEBIAN): ("qemu-utils", "qemu-block-extra", "librbd1", "ceph-common"),
    (Profile.QEMU_RBD, Family.RHEL): ("qemu-img", "qemu-kvm", "librbd1", "ceph-common"),
    (Profile.KERNEL_RBD, Family.DEBIAN): ("ceph-common",),
    (Profile.KERNEL_RBD, Family.RHEL): ("ceph-common",),
}
# Removing these stops or replaces the hypervisor under running VMs.
_DISRUPTIVE = re.compile(r"^(qemu|libvirt|kvm)")


def family_of(os_id: str, os_like: str) -> Family | None:
    words = set(f"{os_id} {os_like}".lower().split())
    if words & {"debian", "ubuntu"}:
        return Family.DEBIAN
    if words & {"rhel", "fedora", "centos", "rocky", "almalinux"}:
        return Family.RHEL
    return None


def desired_packages(spec: HostSpec, family: str) -> list[str]:
    wanted = list(PROFILE_PACKAGES.get((spec.profile, family), ()))
    return [p for p in dict.fromkeys(wanted + list(spec.install)) if p not in spec.remove]


def disruptive(packages: list[str]) -> list[str]:
    return [p for p in packages if _DISRUPTIVE.match(p)]


@dataclass(frozen=True)
class Settings:
    """What the operator manages in an ini-style file it may share with others (ceph.conf, a keyring,
    priorities.conf): `values` in `[section]`; the same options are also taken out of the sections
    `also_in` names (exactly, or as a prefix ending in '.'), where they would override them."""
    section: str
    values: tuple[tuple[str, str], ...]
    indent: str = ""
    also_in: tuple[str, ...] = ()
    # What an earlier release wrote without a header (a regular expression for the whole file), and
    # whether that shape counts as the operator's only where the host's status records the path.
    legacy: str | None = None
    legacy_needs_record: bool = True


@dataclass(frozen=True)
class RemoteFile:
    """A file the operator writes on a host. Without `settings` it is the operator's by its name
    (rbd-operator- prefix) and its content is exactly `content`; with `settings` the ownership rule
    applies (plan_files) and `content` is what the operator writes when the file is its own."""
    path: str
    content: str
    mode: int = 0o644
    settings: Settings | None = None


def repository_files(repo: Repository, family: str) -> list[RemoteFile]:
    """The files that configure one repository (all named rbd-operator-<name>...)."""
    name = f"{MANAGED_PREFIX}{repo.name}"
    files: list[RemoteFile] = []
    if family == Family.DEBIAN:
        options = []
        if repo.gpg_key:
            key_path = f"/etc/apt/keyrings/{name}.asc"
            files.append(RemoteFile(key_path, repo.gpg_key.strip() + "\n"))
            options.append(f"signed-by={key_path}")
        else:
            options.append("trusted=yes")
        line = f"deb [{' '.join(options)}] {repo.base_url} {repo.distribution} {' '.join(repo.components)}".rstrip()
        files.append(RemoteFile(f"/etc/apt/sources.list.d/{name}.list", line + "\n"))
        if repo.priority is not None:
            files.append(RemoteFile(f"/etc/apt/preferences.d/{name}",
                                    f"Package: *\nPin: origin \"{repo.host}\"\nPin-Priority: {repo.priority}\n"))
    elif family == Family.RHEL:
        lines = [f"[{name}]", f"name=rbd-operator repository {repo.name}", f"baseurl={repo.base_url}", "enabled=1"]
        if repo.gpg_key:
            key_path = f"/etc/pki/rpm-gpg/RPM-GPG-KEY-{name}"
            files.append(RemoteFile(key_path, repo.gpg_key.strip() + "\n"))
            lines += ["gpgcheck=1", f"gpgkey=file://{key_path}"]
        else:
            lines += ["gpgcheck=0"]
        if repo.priority is not None:
            lines.append(f"priority={repo.priority}")
        files.append(RemoteFile(f"/etc/yum.repos.d/{name}.repo", "\n".join(lines) + "\n"))
    return files


def repository_plan(spec: HostSpec, family: str) -> list[RemoteFile]:
    files = [f for repo in spec.repositories for f in repository_files(repo, family)]
    if family == Family.RHEL and any(r.priority is not None for r in spec.repositories):
        # The seed's step: yum-plugin-priorities enabled (dnf honours priority= natively).
        files.append(owned_ini_file("/etc/yum/pluginconf.d/priorities.conf", 0o644, Settings(
            "main", (("enabled", "1"),), legacy=re.escape("[main]\nenabled = 1\n"), legacy_needs_record=False)))
    return files


MANAGED_DIRS = {
    Family.DEBIAN: ("/etc/apt/sources.list.d", "/etc/apt/preferences.d", "/etc/apt/keyrings"),
    Family.RHEL: ("/etc/yum.repos.d", "/etc/pki/rpm-gpg"),
}


def stale_files(existing: dict[str, list[str]], desired: list[RemoteFile]) -> list[str]:
    """Our files (rbd-operator- prefix) in managed dirs that the spec no longer wants."""
    wanted = {f.path for f in desired}
    stale = []
    for directory, names in existing.items():
        for entry in names:
            path = f"{directory}/{entry}"
            if MANAGED_PREFIX in entry and not entry.endswith(".tmp") and path not in wanted \
                    and MANAGED_PATHS.fullmatch(path) and ".." not in path:
                stale.append(path)
    return sorted(stale)


# -- validation at the point of use -------------------------------------------------------------
# Whatever its source (spec, status, a Secret, Ceph's mon dump, the host's own directory listing),
# a value is checked here right before it becomes a host path, file content or command argument.
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_MON_ADDR = re.compile(r"^(\[[0-9A-Fa-f:.]{2,45}\]|[0-9]{1,3}(\.[0-9]{1,3}){3}):[0-9]{1,5}\Z")
_CEPHX_KEY = re.compile(r"^[A-Za-z0-9+/]{20,}={0,2}\Z")
_SAFE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
MANAGED_PATHS = re.compile(
    r"^(/etc/ceph/ceph\.conf"
    rf"|/etc/ceph/ceph\.client\.{_SAFE}\.keyring"
    rf"|/etc/apt/sources\.list\.d/{MANAGED_PREFIX}{_SAFE}\.list"
    rf"|/etc/apt/preferences\.d/{MANAGED_PREFIX}{_SAFE}"
    rf"|/etc/apt/keyrings/{MANAGED_PREFIX}{_SAFE}\.asc"
    rf"|/etc/yum\.repos\.d/{MANAGED_PREFIX}{_SAFE}\.repo"
    rf"|/etc/pki/rpm-gpg/RPM-GPG-KEY-{MANAGED_PREFIX}{_SAFE}"
    r"|/etc/yum/pluginconf\.d/priorities\.conf"
    r"|/run/rbd-operator/[0-9a-f-]{36}\.(xml|value))\Z")


def unsafe(what: str, value: object) -> Refused:
    shown = repr(value)[:80] if not isinstance(value, str) or len(value) < 200 else repr(value[:40]) + "…"
    return Refused(Reason.UNSAFE_VALUE, f"{what} {shown} failed validation; nothing of it was sent to the host")


def check_uuid(value: object, what: str = "libvirt secret UUID") -> str:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise unsafe(what, value)
    return value


def check_managed_path(path: object) -> str:
    """Paths the operator writes or removes on a host: exactly these shapes, no '..', no other place."""
    if not isinstance(path, str) or ".." in path or not MANAGED_PATHS.fullmatch(path):
        raise unsafe("host path", path)
    return path


def check_monitor_addr(value: object) -> str:
    if not isinstance(value, str) or not _MON_ADDR.fullmatch(value) or not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise unsafe("monitor address", value)
    return value


def check_cephx_key(value: object) -> str:
    if not isinstance(value, str) or not _CEPHX_KEY.match(value) or not valid_cephx_key(value):
        raise unsafe("cephx key of the storage's client", "<key withheld>")
    return value


def _named(check, value: object, what: str) -> str:
    try:
        return check(what, value)
    except SpecError:
        raise unsafe(what, value) from None


@dataclass(frozen=True)
class HostStorage:
    """One RbdStorage as a host needs it (build it with `host_storage`, which validates every field)."""
    name: str
    fsid: str
    monitors: tuple[str, ...]
    client: str            # the cephx user name (without "client.")
    pool: str
    secret_uuid: str
    key: str = field(repr=False)
    key_version: str = ""  # resourceVersion of the client Secret the key came from

    @property
    def entity(self) -> str:
        return f"client.{self.client}"

    @property
    def keyring_path(self) -> str:
        return f"{CEPH_DIR}/ceph.client.{self.client}.keyring"


def host_storage(name: str, status: dict, secret: dict, key_version: str, spec_client: str | None) -> HostStorage:
    """A storage's host-side view from its status and client Secret, every value validated here."""
    if not is_k8s_name(name):
        raise unsafe("storage name", name)
    fsid = check_uuid(status.get("fsid"), "status.fsid")
    monitors = tuple(monitor_hosts(status.get("monitors") or []))
    if not monitors:
        raise unsafe("status.monitors", status.get("monitors"))
    client = _named(check_client_name, secret.get("userID") or spec_client, "client name (Secret userID)")
    pool = _named(check_pool_name, status.get("pool") or name, "status.pool")
    return HostStorage(name=name, fsid=fsid, monitors=monitors, client=client, pool=pool,
                       secret_uuid=check_uuid(status.get("libvirtSecretUUID"), "status.libvirtSecretUUID"),
                       key=check_cephx_key(secret.get("userKey")), key_version=str(key_version or ""))


def ceph_conf_file(storages: list[HostStorage]) -> RemoteFile:
    """/etc/ceph/ceph.conf for the storages' cluster (they must share one fsid): fsid and mon_host in
    [global]; the same options in [client] and [client.*] would override them for the probe and QEMU."""
    first = storages[0]
    values = (("fsid", check_uuid(first.fsid, "fsid")), ("mon_host", ",".join(first.monitors)))
    return owned_ini_file(f"{CEPH_DIR}/ceph.conf", 0o644, Settings("global", values, also_in=("client", "client.")))


def ceph_conf(storages: list[HostStorage]) -> str:
    return ceph_conf_file(storages).content


def keyring_file(storage: HostStorage) -> RemoteFile:
    """A client's keyring (0600). Ceph reads '#' comment lines in keyrings (ceph-authtool -l, rbd)."""
    entity = f"client.{_named(check_client_name, storage.client, 'client name')}"
    return owned_ini_file(storage.keyring_path, 0o600, Settings(
        entity, (("key", check_cephx_key(storage.key)),), indent="\t", legacy=keyring_legacy(storage.client)))


def keyring(storage: HostStorage) -> str:
    return keyring_file(storage).content


def keyring_legacy(client: str) -> str:
    """A keyring as releases before host-file ownership wrote it: exactly one section and its key, no
    header. `ceph auth get-or-create` prints the same shape, so the shape alone proves nothing: it is
    the operator's only where status.storages records that the operator wrote that path."""
    return rf"\[client\.{re.escape(client)}\]\n\tkey = [A-Za-z0-9+/]{{20,}}={{0,2}}\n"


def storage_files(storages: list[HostStorage]) -> list[RemoteFile]:
    """Everything of the storage step that lands in /etc/ceph (a keyring shared by storages once)."""
    files = [ceph_conf_file(storages)]
    for storage in storages:
        if storage.keyring_path not in {f.path for f in files}:
            files.append(keyring_file(storage))
    return files


# -- host files follow the ownership rule ----------------------------------------------------------
# A file the operator made starts with OWNED_HEADER and holds exactly its content (edits are reverted;
# HypervisorNode deletion with deletionPolicy Delete removes it). A file someone else made is
# written only with spec.adopt: the operator's settings are merged into it, everything else kept,
# and ADOPTED_HEADER put on top: from then on it is maintained (merged) without spec.adopt, and it
# is never removed (its other settings, and the host's other users of it, stay).
OWNED_HEADER = "# written by rbd-operator\n"
CEPH_CONF_HEADER = OWNED_HEADER
ADOPTED_HEADER = "# written by rbd-operator (adopted: the settings it does not manage are kept)\n"


def owned_ini_file(path: str, mode: int, settings: Settings) -> RemoteFile:
    lines = "".join(f"{settings.indent}{key} = {value}\n" for key, value in settings.values)
    return RemoteFile(check_managed_path(path), f"{OWNED_HEADER}[{settings.section}]\n{lines}", mode, settings)


class Ownership(str, Enum):
    ABSENT = "absent"
    OWNED = "owned"        # OWNED_HEADER: made by the operator
    ADOPTED = "adopted"    # ADOPTED_HEADER: taken over with spec.adopt
    LEGACY = "legacy"      # an earlier release's shape (see Settings.legacy)
    FOREIGN = "foreign"    # anything else: someone else's


def ownership(content: bytes | None, settings: Settings | None, recorded: bool) -> Ownership:
    if content is None:
        return Ownership.ABSENT
    if settings is None or content.startswith(OWNED_HEADER.encode()):
        return Ownership.OWNED
    if content.startswith(ADOPTED_HEADER.encode()):
        return Ownership.ADOPTED
    if settings.legacy and (recorded or not settings.legacy_needs_record) \
            and re.fullmatch(settings.legacy.encode(), content):
        return Ownership.LEGACY
    return Ownership.FOREIGN


@dataclass(frozen=True)
class FileStep:
    path: str
    mode: int
    content: bytes | None   # None: the file is as wanted already
    how: Ownership          # what it was: ABSENT (created), OWNED, LEGACY (upgraded), ADOPTED, FOREIGN (adopted now)


@dataclass(frozen=True)
class FilesPlan:
    steps: list[FileStep]
    refused: list[str]      # someone else's files the operator would have to change (HostFileNotOwned)

    @property
    def writes(self) -> list[FileStep]:
        return [] if self.refused else [s for s in self.steps if s.content is not None]


def plan_files(files: list[RemoteFile], current: dict[str, bytes | None], *, adopt: bool,
               recorded: set[str] = frozenset()) -> FilesPlan:
    """What to write, decided for all files of a step before anything is written: one file that is
    not the operator's (and not adopted) refuses the whole step, so a refusal never leaves it half done.

    `current`: each file's content on the host (None: absent); `recorded`: paths the host's
    status.storages says the operator wrote (the proof for an earlier release's keyrings)."""
    steps, refused = [], []
    for f in files:
        have = current.get(f.path)
        how = ownership(have, f.settings, f.path in recorded)
        if how in (Ownership.ABSENT, Ownership.OWNED, Ownership.LEGACY):
            want = f.content.encode()
        elif how is Ownership.ADOPTED or adopt:
            assert f.settings is not None and have is not None
            body = have[len(ADOPTED_HEADER.encode()):] if how is Ownership.ADOPTED else have
            want = ADOPTED_HEADER.encode() + merge_ini(body, f.settings)
        else:
            refused.append(f.path)
            continue
        steps.append(FileStep(f.path, f.mode, None if want == have else want, how))
    return FilesPlan(steps, refused)


def removable(content: bytes | None, settings: Settings | None, recorded: bool) -> bool:
    """A file the operator may delete: one it made (or an earlier release made). Adopted files stay."""
    return ownership(content, settings, recorded) in (Ownership.OWNED, Ownership.LEGACY)


def keyring_settings_for(path: object) -> Settings | None:
    """The keyring Settings for a status.storages keyringPath (validated), to judge its removal."""
    if not isinstance(path, str) or ".." in path or not _KEYRING_PATH.fullmatch(path):
        return None
    client = path[len(f"{CEPH_DIR}/ceph.client."):-len(".keyring")]
    return Settings(f"client.{client}", (), legacy=keyring_legacy(client))


_SECTION_LINE = re.compile(r"^[ \t]*\[([^\]]*)\][ \t]*(?:[#;].*)?\Z")
_OPTION_LINE = re.compile(r"^[ \t]*([^#;\[=\s][^=]*?)[ \t]*=")


def option_name(key: str) -> str:
    """An option name as Ceph may read it: runs of whitespace, '_' and '-' are one '_', none at the ends
    (Ceph 16 itself folds whitespace only; removing every spelling is what keeps none in force)."""
    return re.sub(r"[\s_-]+", "_", key).strip("_")


def merge_ini(content: bytes, settings: Settings) -> bytes:
    """`content` with the operator's settings in force and everything else kept, byte for byte.

    Every line setting one of the managed options in `[section]` (every instance of it: Ceph reads
    a section given twice as one) or in the sections of `also_in` is removed, with its backslash
    continuation lines; the settings are inserted right after the first `[section]` header, or in a
    new `[section]` at the end. Line endings follow the file's (CRLF kept); bytes that are not UTF-8
    pass through unchanged."""
    text = content.decode("utf-8", "surrogateescape")
    lines = text.splitlines(keepends=True)
    managed = {option_name(key) for key, _ in settings.values}

    def applies(name: str | None) -> bool:
        return name is not None and (name == settings.section or any(
            name == s or (s.endswith(".") and name.startswith(s)) for s in settings.also_in))

    kept: list[str] = []
    first_header: int | None = None
    section: str | None = None
    continuing = False
    for line in lines:
        bare = line.rstrip("\r\n")
        if continuing:
            continuing = bare.endswith("\\")
            continue
        header = _SECTION_LINE.match(bare)
        if header:
            section = header.group(1)
            if section == settings.section and first_header is None:
                first_header = len(kept)
        else:
            option = _OPTION_LINE.match(bare)
            if option and applies(section) and option_name(option.group(1)) in managed:
                continuing = bare.endswith("\\")
                continue
        kept.append(line)

    eol = "\r\n" if "\r\n" in text and text.count("\r\n") * 2 >= text.count("\n") else "\n"
    ours = [f"{settings.indent}{key} = {value}{eol}" for key, value in settings.values]
    if first_header is not None:
        header_line = kept[first_header]
        if not header_line.endswith("\n"):
            kept[first_header] = header_line + eol
        kept[first_header + 1:first_header + 1] = ours
    else:
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += eol
        kept += [f"[{settings.section}]{eol}", *ours]
    return "".join(kept).encode("utf-8", "surrogateescape")


def secret_xml(storage: HostStorage) -> str:
    what = escape(f"RbdStorage {storage.name}, {storage.entity}")
    return (
        "<secret ephemeral='no' private='yes'>\n"
        f"  <uuid>{check_uuid(storage.secret_uuid)}</uuid>\n"
        f"  <description>rbd-operator: {what}</description>\n"
        "  <usage type='ceph'>\n"
        f"    <name>{escape(f'rbd-operator/{storage.name} {storage.entity}')}</name>\n"
        "  </usage>\n"
        "</secret>\n"
    )


def monitor_hosts(status_monitors: list[dict]) -> tuple[str, ...]:
    """mon_host entries ([v2:..,v1:..] per monitor) from an RbdStorage's status.monitors (validated)."""
    out = []
    for mon in status_monitors or []:
        if not isinstance(mon, dict):
            raise unsafe("status.monitors entry", mon)
        addrs = [f"{kind}:{check_monitor_addr(mon[kind])}" for kind in ("v2", "v1") if mon.get(kind)]
        if addrs:
            out.append("[" + ",".join(addrs) + "]")
    return tuple(out)


@dataclass(frozen=True)
class PreviousStorages:
    """What happens to the storages a host held before this pass (from its status.storages)."""
    remove: list[dict]  # take their keyring and libvirt secret off the host
    carry: list[dict]   # leave them on the host, reported as not current
    entries: list[dict] = field(default_factory=list)  # all valid ones, as they were
    rejected: list[str] = field(default_factory=list)  # entries whose path or UUID failed validation: dropped


def plan_previous_storages(previous: list[dict], converging: set[str], selecting: set[str],
                           existing: set[str]) -> PreviousStorages:
    """Keys leave a host only when their storage stops selecting it or is really gone.

    - converging: storages whose keys this pass writes (their old entries are replaced);
    - selecting: storages that select the host but could not be converged now (no key yet, a
      failed Secret read, a value that failed validation): what the host holds stays;
    - existing: every RbdStorage object that exists, including ones being deleted (a blocked
      deletion keeps the keys where they are);
    - a storage that is gone was deleted: its keys leave only if its deletionPolicy (recorded
      with the entry) was Delete, i.e. its pool and client are gone from Ceph; Retain keeps them.
    """
    remove, carry, entries, rejected = [], [], [], []
    for old in previous:
        problem = _entry_problem(old)
        if problem:
            rejected.append(problem)  # never acted on: a status can be written by others
            continue
        entries.append(old)
        if old.get("name") in converging:
            continue
        name = old.get("name")
        if name in selecting:
            carry.append({**old, "current": False})
        elif name in existing or old.get("deletionPolicy") == DeletionPolicy.DELETE:
            remove.append(old)
        else:
            carry.append({**old, "current": False, "retained": True})
    return PreviousStorages(remove, carry, entries, rejected)


_KEYRING_PATH = re.compile(rf"^{re.escape(CEPH_DIR)}/ceph\.client\.{_SAFE}\.keyring\Z")


def _entry_problem(entry: object) -> str | None:
    """Why a status.storages entry must not be acted on (its path or UUID would reach the host)."""
    if not isinstance(entry, dict):
        return f"status.storages entry {entry!r:.60} is not an object"
    path, uuid = entry.get("keyringPath"), entry.get("secretUUID")
    if path is not None and (not isinstance(path, str) or ".." in path or not _KEYRING_PATH.fullmatch(path)):
        return f"status.storages[{entry.get('name')!r:.40}].keyringPath {path!r:.80} is not a keyring path"
    if uuid is not None and (not isinstance(uuid, str) or not _UUID.fullmatch(uuid)):
        return f"status.storages[{entry.get('name')!r:.40}].secretUUID {uuid!r:.80} is not a UUID"
    return None
