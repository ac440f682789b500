"""Real demo data that ships with our dependencies: scikit-image's sample photos and scikit-learn's digits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

# Colour photos, a portrait (rocket, read rotated), a grayscale and an RGBA image, as real JPEG/PNG files.
SAMPLE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "camera.png",
    "coins.png",
    "logo.png",
)
DIGIT_LABELS = tuple(str(i) for i in range(10))
DIGITS_SIZE = 32


def skimage_data_dir() -> Path:
    """The folder of scikit-image's bundled sample images."""
    import skimage.data

    return Path(os.path.dirname(skimage.data.__file__))


def sample_photo_paths() -> list[Path]:
    """Paths of the bundled sample photos (real encoded files; nothing is downloaded)."""
    folder = skimage_data_dir()
    return [folder / name for name in SAMPLE_PHOTOS if (folder / name).is_file()]


def digits_images(split: str = "all", test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits as ``[N, 32, 32, 3]`` uint8 images and ``[N]`` int64 labels.

    ``split`` is ``"train"``, ``"test"`` or ``"all"``; the split is stratified and fixed by ``seed`` so every stage
    agrees on which digits were held out.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack(
        [
            np.asarray(
                Image.fromarray(g, "L").resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BILINEAR).convert("RGB")
            )
            for g in grey
        ]
    )
    labels = digits.target.astype(np.int64)
    if split == "all":
        return images, labels
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    if split not in ("train", "test"):
        raise ValueError(f"split must be train, test or all, not {split!r}")
    idx = idx_train if split == "train" else idx_test
    return images[idx], labels[idx]


def write_digits_imagefolder(root: str | os.PathLike[str], split: str = "test", limit: int | None = None) -> Path:
    """Write digits as PNG files in ImageFolder layout ``root/<label>/<n>.png``; returns ``root``."""
    root = Path(root)
    images, labels = digits_images(split)
    for n, (img, label) in enumerate(zip(images, labels)):
        if limit is not None and n >= limit:
            break
        folder = root / DIGIT_LABELS[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{n:04d}.png")
    return root
