"""`rbd-operator discover`, I/O part: read a Ceph cluster (librados/librbd, read-only: mon queries, `auth get`,
images opened read-only) and hosts (SSH to a host key verified against known_hosts, files read only).

Decides nothing: reconcile/discover.py maps the facts to manifests. Keys read here (the `auth get` answer)
are dropped on the spot; nothing of them is returned.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import stat
import xml.etree.ElementTree as ET

import paramiko
import rados
import rbd

from ..api.errors import SpecError
from ..api.image import FEATURE_BITS
from ..api.names import check_client_name
from ..reconcile.discover import ClusterFacts, DiscoverError, HostFacts, HostSecret, ImageFacts, PoolFacts, shown
from ..reconcile.host_plan import _UUID
from ..reconcile.storage_plan import ObservedPool
from .ceph.auth import CLIENT_OWNERS_KEY
from .ssh import HOST_KEY_ALGORITHMS, SshError, SshSession

TIMEOUT = "20"
SECRETS_DIR = "/etc/libvirt/secrets"
MAX_SECRETS = 1000
_ENTITY = re.compile(r"^\[(client\.[A-Za-z0-9][A-Za-z0-9_.-]{0,62})\]\s*\Z")


def keyring_entity(path: str) -> str:
    """The first entity a keyring file names (the identity discover connects as)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                match = _ENTITY.match(line.strip())
                if match:
                    return match.group(1)
    except OSError as exc:
        raise DiscoverError(f"--keyring {path}: {exc.strerror}") from None
    raise DiscoverError(f"--keyring {path} names no [client.NAME] section")


def connect(conf: str, keyring: str, entity: str | None = None) -> rados.Rados:
    entity = entity or keyring_entity(keyring)
    if not os.path.isfile(conf):
        raise DiscoverError(f"--ceph-conf {conf}: no such file")
    cluster = rados.Rados(conffile=conf, name=entity, conf={
        "keyring": keyring, "client_mount_timeout": TIMEOUT, "rados_mon_op_timeout": TIMEOUT,
        "rados_osd_op_timeout": TIMEOUT, "log_to_stderr": "false", "err_to_stderr": "false", "log_file": ""})
    try:
        cluster.connect(timeout=int(TIMEOUT))
    except rados.Error as exc:
        raise DiscoverError(f"cannot connect to the cluster of {conf} as {entity}: {type(exc).__name__}") from None
    return cluster


def mon(cluster: rados.Rados, prefix: str, **args: object) -> object:
    ret, out, err = cluster.mon_command(json.dumps({"prefix": prefix, "format": "json", **args}), b"")
    if ret != 0:
        raise DiscoverError(f"ceph {prefix} failed (errno {-ret}): {shown(err)} - see docs/migrate.md for the caps "
                            "discover needs")
    return json.loads(out) if out else None


def monitors(cluster: rados.Rados) -> tuple[str, ...]:
    """host:port per monitor (msgr v1 where it has one: an address without a prefix means v1)."""
    result = []
    for entry in (mon(cluster, "mon dump") or {}).get("mons", []):
        addrs = {a.get("type"): a.get("addr") for a in (entry.get("public_addrs") or {}).get("addrvec", [])}
        addr = addrs.get("v1") or (f"v2:{addrs['v2']}" if addrs.get("v2") else None)
        if addr:
            result.append(addr)
    return tuple(result)


def client_caps(cluster: rados.Rados, client: str) -> dict[str, str]:
    """The client's caps (`auth get`; its key is in the same answer and dropped here)."""
    answer = mon(cluster, "auth get", entity=f"client.{client}")
    entries = answer if isinstance(answer, list) else []
    if not entries:
        raise DiscoverError(f"client.{client} does not exist (--client names the cephx user the hypervisors use)")
    return {str(k): str(v) for k, v in (entries[0].get("caps") or {}).items()}


def checked_client(client: str) -> str:
    """--client reaches `auth get` and a path on every host: a plain cephx client name only."""
    try:
        return check_client_name("--client", client)
    except SpecError as exc:
        raise DiscoverError(exc.message) from None


def read_cluster(cluster: rados.Rados, client: str, only_pool: str | None) -> ClusterFacts:
    client = checked_client(client)
    dump = mon(cluster, "osd dump") or {}
    names = {p["pool"]: p["pool_name"] for p in dump.get("pools", [])}
    pools = []
    for raw in dump.get("pools", []):
        if only_pool is not None and raw["pool_name"] != only_pool:
            continue
        facts = _pool(cluster, raw, names)
        if facts is not None:
            pools.append(facts)
    if only_pool is not None and not pools:
        raise DiscoverError(f"--pool {shown(only_pool)}: no such RBD pool")
    return ClusterFacts(fsid=cluster.get_fsid(), monitors=monitors(cluster), client=client,
                        caps=client_caps(cluster, client), pools=tuple(pools))


def _pool(cluster: rados.Rados, raw: dict, names: dict[int, str]) -> PoolFacts | None:
    observed = ObservedPool.from_osd_dump(raw)
    apps = observed.applications
    if apps and "rbd" not in apps:
        return None  # cephfs, rgw, .mgr, ...
    with cluster.open_ioctx(raw["pool_name"]) as ioctx:
        try:
            image_names = rbd.RBD().list(ioctx)
        except rbd.Error as exc:
            raise DiscoverError(f"listing the images of pool {shown(raw['pool_name'])}: {type(exc).__name__}") from None
        if not apps and not image_names:
            return None  # no application, no image: not an RBD pool
        images = tuple(_image(ioctx, name, names) for name in image_names)
    return PoolFacts(name=raw["pool_name"], pg_num=observed.pg_num_target, size=observed.size,
                     quota_max_bytes=observed.quota_max_bytes, quota_max_objects=observed.quota_max_objects,
                     applications=apps, settings=dict(observed.settings),
                     options=tuple(sorted((raw.get("options") or {}).keys())), images=images)


def _image(ioctx: rados.Ioctx, name: str, pool_names: dict[int, str]) -> ImageFacts:
    try:
        with rbd.Image(ioctx, name, read_only=True) as image:
            if image.old_format():
                return ImageFacts(name=name, size=image.size(), features=(), old_format=True)
            bits = image.features()
            try:
                parent = image.get_parent_image_spec()
                source = (parent["pool_name"], parent["image_name"], parent["snap_name"])
            except rbd.ImageNotFound:
                source = None
            data_pool = image.data_pool_id()
            snaps = tuple(s["name"] for s in image.list_snaps() if s.get("namespace", 0) == rbd.RBD_SNAP_NAMESPACE_TYPE_USER)
            return ImageFacts(name=name, size=image.size(), features=tuple(f for f, b in FEATURE_BITS.items() if bits & b),
                              data_pool=pool_names.get(data_pool) if data_pool not in (-1, ioctx.get_pool_id()) else None,
                              parent=source, snapshots=snaps)
    except rbd.Error as exc:
        raise DiscoverError(f"reading image {shown(name)}: {type(exc).__name__}") from None


# -- hosts ---------------------------------------------------------------------------------------------------
def pinned_key(known_hosts: str, address: str, port: int) -> tuple[str, bytes]:
    """The host's key as known_hosts pins it (hashed entries too). No entry: refused, never learnt here."""
    try:
        keys = paramiko.HostKeys(known_hosts)
    except (OSError, paramiko.SSHException) as exc:
        raise DiscoverError(f"--known-hosts {known_hosts}: {type(exc).__name__}") from None
    entry = keys.lookup(address if port == 22 else f"[{address}]:{port}") or {}
    for key_type in HOST_KEY_ALGORITHMS:  # ed25519 first
        if key_type in entry:
            return key_type, entry[key_type].asbytes()
    raise DiscoverError(f"host {shown(address)}:{port} has no entry of a supported key type in {known_hosts}; check "
                        "its fingerprint out of band and add it (discover never trusts a key on first use)")


def read_host(address: str, port: int, user: str, private_key: str, pinned: tuple[str, bytes],
              client: str) -> HostFacts:
    client = checked_client(client)
    try:
        with SshSession(address, port, user, private_key, pinned) as session:
            files = tuple(p for p in ("/etc/ceph/ceph.conf", f"/etc/ceph/ceph.client.{client}.keyring")
                          if _exists(session, p))
            secrets = _secrets(session, address)
            conf = session.read("/etc/ceph/ceph.conf") if "/etc/ceph/ceph.conf" in files else None
    except SshError as exc:
        raise DiscoverError(f"host {shown(address)}: {exc.message}") from None
    line = f"{pinned[0]} {base64.b64encode(pinned[1]).decode()}"
    return HostFacts(address=address, port=port, user=user, host_key=line, files=files, secrets=secrets,
                     conf_fsid=conf_fsid(conf))


_FSID_LINE = re.compile(rb"^[ \t]*fsid[ \t]*=[ \t]*(\S+)", re.MULTILINE)


def conf_fsid(conf: bytes | None) -> str | None:
    """The fsid a ceph.conf names (the first; shown only through `shown`, as the host's bytes are hostile)."""
    match = _FSID_LINE.search(conf or b"")
    return match.group(1).decode("ascii", "replace")[:64] if match else None


def _exists(session: SshSession, path: str) -> bool:
    try:
        return stat.S_ISREG(session.sftp.stat(path).st_mode or 0)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise DiscoverError(f"host {session.address}: {path}: {exc}") from None


def _secrets(session: SshSession, address: str) -> tuple[HostSecret, ...]:
    """libvirt's persistent secrets as its store holds them (<uuid>.xml), read as files: nothing runs."""
    try:
        entries = session.sftp.listdir(SECRETS_DIR)
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise DiscoverError(f"host {address}: listing {SECRETS_DIR}: {exc}") from None
    found = []
    for entry in sorted(entries)[:MAX_SECRETS]:
        if not entry.endswith(".xml"):
            continue
        if not _UUID.fullmatch(entry[:-4]):
            raise DiscoverError(f"host {address}: {SECRETS_DIR}/{shown(entry)} is not named by a UUID")
        data = session.read(f"{SECRETS_DIR}/{entry}")
        found.append(parse_secret(data or b"", entry[:-4], address))
    return tuple(found)


def parse_secret(data: bytes, uuid: str, address: str) -> HostSecret:
    """A libvirt secret's XML (the host's answer is hostile until proven otherwise: bounded, no DTD)."""
    where = f"host {address}: {SECRETS_DIR}/{uuid}.xml"
    if len(data) > 65536 or b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DiscoverError(f"{where} is not a libvirt secret (too large, or has a DTD)")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DiscoverError(f"{where} is not XML: {exc}") from None
    if root.tag != "secret" or (root.findtext("uuid") or "").strip() != uuid:
        raise DiscoverError(f"{where} is not a libvirt secret of UUID {uuid}")
    usage = root.find("usage")
    usage_type = usage.get("type", "") if usage is not None else ""
    usage_name = (usage.findtext("name") or "") if usage is not None else ""
    return HostSecret(uuid=uuid, usage_type=usage_type, usage_name=usage_name.strip())


def ceph_observed(cluster: rados.Rados, entity: str) -> tuple[dict[str, ObservedPool], dict[str, str] | None, list[str]]:
    """For --diff: the pools, the client's caps and its owner record (mon config-key) as they are now."""
    pools = {p["pool_name"]: ObservedPool.from_osd_dump(p) for p in (mon(cluster, "osd dump") or {}).get("pools", [])}
    caps = client_caps(cluster, entity.split(".", 1)[1])
    ret, out, _ = cluster.mon_command(json.dumps({"prefix": "config-key get", "key": CLIENT_OWNERS_KEY + entity}), b"")
    if ret == -errno.ENOENT:
        owners: list[str] = []
    elif ret != 0:
        raise DiscoverError(f"config-key get {CLIENT_OWNERS_KEY}{entity} failed (errno {-ret}); see docs/migrate.md")
    else:
        try:
            owners = [o for o in json.loads(out).get("owners", []) if isinstance(o, str)]
        except (ValueError, AttributeError):
            owners = ["(unreadable owner record)"]
    return pools, caps, owners
