"""Batch shapes: the sizes the batcher runs, and the largest batch a device is measured to want."""

from __future__ import annotations

from collections.abc import Callable, Sequence

DEFAULT_SHAPES = (1, 2, 4, 8, 10, 16, 20, 30, 32, 40, 50, 60, 64)
GPU_BATCHES = (10, 20, 40, 80, 160, 320)  # candidate largest batches timed on a device-side runner (whole ten-crops)


def measured_max_batch(seconds: Callable[[int], float], candidates: Sequence[int] = GPU_BATCHES) -> tuple[int, dict]:
    """The largest batch for a device: the smallest candidate whose rows/s (``n / seconds(n)``, ``seconds`` timing
    one warm batch of n) is within 10% of the best candidate's; bigger batches would only add queueing latency.
    Returns (that batch, {n: rows/s})."""
    rate = {n: n / max(seconds(n), 1e-9) for n in candidates}
    best = max(rate.values())
    return min(n for n, r in rate.items() if r >= 0.9 * best), rate


def batch_shapes(max_batch: int, explicit: list[int] | None = None, min_batch: int = 1) -> list[int]:
    """The batch sizes the worker will run: ``explicit`` or the default set, clipped to [min_batch, max_batch]."""
    sizes = explicit or [s for s in DEFAULT_SHAPES if s <= max_batch]
    sizes = sorted({min(max(s, min_batch), max_batch) for s in sizes} | {max_batch})
    return sizes
