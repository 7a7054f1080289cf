"""Run blocking library calls (librados, librbd, paramiko, libvirt) off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
from typing import Any, Callable, TypeVar

from ..api.errors import OperatorError

T = TypeVar("T")


class CallTimedOut(OperatorError):
    """A blocking call did not return within its bound (the reason says what was unreachable)."""

_executor = concurrent.futures.ThreadPoolExecutor(
    max_workers=int(os.environ.get("RBD_OPERATOR_WORKERS", "32")), thread_name_prefix="blocking"
)


async def run_blocking(fn: Callable[..., T], *args: Any, timeout: float = 60.0, reason: str = "Timeout",
                       **kwargs: Any) -> T:
    """Call fn in a worker thread; give up waiting after `timeout` seconds (CallTimedOut with `reason`).

    The libraries have their own timeouts configured so that the thread ends
    too; this bound keeps a handler from hanging if one of them does not.
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(fn, *args, **kwargs)
    try:
        return await asyncio.wait_for(loop.run_in_executor(_executor, call), timeout)
    except asyncio.TimeoutError:
        raise CallTimedOut(reason, f"{getattr(fn, '__name__', 'call')} did not finish within {timeout:.0f}s") from None
