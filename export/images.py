"""The gate's images: real images, read once and preprocessed by the shared ten-crop (``resnet.preprocess``).

Sources: the bundled sample photos (default), a flat folder of images, or an ImageFolder ``DIR/<label>/*.png``
whose folder names are the model's labels (which adds labelled accuracy to the gate). The first
``MULTISCALE_IMAGES`` images are also prepared for the paper's multi-scale test (``resnet.multiscale``): the gate
runs a candidate that takes any input size on those views too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import resnet
from resnet import UsageError, UserError
from resnet.card import ModelCard
from resnet.multiscale import multiscale_sides, multiscale_views
from resnet.preprocess import CROPS, IMAGE_SUFFIXES, folder_label_indices
from resnet.runtime.crops import FIXED_CROPS
from resnet.samples import sample_photo_paths

from .log import log, progress

SAMPLES_SOURCE = "bundled sample photos (scikit-image)"
MULTISCALE_IMAGES = 4  # images of a gate set also checked at the multi-scale test's sizes (each ~5x a ten-crop)


@dataclass
class ImageSet:
    """Real images, preprocessed once: ``crops`` is float32 ``[n_images * crops_per_image, 3, S, S]``."""

    source: str
    files: list[str]
    crops: np.ndarray
    crops_per_image: int
    labels: np.ndarray | None  # the card's class index of each image, when the folder is a matching ImageFolder
    note: str | None = None
    # multi-scale views of the first images: views[i][j] is image i at side sides[j], float32 [2, 3, H, W] (+ flip)
    views: list[list[np.ndarray]] = dataclasses.field(default_factory=list)
    sides: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "count": len(self.files),
            "crops": next(name for name, n in FIXED_CROPS.items() if n == self.crops_per_image),
            "crops_total": int(len(self.crops)),
            "labelled": self.labels is not None,
            "files": self.files if len(self.files) <= 50 else self.files[:50] + [f"... {len(self.files) - 50} more"],
            **({"multiscale": {"images": len(self.views), "sides": list(self.sides)}} if self.views else {}),
            **({"note": self.note} if self.note else {}),
        }


@dataclass
class ImageList:
    """Image files (or in-memory images) of one source, before preprocessing; ``labels`` as card indices."""

    source: str
    items: list[Any]  # Path, or anything ``resnet.preprocess`` reads (PIL images for the bundled digits)
    names: list[str]
    labels: list[int] | None = None
    note: str | None = None

    def subset(self, keep: Sequence[int]) -> ImageList:
        labels = [self.labels[i] for i in keep] if self.labels is not None else None
        return ImageList(self.source, [self.items[i] for i in keep], [self.names[i] for i in keep], labels, self.note)


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted, by suffix."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def spread(n: int, limit: int | None) -> np.ndarray:
    """At most ``limit`` indices of ``range(n)``, spread evenly."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def list_folder(images: Path, card: ModelCard, flag: str = "--images") -> ImageList:
    """A flat folder or an ImageFolder; labels when its folder names map onto the card's labels."""
    if not images.is_dir():
        raise UsageError(f"{flag} {images}: no such folder")
    subdirs = sorted(d for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
    labels: list[int] | None = None
    note = None
    if subdirs:
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(images), allow_empty=True)
        paths = [Path(p) for p, _ in folder.samples]
        mapping = folder_label_indices(list(folder.classes), list(card.labels))
        if mapping is None:
            note = "folder names are not the model's labels: accuracy not measured"
            log(f"note: {images}: {note}")
        else:
            labels = [mapping[c] for _, c in folder.samples]
    else:
        paths = image_files(images)
    if not paths:
        raise UsageError(f"{flag} {images}: no image files found")
    return ImageList(str(images), list(paths), [str(p.relative_to(images)) for p in paths], labels, note)


def list_samples() -> ImageList:
    """The bundled sample photos."""
    paths = sample_photo_paths()
    if not paths:
        raise UserError("the bundled sample photos are missing (is scikit-image installed?); pass --images DIR")
    return ImageList(SAMPLES_SOURCE, list(paths), [p.name for p in paths])


def preprocess_all(items: Iterable[Any], names: Sequence[str], card: ModelCard, crops: str) -> np.ndarray:
    """Every image through ``resnet.preprocess``; an unreadable one is a one-line ``UserError`` naming it."""
    batches = []
    for item, name in progress(list(zip(items, names)), "preprocess", total=len(names)):
        try:
            batches.append(resnet.preprocess(item, card, crops=crops))
        except UserError as e:
            raise UserError(f"{item if isinstance(item, Path) else name}: {e}") from None
    return np.concatenate(batches)


def multiscale_all(items: Sequence[Any], names: Sequence[str], card: ModelCard) -> list[list[np.ndarray]]:
    """``resnet.multiscale.multiscale_views`` of each image; an unreadable or oversized one is a one-line error."""
    views = []
    for item, name in zip(items, names):
        try:
            views.append(multiscale_views(item, card))
        except UserError as e:
            raise UserError(f"{item if isinstance(item, Path) else name} (multi-scale views): {e}") from None
    return views


def image_set_from(
    listing: ImageList, card: ModelCard, crops: str = "ten", multiscale: int = MULTISCALE_IMAGES
) -> ImageSet:
    """Preprocess a listing into the gate's ``ImageSet``; the first ``multiscale`` images also as multi-scale views."""
    data = preprocess_all(listing.items, listing.names, card, crops)
    labels = np.asarray(listing.labels, dtype=np.int64) if listing.labels is not None else None
    k = min(max(multiscale, 0), len(listing.items))
    views = multiscale_all(listing.items[:k], listing.names[:k], card)
    sides = multiscale_sides(card) if views else ()
    return ImageSet(listing.source, list(listing.names), data, CROPS[crops], labels, listing.note, views, sides)


def load_image_set(
    images: Path | None,
    card: ModelCard,
    crops: str = "ten",
    limit: int | None = None,
    multiscale: int = MULTISCALE_IMAGES,
) -> ImageSet:
    """The gate's images: bundled sample photos, a flat folder, or an ImageFolder (labels from folder names)."""
    listing = list_samples() if images is None else list_folder(images, card)
    return image_set_from(listing.subset(spread(len(listing.items), limit)), card, crops, multiscale)
