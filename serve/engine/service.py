"""The inference service the HTTP layers call: images in, ten-crop (centre, multi-scale) top-k out (docs/DESIGN.md
§3-4).

This is the narrow interface the protocol routers (``/classify`` in ``serve/api/routes.py``, KServe v2 in
``serve/api/kserve.py``) use on the model version ``serve.api.routing`` admitted them to:

- ``await service.classify(images: list[bytes], crops="ten"|"center"|"multiscale", topk=5) -> Classified``
- ``await service.infer_crops(batch: np.ndarray) -> np.ndarray`` (normalised float32 ``[N, 3, S, S]`` -> logits)
- ``service.card``, ``service.backend_name``, ``service.ready``, ``service.draining``

Decoding and resizing run in a thread pool (Pillow releases the GIL); crops go through the ``Batcher``.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

import resnet
from resnet.artifacts import DEFAULT_MAX_BATCH
from resnet.multiscale import multiscale_sides, view_pixels
from resnet.preprocess import preprocess as preprocess_image
from resnet.preprocess import resized_size
from resnet.preprocess import topk as top_k
from resnet.runtime.crops import MULTISCALE, TEN_CROPS, CropProtocol, crop_protocol
from resnet.runtime.device_feed import ImageRows, feeds_gpu
from resnet.runtime.ort import cpu_threads
from resnet.runtime.runner import Runner

from ..settings import Settings
from .backends import MULTISCALE_FIXED, REEXPORT
from .batcher import Batcher, BatchStats, QueueFull, Rows
from .decode import FairPool
from .images import ImageError, decode_checked, decode_costs, header_sizes, image_errors, multiscale_views_of
from .precision import precision_of
from .shapes import DEFAULT_SHAPES, GPU_BATCHES, batch_shapes, measured_max_batch

log = logging.getLogger("serve.engine.service")
FAILED_AFTER = 3  # batches in a row that raise before /healthz reports the backend failed
__all__ = ["MULTISCALE", "Classified", "ClassifyService", "ImageError", "check_backend"]


@dataclass
class Classified:
    """A request's answer: per image the top-k, plus per-stage times in seconds."""

    results: list[list[dict[str, Any]]]
    decode_s: float
    queue_s: float
    inference_s: float
    batch_sizes: list[int]
    sides: list[int] | None = None  # multi-scale: the shorter sides the images were tested at


class ClassifyService:
    """Owns the backend, the batcher and the decode pool."""

    def __init__(
        self, backend: Runner, settings: Settings, on_batch: Callable[[int, int, float], None] | None = None
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.card = backend.card
        self.labels: list[str] = list(self.card.labels)
        self.backend_name = backend.name
        self.precision = precision_of(backend)
        self.report = backend.report  # the parity report that admitted what is served (None: none was needed)
        # A device-fed runner (resnet.runtime.device_feed) takes resized uint8 images and cuts, mirrors and normalises
        # their crops on its device; fed on a GPU, its largest batch is measured at start-up.
        self.device_side = bool(getattr(backend, "device_side", False))
        self.preprocess_on = str(backend.feed.device) if self.device_side else "host"  # type: ignore[attr-defined]
        check = backend.feed.check if self.device_side else None  # type: ignore[attr-defined]
        self.preprocess_check = check.describe() if check is not None else None
        limit = backend.max_batch
        max_batch = settings.max_batch or limit
        max_batch = max_batch or (self._device_max_batch() if feeds_gpu(backend) else DEFAULT_MAX_BATCH)
        if limit is not None and max_batch > limit:
            raise resnet.UsageError(f"--max-batch {max_batch} exceeds the engine's max profile {limit}")
        self.max_batch = max_batch
        explicit = settings.parsed_batch_sizes()
        if not explicit and feeds_gpu(backend):
            explicit = sorted({*DEFAULT_SHAPES, *GPU_BATCHES})
        self.shapes = batch_shapes(max_batch, explicit, backend.min_batch)
        self._on_batch = on_batch
        self.batcher: Batcher | None = None
        self.decode_pool = FairPool(
            settings.decode_threads or cpu_threads(),
            max_pixels=settings.max_decode_pixels,
            small_pixels=settings.decode_small_pixels,
        )
        # Pillow's own decompression-bomb guard at our cap too (decode_image turns its warning into an error).
        Image.MAX_IMAGE_PIXELS = settings.max_pixels
        self.ready = False
        self.draining = False
        self.warmup_s: float | None = None  # warm-up before ready
        self._background_started = 0.0
        self.sides = list(multiscale_sides(self.card))
        self.multiscale_off: str | None = None  # why multi-scale is unavailable, None when it is served
        if settings.multiscale == "off":
            self.multiscale_off = "multi-scale testing is turned off on this server (--multiscale off)"
        elif backend.spatial is None:
            self.multiscale_off = f"the model served {MULTISCALE_FIXED}: {REEXPORT}"
        log.info("multi-scale (crops=multiscale): %s", self.multiscale_off or f"served at sides {self.sides}")

    def _uint8_crops(self, n: int) -> np.ndarray:
        size = self.card.input_size
        return np.random.default_rng(n).integers(0, 256, (n, 3, size, size), dtype=np.uint8)

    def _device_max_batch(self) -> int:
        """The largest batch for a runner fed on a GPU, by timing uint8 batches (``measured_max_batch``)."""

        def seconds(n: int) -> float:
            x = self._uint8_crops(n)
            self.backend.run(x)  # warm: the first call of a shape picks its kernels
            times = []
            for _ in range(3):
                started = time.perf_counter()
                self.backend.run(x)
                times.append(time.perf_counter() - started)
            return statistics.median(times)

        n, rate = measured_max_batch(seconds)
        log.info("largest batch %d, measured (crops/s by batch: %s)", n, {k: round(v) for k, v in rate.items()})
        return n

    def warm_order(self) -> tuple[list[int], list[int]]:
        """(shapes warmed before ready, shapes warmed in the background in this order).

        Ready after the smallest shape (a centre crop's; the start-up inference has just run it, so it is cheap);
        then the shape one ten-crop request fills, then the rest from small to large, each while the queue is empty.
        """
        first, rest = self.shapes[:1], self.shapes[1:]
        ten = next((n for n in rest if n >= TEN_CROPS), None)
        return first, ([ten] if ten is not None else []) + [n for n in rest if n != ten]

    async def start(self) -> None:
        """Create the batcher on the running loop, warm up the first batch shape (off the loop); then ready. The
        other shapes warm in the background (the batcher's worker, while its queue is empty)."""
        first, later = self.warm_order()
        fed = self.device_side
        self.batcher = Batcher(
            self.backend.run_staged if fed else self.backend.run,
            self.max_batch,
            self.settings.max_wait_ms / 1000.0,
            self.settings.max_queue_crops,
            self.shapes,
            self._on_batch,
            input_size=self.card.input_size,
            warm_input=self._uint8_crops if self.device_side else None,
            min_batch=self.backend.min_batch,
            max_view_batch=self.backend.max_view_batch,
            cold_shapes=first + later,
            on_warm=self._warmed,
            stage=self.backend.stage if fed else None,
        )
        started = time.perf_counter()
        for n in first:  # before the worker starts: nothing else runs on the backend meanwhile
            if self.draining:  # shutting down during warm-up
                return
            out = await self.batcher.warm(n)
            if out.shape != (n, len(self.labels)):
                raise resnet.CardError(
                    f"backend returned logits {out.shape} for a batch of {n}; the card has {len(self.labels)} labels"
                )
        self.warmup_s = time.perf_counter() - started
        self._background_started = time.perf_counter()
        self.batcher.start()
        self.ready = True
        log.info(
            "warmed up batch shapes %s in %.1f s; ready (warming %s in the background while idle)",
            first,
            self.warmup_s,
            later or "nothing",
        )

    def _warmed(self, n: int, seconds: float) -> None:
        log.debug("warmed up batch shape %d in %.3f s", n, seconds)
        b = self.batcher
        if self.ready and b is not None and not b.cold_shapes:
            log.info(
                "warmed up every batch shape %s (%.1f s after ready)",
                b.warm_shapes,
                time.perf_counter() - self._background_started,
            )

    @property
    def warm_shapes(self) -> int:
        """How many batch shapes are warm (the batcher pads and splits to these only)."""
        return len(self.batcher.warm_shapes) if self.batcher is not None else 0

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        self.decode_pool.shutdown()

    @property
    def failed(self) -> str | None:
        """Why the backend counts as failed (``FAILED_AFTER`` batches in a row raised), else None."""
        b = self.batcher
        if b is not None and b.failures_in_a_row >= FAILED_AFTER:
            return f"backend failed {b.failures_in_a_row} batches in a row (last: {b.last_failure})"
        return None

    @property
    def pending_crops(self) -> int:
        return self.batcher.pending_crops if self.batcher else 0

    def preprocess(self, data: bytes, crops: str | CropProtocol, cancel: threading.Event | None = None) -> Rows:
        """Bytes -> normalised crops (for a device-fed runner, the resized uint8 image as ``ImageRows``: its crops
        are cut and normalised on the runner's device), with the server's limits. Raises ``ImageError``
        (400/413/415), or ``DecodeCancelled`` soon after ``cancel`` is set.

        Decoded once: ``decode_image``, then the resize, then ``resnet.preprocess`` crops the already resized image
        (its own decode and resize steps are no-ops on it), so the result is ``resnet.preprocess``'s exactly.
        """
        size = self.card.resize_size
        with image_errors():
            img = decode_checked(data, size, self.settings, cancel)
            target = resized_size(*img.size, size)
            if target != img.size:
                img = img.resize(target, Image.Resampling.BILINEAR)  # what resnet.preprocess does, done once here
            if self.device_side:  # the resized image: the runner cuts and normalises its crops on its device
                return ImageRows(np.asarray(img, np.uint8), crop_protocol(crops), self.card.input_size)
            return preprocess_image(img, self.card, crops=crops, draft=False, max_pixels=None)

    def views(self, data: bytes, cancel: threading.Event | None = None) -> list[np.ndarray]:
        """Bytes -> multi-scale views, one ``[2, 3, H, W]`` array per side, with the server's limits (ImageError)."""
        spatial = self.backend.spatial
        assert spatial is not None, "classify() refuses multi-scale on a backend that takes only S x S"
        return multiscale_views_of(data, self.card, self.sides, self.settings, spatial, cancel)

    def check_budget(self, images: list[bytes], crops: str | CropProtocol = "ten") -> int:
        """Decoded pixels the request asks for, from the image headers alone (nothing decoded); 413 over the budget.
        Multi-scale: the pixels of all views too (``view_pixels``), against ``--max-multiscale-pixels``.

        Images that cannot be opened, or are over the per-image cap, count 0 here: decoding refuses them anyway.
        """
        sizes = [wh for wh in header_sizes(images, self.settings.max_pixels) if wh is not None]
        total = sum(w * h for w, h in sizes)
        budget = self.settings.max_request_pixels
        if total > budget:
            raise ImageError(
                413,
                "request_too_large",
                f"the request's {len(images)} images hold {total} pixels, over the per-request budget of {budget} "
                "(send fewer or smaller images per request)",
            )
        if crop_protocol(crops).multiscale:
            views = sum(view_pixels(w, h, self.sides) for w, h in sizes)
            if views > self.settings.max_multiscale_pixels:
                raise ImageError(
                    413,
                    "request_too_large",
                    f"the multi-scale views of the request's {len(images)} images (sides {self.sides}, mirrored) "
                    f"are {views} pixels, over the per-request budget of {self.settings.max_multiscale_pixels} "
                    "(send fewer or smaller images per request, or crops=ten)",
                )
        return total

    def protocol_views(self, data: bytes, protocol: CropProtocol, cancel: threading.Event | None = None) -> list[Rows]:
        """Bytes -> the protocol's network inputs (``CropProtocol.views``' shapes), with the server's limits."""
        return self.views(data, cancel) if protocol.multiscale else [self.preprocess(data, protocol, cancel)]

    async def decode_all(self, images: list[bytes], crops: str | CropProtocol) -> tuple[list[list[Rows]], float]:
        """Decode a request's images on the decode queue (``serve.engine.decode``: small images first, then round-robin
        between requests) -> per image its view arrays. The pixel budget and the queue's costs come from the image
        headers and JPEG markers, here on the event loop, so a request is refused (413, or 503 past
        ``--max-decode-pixels``) without waiting behind decodes. Cancelled (deadline, client gone), its decodes still
        running stop at their next block of input."""
        started = time.perf_counter()
        protocol = crop_protocol(crops)
        self.check_budget(images, protocol)
        size = protocol.decode_side(self.card, self.sides)
        costs = decode_costs(images, size, self.settings)
        cancel = threading.Event()
        with self.decode_pool.admitted(costs) as owner:
            pool = self.decode_pool
            jobs = [
                asyncio.ensure_future(pool.run(owner, self.protocol_views, d, protocol, cancel, cost=c))
                for d, c in zip(images, costs)
            ]
            try:
                results = await asyncio.gather(*jobs, return_exceptions=True)
            except BaseException:
                cancel.set()  # decodes already running stop too: nobody waits for them any more
                for job in jobs:
                    job.cancel()
                raise
        for i, r in enumerate(results):
            if isinstance(r, ImageError):
                if len(images) > 1:
                    r.message = f"image {i + 1} of {len(images)}: {r.message}"
                raise r
            if isinstance(r, BaseException):
                raise r
        return list(results), time.perf_counter() - started  # type: ignore[arg-type]

    async def infer_crops(self, batch: np.ndarray) -> np.ndarray:
        """Normalised float32 ``[N, 3, S, S]`` crops -> float32 logits ``[N, C]``, through the shared queue."""
        assert self.batcher is not None
        return (await self.batcher.submit(np.ascontiguousarray(batch, np.float32))).logits

    async def classify(self, images: list[bytes], crops: str | CropProtocol = "ten", topk: int = 5) -> Classified:
        """Decode, batch, and score images: per image the top-k ``{index, label, probability}`` of the ten-crop,
        centre-crop or multi-scale mean softmax. Multi-scale unavailable: ``ImageError`` 422."""
        assert self.batcher is not None
        protocol = crop_protocol(crops)  # ValueError for an unknown name
        if protocol.multiscale and self.multiscale_off:
            raise ImageError(422, "multiscale_unavailable", f"crops=multiscale is not available: {self.multiscale_off}")
        decoded, decode_s = await self.decode_all(images, protocol)
        # one item per view array: per image its crops, or its views at each side (multi-scale); image-major
        arrays: list[Rows] = [a for views in decoded for a in views]
        total = sum(self.batcher.cost(a) for a in arrays)
        if self.batcher.pending_crops + total > self.batcher.max_queue_crops:
            raise QueueFull(f"{self.batcher.pending_crops} crops queued (bound {self.batcher.max_queue_crops})")
        tasks = [asyncio.ensure_future(self.batcher.submit(a)) for a in arrays]
        try:
            stats: list[BatchStats] = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        probs, start = [], 0
        for views in decoded:
            probs.append(protocol.combine([st.logits for st in stats[start : start + len(views)]]))
            start += len(views)
        return Classified(
            results=[top_k(p, topk, self.labels) for p in probs],
            decode_s=decode_s,
            queue_s=max(st.queue_s for st in stats),
            inference_s=max(st.inference_s for st in stats),
            batch_sizes=sorted({b for st in stats for b in st.batch_sizes}),
            sides=self.sides if protocol.multiscale else None,
        )


def check_backend(backend: Runner) -> float:
    """One real inference at the card's input size before serving: the card must agree with the graph.

    Raises ``CardError`` (one line, exit 1) when the graph refuses the card's input size or gives another number of
    classes than the card has labels. Returns the seconds the inference took.
    """
    card = backend.card
    n, size = max(1, backend.min_batch), card.input_size
    started = time.perf_counter()
    try:
        out = np.asarray(backend.run(np.zeros((n, 3, size, size), np.float32)))
    except Exception as e:
        first = "; ".join(ln.strip() for ln in str(e).strip().splitlines() if ln.strip())[:300]
        raise resnet.CardError(
            f"the model card does not fit the graph: a batch of {n}x3x{size}x{size} (the card's input_size) fails "
            f"({type(e).__name__}: {first})"
        ) from None
    if out.ndim != 2 or out.shape != (n, len(card.labels)):
        raise resnet.CardError(
            f"the model card does not fit the graph: it gives logits of shape {list(out.shape)} for {n} crop(s); "
            f"the card has {len(card.labels)} labels"
        )
    return time.perf_counter() - started
