"""What the batcher's queue holds: items and their rows, what a caller gets back, and the queue's two faults."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from resnet.runtime.device_feed import ImageRows

__all__ = ["BackendFailed", "BatchStats", "QueueFull", "QueueItem", "Rows", "kind_of"]

Rows = np.ndarray | ImageRows  # an item's rows: an array, or an image whose crops a device-fed runner cuts


def kind_of(crops: Rows) -> tuple:
    """What must agree for rows to share a batch: the row shape, the dtype (float32 normalised crops, or uint8 crops
    that a device-fed runner normalises on its device) and whether they are arrays or ``ImageRows``."""
    return (*crops.shape[1:], crops.dtype.str, isinstance(crops, np.ndarray))


class QueueFull(Exception):
    """The crop queue is at its bound; the caller should retry later (HTTP 503 + Retry-After)."""


class BackendFailed(Exception):
    """The backend raised while running a batch (a server fault, not the client's)."""


@dataclass(eq=False)
class QueueItem:
    crops: Rows
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
