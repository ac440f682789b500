"""Top-1/top-5 error with the shared preprocessing of ``resnet`` (docs/DESIGN.md §3): ten or centre crops per image,
scores = mean of the per-crop softmax; or the paper's multi-scale test (``resnet.multiscale``). Sharded over ranks
without padding, so no image is counted twice."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

import resnet
from resnet import UserError
from resnet.card import ModelCard
from resnet.multiscale import multiscale_probabilities, multiscale_sides, multiscale_views
from resnet.preprocess import topk_indices
from resnet.runtime.crops import MULTISCALE, crop_protocol

from .distributed import DistInfo, all_reduce_sum, shard_indices


class CropDataset(Dataset):
    """Images -> ``resnet.preprocess`` crops ``[k, 3, S, S]`` and a label.

    ``source`` is either ``(uint8 [N, H, W, 3] images, labels)`` held in memory or a list of ``(path, label)``.
    """

    def __init__(self, source: Any, card: ModelCard, crops: str) -> None:
        self.card, self.crops = card, crops
        if isinstance(source, tuple):
            self.images, self.labels = source[0], np.asarray(source[1], dtype=np.int64)
            self.paths = None
        else:
            self.paths = [p for p, _ in source]
            self.labels = np.asarray([y for _, y in source], dtype=np.int64)
            self.images = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        """``(crops, label, "")``, or ``(empty, label, what was wrong)`` for an image that cannot be read."""
        crops, err = self._read(i, lambda image: torch.from_numpy(resnet.preprocess(image, self.card, self.crops)))
        return (torch.zeros(0) if err else crops), int(self.labels[i]), err

    def _read(self, i: int, prepare: Callable[[Any], Any]) -> tuple[Any, str]:
        """``(prepare(image i), "")``, or ``(None, what was wrong)``: reported in the main process as one line
        (an exception raised in a DataLoader worker would reach the user with the worker's traceback)."""
        image = Image.fromarray(self.images[i]) if self.images is not None else self.paths[i]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's warnings about damaged files: the error says it
                return prepare(image), ""
        except UserError as e:
            return None, f"{self.paths[i] if self.paths else f'image {i}'}: {e}"


class EvaluationImageError(UserError):
    """An evaluation image that cannot be decoded (exit code 1)."""


def collate_crops(batch: list[tuple[torch.Tensor, int, str]]) -> tuple[Any, Any, list[str]]:
    """Stack a batch of ``CropDataset`` items; a batch holding unreadable images yields only their errors."""
    bad = [err for _, _, err in batch if err]
    if bad:
        return None, None, bad
    return torch.stack([c for c, _, _ in batch]), torch.as_tensor([y for _, y, _ in batch]), []


def topk_errors(probs: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """Number of top-1 and top-5 mistakes in ``[N, C]`` probabilities."""
    k = min(5, probs.shape[1])
    top = topk_indices(probs, k)
    wrong1 = int((top[:, 0] != labels).sum())
    wrong5 = int((~(top == labels[:, None]).any(axis=1)).sum())
    return wrong1, wrong5


def check_readable(bad: list[str]) -> None:
    """``EvaluationImageError`` naming the first unreadable image of a batch (and how many more)."""
    if bad:
        raise EvaluationImageError(f"{bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))


def shard_loader(
    dataset: Dataset, info: DistInfo, batch_images: int, workers: int, collate: Callable[[list], Any]
) -> DataLoader:
    """This rank's share of ``dataset`` (no padding: no image counted twice), in batches of ``batch_images``."""
    shard = Subset(dataset, shard_indices(len(dataset), info))
    pin = info.device.type == "cuda"
    return DataLoader(shard, batch_size=batch_images, num_workers=workers, pin_memory=pin, collate_fn=collate)


def error_rates(wrong1: int, wrong5: int, n: int, info: DistInfo) -> dict[str, Any]:
    """Top-1/top-5 error in percent over every rank (all-reduced), and the image count."""
    wrong1, wrong5, n = all_reduce_sum([wrong1, wrong5, n], info)
    n = int(n)
    return {
        "top1_err": round(100.0 * wrong1 / max(n, 1), 3),
        "top5_err": round(100.0 * wrong5 / max(n, 1), 3),
        "images": n,
    }


@torch.no_grad()
def evaluate_crops(
    model: torch.nn.Module,
    dataset: CropDataset,
    info: DistInfo,
    batch_images: int = 50,
    workers: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 error (percent) of ``model`` on ``dataset``; every rank gets the same all-reduced numbers."""
    model.eval()
    wrong1 = wrong5 = n = 0
    for crops, labels, bad in shard_loader(dataset, info, batch_images, workers, collate_crops):
        check_readable(bad)
        b, k = crops.shape[:2]
        x = crops.reshape(b * k, *crops.shape[2:]).to(info.device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
        probs = resnet.crop_probabilities(logits.float().cpu().numpy(), k)
        w1, w5 = topk_errors(probs, labels.numpy())
        wrong1, wrong5, n = wrong1 + w1, wrong5 + w5, n + b
        if on_batch is not None:
            on_batch(b)
    return error_rates(wrong1, wrong5, n, info)


def protocol_name(crops: str, n_images: int, what: str) -> str:
    """The card's ``metrics.protocol`` text, e.g. ``"10-crop, sklearn digits test split (360 images)"``."""
    return crop_protocol(crops).describe(n_images, what)


class MultiScaleDataset(CropDataset):
    """Images -> ``resnet.multiscale.multiscale_views``: one float32 ``[2, 3, H, W]`` array per side, and a label."""

    def __init__(self, source: Any, card: ModelCard, sides: tuple[int, ...] | None = None) -> None:
        super().__init__(source, card, "center")
        self.sides = multiscale_sides(card, sides)

    def __getitem__(self, i: int) -> tuple[list[np.ndarray], int, str]:  # type: ignore[override]
        """``(views, label, "")``, or ``(None, label, what was wrong)`` for an image that cannot be read."""
        views, err = self._read(i, lambda image: multiscale_views(image, self.card, self.sides))
        return views, int(self.labels[i]), err


def _as_list(batch: list) -> list:
    """DataLoader collate that keeps the items as they are (views of different images differ in shape)."""
    return batch


def multiscale_batch_probabilities(
    model: torch.nn.Module,
    views: list[list[np.ndarray]],
    device: torch.device,
    max_views: int = 64,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
) -> np.ndarray:
    """``[n, C]`` multi-scale probabilities of n images' views: views of equal shape run together (at most
    ``max_views`` per forward pass), then each image's logits go through ``resnet.multiscale.multiscale_probabilities``."""
    groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for i, per_side in enumerate(views):
        for s, v in enumerate(per_side):
            groups.setdefault(tuple(v.shape), []).append((i, s))
    logits: list[list[Any]] = [[None] * len(per_side) for per_side in views]
    for members in groups.values():
        x_all = np.concatenate([views[i][s] for i, s in members])
        outs = []
        for start in range(0, len(x_all), max_views):
            x = torch.from_numpy(x_all[start : start + max_views]).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                outs.append(model(x).float().cpu().numpy())
        out = np.concatenate(outs)
        offset = 0
        for i, s in members:
            k = len(views[i][s])
            logits[i][s], offset = out[offset : offset + k], offset + k
    return np.concatenate([multiscale_probabilities(per_image) for per_image in logits])


@torch.no_grad()
def evaluate_multiscale(
    model: torch.nn.Module,
    dataset: MultiScaleDataset,
    info: DistInfo,
    batch_images: int = 32,
    workers: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Top-1/top-5 error (percent) with the paper's multi-scale test; same sharding and result as ``evaluate_crops``."""
    model.eval()
    wrong1 = wrong5 = n = 0
    for batch in shard_loader(dataset, info, batch_images, workers, _as_list):
        check_readable([err for _, _, err in batch if err])
        probs = multiscale_batch_probabilities(
            model, [v for v, _, _ in batch], info.device, 2 * batch_images, autocast, channels_last
        )
        w1, w5 = topk_errors(probs, np.asarray([y for _, y, _ in batch], dtype=np.int64))
        wrong1, wrong5, n = wrong1 + w1, wrong5 + w5, n + len(batch)
    return error_rates(wrong1, wrong5, n, info)


def multiscale_protocol_name(sides: tuple[int, ...], n_images: int, what: str) -> str:
    """``metrics.protocol`` text of the multi-scale test, e.g. ``"multi-scale 32/40/48 + flips, digits ... (360 images)"``."""
    return crop_protocol(MULTISCALE).describe(n_images, what, sides)
