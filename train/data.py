"""Datasets for training and evaluation: digits and CIFAR-10 held in memory, ImageNet-style folders on disk.

In-memory datasets (digits, CIFAR) yield uint8 ``[3, 32, 32]`` images; their augmentation runs on whole batches on
the training device (``augment.py``), seeded by iteration so a resumed run sees exactly the same batches.
Folder datasets (ImageNet) decode and augment per image in DataLoader workers (torchvision transforms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from resnet import IMAGE_SUFFIXES, UsageError, UserError
from resnet.card import CIFAR10_LABELS, CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD
from resnet.samples import DIGIT_LABELS, digits_images

from .cifar_pickle import load_batch, load_label_names
from .distributed import DistInfo, worker_init_fn


class DataError(UserError):
    """A missing, malformed or empty data folder (exit code 1)."""


class ArrayDataset(Dataset):
    """uint8 images ``[N, 3, H, W]`` and int64 labels ``[N]`` in memory."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        self.images = torch.as_tensor(images, dtype=torch.uint8)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one indexing operation (DataLoader uses this when present)."""
        t = torch.as_tensor(idx, dtype=torch.long)
        return self.images[t], self.labels[t]


def collate_batch(batch: Any) -> Any:
    """Collate for ``ArrayDataset.__getitems__`` (already a batch) and for per-item datasets alike."""
    if isinstance(batch, tuple):
        return batch
    return torch.utils.data.default_collate(batch)


@dataclass
class DataBundle:
    """Everything the trainer needs to know about a dataset."""

    name: str
    kind: str  # "array" or "folder"
    train: Dataset
    val: Dataset
    test: Dataset | None  # final evaluation set (the paper's test set; ImageNet: the val folder)
    labels: list[str]
    mean: list[float]
    std: list[float]
    input_size: int
    resize_size: int
    description: str
    test_source: Any = None  # what evaluation preprocesses: (uint8 NHWC images, labels) or an ImageFolder
    val_source: Any = None  # what validation preprocesses (centre crop): (uint8 NHWC images, labels) or (path, label)s
    extra: dict[str, Any] = field(default_factory=dict)


def stratified_holdout(labels: np.ndarray, n_val: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, val) with ``n_val`` validation samples stratified by class, fixed by ``seed``."""
    if n_val <= 0:
        return np.arange(len(labels)), np.arange(0)
    if n_val >= len(labels):
        raise UsageError(f"--val-size {n_val} leaves no training data (the split has {len(labels)} images)")
    from sklearn.model_selection import train_test_split

    idx_train, idx_val = train_test_split(np.arange(len(labels)), test_size=n_val, random_state=seed, stratify=labels)
    return np.sort(idx_train), np.sort(idx_val)


def channel_stats(images_nhwc: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in [0, 1]."""
    x = images_nhwc.reshape(-1, images_nhwc.shape[-1]).astype(np.float64) / 255.0
    return x.mean(axis=0).tolist(), x.std(axis=0, ddof=1).tolist()


def load_digits(val_size: int) -> DataBundle:
    """scikit-learn's digits: the fixed train/test split of ``resnet.samples``; ``val_size`` held out of train."""
    x, y = digits_images("train")
    xt, yt = digits_images("test")
    mean, std = channel_stats(x)
    tr, va = stratified_holdout(y, val_size)
    nchw = x.transpose(0, 3, 1, 2)
    return DataBundle(
        name="digits",
        kind="array",
        train=ArrayDataset(nchw[tr], y[tr]),
        val=ArrayDataset(nchw[va], y[va]),
        test=ArrayDataset(xt.transpose(0, 3, 1, 2), yt),
        labels=list(DIGIT_LABELS),
        mean=mean,
        std=std,
        input_size=32,
        resize_size=32,
        test_source=(xt, yt),
        val_source=(x[va], y[va]),
        description=f"sklearn digits 32x32 (train {len(tr)}, val {len(va)}, test {len(yt)})",
    )


def find_cifar_folder(data: str | Path) -> Path:
    """``DIR`` or ``DIR/cifar-10-batches-py`` holding ``data_batch_1..5`` and ``test_batch``."""
    root = Path(data)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file():
            missing = [n for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if not (cand / n).is_file()]
            if missing:
                raise DataError(f"{cand} is not a complete CIFAR-10 folder: missing {', '.join(missing)}")
            return cand
    raise DataError(f"{root} has no CIFAR-10 python batches (expected cifar-10-batches-py/data_batch_1..5, test_batch)")


def load_cifar(data: str | Path, val_size: int) -> DataBundle:
    """The standard ``cifar-10-batches-py`` folder; ``val_size`` (5k in the paper) held out of the 50k."""
    folder = find_cifar_folder(data)
    batches = [load_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x = np.concatenate([b["data"] for b in batches])
    y = np.concatenate([b["labels"] for b in batches])
    test = load_batch(folder / "test_batch")
    labels = load_label_names(folder / "batches.meta") or list(CIFAR10_LABELS)
    if y.max(initial=0) >= len(labels) or test["labels"].max(initial=0) >= len(labels):
        raise DataError(f"{folder}: labels go beyond the {len(labels)} class names")
    tr, va = stratified_holdout(y, val_size)
    return DataBundle(
        name="cifar",
        kind="array",
        train=ArrayDataset(x[tr], y[tr]),
        val=ArrayDataset(x[va], y[va]),
        test=ArrayDataset(test["data"], test["labels"]),
        labels=labels,
        mean=list(CIFAR_MEAN),
        std=list(CIFAR_STD),
        input_size=32,
        resize_size=32,
        test_source=(test["data"].transpose(0, 2, 3, 1), test["labels"]),
        val_source=(x[va].transpose(0, 2, 3, 1), y[va]),
        description=f"CIFAR-10 {folder} (train {len(tr)}, val {len(va)}, test {len(test['labels'])})",
    )


def check_image_folder(root: Path) -> list[str]:
    """Class folder names of an ImageFolder root; raise ``DataError`` for a missing root or an empty class."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    for c in classes:
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in (root / c).rglob("*") if p.is_file()):
            raise DataError(f"class folder {root / c} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return classes


def load_imagefolder(
    data: str | Path, train_size: int = 224, resize_range: tuple[int, int] = (256, 480), eval_resize: int = 256
) -> DataBundle:
    """``DIR/train`` and ``DIR/val`` in torchvision ImageFolder layout, with the paper's ImageNet augmentation."""
    from torchvision.datasets import ImageFolder

    from .augment import imagenet_train_transform

    root = Path(data)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataError(f"{root} needs train/ and val/ class folders (ImageFolder layout); {root / sub} is missing")
    classes = check_image_folder(root / "train")
    val_classes = check_image_folder(root / "val")
    if val_classes != classes:
        extra = sorted(set(val_classes) ^ set(classes))
        raise DataError(f"train/ and val/ have different classes: {', '.join(extra[:5])}")
    try:
        train = ImageFolder(str(root / "train"), transform=imagenet_train_transform(train_size, resize_range))
        val = ImageFolder(str(root / "val"))  # decoded by resnet.preprocess (validation, final test)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"cannot read {root}: {e}") from None
    return DataBundle(
        name="imagefolder",
        kind="folder",
        train=train,
        val=val,
        test=val,
        labels=classes,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        input_size=train_size,
        resize_size=eval_resize,
        test_source=val,
        val_source=val.samples,
        description=f"ImageFolder {root} ({len(classes)} classes, train {len(train)}, val {len(val)})",
    )


def load_data(
    dataset: str, data: str | None, val_size: int, input_size: int | None = None, train_limit: int | None = None
) -> DataBundle:
    bundle = _load_data(dataset, data, val_size, input_size)
    if train_limit is not None and train_limit < len(bundle.train):
        bundle.train = torch.utils.data.Subset(bundle.train, range(train_limit))
        bundle.description += f", first {train_limit} training images only"
    return bundle


def _load_data(dataset: str, data: str | None, val_size: int, input_size: int | None = None) -> DataBundle:
    """Dispatch on ``--dataset``: ``digits`` (bundled), ``cifar`` (``--data`` folder), ``imagenet`` (``--data``).

    ``input_size`` (ImageNet only, default 224) scales the paper's sizes: resize range [256, 480] and eval resize 256
    become ``input_size`` x 256/224 and x 480/224.
    """
    if input_size is not None and dataset != "imagenet":
        raise UsageError(f"--input-size applies to ImageFolder data only; {dataset} images are 32x32")
    if dataset == "digits":
        return load_digits(val_size)
    if not data:
        raise UsageError(f"--data DIR is required for --dataset {dataset} (or use --dataset digits: no download)")
    if dataset == "cifar":
        return load_cifar(data, val_size)
    if dataset == "imagenet":
        size = input_size or 224
        return load_imagefolder(data, size, (round(256 * size / 224), round(480 * size / 224)), round(256 * size / 224))
    raise UsageError(f"unknown dataset {dataset!r}")


def train_loader(
    dataset: Dataset, sampler: Any, per_rank_batch: int, workers: int, info: DistInfo, seed: int
) -> DataLoader:
    """The training DataLoader: the resumable sampler's order, whole batches, seeded workers."""
    return DataLoader(
        dataset,
        batch_size=per_rank_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=collate_batch,
        worker_init_fn=worker_init_fn if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed + info.rank),
    )
