"""cephx users: caps, keys, the owner record of a user (mon config-key), key rotation, client steps."""

from __future__ import annotations

import base64
import errno
import json
import os
import struct
import time

import rados

from ...api.reasons import Reason
from ...reconcile.actions import ClientStep, CreateClient, RecordClientOwners, SetCaps
from .connection import OP_TIMEOUT, CephError, Connection, classify

# mon config-key (+ entity): the RbdStorages owning a cephx user, JSON {"owners": ["uid@cluster", ...]}.
CLIENT_OWNERS_KEY = "rbd-operator.io/clients/"


def new_cephx_key() -> str:
    """A fresh cephx secret as Ceph encodes it: type 1 (AES), created time, length 16, 16 random bytes."""
    now = time.time()
    raw = struct.pack("<HIIH", 1, int(now), int((now % 1) * 1e9), 16) + os.urandom(16)
    return base64.b64encode(raw).decode()


def caps_list(caps: dict[str, str]) -> list[str]:
    out: list[str] = []
    for service in sorted(caps):
        out += [service, caps[service]]
    return out


class AuthOps(Connection):
    def client_caps(self, entity: str) -> dict[str, str] | None:
        """The entity's caps, or None when it does not exist."""
        reply = self.mon("auth get", entity=entity, ok=(errno.ENOENT,))
        if not reply:
            return None
        return dict(reply[0].get("caps", {}))

    def client_key(self, entity: str) -> str | None:
        reply = self.mon("auth get", entity=entity, ok=(errno.ENOENT,))
        return reply[0]["key"] if reply else None

    def client_owners(self, entity: str) -> list[str]:
        """The owner record of a cephx user (mon config-key; [] when none)."""
        try:
            ret, out, _ = self.rados.mon_command(json.dumps({"prefix": "config-key get",
                                                             "key": CLIENT_OWNERS_KEY + entity}), b"",
                                                 timeout=OP_TIMEOUT)
        except rados.Error as exc:
            raise classify(exc, "config-key get") from None
        if ret == -errno.ENOENT:
            return []
        if ret < 0:
            raise CephError(Reason.CEPH_COMMAND_FAILED, f"config-key get {CLIENT_OWNERS_KEY}{entity}: errno {-ret}",
                            -ret)
        try:
            owners = json.loads(out).get("owners", [])
        except (ValueError, AttributeError):
            # Unreadable: someone else wrote it. Fail closed: nobody we know owns it.
            return ["(unreadable owner record)"]
        return [o for o in owners if isinstance(o, str)]

    def set_client_owners(self, entity: str, owners: list[str] | tuple[str, ...]) -> None:
        if owners:
            self.mon("config-key set", key=CLIENT_OWNERS_KEY + entity, val=json.dumps({"owners": sorted(owners)}))
        else:
            self.mon("config-key rm", key=CLIENT_OWNERS_KEY + entity, ok=(errno.ENOENT,))

    def apply_client_step(self, step: ClientStep) -> None:
        match step:
            case RecordClientOwners():  # and UpgradeClientOwners
                self.set_client_owners(step.target, step.owners)
            case SetCaps():
                self.mon("auth caps", entity=step.target, caps=caps_list(dict(step.caps)))
            case CreateClient():
                self.mon("auth get-or-create", entity=step.target, caps=caps_list(dict(step.caps)))
            case _:  # pragma: no cover - rotations are rotate_key's
                raise TypeError(f"not a client step: {step!r}")

    def rotate_key(self, entity: str) -> None:
        """Replace the user's key in place (same caps): `auth import` of a keyring with a fresh key.

        The key is generated here and reaches the monitor only in the command's input buffer.
        """
        caps = self.client_caps(entity)
        if caps is None:
            raise CephError(Reason.CEPH_COMMAND_FAILED, f"{entity} does not exist; nothing to rotate")
        lines = [f"[{entity}]", f"\tkey = {new_cephx_key()}"]
        lines += [f'\tcaps {service} = "{cap}"' for service, cap in sorted(caps.items())]
        try:
            ret, _, status = self.rados.mon_command(json.dumps({"prefix": "auth import"}),
                                                    ("\n".join(lines) + "\n").encode(), timeout=OP_TIMEOUT)
        except rados.Error as exc:
            raise classify(exc, "auth import") from None
        if ret < 0:
            raise CephError(Reason.CEPH_COMMAND_FAILED, f"auth import: {status or errno.errorcode.get(-ret, ret)}",
                            -ret)

    def delete_client(self, entity: str) -> None:
        self.mon("auth del", entity=entity, ok=(errno.ENOENT,))
        self.set_client_owners(entity, [])
