"""One librados connection per set of credentials: connecting with timeouts, mon commands, typed errors,
and the cache of connections shared by every handler (`session`, `with_session`, `forget`).

Keys are handed to librados in memory; they never reach argv, logs or exception messages.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import rados
import rbd

from ...api.errors import OperatorError
from ...api.reasons import Reason

T = TypeVar("T")
CONNECT_TIMEOUT = 10
OP_TIMEOUT = 20
# errnos librados answers with when no monitor (or OSD) is there to answer.
UNREACHABLE = frozenset({errno.ETIMEDOUT, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENOTCONN,
                         errno.ESHUTDOWN, errno.ECONNRESET})


class CephError(OperatorError):
    """A Ceph failure with a condition reason: CephUnreachable, AuthFailed, CephCommandFailed, ..."""

    def __init__(self, reason: str, message: str, code: int | None = None) -> None:
        super().__init__(reason, message)
        self.code = code


@dataclass(frozen=True)
class Credentials:
    monitors: tuple[str, ...]
    user: str
    key: str = field(repr=False)

    @property
    def cache_key(self) -> tuple:
        return self.monitors, self.user, hashlib.sha256(self.key.encode()).hexdigest()


def errno_of(exc: Exception) -> int | None:
    code = getattr(exc, "errno", None)
    return abs(code) if isinstance(code, int) else None


def classify(exc: Exception, what: str) -> CephError:
    code = errno_of(exc)
    if isinstance(exc, rados.PermissionDeniedError) or code in (errno.EACCES, errno.EPERM):
        return CephError(Reason.AUTH_FAILED, f"{what}: permission denied (check the admin Secret's userID/userKey)",
                         code)
    if isinstance(exc, rados.TimedOut) or code in UNREACHABLE:
        return CephError(Reason.CEPH_UNREACHABLE, f"{what}: no answer from the monitors in time", code)
    return CephError(Reason.CEPH_COMMAND_FAILED, f"{what}: {type(exc).__name__} (errno {code})", code)


def metadata(image: rbd.Image, key: str) -> str | None:
    try:
        return image.metadata_get(key)
    except KeyError:
        return None


class Connection:
    """The connection itself; the Ceph concepts are mixed in by adapters/ceph/__init__.py (CephCluster)."""

    def __init__(self, creds: Credentials, conf: dict[str, str] | None = None) -> None:
        self.creds = creds
        self.conf = dict(conf or {})  # extra librados/librbd settings of this connection
        self._rados: rados.Rados | None = None
        self._lock = threading.Lock()
        self.users = 0          # sessions in progress (counted under the cache's lock)
        self.retired = False    # out of the cache: shut down when the last user leaves
        # librbd's own object steps taken directly (adapters/ceph/rbd_raw.py): None until probed on this
        # cluster, then whether its layout is what they expect (False: librbd's calls are used instead).
        self.fast_path: bool | None = None
        self.fast_path_problem: str | None = None
        self.fast_path_lock = threading.Lock()
        self.probes_cleared: set[str] = set()  # pools whose stray probe images this connection has removed
        self.probes_retry: dict[str, float] = {}  # pools with a stray probe still open: when to look again
        self.mirroring: dict[str, tuple[bool, float]] = {}  # pool -> (mirrors images, when asked)

    def _connect(self) -> rados.Rados:
        with self._lock:
            if self._rados is not None:
                return self._rados
            conf = {
                "mon_host": ",".join(self.creds.monitors),
                "key": self.creds.key,
                "client_mount_timeout": str(CONNECT_TIMEOUT),
                "rados_mon_op_timeout": str(OP_TIMEOUT),
                "rados_osd_op_timeout": str(OP_TIMEOUT),
                "log_to_stderr": "false",
                "err_to_stderr": "false",
                "log_file": "",
                "admin_socket": "",  # nothing under /var/run/ceph: the image's root filesystem is read-only
                **self.conf,
            }
            cluster = rados.Rados(rados_id=self.creds.user, conf=conf)
            try:
                cluster.connect(timeout=CONNECT_TIMEOUT)
            except rados.Error as exc:
                try:
                    cluster.shutdown()
                except Exception:  # noqa: BLE001 - best effort
                    pass
                err = classify(exc, f"connecting to {','.join(self.creds.monitors)} as {self.creds.user}")
                if err.reason == Reason.CEPH_COMMAND_FAILED:
                    err = CephError(Reason.CEPH_UNREACHABLE, err.message, err.code)
                raise err from None
            self._rados = cluster
            return cluster

    def close(self) -> None:
        with self._lock:
            if self._rados is not None:
                try:
                    self._rados.shutdown()
                finally:
                    self._rados = None

    @property
    def rados(self) -> rados.Rados:
        return self._connect()

    def ioctx(self, pool: str) -> rados.Ioctx:
        try:
            return self.rados.open_ioctx(pool)
        except rados.ObjectNotFound:
            raise CephError(Reason.POOL_NOT_FOUND, f"pool {pool!r} does not exist", errno.ENOENT) from None
        except rados.Error as exc:
            raise classify(exc, f"opening pool {pool!r}") from None

    def mon(self, prefix: str, *, ok: Iterable[int] = (), **args: Any) -> Any:
        """Run a mon command; return parsed JSON (or None). Errnos in `ok` return None."""
        cmd = {"prefix": prefix, "format": "json", **args}
        try:
            ret, out, status = self.rados.mon_command(json.dumps(cmd), b"", timeout=OP_TIMEOUT)
        except rados.Error as exc:
            raise classify(exc, prefix) from None
        if ret < 0:
            if -ret in tuple(ok):
                return None
            reason = (Reason.AUTH_FAILED if -ret in (errno.EACCES, errno.EPERM) else
                      Reason.CEPH_UNREACHABLE if -ret in UNREACHABLE else Reason.CEPH_COMMAND_FAILED)
            # `status` is Ceph's own message; mon command replies never echo keys.
            raise CephError(reason, f"{prefix}: {status or errno.errorcode.get(-ret, ret)}", -ret)
        return json.loads(out) if out else None

    def fsid(self) -> str:
        return self.rados.get_fsid()

    def rbd_call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except rbd.ImageNotFound:
            raise CephError(Reason.IMAGE_NOT_FOUND, f"{what}: not found", errno.ENOENT) from None
        except (rbd.Error, rados.Error) as exc:
            raise classify(exc, what) from None


class Sessions:
    """The connections shared by all handlers, one per set of credentials (a process-wide pool)."""

    def __init__(self, factory: Callable[[Credentials], Connection]) -> None:
        self._factory = factory
        self._clusters: dict[tuple, Connection] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def session(self, creds: Credentials) -> Iterator[Any]:
        """The shared connection for these credentials, held for the duration of the block.

        A connection retired meanwhile (forget, a rotated key) is shut down only when its last user
        leaves: never under a thread still using it.
        """
        stale: list[Connection] = []
        with self._lock:
            cluster = self._clusters.get(creds.cache_key)
            if cluster is None:
                # A rotated key replaces the connection made with the old one.
                stale = [self._clusters.pop(k) for k in [k for k in self._clusters if k[:2] == creds.cache_key[:2]]]
                cluster = self._clusters[creds.cache_key] = self._factory(creds)
            cluster.users += 1
        for old in stale:
            self._retire(old)
        try:
            yield cluster
        finally:
            self._leave(cluster)

    def forget(self, creds: Credentials) -> None:
        """Drop a connection that failed, so that the next use reconnects (once its users are done)."""
        with self._lock:
            cluster = self._clusters.pop(creds.cache_key, None)
        if cluster:
            self._retire(cluster)

    def _retire(self, cluster: Connection) -> None:
        with self._lock:
            cluster.retired = True
            idle = cluster.users == 0
        if idle:
            cluster.close()

    def _leave(self, cluster: Connection) -> None:
        with self._lock:
            cluster.users -= 1
            idle = cluster.retired and cluster.users == 0
        if idle:
            cluster.close()

    def with_session(self, fn: Callable[..., T]) -> Callable[..., T]:
        """Decorate `fn(cluster, ...)` to be called as `fn(creds, ...)` within a session."""
        @functools.wraps(fn)
        def call(creds: Credentials, *args: Any, **kwargs: Any) -> T:
            with self.session(creds) as cluster:
                return fn(cluster, *args, **kwargs)
        return call
