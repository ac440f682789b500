"""Ten-crop preprocessing (docs/DESIGN.md §3): one function used by evaluation, parity checks and the server.

Decode with Pillow (EXIF orientation applied, converted to RGB) -> resize the shorter side to ``resize_size``
(bilinear, antialiased) -> ``center`` (1) or ``ten`` crops of ``input_size`` (4 corners + centre, then the same
five of the horizontally flipped image) -> [0, 1] -> normalise with the card's mean/std -> float32 NCHW.

The result equals torchvision's ``Resize`` + ``TenCrop``/``CenterCrop`` + ``ToTensor`` + ``Normalize`` on the same
PIL image (max abs diff <= 1e-5, tested). With ``draft=True`` (the default) a JPEG that is at least four times larger
than needed on its shorter side is DCT-reduced while decoding (Pillow's draft mode) to no less than twice the resize
size, then resized as usual; bench/RESULTS.md records the speed-up and the (small) difference that buys.
"""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError
from .runtime.crops import FIXED_CROPS, FixedCropName

Crops = FixedCropName  # the fixed-crop protocols of resnet.runtime.crops
CROPS: dict[str, int] = FIXED_CROPS
# Formats recognised from the bytes (never from a file name or a declared content type).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# File names every stage treats as images (folders of images for evaluation, calibration, gates and clients).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_MAX_PIXELS = 40_000_000
ImageInput = bytes | bytearray | memoryview | str | os.PathLike | Image.Image


class ImageDecodeError(UserError):
    """Truncated or corrupt image data (HTTP 400)."""


class UnsupportedImageError(UserError):
    """Bytes that are not an image format we accept (HTTP 415)."""


class ImageTooLargeError(UserError):
    """An image over the pixel cap, e.g. a decompression bomb (HTTP 413)."""


def _open(source: ImageInput) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp: Any = io.BytesIO(bytes(source))
    else:
        fp = Path(source)
        if not fp.is_file():
            raise ImageDecodeError(f"no such image file: {fp}")
    try:
        return Image.open(fp, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedImageError(f"not an accepted image format (accepted: {', '.join(ACCEPTED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # The warning arrives as an exception when another thread is inside decode_image's warnings filter
        # (warnings.catch_warnings is process-wide), e.g. in the server's decode pool.
        raise ImageTooLargeError(str(e)) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"cannot read image: {e}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB like torchvision's loader (``convert("RGB")``), but 16/32-bit grey scaled to 8 bits instead of clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if (img.mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        img = Image.fromarray(np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def decode_image(
    source: ImageInput,
    resize_size: int | None = None,
    draft: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open image bytes, a path or a PIL image -> an RGB PIL image with EXIF orientation applied.

    ``max_pixels`` caps width x height before anything is decoded (``ImageTooLargeError``); GIFs give their first
    frame. With ``resize_size`` and ``draft`` a large JPEG is reduced while decoding (see the module docstring).
    """
    img = _open(source)
    try:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageTooLargeError(
                f"image is {img.width}x{img.height} = {img.width * img.height} pixels, over the cap of {max_pixels}"
            )
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if draft and resize_size and img.format == "JPEG" and min(img.size) >= 4 * resize_size:
            scale = 2 * resize_size / min(img.size)
            img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(str(e)) from None
    except UserError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error) as e:
        raise ImageDecodeError(f"cannot decode image: {e}") from None


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(resize_size)``: shorter side -> size, longer side truncated."""
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def crop_boxes(width: int, height: int, size: int, crops: str) -> list[tuple[int, int]]:
    """Top-left corners of the crops in torchvision's order: tl, tr, bl, br, centre (``ten`` repeats them flipped)."""
    if size > width or size > height:
        raise ValueError(f"crop {size} larger than image {width}x{height}")
    centre = (int(round((width - size) / 2.0)), int(round((height - size) / 2.0)))
    if crops == "center":
        return [centre]
    return [(0, 0), (width - size, 0), (0, height - size), (width - size, height - size), centre]


def _sizes(card: Mapping[str, Any]) -> tuple[int, int, np.ndarray, np.ndarray]:
    mean = np.asarray(card.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(card.std, dtype=np.float32).reshape(3, 1, 1)
    return card.resize_size, card.input_size, mean, std


def preprocess(
    image: ImageInput,
    card: Mapping[str, Any],
    crops: str = "ten",
    draft: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Image (bytes, path or PIL) -> float32 ``[1 or 10, 3, input_size, input_size]`` per the card's sizes/mean/std."""
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {', '.join(CROPS)}, not {crops!r}")
    resize_size, size, mean, std = _sizes(card)
    img = decode_image(image, resize_size, draft=draft, max_pixels=max_pixels)
    new_w, new_h = resized_size(img.width, img.height, resize_size)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    chw = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    chw = (chw.astype(np.float32) / np.float32(255.0) - mean) / std
    out = np.empty((CROPS[crops], 3, size, size), dtype=np.float32)
    boxes = crop_boxes(new_w, new_h, size, crops)
    for i, (x, y) in enumerate(boxes):
        out[i] = chw[:, y : y + size, x : x + size]
    if crops == "ten":
        flipped = chw[:, :, ::-1]
        for i, (x, y) in enumerate(boxes):
            out[5 + i] = flipped[:, y : y + size, x : x + size]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def crop_probabilities(logits: np.ndarray, crops_per_image: int) -> np.ndarray:
    """``[N * k, C]`` crop logits -> ``[N, C]`` image probabilities: the mean of the per-crop softmax."""
    probs = softmax(logits)
    return probs.reshape(-1, crops_per_image, probs.shape[-1]).mean(axis=1)


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores along the last axis, largest first; ties keep the lower index."""
    k = max(1, min(int(k), scores.shape[-1]))
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def topk(probs: np.ndarray, k: int, labels: Sequence[str]) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one ``[C]`` probability vector as ``{index, label, probability}``."""
    return [{"index": int(i), "label": labels[i], "probability": float(probs[i])} for i in topk_indices(probs, k)]


def folder_label_indices(folder_classes: Sequence[str], labels: Sequence[str]) -> list[int] | None:
    """The card index of each class folder: by label name, else by number (``0``..``C-1``); None when neither
    rule maps every folder (the folder's labels are then unknown to the model)."""
    index = {label: i for i, label in enumerate(labels)}
    if all(c in index for c in folder_classes):
        return [index[c] for c in folder_classes]
    if all(c.isdigit() and int(c) < len(labels) for c in folder_classes):
        return [int(c) for c in folder_classes]
    return None
