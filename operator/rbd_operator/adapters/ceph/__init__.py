"""Ceph through librados/librbd (no shelling out), with timeouts and typed errors, one module per Ceph
concept:

  connection.py  the connection (timeouts, mon commands, errors) and the shared session cache
  pools.py       pools, `osd dump`/`mon dump`/`df`, pool steps, emptiness, deletion
  auth.py        cephx users: caps, keys, owner records, rotation, client steps
  images.py      images through librbd: observe, image steps, creation under a staging name, trash
  snapshots.py   snapshots and their owner records
  trash.py       which trash entries are ours and expired
  rbd_raw.py     librbd's own object steps taken directly (ids, directory, rename, header omap)

`CephCluster` is one connection with every concept's operations. Keys are handed to librados in
memory; they never reach argv, logs or exception messages.
"""

from __future__ import annotations

from ...api.cephx import valid_cephx_key  # noqa: F401 - re-exported
from .auth import CLIENT_OWNERS_KEY, AuthOps, new_cephx_key  # noqa: F401
from .connection import CephError, Credentials, Sessions  # noqa: F401
from .images import OWNER_KEY, QOS_KEYS, TRASHED_KEY, ImageOps  # noqa: F401
from .pools import RBD_POOL_METADATA, PoolOps  # noqa: F401
from .snapshots import SNAPSHOT_OWNER_PREFIX, SnapshotOps  # noqa: F401
from .trash import TrashOps


__all__ = ["CLIENT_OWNERS_KEY", "OWNER_KEY", "QOS_KEYS", "RBD_POOL_METADATA", "SNAPSHOT_OWNER_PREFIX", "TRASHED_KEY",
           "CephCluster", "CephError", "Credentials", "Sessions", "forget", "new_cephx_key", "session",
           "valid_cephx_key", "with_session"]


class CephCluster(PoolOps, AuthOps, ImageOps, SnapshotOps, TrashOps):
    """One librados connection, shared by all handlers that use the same credentials."""


sessions = Sessions(CephCluster)  # the process's connections (one per set of credentials)
session, with_session, forget = sessions.session, sessions.with_session, sessions.forget
