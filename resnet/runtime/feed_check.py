"""The device feed's load-time check (docs/DESIGN.md §4, "The GPU path"): before a fed runner serves, the crops its
feed cuts on the device, and its run on device input, are compared with the host path on this machine.

The GPU path's pinned copies, copy stream and event, I/O binding and engine addresses run only where the hardware
is; the tests compare them with the host path there, and this check does it again on the machine that serves, once
per load: a probe image (seeded noise, an odd width, so every crop offset and the mirror show) goes through both
paths. A feed that disagrees is not used: ``attach_feed`` keeps the host path under ``auto`` and refuses under
``on``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..preprocess import preprocess
from .crops import crop_protocol
from .device_feed import ImageBatch, ImageRows

PROBE_SEED = 27
FP32_LOGITS = 1e-4  # relative logits tolerance (max |diff| / max(1, max |logit|)) of a float32 feed
HALF_LOGITS = 1e-2  # of a float16 or bfloat16 one


@dataclass(frozen=True)
class FeedCheck:
    """How far the fed path is from the host path on the probe image."""

    crops_diff: float  # max |device crops - host crops|, the host's rounded to the feed's dtype
    crops_tolerance: float  # two units in the last place of that dtype, at the crops' largest magnitude
    logits_diff: float  # max |fed logits - host logits| / max(1, max |host logits|), the same host crops in both
    logits_tolerance: float

    @property
    def passed(self) -> bool:
        return self.crops_diff <= self.crops_tolerance and self.logits_diff <= self.logits_tolerance

    def describe(self) -> str:
        return (
            f"device crops within {self.crops_diff:.2g} of the host's (tolerance {self.crops_tolerance:.2g}), "
            f"logits within {self.logits_diff:.2g} relative (tolerance {self.logits_tolerance:.2g})"
        )


def probe_rows(card: Any) -> ImageRows:
    """A resized probe image for ``card``: seeded uint8 noise, shorter side ``resize_size``, an odd width."""
    height = card.resize_size
    width = (height * 4 // 3) | 1  # odd, so the centre crop's offset (W - S) / 2 is rounded
    pixels = np.random.default_rng(PROBE_SEED).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return ImageRows(pixels, crop_protocol("ten"), card.input_size)


def probe_crops(rows: ImageRows, card: Any) -> np.ndarray:
    """The host path's float32 ten crops of a probe image (``resnet.preprocess`` on the already resized image)."""
    return preprocess(Image.fromarray(rows.pixels), card, crops="ten", draft=False, max_pixels=None)


def check_feed(runner: Any) -> FeedCheck:
    """Compare ``runner``'s attached feed with the host path on the probe image (``FeedCheck``; exceptions from
    either path propagate). Costs one preprocessing on each side and two batches of ten crops (fewer or padded
    rows where the runner's batch bounds say so: an engine's profiles)."""
    feed = runner.feed
    torch = feed.torch
    rows = probe_rows(runner.card)
    n = min(len(rows), getattr(runner, "max_batch", None) or len(rows))  # an engine's profiles bound the batch
    size = max(n, getattr(runner, "min_batch", 1) or 1)
    host = np.zeros((size, 3, rows.size, rows.size), np.float32)
    host[:n] = probe_crops(rows, runner.card)[:n]
    cut = feed.ready(feed.stage(ImageBatch([(rows, 0, n)], size))).float().cpu().numpy()[:n]
    reference = torch.from_numpy(host[:n]).to(feed.dtype).float().numpy()
    with runner.host_path():
        host_logits = np.asarray(runner.run(host), np.float32)[:n]
    fed_logits = np.asarray(runner.run_staged(runner.stage(host)), np.float32)[:n]
    return FeedCheck(
        crops_diff=_max_diff(cut, reference),
        crops_tolerance=max(1e-5, 2 * float(torch.finfo(feed.dtype).eps) * max(1.0, float(np.abs(host).max()))),
        logits_diff=_max_diff(fed_logits, host_logits) / max(1.0, float(np.abs(host_logits).max())),
        logits_tolerance=FP32_LOGITS if feed.dtype == torch.float32 else HALF_LOGITS,
    )


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|; infinite when the shapes differ or a value is not finite."""
    if a.shape != b.shape:
        return float("inf")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")
