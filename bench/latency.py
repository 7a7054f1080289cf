"""A userspace TCP proxy that adds a fixed one-way delay in each direction.

`tc qdisc ... netem` is what one would use, but this kernel has no netem ("Specified qdisc kind is
unknown", no modules), so the fleet benchmark puts this proxy between the operator and every test
host. Each chunk read at time t is written at t + delay, in order, without waiting for the previous
chunk's delay to end: latency is added, bandwidth is not throttled (a pipelined link).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time


class DelayProxy:
    def __init__(self, delay_ms: float) -> None:
        self.delay = delay_ms / 1000.0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="delay-proxy", daemon=True)
        self.servers: list[asyncio.base_events.Server] = []
        self.thread.start()

    def add(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        async def start() -> None:
            server = await asyncio.start_server(lambda r, w: self._session(r, w, target), *listen,
                                                reuse_address=True)
            self.servers.append(server)
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)

    async def _session(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                       target: tuple[str, int]) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        for w in (client_w, server_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                writer.close()

        task = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic() + self.delay, data or None))
                if not data:
                    break
        except (OSError, asyncio.IncompleteReadError):
            queue.put_nowait((time.monotonic() + self.delay, None))
        try:
            await task
        except (OSError, ConnectionError):
            pass

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def measure_rtt_ms(address: str, port: int, samples: int = 5) -> float:
    """Median time from connect to the first byte of the SSH banner (one round trip plus the accept)."""
    times = []
    for _ in range(samples):
        start = time.monotonic()
        with socket.create_connection((address, port), timeout=10) as sock:
            sock.recv(64)
        times.append((time.monotonic() - start) * 1000)
    times.sort()
    return times[len(times) // 2]
