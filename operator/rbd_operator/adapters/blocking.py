"""Run blocking library calls (librados, librbd, paramiko, libvirt) off the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_executor = concurrent.futures.ThreadPoolExecutor(
    max_workers=int(os.environ.get("RBD_OPERATOR_WORKERS", "32")), thread_name_prefix="blocking"
)


async def run_blocking(fn: Callable[..., T], *args: Any, timeout: float = 60.0, **kwargs: Any) -> T:
    """Call fn in a worker thread; give up waiting after `timeout` seconds.

    The libraries have their own timeouts configured so that the thread ends
    too; this bound keeps a handler from hanging if one of them does not.
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(fn, *args, **kwargs)
    return await asyncio.wait_for(loop.run_in_executor(_executor, call), timeout)
