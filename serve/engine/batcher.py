"""Crop-level dynamic batching: one queue of crops from every request, one worker feeding the backend.

``submit(crops)`` enqueues one image's crops (``[k, 3, H, W]``: S x S crops, or one scale's multi-scale views; or
``ImageRows``, an image whose crops a device-fed runner cuts) and returns when their logits are back. Batches hold one
shape only: the worker takes the oldest item's shape and, in arrival order, the items of that shape until a batch
holds ``max_batch`` rows, or ``max_batch * S * S`` pixels (at least one item), or the oldest item has waited
``max_wait`` and the backend is free. S x S batches are padded up to the nearest warm batch shape; other shapes run
unpadded (up to the backend's ``min_batch``). The backend runs one batch at a time on its own thread; with ``stage``
(a device-fed runner) a full batch is staged (copied to the device, cut, normalised) on a second thread while the
last one runs.

Warm shapes: ``warm(n)`` runs one batch of shape n before it serves traffic (the server warms its first shape
before it is ready); ``cold_shapes`` are warmed by the worker in the background, in their order, whenever the queue
is empty and the backend free. Until a shape is warm, S x S batches use warm shapes only: padded up to the nearest
warm shape, and split into batches of the largest warm one. A request that arrives during a background warm-up waits
for that one warm-up at most, never for a cold shape to be compiled or allocated under it. Items go whole into a
batch unless one alone exceeds the batch (then it spans batches). A caller that goes away (cancelled: client
disconnected, deadline passed) has its not-yet-batched rows dropped. The queue is bounded in crop-equivalents (a row
of H x W counts ceil(H*W / S^2)): ``QueueFull``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from resnet.runtime.device_feed import ImageBatch, ImageRows

from .queue_items import BackendFailed, BatchStats, QueueFull, QueueItem, Rows, kind_of

log = logging.getLogger("serve.engine.batcher")


class Batcher:
    """The queue and its worker. Create inside a running event loop; ``start()``, then ``submit()``; ``close()``."""

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_wait_s: float,
        max_queue_crops: int,
        shapes: list[int],
        on_batch: Callable[[int, int, float], None] | None = None,
        input_size: int | None = None,
        min_batch: int = 1,
        max_view_batch: int | None = None,
        cold_shapes: list[int] | None = None,
        warm_input: Callable[[int], np.ndarray] | None = None,
        on_warm: Callable[[int, float], None] | None = None,
        stage: Callable[[Any], Any] | None = None,
    ) -> None:
        """``cold_shapes``: shapes of ``shapes`` not yet warm, warmed in that order when the queue is empty (None:
        every shape counts as warm); ``warm_input(n)`` makes a warm-up batch of n rows (random S x S crops by
        default); ``on_warm(n, seconds)`` is told after each warm-up. ``input_size``: the card's S (crops of S x S are padded to ``shapes``, others are bounded by
        ``max_batch * S * S`` pixels and count ceil(H*W / S^2) each in the queue); None: every shape counts 1.
        ``max_view_batch``: most rows of a batch of another shape than S x S (a TensorRT view profile's max).
        ``stage(batch)``: a device-fed runner's first step (``resnet.runtime.device_feed.Fed.stage``), on a thread
        of its own so that the next batch is staged while the last one runs; ``run`` then takes what it returns."""
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue_crops = max_queue_crops
        self.shapes = shapes
        self.input_size = input_size
        self.min_batch = min_batch
        self.max_view_batch = max_view_batch
        self._cold = [n for n in (cold_shapes or []) if n in shapes]
        self.warm_shapes = [n for n in shapes if n not in self._cold]
        self._warm_input = warm_input or self._random_crops
        self._on_warm = on_warm
        self.warm_failed: str | None = None  # the last background warm-up that raised
        self._on_batch = on_batch
        self._queue: collections.deque[QueueItem] = collections.deque()
        self._pending = 0  # crops queued and not yet batched
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="backend")
        self._stage = stage
        self._stage_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stage") if stage else None
        self._task: asyncio.Task | None = None
        self._running: asyncio.Future | None = None  # the batch on the backend now
        self.busy_s = 0.0  # time the backend spent running batches
        self.failures_in_a_row = 0  # batches that raised since the last one that did not
        self.last_failure: str | None = None

    @property
    def pending_crops(self) -> int:
        return self._pending

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="batcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._running is not None:
            self._running.cancel()
            await asyncio.wait([self._running])
        self._executor.shutdown(wait=True)
        if self._stage_executor is not None:
            self._stage_executor.shutdown(wait=True)

    @property
    def cold_shapes(self) -> list[int]:
        """Shapes still to warm up (in the order the worker warms them)."""
        return list(self._cold)

    def _random_crops(self, n: int) -> np.ndarray:
        size = self.input_size or 224
        return np.random.default_rng(n).standard_normal((n, 3, size, size), dtype=np.float32)

    async def warm(self, n: int) -> np.ndarray:
        """Run one warm-up batch of shape ``n`` on the backend thread now; from then on batches may use it.
        Returns its logits (the caller checks them against the card)."""
        started = time.perf_counter()
        staged = await self._staged(self._warm_input(n))
        out = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, staged)
        self._mark_warm(n, time.perf_counter() - started)
        return out

    def _mark_warm(self, n: int, seconds: float) -> None:
        if n in self._cold:
            self._cold.remove(n)
        if n not in self.warm_shapes:
            self.warm_shapes = sorted([*self.warm_shapes, n])
        if self._on_warm is not None:
            self._on_warm(n, seconds)

    async def _warm_next(self) -> None:
        """Warm the next cold shape (the queue is empty). A shape whose warm-up raises is never used."""
        n = self._cold[0]
        try:
            await self.warm(n)
        except Exception as e:
            self._cold.remove(n)
            self.warm_failed = f"batch shape {n}: {type(e).__name__}: {e}"
            log.error("background warm-up failed, not using %s", self.warm_failed)

    def padded_size(self, n: int) -> int:
        """The smallest warm shape holding ``n`` rows (the largest warm shape when none does)."""
        warm = self.warm_shapes or self.shapes
        for s in warm:
            if s >= n:
                return s
        return warm[-1]

    def _square(self, shape: tuple[int, ...]) -> bool:
        return self.input_size is None or (shape[-2] == self.input_size and shape[-1] == self.input_size)

    def row_cost(self, shape: tuple[int, ...]) -> int:
        """Crop-equivalents of one row of ``shape`` (``[3, H, W]``) in the queue bound: ceil(H*W / S^2)."""
        if self.input_size is None:
            return 1
        return max(1, math.ceil(shape[-2] * shape[-1] / self.input_size**2))

    def cost(self, crops: np.ndarray) -> int:
        """Crop-equivalents ``crops`` (``[k, 3, H, W]``) take in the queue bound."""
        return len(crops) * self.row_cost(crops.shape[1:])

    def _row_limit(self, shape: tuple[int, ...], first_rows: int) -> int:
        """Most rows of ``shape`` in one batch: ``max_batch`` (S x S: the largest warm shape), and
        ``max_batch * S^2`` pixels unless the first item alone is larger (at least one item, never over ``max_batch`` nor, off S x S, ``max_view_batch``)."""
        if self._square(shape):
            return min(self.max_batch, self.padded_size(self.max_batch))  # the largest warm shape
        assert self.input_size is not None
        by_pixels = self.max_batch * self.input_size**2 // (shape[-2] * shape[-1])
        return min(self.max_batch, self.max_view_batch or self.max_batch, max(by_pixels, first_rows, 1))

    async def submit(self, crops: Rows) -> BatchStats:
        """Queue ``[k, 3, H, W]`` crops or views (or an image's k crops: ``ImageRows``); return their logits when
        done. ``QueueFull`` at the bound."""
        k = self.cost(crops)
        if self._pending + k > self.max_queue_crops:
            raise QueueFull(f"{self._pending} crops queued (bound {self.max_queue_crops})")
        item = QueueItem(crops, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._queue.append(item)
        self._pending += k
        self._wake.set()
        try:
            await item.future
        except asyncio.CancelledError:
            self._drop(item)
            raise
        assert item.logits is not None
        return BatchStats(item.logits, item.queue_s, item.inference_s, item.batches)

    def _drop(self, item: QueueItem) -> None:
        """Forget a cancelled item's crops that no batch has taken yet."""
        if item.taken < len(item.crops):
            self._pending -= (len(item.crops) - item.taken) * self.row_cost(item.crops.shape[1:])
            item.taken = len(item.crops)
            try:
                self._queue.remove(item)
            except ValueError:
                pass

    def _oldest(self) -> QueueItem | None:
        """The oldest item still wanted (cancelled ones at the front are dropped)."""
        while self._queue and self._queue[0].future.done():
            self._drop(self._queue[0])
        return self._queue[0] if self._queue else None

    def _rows_of(self, kind: tuple) -> int:
        """Rows of ``kind`` (``kind_of``: shape, dtype, array or image) queued and not yet batched."""
        return sum(len(i.crops) - i.taken for i in self._queue if kind_of(i.crops) == kind and not i.future.done())

    def _take(self) -> list[tuple[QueueItem, int, int]]:
        """Pop rows of the oldest item's shape in arrival order, up to the row limit, as (item, start, stop) slices.

        Whole items only, unless one item alone is larger than the batch (then it is split): ten-crop traffic
        gives batches of 10, 20, ... crops, which are batch shapes already, so nothing is wasted on padding.
        Items of other shapes keep their place in the queue.
        """
        parts: list[tuple[QueueItem, int, int]] = []
        oldest = self._oldest()
        if oldest is None:
            return parts
        shape = oldest.crops.shape[1:]
        kind = kind_of(oldest.crops)
        room = self._row_limit(shape, len(oldest.crops) - oldest.taken)
        cost = self.row_cost(shape)
        for item in list(self._queue):
            if room <= 0:
                break
            if item.future.done():  # cancelled meanwhile
                self._drop(item)
                continue
            if kind_of(item.crops) != kind:
                continue
            start = item.taken
            if len(item.crops) - start > room and parts:
                break  # the next item does not fit whole: start the next batch with it (no ragged sizes to pad)
            stop = min(len(item.crops), start + room)
            parts.append((item, start, stop))
            item.taken = stop
            room -= stop - start
            self._pending -= (stop - start) * cost
            if stop == len(item.crops):
                self._queue.remove(item)
        return parts

    @staticmethod
    def _assemble(parts: list[tuple[QueueItem, int, int]], n: int, size: int) -> np.ndarray | ImageBatch:
        """The batch array: one whole item that fills it exactly is passed as is (no copy: a lone ten-crop request
        at batch 10); else the rows are copied in and only the padding rows zeroed. ``ImageRows`` items make an
        ``ImageBatch`` (nothing copied: the runner cuts their crops on its device)."""
        first = parts[0][0].crops
        if isinstance(first, ImageRows):
            return ImageBatch([(item.crops, start, stop) for item, start, stop in parts], size)  # type: ignore[misc]
        if len(parts) == 1 and parts[0][1] == 0 and parts[0][2] == len(first) == size:
            return np.ascontiguousarray(first)
        batch = np.empty((size, *first.shape[1:]), dtype=first.dtype)
        row = 0
        for item, start, stop in parts:
            batch[row : row + stop - start] = item.crops[start:stop]
            row += stop - start
        batch[n:] = 0
        return batch

    async def _worker(self) -> None:
        """Take a batch, stage it (``stage``: on its way to the device), wait for the backend to be free, start it;
        then take the next. A batch that is full is staged while the last one runs; a partial batch waits for the
        backend, as it would without staging, so that it can grow (``_fill``)."""
        while True:
            oldest = self._oldest()
            if oldest is None:
                await self._idle()
                continue
            await self._fill(oldest)
            parts = self._take()
            if not parts:
                continue
            n = sum(stop - start for _, start, stop in parts)
            square = self._square(parts[0][0].crops.shape[1:])
            size = self.padded_size(n) if square else max(n, self.min_batch)
            try:
                staged = await self._staged(self._assemble(parts, n, size))
            except Exception as e:  # a fault while staging fails only the requests in this batch
                self._fail(parts, size, e)
                continue
            if self._running is not None:
                await asyncio.wait([self._running])  # the backend runs one batch at a time
            self._running = asyncio.ensure_future(self._run_batch(parts, staged, n, size))

    def _busy(self) -> bool:
        return self._running is not None and not self._running.done()

    async def _wake_or_done(self, timeout: float | None) -> None:
        """Until an item arrives, the running batch is done, or ``timeout`` passes."""
        self._wake.clear()
        woken = asyncio.ensure_future(self._wake.wait())
        waits = [woken, self._running] if self._busy() else [woken]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()

    async def _idle(self) -> None:
        """The queue is empty: warm the next cold shape when the backend is free, else wait for work."""
        if self._cold and not self._busy():
            await self._warm_next()
        else:
            await self._wake_or_done(None)

    async def _fill(self, oldest: QueueItem) -> None:
        """Wait for the oldest item's batch to fill, or its wait to run out while the backend is free."""
        deadline = oldest.enqueued + self.max_wait_s
        limit = self._row_limit(oldest.crops.shape[1:], len(oldest.crops) - oldest.taken)
        while self._rows_of(kind_of(oldest.crops)) < limit:
            left = deadline - time.perf_counter()
            if left <= 0 and not self._busy():
                return
            await self._wake_or_done(None if self._busy() else left)

    async def _staged(self, batch: Any) -> Any:
        if self._stage is None:
            return batch
        return await asyncio.get_running_loop().run_in_executor(self._stage_executor, self._stage, batch)

    def _fail(self, parts: list[tuple[QueueItem, int, int]], size: int, e: Exception) -> None:
        log.error("backend failed on a batch of %d crops: %s: %s", size, type(e).__name__, e)
        self.failures_in_a_row += 1
        self.last_failure = f"{type(e).__name__}: {e}"
        for item, _, _ in parts:
            if not item.future.done():
                item.future.set_exception(BackendFailed(f"{type(e).__name__}: {e}"))

    async def _run_batch(self, parts: list[tuple[QueueItem, int, int]], staged: Any, n: int, size: int) -> None:
        """Run one staged batch on the backend thread and hand each item its rows."""
        started = time.perf_counter()
        for item, start, _ in parts:
            if start == 0:
                item.queue_s = started - item.enqueued
        try:
            logits = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, staged)
        except Exception as e:  # a backend fault fails only the requests in this batch
            self._fail(parts, size, e)
            return
        took = time.perf_counter() - started
        self.busy_s += took
        self.failures_in_a_row = 0
        if self._on_batch is not None:
            self._on_batch(n, size, took)
        row = 0
        for item, start, stop in parts:
            if item.logits is None:
                item.logits = np.empty((len(item.crops), logits.shape[1]), dtype=np.float32)
            item.logits[start:stop] = logits[row : row + stop - start]
            row += stop - start
            item.done += stop - start
            item.inference_s += took
            item.batches.append(n)
            if item.done == len(item.crops) and not item.future.done():
                item.future.set_result(None)
