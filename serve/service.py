"""The inference service the HTTP layers call: images in, ten-crop top-k out (docs/DESIGN.md §3-4).

This is the narrow interface a protocol router (``/classify`` here, KServe v2 later) uses via ``app.state.service``:

- ``await service.classify(images: list[bytes], crops="ten", topk=5) -> Classified``
- ``await service.infer_crops(batch: np.ndarray) -> np.ndarray`` (normalised float32 ``[N, 3, S, S]`` -> logits)
- ``service.card``, ``service.backend_name``, ``service.ready``, ``service.draining``

Decoding and resizing run in a thread pool (Pillow releases the GIL); crops go through the ``Batcher``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

import resnet
from resnet.artifacts import DEFAULT_MAX_BATCH
from resnet.preprocess import (
    ACCEPTED_FORMATS,
    CROPS,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    crop_probabilities,
    decode_image,
    resized_size,
)
from resnet.preprocess import preprocess as preprocess_image
from resnet.preprocess import topk as top_k

from .backends import Backend, cpu_threads
from .batcher import Batcher, BatchStats, QueueFull, batch_shapes
from .decode import FairPool
from .precision import precision_of
from .settings import Settings

log = logging.getLogger("serve.service")
FAILED_AFTER = 3  # batches in a row that raise before /healthz reports the backend failed


class ImageError(Exception):
    """One image of a request is bad; ``status`` is the HTTP status, ``code`` the error code (docs/DESIGN.md §4)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Classified:
    """A request's answer: per image the top-k, plus per-stage times in seconds."""

    results: list[list[dict[str, Any]]]
    decode_s: float
    queue_s: float
    inference_s: float
    batch_sizes: list[int]


class ClassifyService:
    """Owns the backend, the batcher and the decode pool."""

    def __init__(
        self, backend: Backend, settings: Settings, on_batch: Callable[[int, int, float], None] | None = None
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.card = backend.card
        self.labels: list[str] = list(self.card.labels)
        self.backend_name = backend.name
        self.precision = precision_of(backend)
        limit = backend.max_batch
        max_batch = settings.max_batch or limit or DEFAULT_MAX_BATCH
        if limit is not None and max_batch > limit:
            raise resnet.UsageError(f"--max-batch {max_batch} exceeds the engine's max profile {limit}")
        self.max_batch = max_batch
        self.shapes = batch_shapes(max_batch, settings.parsed_batch_sizes(), backend.min_batch)
        self._on_batch = on_batch
        self.batcher: Batcher | None = None
        self.decode_pool = FairPool(settings.decode_threads or cpu_threads())
        # Pillow's own decompression-bomb guard at our cap too (decode_image turns its warning into an error).
        Image.MAX_IMAGE_PIXELS = settings.max_pixels
        self.ready = False
        self.draining = False
        self.warmup_s: float | None = None

    async def start(self) -> None:
        """Create the batcher on the running loop, then warm up every batch shape off the loop; then ready."""
        self.batcher = Batcher(
            self.backend.run,
            self.max_batch,
            self.settings.max_wait_ms / 1000.0,
            self.settings.max_queue_crops,
            self.shapes,
            self._on_batch,
        )
        self.batcher.start()
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, self._warm_up)
        self.warmup_s = time.perf_counter() - started
        self.ready = True
        log.info("warmed up batch shapes %s in %.1f s; ready", self.shapes, self.warmup_s)

    def _warm_up(self) -> None:
        assert self.batcher is not None
        size = self.card.input_size
        rng = np.random.default_rng(0)
        for n in self.shapes:
            if self.draining:  # shutting down during warm-up: stop between shapes
                return
            batch = rng.standard_normal((n, 3, size, size), dtype=np.float32)
            out = self.batcher.run_sync(batch)
            if out.shape != (n, len(self.labels)):
                raise resnet.CardError(
                    f"backend returned logits {out.shape} for a batch of {n}; the card has {len(self.labels)} labels"
                )

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

    def preprocess(self, data: bytes, crops: str) -> np.ndarray:
        """Bytes -> normalised crops, with the server's limits. Raises ``ImageError`` (400/413/415).

        Decoded once: ``decode_image``, then the resize, then ``resnet.preprocess`` crops the already resized image
        (its own decode and resize steps are no-ops on it), so the result is ``resnet.preprocess``'s exactly.
        """
        s = self.settings
        if not data:
            raise ImageError(400, "empty_image", "the image is empty (0 bytes)")
        size = self.card.resize_size
        try:
            img = decode_image(data, size, draft=s.draft, max_pixels=s.max_pixels)
            w, h = img.size
            if max(w, h) / min(w, h) > s.max_aspect:
                raise ImageError(
                    413,
                    "image_too_large",
                    f"image is {w}x{h}: aspect ratio over {s.max_aspect:g} would resize to "
                    f"{'x'.join(map(str, resized_size(w, h, size)))} pixels",
                )
            target = resized_size(w, h, size)
            if target != img.size:
                img = img.resize(target, Image.Resampling.BILINEAR)  # what resnet.preprocess does, done once here
            return preprocess_image(img, self.card, crops=crops, draft=False, max_pixels=None)
        except ImageTooLargeError as e:
            raise ImageError(413, "image_too_large", str(e)) from None
        except UnsupportedImageError as e:
            raise ImageError(415, "unsupported_media_type", str(e)) from None
        except ImageDecodeError as e:
            raise ImageError(400, "bad_image", str(e)) from None
        except Image.DecompressionBombWarning as e:
            raise ImageError(413, "image_too_large", str(e)) from None
        except (OSError, ValueError, EOFError) as e:  # lazy decoders may fail late, while resizing
            log.warning("undecodable upload (%s: %s)", type(e).__name__, e)
            raise ImageError(400, "bad_image", f"cannot decode image ({type(e).__name__}: {e})") from None

    def check_budget(self, images: list[bytes]) -> int:
        """Decoded pixels the request asks for, from the image headers alone (nothing decoded); 413 over the budget.

        Images that cannot be opened, or are over the per-image cap, count 0 here: decoding refuses them anyway.
        """
        total = 0
        for data in images:
            try:
                with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
                    pixels = im.width * im.height
            except Exception:
                continue
            total += pixels if pixels <= self.settings.max_pixels else 0
        budget = self.settings.max_request_pixels
        if total > budget:
            raise ImageError(
                413,
                "request_too_large",
                f"the request's {len(images)} images hold {total} pixels, over the per-request budget of {budget} "
                "(send fewer or smaller images per request)",
            )
        return total

    async def decode_all(self, images: list[bytes], crops: str) -> tuple[list[np.ndarray], float]:
        """Decode a request's images on the fair pool (one job per turn per request), after the pixel budget."""
        started = time.perf_counter()
        owner = object()
        await self.decode_pool.run(owner, self.check_budget, images)
        jobs = [asyncio.ensure_future(self.decode_pool.run(owner, self.preprocess, data, crops)) for data in images]
        try:
            results = await asyncio.gather(*jobs, return_exceptions=True)
        except BaseException:
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

    async def classify(self, images: list[bytes], crops: str = "ten", topk: int = 5) -> Classified:
        """Decode, batch, and score images: per image the ten-crop (or centre) top-k ``{index, label, probability}``."""
        assert self.batcher is not None
        if crops not in CROPS:
            raise ValueError(f"crops must be one of {', '.join(CROPS)}")
        arrays, decode_s = await self.decode_all(images, crops)
        total = sum(len(a) for a in arrays)
        if self.batcher.pending_crops + total > self.batcher.max_queue_crops:
            raise QueueFull(f"{self.batcher.pending_crops} crops queued (bound {self.batcher.max_queue_crops})")
        tasks = [asyncio.ensure_future(self.batcher.submit(a)) for a in arrays]
        try:
            stats: list[BatchStats] = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        results = []
        for st in stats:
            probs = crop_probabilities(st.logits, CROPS[crops])[0]
            results.append(top_k(probs, topk, self.labels))
        return Classified(
            results=results,
            decode_s=decode_s,
            queue_s=max(st.queue_s for st in stats),
            inference_s=max(st.inference_s for st in stats),
            batch_sizes=sorted({b for st in stats for b in st.batch_sizes}),
        )


def check_backend(backend: Backend) -> float:
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
