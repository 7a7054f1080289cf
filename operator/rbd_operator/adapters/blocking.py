"""Run blocking library calls (librados, librbd, paramiko, the kubernetes client) off the event loop.

Each kind of peer has its own bounded pool, so that a black-holed host (SSH calls may run for
many minutes) cannot starve Ceph handlers, and a slow Ceph cannot starve the API reads.

A call that outlives its bound is abandoned by the handler (CallTimedOut) but its thread cannot be
killed. Two rules keep that safe:

- the call is told it was abandoned (`cancelled()`/`check_cancelled()`, read in the worker thread):
  loops that mutate check it before each step, so nothing more is changed after the timeout;
- the call stays registered as in flight for the object it was made for (`inflight`): the next
  reconcile of that object waits for it to end before it starts (see handlers/common.object_lock).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import threading
import time
from enum import StrEnum
from typing import Any, Callable, TypeVar

from .. import metrics
from ..api.errors import OperatorError
from ..api.reasons import Reason

T = TypeVar("T")


class CallTimedOut(OperatorError):
    """A blocking call did not return within its bound (the reason says what was unreachable)."""


class Pool(StrEnum):
    """The worker pools, one per kind of peer."""
    CEPH = "ceph"
    SSH = "ssh"
    KUBE = "kube"
    IMPORT = "import"  # template imports are long: few at once, never in the Ceph pool's way


_SIZES = {
    Pool.CEPH: int(os.environ.get("RBD_OPERATOR_CEPH_WORKERS", "16")),
    Pool.SSH: int(os.environ.get("RBD_OPERATOR_SSH_WORKERS", "16")),
    Pool.KUBE: int(os.environ.get("RBD_OPERATOR_KUBE_WORKERS", "8")),
    Pool.IMPORT: int(os.environ.get("RBD_OPERATOR_IMPORTS", "2")),
}
_executors = {kind: concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"{kind}-worker")
              for kind, n in _SIZES.items()}

def executor(pool: Pool) -> concurrent.futures.ThreadPoolExecutor:
    return _executors[pool]


_cancel: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("rbd_operator_cancel", default=None)
# The object the current reconcile works on (set by handlers/common.object_lock), for `inflight`.
current_object: contextvars.ContextVar[str | None] = contextvars.ContextVar("rbd_operator_object", default=None)
# Abandoned calls still running, by object uid (the event loop's own bookkeeping).
inflight: dict[str, list[asyncio.Future]] = {}


def cancelled() -> bool:
    """In a worker thread: whether the handler that started this call gave up on it."""
    event = _cancel.get()
    return event is not None and event.is_set()


def check_cancelled(what: str = "the operation") -> None:
    """Raise before a mutation when the call was abandoned: nothing changes after a timeout."""
    if cancelled():
        raise CallTimedOut(Reason.TIMEOUT, f"{what} was stopped: its handler gave up waiting")


async def run_blocking(fn: Callable[..., T], *args: Any, timeout: float = 60.0, reason: str = Reason.TIMEOUT,
                       pool: Pool = Pool.CEPH, **kwargs: Any) -> T:
    """Call fn in a worker thread of `pool`; give up waiting after `timeout` seconds (CallTimedOut).

    The libraries have their own timeouts configured so that the thread ends too; this bound
    keeps a handler from hanging if one of them does not.
    """
    loop = asyncio.get_running_loop()
    event = threading.Event()
    context = contextvars.copy_context()
    context.run(_cancel.set, event)
    call = functools.partial(context.run, fn, *args, **kwargs)
    future = loop.run_in_executor(_executors[pool], call)
    name, started = getattr(fn, "__name__", "call"), time.monotonic()
    try:
        result = await asyncio.wait_for(asyncio.shield(future), timeout)
        metrics.call_done(pool, name, time.monotonic() - started)
        return result
    except asyncio.TimeoutError:
        metrics.call_done(pool, name, time.monotonic() - started, timed_out=True)
        event.set()
        uid = current_object.get()
        if uid is not None and not future.done():
            _track(uid, future)
        raise CallTimedOut(reason, f"{getattr(fn, '__name__', 'call')} did not finish within {timeout:.0f}s") from None
    except asyncio.CancelledError:
        event.set()
        raise
    except Exception:
        metrics.call_done(pool, name, time.monotonic() - started)
        raise


def _track(uid: str, future: asyncio.Future) -> None:
    pending = inflight.setdefault(uid, [])
    pending.append(future)

    def done(fut: asyncio.Future) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved: an abandoned call's error was already reported as a timeout
        left = [f for f in inflight.get(uid, []) if f is not fut]
        if left:
            inflight[uid] = left
        else:
            inflight.pop(uid, None)

    future.add_done_callback(done)


async def wait_inflight(uid: str, timeout: float) -> None:
    """Wait for calls abandoned earlier for this object; CallTimedOut if they still run."""
    pending = [f for f in inflight.get(uid, []) if not f.done()]
    if not pending:
        return
    done, still = await asyncio.wait([asyncio.shield(f) for f in pending], timeout=timeout)
    if still:
        raise CallTimedOut(Reason.TIMEOUT, f"{len(still)} earlier operation(s) on this object still run after "
                           "their handler gave up; waiting for them before changing anything else")
