"""INT8 calibration images and the gate images kept disjoint from them.

``--calib`` names a folder of images, an ImageFolder, or a bundled set: ``digits`` (scikit-learn's handwritten
digits, the training split; the gate then defaults to the held-out split, labelled) or ``samples`` (the bundled
photos). Calibration images go through the card's ten-crop preprocessing, so the ranges are those the server sees.

The gate never sees a calibration image: images are matched by content (file bytes, or their place in the bundled
digits), and when both sides come from one source (``--calib samples`` with the default gate images, or the same
folder twice) that source is split alternately: even-numbered images calibrate, odd-numbered ones gate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resnet import UsageError
from resnet.card import ModelCard
from resnet.preprocess import folder_label_indices

from .images import ImageList, ImageSet, image_set_from, list_folder, list_samples, preprocess_all, spread

BUNDLED = ("digits", "samples")
DEFAULT_CALIB_COUNT = 100  # images (each ten crops); spread evenly over the source


@dataclass
class Calibration:
    """Preprocessed calibration crops ``[n * 10, 3, S, S]`` and where they came from (for the card's provenance)."""

    source: str
    count: int
    crops: np.ndarray
    crops_per_image: int

    def batches(self) -> Iterator[np.ndarray]:
        """One ten-crop image per batch, as the server runs it."""
        for i in range(0, len(self.crops), self.crops_per_image):
            yield self.crops[i : i + self.crops_per_image]


def list_digits(split: str, card: ModelCard) -> ImageList:
    """The bundled digits of one split as in-memory images; labels when the card's labels are the digits."""
    from PIL import Image

    from resnet.samples import DIGIT_LABELS, digits_images

    images, labels = digits_images(split)
    mapping = folder_label_indices(list(DIGIT_LABELS), list(card.labels))
    return ImageList(
        f"bundled digits ({split} split)",
        [Image.fromarray(img) for img in images],
        [f"digits-{split}/{i:04d}" for i in range(len(images))],
        [mapping[int(y)] for y in labels] if mapping is not None else None,
        None if mapping is not None else "the model's labels are not the digits: accuracy not measured",
    )


def list_calibration(source: str, card: ModelCard) -> ImageList:
    """The images ``--calib SOURCE`` names (nothing read yet). Missing folder or no images: ``UsageError``."""
    if source == "digits":
        return list_digits("train", card)
    if source == "samples":
        return list_samples()
    return list_folder(Path(source), card, flag="--calib")


def default_gate_listing(calib_source: str, card: ModelCard) -> ImageList:
    """Gate images when ``--images`` is not given: held-out digits for ``--calib digits``, else the photos."""
    return list_digits("test", card) if calib_source == "digits" else list_samples()


def _identity(item: Any, name: str) -> str:
    if isinstance(item, Path):
        try:
            return hashlib.sha1(item.read_bytes()).hexdigest()
        except OSError:
            return f"path:{item.resolve()}"
    return f"name:{name}"


def split_disjoint(calib: ImageList, gate: ImageList) -> tuple[ImageList, ImageList]:
    """Calibration and gate listings with no image in common (see the module docstring)."""
    calib_ids = [_identity(i, n) for i, n in zip(calib.items, calib.names)]
    gate_ids = [_identity(i, n) for i, n in zip(gate.items, gate.names)]
    if not set(calib_ids) & set(gate_ids):
        return calib, gate
    if set(calib_ids) == set(gate_ids):  # one source for both: alternate
        n = len(calib.items)
        if n < 2:
            raise UsageError("calibration and gate would share their only image; pass --images with other images")
        return calib.subset(range(0, n, 2)), gate.subset(range(1, n, 2))
    taken = set(calib_ids)
    keep = [i for i, ident in enumerate(gate_ids) if ident not in taken]
    if not keep:
        raise UsageError("every gate image is also a calibration image; pass --images with other images")
    return calib, gate.subset(keep)


def prepare(
    calib_source: str,
    card: ModelCard,
    count: int | None,
    images: Path | None,
    limit: int | None,
) -> tuple[Calibration, ImageSet]:
    """Read and preprocess the calibration images and the (disjoint) gate images; nothing is written."""
    if count is not None and count < 1:
        raise UsageError("--calib-count must be >= 1")
    calib = list_calibration(calib_source, card)
    gate = list_folder(images, card) if images is not None else default_gate_listing(calib_source, card)
    calib, gate = split_disjoint(calib, gate)
    calib = calib.subset(spread(len(calib.items), count or DEFAULT_CALIB_COUNT))
    gate = gate.subset(spread(len(gate.items), limit))
    crops = preprocess_all(calib.items, calib.names, card, "ten")
    label = calib_source if calib_source in BUNDLED else str(Path(calib_source))
    return Calibration(label, len(calib.items), crops, 10), image_set_from(gate, card)
