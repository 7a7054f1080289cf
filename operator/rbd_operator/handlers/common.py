"""Shared handler plumbing: per-object locks, status patches, conditions, events, backoff, the report of
an Outcome (converge/outcome.py) into status."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import traceback
from typing import Any, Awaitable, Callable, Mapping

import kopf

from .. import metrics
from ..adapters import blocking
from ..api.conditions import Condition, get_condition, merge_conditions
from ..api.errors import OperatorError, Waiting
from ..api.reasons import ConditionType, Reason
from ..converge.outcome import Outcome

RESYNC_SECONDS = float(os.environ.get("RBD_OPERATOR_RESYNC_SECONDS", "60"))


class ObjectLocks:
    """One reconcile at a time per object (a handler and a timer may overlap). One per process, in the
    Runtime (handlers/runtime.py).

    Inside `hold(uid)`, blocking calls are registered to this object: one abandoned on a timeout keeps the
    object busy until its thread ends (see adapters/blocking.py); `settle` waits for that.
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}  # holders and waiters per uid: a lock nobody uses is dropped

    def hold(self, uid: str) -> "_Held":
        lock = self._locks.get(uid)
        if lock is None:
            lock = self._locks[uid] = asyncio.Lock()
        return _Held(uid, lock, self)

    def _enter(self, uid: str) -> None:
        self._users[uid] = self._users.get(uid, 0) + 1

    def _leave(self, uid: str, lock: asyncio.Lock) -> None:
        """The last user gone: forget the lock (tens of thousands of idle objects would otherwise keep one each)."""
        users = self._users.get(uid, 1) - 1
        if users > 0:
            self._users[uid] = users
            return
        self._users.pop(uid, None)
        if self._locks.get(uid) is lock and not lock.locked():
            del self._locks[uid]

    def busy(self, uid: str) -> bool:
        """A handler is converging this object right now (or an abandoned call of it still runs):
        a timer tick holds an older body, so it skips."""
        lock = self._locks.get(uid)
        return (lock is not None and lock.locked()) or bool(blocking.inflight.get(uid))

    def release(self, uid: str) -> None:
        self._locks.pop(uid, None)


class _Held:
    def __init__(self, uid: str, lock: asyncio.Lock, locks: ObjectLocks) -> None:
        self.uid, self.lock, self.locks = uid, lock, locks
        self._token: Any = None

    async def __aenter__(self) -> "_Held":
        self.locks._enter(self.uid)
        try:
            await self.lock.acquire()
        except BaseException:
            self.locks._leave(self.uid, self.lock)
            raise
        self._token = blocking.current_object.set(self.uid)
        return self

    async def __aexit__(self, *exc: object) -> None:
        blocking.current_object.reset(self._token)
        self.lock.release()
        self.locks._leave(self.uid, self.lock)


async def settle(uid: str) -> None:
    """Before changing anything: earlier calls for this object that timed out must have ended."""
    await blocking.wait_inflight(uid, timeout=5.0)


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
        if event and changed and (bad or type_ == ConditionType.READY):
            kopf.event(self.body, type="Warning" if bad else "Normal", reason=reason, message=message or type_)

    def fail(self, reason: str, message: str, retry_in: float | None = None) -> None:
        """Report Ready=False and end the handler: kopf retries after `retry_in` seconds, never when None.

        A timer tick only reports: the next tick is its retry.
        """
        self.condition(ConditionType.READY, False, reason, message)
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
                    Reason.UNEXPECTED_ERROR, f"{type(exc).__name__} in {fn.__name__} (see the operator's log); retried",
                    backoff(kwargs.get("retry", 0)))
            finally:
                body = kwargs.get("body") or {}
                metrics.handler_done(str(body.get("kind") or "unknown"), body, kwargs.get("patch"),
                                     clock.seconds, failed)
        return handler
    return decorate


def report(status: "StatusUpdate", body: Mapping[str, Any], outcome: Outcome) -> None:
    """Write an Outcome: its events, its status fields, its conditions (not flushed)."""
    for note in outcome.events:
        kopf.event(body, type=note.type, reason=note.reason, message=note.message)
    if outcome.status:
        status.set(**outcome.status)
    for cond in outcome.conditions:
        status.condition(cond.type, cond.ok, cond.reason, cond.message, event=cond.event, bad=cond.bad)
