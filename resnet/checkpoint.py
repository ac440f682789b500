"""Checkpoint I/O (DESIGN.md §2): atomic writes, ``weights_only`` loads, clear errors, torchvision state dicts."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write
from .card import ModelCard, make_card
from .errors import CheckpointError, UsageError
from .registry import create_model, parse_model_name

FORMAT = "resnet-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename: a reader never sees half a file."""
    return atomic_write(path, lambda f: torch.save(obj, f), error=CheckpointError)


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, card: ModelCard) -> Path:
    """Write ``{"format", "version", "model_card", "state_dict"}`` atomically; tensors are moved to the CPU."""
    if not isinstance(card, ModelCard):
        raise TypeError(f"save_checkpoint needs a ModelCard, not {type(card).__name__}")
    model = unwrap(model)
    state_dict = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    obj = {"format": FORMAT, "version": VERSION, "model_card": card.to_dict(), "state_dict": state_dict}
    return atomic_save(obj, path)


def read_checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` with every failure turned into a one-line ``CheckpointError``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such file: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{path} refused: it holds Python objects that need code execution to load (weights_only=True)"
            ) from None
        raise CheckpointError(f"{path} is corrupt or not a checkpoint: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({msg})") from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load a state dict, naming missing, unexpected and mis-shaped keys in one clear ``CheckpointError``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:

        def head(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch: {head(shapes)}")
        raise CheckpointError(f"state dict does not match {what}: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers, in any order."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        inner = inner if isinstance(inner, nn.Module) else getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_from_card(card: ModelCard) -> nn.Module:
    """An untrained network of the architecture a card describes."""
    return create_model(card.spec.name, num_classes=card.num_classes, variant=card.variant, shortcut=card.shortcut)


def read_checkpoint_card(path: str | os.PathLike[str]) -> ModelCard:
    """The card of one of our checkpoints (no network is built)."""
    obj = read_checkpoint_file(path)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        raise CheckpointError(f"{path} is not a resnet checkpoint with a model card")
    return ModelCard.from_dict(obj.get("model_card"))


def load_checkpoint(path: str | os.PathLike[str], arch: str | None = None) -> tuple[nn.Module, ModelCard]:
    """Load ``(model, card)`` from our checkpoint, or from a plain torchvision state dict when ``arch`` is given.

    The model is on the CPU in eval mode. Errors are ``CheckpointError``/``UsageError`` with one clear line.
    """
    obj = read_checkpoint_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise CheckpointError(f"{path}: checkpoint version {obj.get('version')} is not supported (need {VERSION})")
        card = ModelCard.from_dict(obj.get("model_card"))
        if arch is not None and parse_model_name(arch).name != card.spec.name:
            raise UsageError(f"{path} holds a {card.spec.name}, not the {arch} you named")
        model = model_from_card(card)
        state_dict = obj.get("state_dict")
        if not _is_state_dict(state_dict):
            raise CheckpointError(f"{path} has no usable state_dict")
        load_state_dict_strict(model, state_dict, card.spec.name)
    elif _is_state_dict(obj) or (isinstance(obj, dict) and _is_state_dict(obj.get("state_dict"))):
        state_dict = obj if _is_state_dict(obj) else obj["state_dict"]
        if arch is None:
            raise UsageError(
                f"{path} is a plain state dict with no model card; name its architecture (--arch resnet50)"
            )
        spec = parse_model_name(arch)
        num_classes = state_dict["fc.weight"].shape[0] if "fc.weight" in state_dict else None
        card = make_card(
            spec.name, num_classes=num_classes, provenance={"source": str(path), "format": "torchvision state dict"}
        )
        model = model_from_card(card)
        load_state_dict_strict(model, state_dict, spec.name)
    else:
        raise CheckpointError(f"{path} is not a resnet checkpoint or a state dict")
    model.eval()
    return model, card
