"""The ResNet paper's networks and the contracts every stage shares (DESIGN.md): model card, checkpoints,
ten-crop preprocessing."""

from .card import make_card, validate_card
from .checkpoint import atomic_save, load_checkpoint, model_from_card, save_checkpoint
from .errors import (
    CardError,
    CheckpointError,
    MissingComponentError,
    ParityError,
    UsageError,
    UserError,
    run_cli,
)
from .models import BasicBlock, Bottleneck, CifarResNet, ResNet
from .preprocess import crop_probabilities, decode_image, preprocess, topk
from .registry import create_model, list_models, parse_model_name

__all__ = [
    "BasicBlock", "Bottleneck", "CardError", "CheckpointError", "CifarResNet", "MissingComponentError",
    "ParityError", "ResNet", "UsageError", "UserError", "atomic_save", "create_model", "crop_probabilities",
    "decode_image", "list_models", "load_checkpoint", "make_card", "model_from_card", "parse_model_name",
    "preprocess", "run_cli", "save_checkpoint", "topk", "validate_card",
]  # fmt: skip
