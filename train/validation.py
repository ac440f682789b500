"""Validation during training: loss and centre-crop top-1/top-5 error on the held-out split.

Images go through ``resnet.preprocess`` (``crops="center"``), the preprocessing that the final test, export and
serving use, so validation figures and the card's metrics come from one path. Sharded over ranks without padding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

import resnet
from resnet.card import ModelCard

from .distributed import DistInfo, all_reduce_sum, shard_indices
from .evaluation import CropDataset, EvaluationImageError, collate_crops, topk_errors


@torch.no_grad()
def validation_errors(
    model: torch.nn.Module,
    source: Any,
    card: ModelCard,
    info: DistInfo,
    *,
    batch_images: int,
    workers: int = 0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    channels_last: bool = False,
) -> dict[str, Any]:
    """``{"loss", "top1_err", "top5_err", "images"}`` of ``model`` (eval mode) on ``source``, all-reduced.

    ``source`` is ``(uint8 [N, H, W, 3] images, labels)`` or a list of ``(path, label)``; errors are in percent.
    """
    dataset = CropDataset(source, card, "center")
    shard = Subset(dataset, shard_indices(len(dataset), info))
    loader = DataLoader(shard, batch_size=batch_images, num_workers=workers, collate_fn=collate_crops)
    loss_sum = wrong1 = wrong5 = images = 0.0
    for crops, labels, bad in loader:
        if bad:
            raise EvaluationImageError(bad[0])
        x = crops[:, 0].to(info.device, non_blocking=True)  # the one centre crop of each image
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, labels.to(info.device), reduction="sum").item()
        w1, w5 = topk_errors(resnet.crop_probabilities(logits.cpu().numpy(), 1), labels.numpy())
        wrong1, wrong5, images = wrong1 + w1, wrong5 + w5, images + len(labels)
    loss_sum, wrong1, wrong5, images = all_reduce_sum([loss_sum, wrong1, wrong5, images], info)
    n = max(images, 1.0)
    return {
        "loss": loss_sum / n,
        "top1_err": 100.0 * wrong1 / n,
        "top5_err": 100.0 * wrong5 / n,
        "images": int(images),
    }
