"""The decode queue: a bounded, size-fair pool of decode threads (docs/DESIGN.md §4, "Decoding").

Fairness is per cost, then per request. Each image is a job whose cost is what decoding it will take, in pixels, read
from its header and markers before anything is decoded (``serve.engine.images.decode_costs``: width x height, a
baseline JPEG at its draft size, a progressive JPEG at its full size x scans / 10). Jobs of at most ``small_pixels``
go to the *small* lane, the others to the *large* lane:

- small jobs are taken first and have a thread of their own: the pool runs ``threads + 1`` threads and large jobs
  never hold more than ``threads`` of them, so a thumbnail never waits behind a 36-megapixel PNG; large jobs always
  keep at least one thread while they have work, so a stream of small images cannot starve them;
- within a lane, free threads take the oldest job of the next request in turn (round-robin), so one request of 64
  images cannot make a one-image request wait behind all of them;
- the queue is bounded in pixels: ``admitted(costs)`` takes a request only while each lane it uses holds at most
  ``max_pixels`` pixels (queued or decoding, admitted requests not yet finished), else ``DecodeQueueFull`` (503 +
  Retry-After). A lane that is empty takes any one request, so a request over the bound alone is still served.

A cancelled caller's queued jobs are dropped; its running ones stop when the caller sets their ``cancel`` event
(``serve.engine.service``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

SMALL, LARGE = 0, 1
LANES = ("small", "large")


class DecodeQueueFull(Exception):
    """The decode queue holds its bound of pixels: the request is refused with 503 + Retry-After."""


class FairPool:
    """Size-fair, request-fair scheduling of blocking decode jobs, bounded in pixels (see the module docstring)."""

    def __init__(
        self, threads: int, name: str = "decode", max_pixels: int | None = None, small_pixels: int = 0
    ) -> None:
        self.threads = max(1, threads)  # the most threads large jobs hold; small jobs have one more
        self.max_pixels, self.small_pixels = max_pixels, small_pixels
        self._executor = concurrent.futures.ThreadPoolExecutor(self.threads + 1, thread_name_prefix=name)
        self._lanes: tuple[collections.OrderedDict[Hashable, collections.deque], ...] = (
            collections.OrderedDict(),
            collections.OrderedDict(),
        )
        self._running = [0, 0]
        self._pixels = [0, 0]  # pixels of admitted requests not yet finished, per lane

    @property
    def queued(self) -> int:
        return sum(len(q) for lane in self._lanes for q in lane.values())

    @property
    def pixels(self) -> dict[str, int]:
        """Pixels admitted and not yet finished, per lane (``small``, ``large``)."""
        return dict(zip(LANES, self._pixels))

    def lane(self, cost: int) -> int:
        return SMALL if cost <= self.small_pixels else LARGE

    @contextlib.contextmanager
    def admitted(self, costs: Sequence[int]) -> Iterator[Hashable]:
        """Admit a request whose images cost ``costs`` pixels (``DecodeQueueFull`` past the bound); yields the owner
        to pass to ``run``. Its pixels count against the bound until the block ends."""
        per = [0, 0]
        for cost in costs:
            per[self.lane(cost)] += cost
        if self.max_pixels is not None:
            for lane in (SMALL, LARGE):
                held = self._pixels[lane]
                if per[lane] and held and held + per[lane] > self.max_pixels:
                    raise DecodeQueueFull(
                        f"the decode queue holds {held} pixels of {LANES[lane]} images; this request's {per[lane]} "
                        f"would pass its bound of {self.max_pixels}"
                    )
        self._pixels = [a + b for a, b in zip(self._pixels, per)]
        try:
            yield object()
        finally:
            self._pixels = [a - b for a, b in zip(self._pixels, per)]

    async def run(self, owner: Hashable, fn: Callable[..., Any], *args: Any, cost: int = 0) -> Any:
        """Run ``fn(*args)`` on a decode thread in its turn; ``cost`` (pixels) picks the lane."""
        future = asyncio.get_running_loop().create_future()
        self._lanes[self.lane(cost)].setdefault(owner, collections.deque()).append((fn, args, future))
        self._dispatch()
        return await future  # cancelled: the job is skipped when its turn comes (or its result dropped)

    def _next(self, lane: int) -> tuple[Callable[..., Any], tuple, asyncio.Future] | None:
        queues = self._lanes[lane]
        while queues:
            owner, queue = next(iter(queues.items()))
            job = queue.popleft()
            if queue:
                queues.move_to_end(owner)  # its next job waits for everyone else's turn
            else:
                del queues[owner]
            if not job[2].done():
                return job
        return None

    def _pick(self) -> int | None:
        """The lane the next free thread serves, or None (nothing runnable)."""
        large = bool(self._lanes[LARGE]) and self._running[LARGE] < self.threads
        if large and self._running[LARGE] == 0:
            return LARGE  # large work always keeps one thread
        if self._lanes[SMALL]:
            return SMALL
        return LARGE if large else None

    def _dispatch(self) -> None:
        while sum(self._running) <= self.threads:
            lane = self._pick()
            if lane is None:
                return
            job = self._next(lane)
            if job is None:
                continue  # that lane held only cancelled jobs; look again
            fn, args, future = job
            self._running[lane] += 1
            done = asyncio.wrap_future(self._executor.submit(fn, *args))
            done.add_done_callback(lambda d, f=future, n=lane: self._finished(d, f, n))

    def _finished(self, done: asyncio.Future, future: asyncio.Future, lane: int) -> None:
        self._running[lane] -= 1
        error = None if done.cancelled() else done.exception()  # retrieved even when nobody waits (a cancelled decode)
        if not future.done():
            if done.cancelled():
                future.cancel()
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())
        self._dispatch()

    def shutdown(self) -> None:
        for lane in self._lanes:
            for queue in lane.values():
                for _, _, future in queue:
                    future.cancel()
            lane.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
