"""HypervisorNode: a KVM/libvirt host reached over SSH (contract in crds/hypervisornodes.yaml)."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlparse

from .enums import DeletionPolicy, Profile
from .errors import SpecError
from .storage import SecretRef, secret_ref
from .reasons import Reason

PROFILES = tuple(Profile)
HOST_KEY_POLICIES = ("Pinned", "TrustOnFirstUse")
DELETION_POLICIES = tuple(DeletionPolicy)
HOST_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")

_ADDRESS = re.compile(r"^([A-Za-z0-9][A-Za-z0-9.-]{0,252}|[0-9A-Fa-f:]{2,39})\Z")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+_.:~-]{0,127}\Z")
_REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_URL = re.compile(r"^(https?|file)://[A-Za-z0-9._~:/?#@!$&()*+,;=%-]+\Z")
_DIST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,63}\Z|^\./\Z")
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_GPG_KEY = re.compile(r"^-----BEGIN PGP PUBLIC KEY BLOCK-----\n[A-Za-z0-9+/=:\s\n.()-]+-----END PGP PUBLIC KEY BLOCK-----\s*\Z")


@dataclass(frozen=True)
class Repository:
    name: str
    base_url: str
    gpg_key: str | None = None
    priority: int | None = None
    distribution: str = "./"
    components: tuple[str, ...] = ()
    trusted: bool = False

    @property
    def host(self) -> str:
        return urlparse(self.base_url).hostname or ""


@dataclass(frozen=True)
class HostSpec:
    address: str
    port: int
    user: str
    ssh_key: SecretRef
    host_key: str | None
    host_key_policy: str
    profile: str
    repositories: tuple[Repository, ...] = ()
    install: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    allow_disruption: bool = False
    paused: bool = False
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN
    adopt: bool = False  # take over host files the operator did not write (their other settings kept)
    extra: Mapping[str, Any] = field(default_factory=dict)


def parse_host_key(line: str, path: str = "spec.hostKey") -> tuple[str, bytes]:
    """'ssh-ed25519 AAAA... [comment]' -> (type, key blob). Raises SpecError."""
    parts = (line or "").split()
    if len(parts) < 2 or parts[0] not in HOST_KEY_TYPES:
        raise SpecError(path, f"must be a public key line starting with one of {', '.join(HOST_KEY_TYPES)}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise SpecError(path, "the key is not valid base64") from None
    if len(blob) < 4:
        raise SpecError(path, "the key is truncated")
    (length,) = (int.from_bytes(blob[:4], "big"),)
    if blob[4:4 + length].decode(errors="replace") != parts[0]:
        raise SpecError(path, f"the key blob is not a {parts[0]} key")
    return parts[0], blob


def check_package(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _PACKAGE.fullmatch(value):
        raise SpecError(path, f"{value!r} is not a package name", reason=Reason.INVALID_PACKAGE)
    return value


def _repository(raw: Mapping[str, Any], path: str) -> Repository:
    name = raw.get("name")
    if not isinstance(name, str) or not _REPO_NAME.fullmatch(name):
        raise SpecError(f"{path}.name", f"{name!r} is not a repository name (letters, digits, '_', '.', '-')")
    url = raw.get("baseURL")
    if not isinstance(url, str) or not _URL.match(url) or "'" in url or "\n" in url:
        raise SpecError(f"{path}.baseURL", f"{url!r} is not an http(s) or file URL")
    gpg = raw.get("gpgKey")
    if gpg is not None and (not isinstance(gpg, str) or not _GPG_KEY.match(gpg)):
        raise SpecError(f"{path}.gpgKey", "must be an ASCII-armored PGP public key block")
    priority = raw.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 1000):
        raise SpecError(f"{path}.priority", f"{priority!r} is not an integer from 1 to 1000")
    dist = raw.get("distribution") or "./"
    if not isinstance(dist, str) or not _DIST.match(dist) or ".." in dist.replace("./", ""):
        raise SpecError(f"{path}.distribution", f"{dist!r} is not a distribution name")
    components = raw.get("components") or []
    for i, comp in enumerate(components):
        if not isinstance(comp, str) or not _COMPONENT.match(comp):
            raise SpecError(f"{path}.components[{i}]", f"{comp!r} is not a component name")
    trusted = bool(raw.get("trusted", False))
    if gpg is None and not trusted:
        raise SpecError(f"{path}.gpgKey", "a repository needs gpgKey, or trusted: true to accept unsigned packages")
    return Repository(name, url, gpg, priority, dist, tuple(components), trusted)


def parse_host(name: str, spec: Mapping[str, Any]) -> HostSpec:
    """Validate a HypervisorNode spec and fill in defaults. Raises SpecError."""
    address = spec.get("address")
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise SpecError("spec.address", f"{address!r} is not a host name or IP address")
    port = spec.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise SpecError("spec.port", f"{port!r} is not a TCP port")
    user = spec.get("user") or "root"
    if not _USER.match(user):
        raise SpecError("spec.user", f"{user!r} is not a user name")
    ssh_key = secret_ref(spec.get("sshKeySecretRef"), "spec.sshKeySecretRef")
    policy = spec.get("hostKeyPolicy") or "Pinned"
    if policy not in HOST_KEY_POLICIES:
        raise SpecError("spec.hostKeyPolicy", f"{policy!r} is not one of {', '.join(HOST_KEY_POLICIES)}")
    host_key = spec.get("hostKey")
    if host_key:
        parse_host_key(host_key)
    elif policy != "TrustOnFirstUse":
        raise SpecError("spec.hostKey", "is required unless spec.hostKeyPolicy is TrustOnFirstUse")

    packages = spec.get("packages") or {}
    profile = packages.get("profile") or Profile.QEMU_RBD
    if profile not in PROFILES:
        raise SpecError("spec.packages.profile", f"{profile!r} is not one of {', '.join(PROFILES)}")
    repos = tuple(_repository(r, f"spec.packages.repositories[{i}]")
                  for i, r in enumerate(packages.get("repositories") or []))
    if len({r.name for r in repos}) != len(repos):
        raise SpecError("spec.packages.repositories", "repository names must be unique")
    install = tuple(check_package(p, f"spec.packages.install[{i}]") for i, p in enumerate(packages.get("install") or []))
    remove = tuple(check_package(p, f"spec.packages.remove[{i}]") for i, p in enumerate(packages.get("remove") or []))
    both = set(install) & set(remove)
    if both:
        raise SpecError("spec.packages.remove", f"{', '.join(sorted(both))} also listed in spec.packages.install")
    maintenance = spec.get("maintenance") or {}
    deletion_policy = spec.get("deletionPolicy") or DeletionPolicy.RETAIN
    if deletion_policy not in DELETION_POLICIES:
        raise SpecError("spec.deletionPolicy", f"{deletion_policy!r} is not one of {', '.join(DELETION_POLICIES)}")
    adopt = spec.get("adopt", False)
    if not isinstance(adopt, bool):
        raise SpecError("spec.adopt", f"{adopt!r} is not true or false")
    return HostSpec(
        address=address, port=port, user=user,
        ssh_key=ssh_key,
        host_key=host_key or None, host_key_policy=policy, profile=Profile(profile),
        repositories=repos, install=install, remove=remove,
        allow_disruption=bool(maintenance.get("allowDisruption", False)),
        paused=bool(spec.get("paused", False)),
        deletion_policy=DeletionPolicy(deletion_policy),
        adopt=adopt,
    )
