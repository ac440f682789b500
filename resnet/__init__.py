"""The ResNet paper's networks and the contracts every stage shares (docs/DESIGN.md): model card, checkpoints,
ten-crop preprocessing.

Names that need torch are imported lazily (PEP 562), so a light client (``from resnet.errors import UserError``)
does not pay for importing torch. ``preprocess`` (numpy + Pillow only) is bound eagerly so that ``resnet.preprocess``
is always the function, never the module of the same name.
"""

from __future__ import annotations

import importlib
from typing import Any

from .card import ModelCard, make_card
from .errors import (
    CardError,
    CheckpointError,
    MissingComponentError,
    ParityError,
    UsageError,
    UserError,
    run_cli,
)
from .names import list_models, parse_model_name
from .preprocess import (
    IMAGE_SUFFIXES,
    crop_probabilities,
    decode_image,
    folder_label_indices,
    preprocess,
    topk,
    topk_indices,
)

_EXPORTS = {
    "atomic_save": "checkpoint",
    "load_checkpoint": "checkpoint",
    "model_from_card": "checkpoint",
    "save_checkpoint": "checkpoint",
    "unwrap": "checkpoint",
    "load_named": "weights",
    "BasicBlock": "models",
    "Bottleneck": "models",
    "CifarResNet": "models",
    "ResNet": "models",
    "create_model": "registry",
}

__all__ = [
    "IMAGE_SUFFIXES",
    "folder_label_indices",
    "topk_indices",
    "BasicBlock",
    "Bottleneck",
    "CardError",
    "CheckpointError",
    "CifarResNet",
    "MissingComponentError",
    "ModelCard",
    "ParityError",
    "ResNet",
    "UsageError",
    "UserError",
    "atomic_save",
    "create_model",
    "crop_probabilities",
    "decode_image",
    "list_models",
    "load_named",
    "load_checkpoint",
    "make_card",
    "model_from_card",
    "parse_model_name",
    "preprocess",
    "run_cli",
    "save_checkpoint",
    "topk",
    "unwrap",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'resnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
