"""The crop protocols of the ResNet paper as objects: which views of an image run, and how their outputs become one
score.

One definition (docs/DESIGN.md §4) for ``resnet.preprocess``, the gate, evaluation, ``/classify?crops=``, the
clients and KServe v2's ``crops`` parameter: callers take a ``CropProtocol`` (``crop_protocol(name)``) and call its
methods instead of comparing names. ``ten`` and ``center`` are fixed S x S crops (Sec. 3.4's 10-crop testing, or the
centre crop); ``multiscale`` is the whole image at several shorter sides with its mirror (``resnet.multiscale``).
Every protocol combines its views the same way: the mean of their softmax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

CropName = Literal["ten", "center", "multiscale"]
FixedCropName = Literal["ten", "center"]  # the protocols of fixed S x S crops (``resnet.preprocess``)
CROP_NAMES: tuple[str, ...] = get_args(CropName)
COMBINE = "mean of the views' softmax"


@dataclass(frozen=True)
class CropProtocol:
    """One protocol: its name, the views it feeds the network and how their logits are combined."""

    name: CropName
    crops: int | None  # fixed S x S crops per image (10 or 1); None: whole-image views at several sides (+ mirrors)
    views_text: str  # what runs, in words
    title: str  # how a card's ``metrics.protocol`` names it
    combine_text: str = COMBINE

    @property
    def fixed_size(self) -> bool:
        """Whether every view is the card's S x S (any backend runs it; multi-scale needs any-size input)."""
        return self.crops is not None

    @property
    def multiscale(self) -> bool:
        """Whole-image views at several shorter sides (not S x S crops)."""
        return self.crops is None

    def decode_side(self, card: Mapping[str, Any] | Any, sides: Sequence[int]) -> int:
        """The shorter side an image is decoded for: the card's resize size, or the largest multi-scale side."""
        return max(sides) if self.multiscale else card.resize_size

    def views(self, image: Any, card: Mapping[str, Any] | Any, **kwargs: Any) -> list[np.ndarray]:
        """An image's network inputs as a list of float32 arrays: ``[crops, 3, S, S]`` (one array) for fixed crops,
        ``[2, 3, H, W]`` per side for multi-scale; ``kwargs`` go to ``resnet.preprocess`` / ``multiscale_views``."""
        if self.multiscale:
            from ..multiscale import multiscale_views

            return multiscale_views(image, card, **kwargs)
        from ..preprocess import preprocess

        return [preprocess(image, card, crops=self.name, **kwargs)]

    def combine(self, logits: Sequence[np.ndarray]) -> np.ndarray:
        """One image's logits, one array per view array of ``views`` -> its ``[C]`` probabilities (mean softmax)."""
        if self.multiscale:
            from ..multiscale import multiscale_probabilities

            return multiscale_probabilities(list(logits))[0]
        from ..preprocess import crop_probabilities

        return crop_probabilities(logits[0] if len(logits) == 1 else np.concatenate(logits), self.crops)[0]

    def describe(self, n_images: int, what: str, sides: Sequence[int] = ()) -> str:
        """The card's ``metrics.protocol`` text, e.g. ``"10-crop, sklearn digits test split (360 images)"``."""
        head = f"{self.title} {'/'.join(map(str, sides))} + flips" if self.multiscale else self.title
        return f"{head}, {what} ({n_images} images)"


CROP_PROTOCOLS: dict[str, CropProtocol] = {
    "ten": CropProtocol(
        "ten", 10, "four corners and the centre at S x S, and their mirrors (paper Sec. 3.4)", "10-crop"
    ),
    "center": CropProtocol("center", 1, "the centre S x S crop", "center crop"),
    "multiscale": CropProtocol(
        "multiscale",
        None,
        "the whole image at each multi-scale shorter side and its mirror (paper Sec. 3.4)",
        "multi-scale",
    ),
}
# The fixed-crop protocols and their crops per image (``resnet.preprocess``).
FIXED_CROPS: dict[str, int] = {p.name: p.crops for p in CROP_PROTOCOLS.values() if p.crops is not None}
TEN = CROP_PROTOCOLS["ten"]
TEN_CROPS: int = FIXED_CROPS["ten"]  # crops of one ten-crop image: the batch a single request fills
MULTISCALE: CropName = "multiscale"


def crop_protocol(name: str | CropProtocol) -> CropProtocol:
    """The protocol called ``name`` (a protocol passes through); ``ValueError`` naming the known ones otherwise."""
    if isinstance(name, CropProtocol):
        return name
    if not isinstance(name, str) or name not in CROP_PROTOCOLS:
        raise ValueError(f"crops must be one of {', '.join(CROP_NAMES)}, not {name!r}")
    return CROP_PROTOCOLS[name]
