"""Crop-level dynamic batching: one queue of crops from every request, one worker feeding the backend.

``submit(crops)`` enqueues one image's crops (``[k, 3, H, W]``: S x S crops, or one scale's multi-scale views) and
returns when their logits are back. Batches hold one shape only: the worker takes the oldest item's shape and, in
arrival order, the items of that shape until a batch holds ``max_batch`` rows, or ``max_batch * S * S`` pixels (at
least one item), or the oldest item has waited ``max_wait``. S x S batches are padded up to the nearest warm batch
shape; other shapes run unpadded (up to the backend's ``min_batch``).

Warm shapes: ``warm(n)`` runs one batch of shape n before it serves traffic (the server warms its first shape
before it is ready); ``cold_shapes`` are warmed by the worker in the background, in their order, whenever the queue
is empty. Until a shape is warm, S x S batches use warm shapes only: padded up to the nearest warm shape, and split
into batches of the largest warm one. A request that arrives during a background warm-up waits for that one
warm-up at most, never for a cold shape to be compiled or allocated under it. The backend runs in its own thread (off
the event loop) and each item gets its rows. Items go whole into a batch unless one alone exceeds the batch (then it
spans batches). A caller that goes away (cancelled: client disconnected, deadline passed) has its not-yet-batched
rows dropped from the queue. The queue is bounded in crop-equivalents (a row of H x W counts ceil(H*W / S^2)):
``QueueFull``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("serve.engine.batcher")

DEFAULT_SHAPES = (1, 2, 4, 8, 10, 16, 20, 30, 32, 40, 50, 60, 64)


GPU_BATCHES = (10, 20, 40, 80, 160, 320)  # candidate largest batches timed on a device-side runner (whole ten-crops)


def measured_max_batch(seconds: Callable[[int], float], candidates: Sequence[int] = GPU_BATCHES) -> tuple[int, dict]:
    """The largest batch for a device: the smallest candidate whose rows/s (``n / seconds(n)``, ``seconds`` timing
    one warm batch of n) is within 10% of the best candidate's; bigger batches would only add queueing latency.
    Returns (that batch, {n: rows/s})."""
    rate = {n: n / max(seconds(n), 1e-9) for n in candidates}
    best = max(rate.values())
    return min(n for n, r in rate.items() if r >= 0.9 * best), rate


def _kind(crops: np.ndarray) -> tuple:
    """What must agree for rows to share a batch: the row shape and the dtype (float32 normalised crops, or uint8
    crops that a device-side runner normalises on the device: ``resnet.device_preprocess``)."""
    return (*crops.shape[1:], crops.dtype.str)


class QueueFull(Exception):
    """The crop queue is at its bound; the caller should retry later (HTTP 503 + Retry-After)."""


class BackendFailed(Exception):
    """The backend raised while running a batch (a server fault, not the client's)."""


def batch_shapes(max_batch: int, explicit: list[int] | None = None, min_batch: int = 1) -> list[int]:
    """The batch sizes the worker will run: ``explicit`` or the default set, clipped to [min_batch, max_batch]."""
    sizes = explicit or [s for s in DEFAULT_SHAPES if s <= max_batch]
    sizes = sorted({min(max(s, min_batch), max_batch) for s in sizes} | {max_batch})
    return sizes


@dataclass(eq=False)
class _Item:
    crops: np.ndarray
    future: asyncio.Future
    enqueued: float
    taken: int = 0  # rows already put into a batch
    done: int = 0  # rows whose logits are back
    logits: np.ndarray | None = None
    queue_s: float = 0.0  # enqueue -> its first batch starts
    inference_s: float = 0.0  # sum over the batches it was in
    batches: list[int] = field(default_factory=list)


@dataclass
class BatchStats:
    """What a caller learns about its crops' trip through the queue."""

    logits: np.ndarray
    queue_s: float
    inference_s: float
    batch_sizes: list[int]


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
    ) -> None:
        """``cold_shapes``: shapes of ``shapes`` not yet warm, warmed in that order when the queue is empty (None:
        every shape counts as warm); ``warm_input(n)`` makes a warm-up batch of n rows (random S x S crops by
        default); ``on_warm(n, seconds)`` is told after each warm-up. ``input_size``: the card's S (crops of S x S are padded to ``shapes``, others are bounded by
        ``max_batch * S * S`` pixels and count ceil(H*W / S^2) each in the queue); None: every shape counts 1.
        ``max_view_batch``: most rows of a batch of another shape than S x S (a TensorRT view profile's max)."""
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
        self._queue: collections.deque[_Item] = collections.deque()
        self._pending = 0  # crops queued and not yet batched
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="backend")
        self._task: asyncio.Task | None = None
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
        self._executor.shutdown(wait=True)

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
        out = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, self._warm_input(n))
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

    async def submit(self, crops: np.ndarray) -> BatchStats:
        """Queue ``[k, 3, H, W]`` crops or views; return their logits when done. ``QueueFull`` at the bound."""
        k = self.cost(crops)
        if self._pending + k > self.max_queue_crops:
            raise QueueFull(f"{self._pending} crops queued (bound {self.max_queue_crops})")
        item = _Item(crops, asyncio.get_running_loop().create_future(), time.perf_counter())
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

    def _drop(self, item: _Item) -> None:
        """Forget a cancelled item's crops that no batch has taken yet."""
        if item.taken < len(item.crops):
            self._pending -= (len(item.crops) - item.taken) * self.row_cost(item.crops.shape[1:])
            item.taken = len(item.crops)
            try:
                self._queue.remove(item)
            except ValueError:
                pass

    def _oldest(self) -> _Item | None:
        """The oldest item still wanted (cancelled ones at the front are dropped)."""
        while self._queue and self._queue[0].future.done():
            self._drop(self._queue[0])
        return self._queue[0] if self._queue else None

    def _rows_of(self, kind: tuple) -> int:
        """Rows of ``kind`` (shape and dtype, ``_kind``) queued and not yet batched."""
        return sum(len(i.crops) - i.taken for i in self._queue if _kind(i.crops) == kind and not i.future.done())

    def _take(self) -> list[tuple[_Item, int, int]]:
        """Pop rows of the oldest item's shape in arrival order, up to the row limit, as (item, start, stop) slices.

        Whole items only, unless one item alone is larger than the batch (then it is split): ten-crop traffic
        gives batches of 10, 20, ... crops, which are batch shapes already, so nothing is wasted on padding.
        Items of other shapes keep their place in the queue.
        """
        parts: list[tuple[_Item, int, int]] = []
        oldest = self._oldest()
        if oldest is None:
            return parts
        shape = oldest.crops.shape[1:]
        kind = _kind(oldest.crops)
        room = self._row_limit(shape, len(oldest.crops) - oldest.taken)
        cost = self.row_cost(shape)
        for item in list(self._queue):
            if room <= 0:
                break
            if item.future.done():  # cancelled meanwhile
                self._drop(item)
                continue
            if _kind(item.crops) != kind:
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
    def _assemble(parts: list[tuple[_Item, int, int]], n: int, size: int) -> np.ndarray:
        """The batch array: one whole item that fills it exactly is passed as is (no copy: a lone ten-crop request
        at batch 10); else the rows are copied in and only the padding rows zeroed."""
        first = parts[0][0].crops
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
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._cold:
                    await self._warm_next()
                    continue
                self._wake.clear()
                await self._wake.wait()
                continue
            # Wait for the oldest item's batch to fill, or its wait to run out.
            oldest = self._oldest()
            if oldest is None:
                continue
            deadline = oldest.enqueued + self.max_wait_s
            shape = oldest.crops.shape[1:]
            limit = self._row_limit(shape, len(oldest.crops) - oldest.taken)
            while self._rows_of(_kind(oldest.crops)) < limit:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            parts = self._take()
            if not parts:
                continue
            n = sum(stop - start for _, start, stop in parts)
            square = self._square(parts[0][0].crops.shape[1:])
            size = self.padded_size(n) if square else max(n, self.min_batch)
            batch = self._assemble(parts, n, size)
            started = time.perf_counter()
            for item, start, _ in parts:
                if start == 0:
                    item.queue_s = started - item.enqueued
            try:
                logits = await loop.run_in_executor(self._executor, self._run, batch)
            except Exception as e:  # a backend fault fails only the requests in this batch
                log.error("backend failed on a batch of %d crops: %s: %s", size, type(e).__name__, e)
                self.failures_in_a_row += 1
                self.last_failure = f"{type(e).__name__}: {e}"
                for item, _, _ in parts:
                    if not item.future.done():
                        item.future.set_exception(BackendFailed(f"{type(e).__name__}: {e}"))
                continue
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
