"""libvirt-python connections to hypervisors: one per host, kept open, host key pinned.

`qemu+libssh://user@host/system`: libvirt's own SSH transport, given a known_hosts file written from
the HypervisorNode's pinned key (verification "normal": anything else is refused) and the private key
in a 0600 file. Both files exist only while the connection is being opened, in a private 0700
directory of the operator's runtime dir. The connection is kept open with libvirt keepalive (a dead
peer is noticed in ~15 s) and reopened when it died or when address, user, pin or key changed.
Domain lifecycle events reach `on_lifecycle(host uid)`, so the running-domain count in status and the
RbdImages' status.usedBy stay current between resyncs; running guests' disks are resized through it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable

import libvirt
import paramiko

from .ssh import SshError
from ..api.reasons import Reason

log = logging.getLogger(__name__)
KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 3
RUNTIME_DIR = os.environ.get("RBD_OPERATOR_RUNTIME_DIR") or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()

_loop_started = False
_loop_lock = threading.Lock()


def _start_event_loop() -> None:
    """libvirt's event loop (keepalive, domain events) in one daemon thread for all connections."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors come back as exceptions
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:  # noqa: BLE001 - keep the loop alive
                    log.exception("libvirt event loop")
        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


@dataclass(frozen=True)
class Target:
    uid: str
    address: str
    port: int
    user: str
    pinned: tuple[str, bytes]
    key_digest: str


def write_known_hosts(path: str, address: str, port: int, pinned: tuple[str, bytes]) -> None:
    """A known_hosts file holding only the pinned key (paramiko's HostKeys writes OpenSSH's format)."""
    keys = paramiko.HostKeys()
    keys.add(address if port == 22 else f"[{address}]:{port}", pinned[0], paramiko.PKey.from_type_string(*pinned))
    keys.save(path)


class Connections:
    """The open libvirt connections, by HypervisorNode uid (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[str, tuple[Target, libvirt.virConnect]] = {}
        self.on_lifecycle: Callable[[str], None] | None = None

    def get(self, uid: str, address: str, port: int, user: str, private_key: str,
            pinned: tuple[str, bytes]) -> libvirt.virConnect:
        target = Target(uid, address, port, user, pinned, hashlib.sha256(private_key.encode()).hexdigest())
        with self._lock:
            current = self._conns.get(uid)
        if current is not None:
            if current[0] == target and current[1].isAlive():
                return current[1]
            self.forget(uid)
        conn = self._open(target, private_key)
        with self._lock:
            self._conns[uid] = (target, conn)
        return conn

    def _open(self, target: Target, private_key: str) -> libvirt.virConnect:
        _start_event_loop()
        directory = tempfile.mkdtemp(prefix="rbd-operator-libvirt-", dir=RUNTIME_DIR)  # 0700
        try:
            keyfile, known = os.path.join(directory, "key"), os.path.join(directory, "known_hosts")
            fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(private_key if private_key.endswith("\n") else private_key + "\n")
            write_known_hosts(known, target.address, target.port, target.pinned)
            uri = (f"qemu+libssh://{target.user}@{target.address}:{target.port}/system?keyfile={keyfile}"
                   f"&known_hosts={known}&known_hosts_verify=normal&sshauth=privkey")
            try:
                conn = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                text = str(exc)
                reason = Reason.HOST_KEY_MISMATCH if "HOST KEY" in text.upper() else Reason.LIBVIRT_UNAVAILABLE
                raise SshError(reason, f"libvirt on {target.address}: {text.splitlines()[0][:300]}") from None
        finally:
            shutil.rmtree(directory, ignore_errors=True)  # read at connect time only
        conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        uid = target.uid

        def lifecycle(_conn: libvirt.virConnect, _dom: libvirt.virDomain, _event: int, _detail: int,
                      _opaque: object) -> None:
            if self.on_lifecycle is not None:
                self.on_lifecycle(uid)
        try:
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None)
        except libvirt.libvirtError:
            log.warning("no domain events from %s: running domains refresh at resyncs only", target.address)
        return conn

    def peek(self, uid: str) -> libvirt.virConnect | None:
        with self._lock:
            current = self._conns.get(uid)
        return current[1] if current and current[1].isAlive() else None

    def forget(self, uid: str) -> None:
        with self._lock:
            current = self._conns.pop(uid, None)
        if current is not None:
            try:
                current[1].close()
            except libvirt.libvirtError:
                pass


connections = Connections()


def running_domains(conn: libvirt.virConnect) -> int:
    return len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))


def wrap(what: str, fn: Callable, *args: object) -> object:
    """A libvirt call whose failure becomes LibvirtUnavailable (a condition reason)."""
    try:
        return fn(*args)
    except libvirt.libvirtError as exc:
        raise SshError(Reason.LIBVIRT_UNAVAILABLE, f"{what}: {str(exc).splitlines()[0][:300]}") from None


def domain_xmls(conn: libvirt.virConnect) -> dict[str, str]:
    """The running domains' live XML by name (a domain gone meanwhile is left out)."""
    out = {}
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            out[dom.name()] = dom.XMLDesc(0)
        except libvirt.libvirtError:
            continue
    return out


def disk_capacity(conn: libvirt.virConnect, domain: str, dev: str) -> int | None:
    """What the guest sees of a disk (virDomainGetBlockInfo's capacity, bytes); None: the domain is not
    running there any more (it stopped or migrated away since libvirt's last event)."""
    try:
        dom = conn.lookupByName(domain)
        if not dom.isActive():
            return None
        return int(dom.blockInfo(dev)[0])
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def resize_disk(conn: libvirt.virConnect, domain: str, dev: str, size: int) -> None:
    """virDomainBlockResize in bytes: QEMU takes the new size and the guest is told (virtio: a config change)."""
    conn.lookupByName(domain).blockResize(dev, size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
