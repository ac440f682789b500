"""The training state file ``last.pt`` (docs/DESIGN.md §2): everything an exact resume needs, written atomically.

It loads with ``torch.load(weights_only=True)``: only tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

import resnet
from resnet import CheckpointError, UsageError, UserError
from resnet.card import ModelCard
from resnet.checkpoint import load_state_dict_strict, read_checkpoint_file

STATE_FORMAT = "resnet-train-state"
STATE_VERSION = 1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    scaler: Any,
    step: int,
    epoch: int,
    sampler_start: int,
    best_val_err: float,
    card: ModelCard,
    args: dict[str, Any],
) -> Path:
    """Write the full training state atomically (temp file, fsync, rename) via ``resnet.atomic_save``."""
    model = resnet.unwrap(model)
    return resnet.atomic_save(
        {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": step,
            "epoch": epoch,
            "sampler": {"epoch": epoch, "start": sampler_start},
            "best_val_err": best_val_err,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "model_card": card.to_dict(),
            "args_json": json.dumps(args, default=str),
        },
        path,
    )


def load_state(path: Path) -> dict[str, Any]:
    """Read ``last.pt`` (weights_only); one-line ``CheckpointError``/``CardError`` when it is not a usable state."""
    obj = read_checkpoint_file(path)
    # Types before values: a damaged file may hold a tensor (of any size) where a string or a number belongs, and
    # comparing that raises RuntimeError instead of answering.
    if not isinstance(obj, dict) or type(obj.get("format")) is not str or obj["format"] != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a training state file (format {STATE_FORMAT!r})")
    version = obj.get("version")
    if type(version) is not int or version != STATE_VERSION:
        shown = f"a {type(version).__name__}" if isinstance(version, torch.Tensor) else repr(version)[:20]
        raise CheckpointError(f"{path}: training state version {shown} is not supported (need {STATE_VERSION})")
    wrong = [key for key, kind in _FIELDS.items() if not isinstance(obj.get(key), kind)]
    if wrong or not isinstance(obj["rng"].get("torch"), torch.Tensor):
        raise CheckpointError(
            f"{path} is a damaged training state: {', '.join(wrong) or 'rng'} missing or of the wrong type"
        )
    obj["model_card"] = ModelCard.from_dict(obj.get("model_card"))
    return obj


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int,
    "epoch": int,
    "best_val_err": (int, float),
    "model": dict,
    "optimizer": dict,
    "schedule": dict,
    "scaler": dict,
    "rng": dict,
}


def restore(
    path: Path, st: dict[str, Any], *, model: torch.nn.Module, optimizer: Any, schedule: Any, scaler: Any
) -> None:
    """Put a loaded state into a run's objects; anything that does not fit is one ``CheckpointError`` line."""
    load_state_dict_strict(model, st["model"], f"this run's {st['model_card'].spec.name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer.load_state_dict(st["optimizer"])
            schedule.load_state_dict(st["schedule"])
            scaler.load_state_dict(st["scaler"])
            set_rng_state(st["rng"])
    except Exception as e:  # a damaged file: torch raises ValueError, KeyError, RuntimeError, TypeError ...
        raise CheckpointError(f"{path} is a damaged training state ({type(e).__name__}: {str(e)[:80]})") from None


def recorded_args(state: dict[str, Any] | None) -> dict[str, Any]:
    """The run arguments a training state recorded (``args_json``); empty when absent or unreadable."""
    text = state.get("args_json") if state else None
    try:
        args = json.loads(text) if isinstance(text, str) else {}
    except (ValueError, RecursionError):
        return {}
    return args if isinstance(args, dict) else {}


def read_resume_state(path: Path, explicit: bool, no_resume: bool) -> dict[str, Any] | None:
    """The state a run resumes from (``--resume PATH``, else ``<out>/last.pt`` when it exists), or None."""
    if explicit and not path.exists():
        raise UserError(f"--resume {path}: no such file")
    if no_resume or not path.exists():
        return None
    return load_state(path)


def check_same_network(path: Path, state: dict[str, Any], card: ModelCard) -> None:
    """``UsageError`` when a state is a run of another network than ``card`` describes."""
    theirs = state["model_card"]
    if (theirs.arch, theirs.family, theirs.depth, theirs.num_classes) != (
        card.arch,
        card.family,
        card.depth,
        card.num_classes,
    ):
        raise UsageError(f"{path} is a run of {theirs.name}, not {card.name}; choose another --out or pass --no-resume")
