"""What a hypervisor should hold: packages, repository files, /etc/ceph, libvirt secrets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..api.hypervisor import HostSpec, Repository

MANAGED_PREFIX = "rbd-operator-"
CEPH_DIR = "/etc/ceph"
LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"

# What gives QEMU its rbd driver (plus librbd and the ceph CLI), per distro family.
PROFILE_PACKAGES = {
    ("qemu-rbd", "debian"): ("qemu-utils", "qemu-block-extra", "librbd1", "ceph-common"),
    ("qemu-rbd", "rhel"): ("qemu-img", "qemu-kvm", "librbd1", "ceph-common"),
    ("kernel-rbd", "debian"): ("ceph-common",),
    ("kernel-rbd", "rhel"): ("ceph-common",),
}
# Removing these stops or replaces the hypervisor under running VMs.
_DISRUPTIVE = re.compile(r"^(qemu|libvirt|kvm)")


def family_of(os_id: str, os_like: str) -> str | None:
    words = set(f"{os_id} {os_like}".lower().split())
    if words & {"debian", "ubuntu"}:
        return "debian"
    if words & {"rhel", "fedora", "centos", "rocky", "almalinux"}:
        return "rhel"
    return None


def desired_packages(spec: HostSpec, family: str) -> list[str]:
    wanted = list(PROFILE_PACKAGES.get((spec.profile, family), ()))
    return [p for p in dict.fromkeys(wanted + list(spec.install)) if p not in spec.remove]


def disruptive(packages: list[str]) -> list[str]:
    return [p for p in packages if _DISRUPTIVE.match(p)]


@dataclass(frozen=True)
class RemoteFile:
    path: str
    content: str
    mode: int = 0o644


def repository_files(repo: Repository, family: str) -> list[RemoteFile]:
    """The files that configure one repository (all named rbd-operator-<name>...)."""
    name = f"{MANAGED_PREFIX}{repo.name}"
    files: list[RemoteFile] = []
    if family == "debian":
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
    elif family == "rhel":
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
    if family == "rhel" and any(r.priority is not None for r in spec.repositories):
        # The seed's step: yum-plugin-priorities enabled (dnf honours priority= natively).
        files.append(RemoteFile("/etc/yum/pluginconf.d/priorities.conf", "[main]\nenabled = 1\n"))
    return files


MANAGED_DIRS = {
    "debian": ("/etc/apt/sources.list.d", "/etc/apt/preferences.d", "/etc/apt/keyrings"),
    "rhel": ("/etc/yum.repos.d", "/etc/pki/rpm-gpg"),
}


def stale_files(existing: dict[str, list[str]], desired: list[RemoteFile]) -> list[str]:
    """Our files (rbd-operator- prefix) in managed dirs that the spec no longer wants."""
    wanted = {f.path for f in desired}
    stale = []
    for directory, names in existing.items():
        for entry in names:
            path = f"{directory}/{entry}"
            if MANAGED_PREFIX in entry and not entry.endswith(".tmp") and path not in wanted:
                stale.append(path)
    return sorted(stale)


@dataclass(frozen=True)
class HostStorage:
    """One RbdStorage as a host needs it."""
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


def ceph_conf(storages: list[HostStorage]) -> str:
    """/etc/ceph/ceph.conf for the storages' cluster (they must share one fsid)."""
    first = storages[0]
    mons = ",".join(first.monitors)
    return f"# written by rbd-operator\n[global]\nfsid = {first.fsid}\nmon_host = {mons}\n"


def keyring(storage: HostStorage) -> str:
    return f"[{storage.entity}]\n\tkey = {storage.key}\n"


def secret_xml(storage: HostStorage) -> str:
    return (
        "<secret ephemeral='no' private='yes'>\n"
        f"  <uuid>{storage.secret_uuid}</uuid>\n"
        f"  <description>rbd-operator: RbdStorage {storage.name}, {storage.entity}</description>\n"
        "  <usage type='ceph'>\n"
        f"    <name>rbd-operator/{storage.name} {storage.entity}</name>\n"
        "  </usage>\n"
        "</secret>\n"
    )


def monitor_hosts(status_monitors: list[dict]) -> tuple[str, ...]:
    """mon_host entries ([v2:..,v1:..] per monitor) from an RbdStorage's status.monitors."""
    out = []
    for mon in status_monitors or []:
        addrs = [f"{kind}:{mon[kind]}" for kind in ("v2", "v1") if mon.get(kind)]
        if addrs:
            out.append("[" + ",".join(addrs) + "]")
    return tuple(out)
