"""Ten-crop preprocessing (docs/DESIGN.md §3): one function used by evaluation, parity checks and the server.

Decode with Pillow (EXIF orientation applied, converted to RGB) -> resize the shorter side to ``resize_size``
(bilinear, antialiased) -> ``center`` (1) or ``ten`` crops of ``input_size`` (4 corners + centre, then the same
five of the horizontally flipped image) -> [0, 1] -> normalise with the card's mean/std -> float32 NCHW.

The result equals torchvision's ``Resize`` + ``TenCrop``/``CenterCrop`` + ``ToTensor`` + ``Normalize`` on the same
PIL image (max abs diff <= 1e-5, tested). With ``draft=True`` (the default) a JPEG that is at least four times larger
than needed on its shorter side is DCT-reduced while decoding (Pillow's draft mode) to no less than twice the resize
size, then resized as usual; bench/RESULTS.md records the speed-up and the (small) difference that buys.

Decoding cost is bounded before anything is decoded: a JPEG's scans are counted from its markers (``jpeg_scans``;
every scan of a progressive JPEG is a pass over all of its coefficients) and refused past ``max_scans``; a decode
given a ``cancel`` event stops at the next block of input it reads once the event is set.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError
from .runtime.crops import CROP_PROTOCOLS, FIXED_CROPS, CropProtocol, FixedCropName

Crops = FixedCropName  # the fixed-crop protocols of resnet.runtime.crops
CROPS: dict[str, int] = FIXED_CROPS
# Formats recognised from the bytes (never from a file name or a declared content type).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# File names every stage treats as images (folders of images for evaluation, calibration, gates and clients).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_MAX_PIXELS = 40_000_000
# Most scans a JPEG may hold: libjpeg's progressive JPEGs have 10 (colour) or 6 (grey); each scan is a pass over
# every coefficient, so a "scan bomb" repeating one scan thousands of times costs thousands of decodes.
DEFAULT_MAX_SCANS = 32
CANCEL_BLOCK = 1024  # bytes fed to the decoder between two looks at ``cancel`` (Pillow reads 64 KB)
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker: not byte stuffing, a restart or a fill byte
_PROGRESSIVE_SOF = (0xC2, 0xC6, 0xCA, 0xCE)
ImageInput = bytes | bytearray | memoryview | str | os.PathLike | Image.Image


class ImageDecodeError(UserError):
    """Truncated or corrupt image data (HTTP 400)."""


class UnsupportedImageError(UserError):
    """Bytes that are not an image format we accept (HTTP 415)."""


class ImageTooLargeError(UserError):
    """An image over the pixel cap, e.g. a decompression bomb (HTTP 413)."""


class TooManyScansError(UserError):
    """A JPEG with more scans (or marker segments) than decoding it is worth, e.g. a scan bomb (HTTP 413)."""


class DecodeCancelled(Exception):
    """A decode stopped because its ``cancel`` event was set (its request's deadline passed or its client left)."""


class _CancellableBytes(io.BytesIO):
    """Image bytes whose every read first checks ``cancel``: Pillow feeds its decoders through ``read``."""

    def __init__(self, data: bytes, cancel: threading.Event) -> None:
        super().__init__(data)
        self._cancel = cancel

    def read(self, size: int | None = -1) -> bytes:
        if self._cancel.is_set():
            raise DecodeCancelled("decode cancelled")
        return super().read(size)


def jpeg_scans(data: bytes, limit: int = DEFAULT_MAX_SCANS) -> tuple[int, bool]:
    """(scans, progressive) of JPEG bytes, from their markers alone (nothing decoded); (0, False) for other bytes.

    Walks the marker segments as a decoder does and skips each scan's entropy-coded data to the next marker, up to
    the end of the image. Stops counting past ``limit`` scans, and raises ``TooManyScansError`` for a JPEG of more
    than ``16 * limit + 64`` segments (what a legal JPEG holds is far fewer), so the walk itself stays cheap.
    """
    if not data.startswith(b"\xff\xd8"):
        return 0, False
    scans, segments, progressive, at, end = 0, 0, False, 2, len(data)
    while at + 4 <= end and scans <= limit:
        if data[at] != 0xFF or data[at + 1] in (0x00, 0xFF):  # junk or fill bytes: on to the next marker
            found = _JPEG_MARKER.search(data, at)
            if found is None:
                break
            at = found.start()
            continue
        marker = data[at + 1]
        if marker == 0xD9:  # end of image
            break
        segments += 1
        if segments > 16 * limit + 64:
            raise TooManyScansError(f"the JPEG holds more than {16 * limit + 64} marker segments")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            at += 2
            continue
        progressive = progressive or marker in _PROGRESSIVE_SOF
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
        if marker == 0xDA:  # start of scan: its entropy-coded data runs to the next marker
            scans += 1
            found = _JPEG_MARKER.search(data, at)
            if found is None:
                break
            at = found.start()
    return scans, progressive


def check_scans(data: bytes, max_scans: int) -> tuple[int, bool]:
    """``jpeg_scans`` of image bytes ((0, False) for other formats); ``TooManyScansError`` past ``max_scans``."""
    scans, progressive = jpeg_scans(data, max_scans)
    if scans > max_scans:
        raise TooManyScansError(
            f"the JPEG holds more than {max_scans} scans (a progressive JPEG has about 10): each scan is another "
            "decode of the whole image"
        )
    return scans, progressive


def _open(source: ImageInput, cancel: threading.Event | None = None) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp: Any = io.BytesIO(bytes(source)) if cancel is None else _CancellableBytes(bytes(source), cancel)
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
    max_scans: int | None = DEFAULT_MAX_SCANS,
    cancel: threading.Event | None = None,
) -> Image.Image:
    """Open image bytes, a path or a PIL image -> an RGB PIL image with EXIF orientation applied.

    ``max_pixels`` caps width x height and ``max_scans`` a JPEG's scans before anything is decoded
    (``ImageTooLargeError``, ``TooManyScansError``); GIFs give their first frame. With ``resize_size`` and ``draft``
    a large JPEG is reduced while decoding (see the module docstring). Bytes decoded with a ``cancel`` event raise
    ``DecodeCancelled`` soon after it is set.
    """
    if max_scans is not None and isinstance(source, (bytes, bytearray, memoryview)):
        check_scans(bytes(source), max_scans)
    img = _open(source, cancel)
    if cancel is not None:
        img.decodermaxblock = CANCEL_BLOCK  # look at ``cancel`` every KB of input
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


def fixed_protocol(crops: str | CropProtocol) -> CropProtocol:
    """The fixed S x S crop protocol ``crops`` names; ``ValueError`` for multi-scale or an unknown name."""
    protocol = crops if isinstance(crops, CropProtocol) else CROP_PROTOCOLS.get(crops)
    if protocol is None or not protocol.fixed_size:
        raise ValueError(f"crops must be one of {', '.join(CROPS)}, not {getattr(crops, 'name', crops)!r}")
    return protocol


def crop_boxes(width: int, height: int, size: int, crops: str | CropProtocol) -> list[tuple[int, int]]:
    """Top-left corners of the unmirrored crops in torchvision's order: tl, tr, bl, br, centre (or the centre alone
    for one crop); a protocol with twice as many crops as boxes (``ten``) repeats them on the mirrored image."""
    if size > width or size > height:
        raise ValueError(f"crop {size} larger than image {width}x{height}")
    centre = (int(round((width - size) / 2.0)), int(round((height - size) / 2.0)))
    if fixed_protocol(crops).crops == 1:
        return [centre]
    return [(0, 0), (width - size, 0), (0, height - size), (width - size, height - size), centre]


def _sizes(card: Mapping[str, Any]) -> tuple[int, int, np.ndarray, np.ndarray]:
    mean = np.asarray(card.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(card.std, dtype=np.float32).reshape(3, 1, 1)
    return card.resize_size, card.input_size, mean, std


def preprocess(
    image: ImageInput,
    card: Mapping[str, Any],
    crops: str | CropProtocol = "ten",
    draft: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Image (bytes, path or PIL) -> float32 ``[1 or 10, 3, input_size, input_size]`` per the card's sizes/mean/std."""
    protocol = fixed_protocol(crops)
    resize_size, size, mean, std = _sizes(card)
    img = decode_image(image, resize_size, draft=draft, max_pixels=max_pixels)
    new_w, new_h = resized_size(img.width, img.height, resize_size)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    chw = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    chw = (chw.astype(np.float32) / np.float32(255.0) - mean) / std
    out = np.empty((protocol.crops, 3, size, size), dtype=np.float32)
    boxes = crop_boxes(new_w, new_h, size, protocol)
    for i, (x, y) in enumerate(boxes):
        out[i] = chw[:, y : y + size, x : x + size]
    if protocol.crops > len(boxes):  # ten: the same boxes on the mirrored image
        flipped = chw[:, :, ::-1]
        for i, (x, y) in enumerate(boxes):
            out[len(boxes) + i] = flipped[:, y : y + size, x : x + size]
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
