"""Image checks and decoding for the service, shared by ten/centre crops and multi-scale views.

- ``ImageError``: one bad image of a request, with its HTTP status and error code (docs/DESIGN.md §4).
- ``image_errors()``: turns ``resnet.preprocess``'s and Pillow's exceptions into ``ImageError`` (400/413/415).
- ``header_sizes(images, max_pixels)``: width x height of each image from its header alone, nothing decoded.
- ``decode_costs(images, resize_size, settings)``: what each costs the decode queue (``serve.engine.decode``), from
  its header and markers alone; 413 ``too_many_scans`` for a JPEG past ``--max-jpeg-scans``.
- ``decode_checked`` / ``multiscale_views_of``: decode once with the server's limits, then crops or views.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from resnet.multiscale import DEFAULT_MAX_VIEW_PIXELS, multiscale_views
from resnet.preprocess import (
    ACCEPTED_FORMATS,
    ImageDecodeError,
    ImageTooLargeError,
    TooManyScansError,
    UnsupportedImageError,
    check_scans,
    decode_image,
    resized_size,
)

log = logging.getLogger("serve.engine.service")
# A progressive JPEG decodes every scan over all its coefficients, at full size whatever the draft: it costs its full
# pixels times scans / 10 (libjpeg's 10-scan progression costs about one PNG pixel per pixel, bench/RESULTS.md).
PROGRESSIVE_SCANS = 10


class ImageError(Exception):
    """One image of a request is bad; ``status`` is the HTTP status, ``code`` the error code (docs/DESIGN.md §4)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@contextlib.contextmanager
def image_errors() -> Iterator[None]:
    """Map what decoding an untrusted image raises to ``ImageError`` (413, 415, 400)."""
    try:
        yield
    except ImageTooLargeError as e:
        raise ImageError(413, "image_too_large", str(e)) from None
    except TooManyScansError as e:
        raise ImageError(413, "too_many_scans", str(e)) from None
    except UnsupportedImageError as e:
        raise ImageError(415, "unsupported_media_type", str(e)) from None
    except ImageDecodeError as e:
        raise ImageError(400, "bad_image", str(e)) from None
    except Image.DecompressionBombWarning as e:
        raise ImageError(413, "image_too_large", str(e)) from None
    except (OSError, ValueError, EOFError) as e:  # lazy decoders may fail late, while resizing
        log.warning("undecodable upload (%s: %s)", type(e).__name__, e)
        raise ImageError(400, "bad_image", f"cannot decode image ({type(e).__name__}: {e})") from None


def header_sizes(images: Sequence[bytes], max_pixels: int) -> list[tuple[int, int] | None]:
    """(width, height) of each image from its header (nothing decoded); None for one that cannot be opened or is
    over ``max_pixels`` (decoding refuses those anyway)."""
    sizes: list[tuple[int, int] | None] = []
    for data in images:
        try:
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
                size = (im.width, im.height)
        except Exception:
            sizes.append(None)
            continue
        sizes.append(size if size[0] * size[1] <= max_pixels else None)
    return sizes


def decode_costs(images: Sequence[bytes], resize_size: int, settings: Any) -> list[int]:
    """What decoding each image costs the decode queue, in pixels, from its header and markers alone: width x
    height; for a baseline JPEG that ``decode_image`` drafts towards ``resize_size`` the reduced size the draft gives;
    for a progressive JPEG its full pixels x scans / ``PROGRESSIVE_SCANS`` (every scan is a pass over every
    coefficient, drafted or not). 0 for an image that cannot be opened or is over ``max_pixels`` (decoding refuses
    those at once). ``ImageError`` 413 ``too_many_scans`` for a JPEG past ``settings.max_jpeg_scans``."""
    costs: list[int] = []
    for i, data in enumerate(images):
        try:
            with image_errors():
                scans, progressive = check_scans(data, settings.max_jpeg_scans)
        except ImageError as e:
            if len(images) > 1:
                e.message = f"image {i + 1} of {len(images)}: {e.message}"
            raise e
        costs.append(_pixels(data, resize_size, settings, scans if progressive else 0))
    return costs


def _pixels(data: bytes, resize_size: int, settings: Any, progressive_scans: int) -> int:
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as im:
            w, h = im.size
            if w * h > settings.max_pixels:
                return 0
            if progressive_scans:
                return math.ceil(w * h * progressive_scans / PROGRESSIVE_SCANS)
            if settings.draft and im.format == "JPEG" and min(w, h) >= 4 * resize_size:  # as resnet.preprocess drafts
                scale = 2 * resize_size / min(w, h)
                im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))  # header only: no pixels read
                w, h = im.size
    except Exception:
        return 0
    return w * h


def decode_checked(data: bytes, resize_size: int, settings: Any, cancel: threading.Event | None = None) -> Image.Image:
    """Decode ``data`` (draft towards ``resize_size``) under the server's pixel and scan caps; 413 past
    ``max_aspect``; ``DecodeCancelled`` soon after ``cancel`` is set. Call inside ``image_errors()``."""
    if not data:
        raise ImageError(400, "empty_image", "the image is empty (0 bytes)")
    img = decode_image(
        data,
        resize_size,
        draft=settings.draft,
        max_pixels=settings.max_pixels,
        max_scans=settings.max_jpeg_scans,
        cancel=cancel,
    )
    w, h = img.size
    if max(w, h) / min(w, h) > settings.max_aspect:
        raise ImageError(
            413,
            "image_too_large",
            f"image is {w}x{h}: aspect ratio over {settings.max_aspect:g} would resize to "
            f"{'x'.join(map(str, resized_size(w, h, resize_size)))} pixels",
        )
    return img


def multiscale_views_of(
    data: bytes,
    card: Any,
    sides: Sequence[int],
    settings: Any,
    spatial: tuple[int, int],
    cancel: threading.Event | None = None,
) -> list[np.ndarray]:
    """Bytes -> one float32 ``[2, 3, H, W]`` array per side (view and mirror), decoded once (draft towards the
    largest side), as ``resnet.multiscale.multiscale_views`` gives for the same bytes. ``ImageError`` on a bad
    image, over the per-image view cap, or with a view outside ``spatial`` (what the backend takes)."""
    with image_errors():
        img = decode_checked(data, max(sides), settings, cancel)
        views = multiscale_views(
            img, card, sides, flip=True, draft=False, max_pixels=None, max_view_pixels=DEFAULT_MAX_VIEW_PIXELS
        )
    lo, hi = spatial
    for v in views:
        h, w = v.shape[2:]
        if not (lo <= h <= hi and lo <= w <= hi):
            raise ImageError(
                413,
                "image_too_large",
                f"a multi-scale view of this {img.width}x{img.height} image is {w}x{h}; the backend takes sides "
                f"{lo}..{hi} only (a less elongated image fits)",
            )
    return views
