"""The crop protocols of the ResNet paper: which views of an image run, and how their outputs become one score.

One definition (docs/DESIGN.md §4) for ``resnet.preprocess``, the gate, ``/classify?crops=`` and KServe v2's
``crops`` parameter. ``ten`` and ``center`` are fixed S x S crops (Sec. 3.4's 10-crop testing, or the centre crop);
``multiscale`` is the whole image at several shorter sides with its mirror (``resnet.multiscale``). Every protocol
combines its views the same way: the mean of their softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

CropName = Literal["ten", "center", "multiscale"]
FixedCropName = Literal["ten", "center"]  # the protocols of fixed S x S crops (``resnet.preprocess``)
CROP_NAMES: tuple[str, ...] = get_args(CropName)
COMBINE = "mean of the views' softmax"


@dataclass(frozen=True)
class CropProtocol:
    """One protocol: its name, the views it feeds the network and how their logits are combined."""

    name: CropName
    crops: int | None  # fixed S x S crops per image (10 or 1); None: whole-image views at several sides (+ mirrors)
    views: str  # what runs, in words
    combine: str = COMBINE

    @property
    def fixed_size(self) -> bool:
        """Whether every view is the card's S x S (any backend runs it; multi-scale needs any-size input)."""
        return self.crops is not None


CROP_PROTOCOLS: dict[str, CropProtocol] = {
    "ten": CropProtocol("ten", 10, "four corners and the centre at S x S, and their mirrors (paper Sec. 3.4)"),
    "center": CropProtocol("center", 1, "the centre S x S crop"),
    "multiscale": CropProtocol(
        "multiscale", None, "the whole image at each multi-scale shorter side and its mirror (paper Sec. 3.4)"
    ),
}
# The fixed-crop protocols and their crops per image (``resnet.preprocess``).
FIXED_CROPS: dict[str, int] = {p.name: p.crops for p in CROP_PROTOCOLS.values() if p.crops is not None}
MULTISCALE: CropName = "multiscale"


def crop_protocol(name: str) -> CropProtocol:
    """The protocol called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in CROP_PROTOCOLS:
        raise ValueError(f"crops must be one of {', '.join(CROP_NAMES)}, not {name!r}")
    return CROP_PROTOCOLS[name]
