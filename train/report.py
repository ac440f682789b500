"""The end of a run: the final test evaluation (shared preprocessing, fp32 as export and serve run it) and
``summary.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from resnet.atomic import atomic_write
from resnet.card import ModelCard
from resnet.runtime.crops import crop_protocol

from .data import DataBundle
from .distributed import DistInfo
from .evaluation import CropDataset, evaluate_crops, protocol_name


def final_test(
    model: torch.nn.Module, data: DataBundle, card: ModelCard, info: DistInfo, crops: str, channels_last: bool
) -> dict[str, Any]:
    """``{"top1_err", "top5_err", "images", "protocol"}`` on the dataset's test set; empty when it has none."""
    source = data.test_source
    if source is None:
        return {}
    if not isinstance(source, tuple):  # an ImageFolder: (path, class index) pairs
        source = source.samples
    res = evaluate_crops(
        model,
        CropDataset(source, card, crops),
        info,
        batch_images=max(1, 400 // (crop_protocol(crops).crops or 1)),
        channels_last=channels_last,
    )
    what = "validation folder" if data.kind == "folder" else f"{data.name} test split"
    return {**res, "protocol": protocol_name(crops, res["images"], what)}


def write_summary(
    out: Path,
    model_path: Path,
    card: ModelCard,
    step: int,
    best_val_err: float,
    info: DistInfo,
    digests: list[str],
    t0: float,
) -> Path:
    """``summary.json``: where the model is, its metrics, and whether every rank ended with the same weights."""
    summary = {
        "model": str(model_path),
        "card_name": card.name,
        "iterations": step,
        "metrics": dict(card.metrics),
        "best_val_top1_err": best_val_err,
        "world_size": info.world_size,
        "replica_weight_digests": digests,
        "replicas_identical": len(set(digests)) == 1,
        "train_seconds": round(time.time() - t0, 1),
    }
    return atomic_write(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
