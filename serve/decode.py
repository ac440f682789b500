"""Decode work shared fairly between requests: a fixed pool of decode threads fed round-robin, one job per request
per turn, so one request of 64 large images cannot make a one-image request wait behind all of them.

``FairPool.run(owner, fn, *args)`` queues ``fn(*args)`` under ``owner`` (one owner per request) and returns its
result. Free threads take the oldest job of the next owner in turn. A cancelled caller's queued jobs are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable, Hashable
from typing import Any


class FairPool:
    """Round-robin scheduling of blocking jobs over ``threads`` worker threads, across owners."""

    def __init__(self, threads: int, name: str = "decode") -> None:
        self.threads = threads
        self._executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._queues: collections.OrderedDict[Hashable, collections.deque] = collections.OrderedDict()
        self._busy = 0

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def run(self, owner: Hashable, fn: Callable[..., Any], *args: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queues.setdefault(owner, collections.deque()).append((fn, args, future))
        self._dispatch()
        return await future  # cancelled: the job is skipped when its turn comes (or its result dropped)

    def _next(self) -> tuple[Callable[..., Any], tuple, asyncio.Future] | None:
        while self._queues:
            owner, queue = next(iter(self._queues.items()))
            job = queue.popleft()
            if queue:
                self._queues.move_to_end(owner)  # its next job waits for everyone else's turn
            else:
                del self._queues[owner]
            if not job[2].done():
                return job
        return None

    def _dispatch(self) -> None:
        while self._busy < self.threads:
            job = self._next()
            if job is None:
                return
            fn, args, future = job
            self._busy += 1
            done = asyncio.wrap_future(self._executor.submit(fn, *args))
            done.add_done_callback(lambda d, f=future: self._finished(d, f))

    def _finished(self, done: asyncio.Future, future: asyncio.Future) -> None:
        self._busy -= 1
        if not future.done():
            if done.cancelled():
                future.cancel()
            elif done.exception() is not None:
                future.set_exception(done.exception())
            else:
                future.set_result(done.result())
        self._dispatch()

    def shutdown(self) -> None:
        for queue in self._queues.values():
            for _, _, future in queue:
                future.cancel()
        self._queues.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
