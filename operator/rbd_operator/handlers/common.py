"""Shared handler plumbing: status patches, conditions, events, credentials, backoff."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import traceback
from typing import Any, Awaitable, Callable, Mapping

import kopf
from kubernetes.client.rest import ApiException

from .. import metrics
from ..adapters import blocking, kube
from ..adapters.blocking import run_blocking
from ..adapters.ceph import CephError, Credentials, valid_cephx_key
from ..api.conditions import Condition, get_condition, merge_conditions
from ..api.errors import OperatorError, Waiting
from ..api.storage import SecretRef

RESYNC_SECONDS = float(os.environ.get("RBD_OPERATOR_RESYNC_SECONDS", "60"))
CEPH_TIMEOUT = 60.0

_locks: dict[str, asyncio.Lock] = {}


class object_lock:
    """One reconcile at a time per object (a handler and a timer may overlap).

    Inside it, blocking calls are registered to this object: one abandoned on a timeout keeps the
    object busy until its thread ends (see adapters/blocking.py); `settle` waits for that.
    """

    def __init__(self, uid: str) -> None:
        self.uid = uid
        lock = _locks.get(uid)
        if lock is None:
            lock = _locks[uid] = asyncio.Lock()
        self.lock = lock
        self._token: Any = None

    async def __aenter__(self) -> "object_lock":
        await self.lock.acquire()
        self._token = blocking.current_object.set(self.uid)
        return self

    async def __aexit__(self, *exc: object) -> None:
        blocking.current_object.reset(self._token)
        self.lock.release()


async def settle(uid: str) -> None:
    """Before changing anything: earlier calls for this object that timed out must have ended."""
    await blocking.wait_inflight(uid, timeout=5.0)


def busy(uid: str) -> bool:
    """A handler is converging this object right now (or an abandoned call of it still runs):
    a timer tick holds an older body, so it skips."""
    lock = _locks.get(uid)
    return (lock is not None and lock.locked()) or bool(blocking.inflight.get(uid))


def release_lock(uid: str) -> None:
    _locks.pop(uid, None)


def backoff(retry: int) -> float:
    return float(min(300, 5 * 2 ** min(retry, 6)))


class StatusUpdate:
    """Collects status fields and conditions; patches only what differs from the object."""

    def __init__(self, body: Mapping[str, Any], patch: kopf.Patch, *, timer: bool = False) -> None:
        self.body = body
        self.patch = patch
        self.timer = timer
        self.status = body.get("status") or {}
        self.generation = body.get("metadata", {}).get("generation")
        self.conditions = list(self.status.get("conditions") or [])

    def set(self, **fields: Any) -> None:
        for key, value in fields.items():
            if self.status.get(key) != value:
                self.patch.status[key] = value

    def condition(self, type_: str, ok: bool, reason: str, message: str = "", *, event: bool = True,
                  bad: bool | None = None) -> None:
        """Set a condition; post an event when it changes to a bad state (`bad`, default: status False) or Ready."""
        old = get_condition(self.conditions, type_)
        self.conditions = merge_conditions(self.conditions, [Condition(type_, ok, reason, message)], self.generation)
        changed = not old or (old.get("status"), old.get("reason"), old.get("message")) != (
            "True" if ok else "False", reason, message)
        bad = (not ok) if bad is None else bad
        if event and changed and (bad or type_ == "Ready"):
            kopf.event(self.body, type="Warning" if bad else "Normal", reason=reason, message=message or type_)

    def fail(self, reason: str, message: str, retry_in: float | None = None) -> None:
        """Report Ready=False and end the handler: kopf retries after `retry_in` seconds, never when None.

        A timer tick only reports: the next tick is its retry.
        """
        self.condition("Ready", False, reason, message)
        self.flush()
        if self.timer:
            return
        if retry_in is None:
            raise kopf.PermanentError(message) from None
        raise kopf.TemporaryError(message, delay=retry_in) from None

    def error(self, exc: OperatorError, retry: int = 0) -> None:
        """Report an OperatorError: permanent ones wait for a change, others are retried with backoff."""
        if exc.permanent:
            delay = None
        elif isinstance(exc, Waiting):
            delay = min(exc.delay, backoff(retry))
        else:
            delay = backoff(retry)
        self.fail(exc.reason, exc.message, delay)

    def flush(self) -> None:
        if self.conditions != list(self.status.get("conditions") or []):
            self.patch.status["conditions"] = self.conditions
        if self.status.get("observedGeneration") != self.generation:
            self.patch.status["observedGeneration"] = self.generation


def reported(*, timer: bool = False) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """Every failure of a handler ends in a condition: an OperatorError with its reason, anything
    else as UnexpectedError (its traceback in the log, never its message in the status: it could
    quote anything). kopf's own retry signals pass through."""
    def decorate(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(fn)
        async def handler(**kwargs: Any) -> None:
            clock, failed = metrics.Timer(), True
            try:
                await fn(**kwargs)
                failed = False
            except (kopf.TemporaryError, kopf.PermanentError, asyncio.CancelledError):
                raise
            except OperatorError as exc:
                StatusUpdate(kwargs["body"], kwargs["patch"], timer=timer).error(exc, kwargs.get("retry", 0))
            except Exception as exc:  # noqa: BLE001 - reported, retried
                logger = kwargs.get("logger") or logging.getLogger(__name__)
                logger.error("unexpected %s in %s:\n%s", type(exc).__name__, fn.__name__,
                             "".join(traceback.format_tb(exc.__traceback__)))
                StatusUpdate(kwargs["body"], kwargs["patch"], timer=timer).fail(
                    "UnexpectedError", f"{type(exc).__name__} in {fn.__name__} (see the operator's log); retried",
                    backoff(kwargs.get("retry", 0)))
            finally:
                body = kwargs.get("body") or {}
                metrics.handler_done(str(body.get("kind") or "unknown"), body, kwargs.get("patch"),
                                     clock.seconds, failed)
        return handler
    return decorate


async def admin_credentials(monitors: tuple[str, ...], ref: SecretRef) -> Credentials:
    """Credentials from the admin Secret the spec references (keys userID, userKey).

    Only a Secret in the operator's namespace is read: Refused(SecretOutsideNamespace) otherwise.
    """
    ref = SecretRef(ref.name, kube.check_secret_namespace(ref.namespace, ref.name))
    hit, data = kube.cached_secret(ref.namespace, ref.name)
    try:
        if not hit:
            data = await run_blocking(kube.read_secret, ref.namespace, ref.name, timeout=30, pool="kube")
    except ApiException as exc:
        raise CephError("AuthFailed", f"cannot read admin Secret {ref.namespace}/{ref.name}: "
                        f"HTTP {exc.status} {exc.reason}") from None
    if data is None:
        raise CephError("AuthFailed", f"admin Secret {ref.namespace}/{ref.name} does not exist")
    key = data.get("userKey")
    if not key:
        raise CephError("AuthFailed", f"admin Secret {ref.namespace}/{ref.name} has no userKey")
    if not valid_cephx_key(key.strip()):
        raise CephError("AuthFailed", f"admin Secret {ref.namespace}/{ref.name}: userKey is not a cephx key")
    user = data.get("userID") or "admin"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", user):
        raise CephError("AuthFailed", f"admin Secret {ref.namespace}/{ref.name}: userID is not a cephx user name")
    return Credentials(monitors, user, key.strip())
