"""Multi-scale testing of the ResNet paper (Sec. 3.4): the whole image, fully convolutionally, at several scales.

The image is resized (bilinear, antialiased, as ``resnet.preprocess``) so that its shorter side is each of
``{224, 256, 384, 480, 640}`` -- no crop, the aspect ratio kept -- and fed with its horizontal mirror; the scores
are the mean of the softmax over every scale and both flips. Our networks end in adaptive average pooling, so any
size works. For a card whose ``input_size`` is not 224 the sides scale by ``input_size / 224``; CIFAR-family nets
(32-px input) use ``CIFAR_SIDES`` instead (see ``multiscale_sides``). One definition, numpy + Pillow only, shared
by evaluation, export gates and the server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageInput,
    ImageTooLargeError,
    decode_image,
    resized_size,
    softmax,
)

PAPER_SIDES = (224, 256, 384, 480, 640)
PAPER_INPUT_SIZE = 224
# Shorter sides for the 32-px CIFAR-family nets: the training size and one 4-px step (the nets' total stride)
# either side. See multiscale_sides and docs/networks.md's figures on the digits model.
CIFAR_SIDES = (28, 32, 36)
# Cap on the pixels of all views of one image together (every scale, both flips): about a 6:1 panorama at the
# paper's scales. A 4:3 photo at the paper's five scales with flips is 2.4 M pixels.
DEFAULT_MAX_VIEW_PIXELS = 16_000_000
# The (min, max) height/width of a network that takes any input size (a graph with symbolic H and W, a PyTorch
# net): what the server's backends and the gate's candidates report as ``spatial``.
ANY_SIZE = (1, 65535)

# The TensorRT optimisation profile for multi-scale views, one definition for export.trt's engines and for ONNX
# Runtime's TensorRT EP in the server (``view_profile``). Views arrive in pairs (a side's view + its mirror,
# [2, 3, H, W]); 8 rows are four such pairs of one shape. A single 640 x 853 view pair of ResNet-50 already fills a
# GPU, so a bigger batch would buy little throughput and cost activation memory (TensorRT sizes it for the max).
VIEW_MAX_BATCH = 8
VIEW_OPT_BATCH = 2  # one view + its mirror
# The longest side a view may have, as a multiple of the largest shorter side: 2.0 covers every photo from 1:2 to
# 2:1 (4:3, 3:2, 16:9 included); a more elongated image's views fall outside the profile (the gate skips them, the
# server answers 413 for them on such a backend).
VIEW_MAX_ASPECT = 2.0
VIEW_OPT_ASPECT = 4 / 3  # the typical photo: the opt shape is a 4:3 landscape view at the middle side


def multiscale_sides(card: Mapping[str, Any] | Any, sides: Sequence[int] | None = None) -> tuple[int, ...]:
    """The shorter sides to test ``card``'s network at, ascending.

    ImageNet family: the paper's ``{224, 256, 384, 480, 640}`` times ``input_size / 224`` (rounded); its nets are
    trained with scale augmentation (shorter side 256..480 for 224 crops), which those sides span. CIFAR family:
    ``CIFAR_SIDES`` times ``input_size / 32``. The paper trains them at one scale (32-px crops of 4-px padded
    images) and tests them single-view; the paper's ratios (32 -> 37 ... 91 px) take such a net far outside the
    object sizes it has seen (61.7% error on the digits model against 0.8% at 32 px). ``sides`` given: used as is.
    """
    if sides is not None:
        chosen = tuple(int(s) for s in sides)
    elif getattr(card, "family", None) == "cifar":
        chosen = tuple(round(s * card.input_size / 32) for s in CIFAR_SIDES)
    else:
        chosen = tuple(round(s * card.input_size / PAPER_INPUT_SIZE) for s in PAPER_SIDES)
    if not chosen or min(chosen) < 1:
        raise ValueError(f"multi-scale sides must be positive, not {chosen}")
    return tuple(sorted(set(chosen)))


def view_profile(card: Mapping[str, Any] | Any) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The ``(min, opt, max)`` ``[N, 3, H, W]`` shapes of a TensorRT profile for ``card``'s multi-scale views.

    Batch 1..``VIEW_MAX_BATCH`` (opt a view pair); height and width each in ``[min(sides), ceil(max(sides) *
    VIEW_MAX_ASPECT)]`` (224..1280 for ResNet-50, 28..72 for CIFAR nets); opt a 4:3 landscape view at the middle side
    (384 x 512 for ResNet-50): TensorRT tunes kernels at opt, and that is the typical view, not the extreme one.
    """
    sides = multiscale_sides(card)
    lo, hi = min(sides), math.ceil(max(sides) * VIEW_MAX_ASPECT)
    mid = sides[len(sides) // 2]
    opt_w = min(hi, round(mid * VIEW_OPT_ASPECT))
    return (1, 3, lo, lo), (VIEW_OPT_BATCH, 3, mid, opt_w), (VIEW_MAX_BATCH, 3, hi, hi)


def view_pixels(width: int, height: int, sides: Sequence[int], flip: bool = True) -> int:
    """Pixels of all views of a ``width`` x ``height`` image at ``sides`` (doubled with flips): the cost bound."""
    total = 0
    for s in sides:
        w, h = resized_size(width, height, s)
        total += w * h
    return total * (2 if flip else 1)


def multiscale_views(
    image: ImageInput,
    card: Mapping[str, Any] | Any,
    sides: Sequence[int] | None = None,
    flip: bool = True,
    draft: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_view_pixels: int | None = DEFAULT_MAX_VIEW_PIXELS,
) -> list[np.ndarray]:
    """Image (bytes, path or PIL) -> one float32 ``[2, 3, H, W]`` array per side (``[1, ...]`` without ``flip``):
    the whole image with its shorter side resized to that side, then its mirror, normalised by the card's mean/std.

    ``max_pixels`` caps the decoded image, ``max_view_pixels`` all views together (``ImageTooLargeError``).
    """
    sides = multiscale_sides(card, sides)
    img = decode_image(image, max(sides), draft=draft, max_pixels=max_pixels)
    cost = view_pixels(img.width, img.height, sides, flip)
    if max_view_pixels is not None and cost > max_view_pixels:
        raise ImageTooLargeError(
            f"multi-scale views of a {img.width}x{img.height} image at sides {', '.join(map(str, sides))} "
            f"are {cost} pixels, over the cap of {max_view_pixels}"
        )
    mean = np.asarray(card.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(card.std, dtype=np.float32).reshape(3, 1, 1)
    views = []
    for side in sides:
        size = resized_size(img.width, img.height, side)
        scaled = img if size == img.size else img.resize(size, Image.Resampling.BILINEAR)
        chw = (
            np.asarray(scaled, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0) - mean
        ) / std
        views.append(np.ascontiguousarray(np.stack([chw, chw[:, :, ::-1]]) if flip else chw[None]))
    return views


def multiscale_probabilities(logits_per_side: Sequence[np.ndarray], n_images: int = 1) -> np.ndarray:
    """Logits of the views -> ``[n_images, C]`` probabilities: the mean softmax over every view of every side.

    ``logits_per_side[i]`` is ``[n_images * k_i, C]``, image-major (image 0's ``k_i`` views first), e.g. the
    network's output on ``np.concatenate`` of the images' ``multiscale_views(...)[i]``.
    """
    if not logits_per_side:
        raise ValueError("no logits to average")
    sums = None
    views = 0
    for logits in logits_per_side:
        probs = softmax(logits)
        probs = probs.reshape(n_images, -1, probs.shape[-1])
        sums = probs.sum(axis=1) if sums is None else sums + probs.sum(axis=1)
        views += probs.shape[1]
    return sums / views
