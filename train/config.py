"""``TrainConfig``: everything a training run is told. The command line builds one; code can build one directly::

    from train.config import TrainConfig
    from train.loop import train

    train(TrainConfig(family="cifar", dataset="digits", depth=8, max_iters=100, out="runs/r8"))

``None`` means "the recipe's value" for every recipe override (``train/recipes.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

import resnet
from resnet import UsageError

from .recipes import RECIPES, Recipe, cifar_recipe_for_depth

_CHOICES = {
    "family": ("cifar", "imagenet"),
    "variant": ("v1", "v1.5"),
    "eval_crops": ("ten", "center"),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("auto", "off", "bf16", "fp16"),
    "progress": ("auto", "bar", "lines"),
}


@dataclass(frozen=True)
class TrainConfig:
    """One training run's settings; field names are the command line's options (``--max-iters`` -> max_iters)."""

    family: str = "cifar"  # "cifar" (6n+2 networks, train.cifar) or "imagenet" (18..152, train.imagenet)
    # data and network
    dataset: str = "digits"
    data: str | None = None
    depth: int | None = None
    plain: bool = False
    shortcut: str | None = None
    variant: str = "v1.5"
    zero_init_residual: bool = False
    input_size: int | None = None
    train_limit: int | None = None
    val_size: int | None = None
    # recipe overrides
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    max_iters: int | None = None
    milestones: tuple[int, ...] | None = None
    plateau: bool | None = None
    warmup_lr: float | None = None
    flip: bool | None = None
    eval_every: int | None = None
    label_smoothing: float | None = None
    # run folder
    out: str | None = None
    resume: str | None = None
    no_resume: bool = False
    save_every: int = 500
    stop_at_iter: int | None = None
    eval_crops: str = "ten"
    # speed and reproducibility
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    sync_bn: bool = False
    workers: int | None = None
    threads: int | None = None
    seed: int = 0
    deterministic: bool = False
    log_every: int = 20
    progress: str = "auto"
    no_tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in RECIPES:
            raise UsageError(f"unknown dataset {self.dataset!r} (known: {', '.join(sorted(RECIPES))})")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if self.shortcut is not None and self.shortcut not in ("A", "B", "C"):
            raise UsageError(f"shortcut must be A, B or C, not {self.shortcut!r}")

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainConfig:
        """The config of a parsed command line (``train.cli``)."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        if values["milestones"] is not None:
            values["milestones"] = tuple(values["milestones"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as recorded in args.json, the card's provenance and the training state."""
        out = dataclasses.asdict(self)
        if out["milestones"] is not None:
            out["milestones"] = list(out["milestones"])
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def resolve_recipe(config: TrainConfig) -> Recipe:
    """The dataset's recipe with the config's overrides; the lr scales linearly with the global batch."""
    base = RECIPES[config.dataset]
    depth = config.depth or base.default_depth
    recipe = cifar_recipe_for_depth(base, depth) if config.family == "cifar" else base
    recipe = recipe.override(
        batch_size=config.batch_size,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        max_iters=config.max_iters,
        milestones=config.milestones,
        plateau=config.plateau,
        warmup_lr=config.warmup_lr,
        val_size=config.val_size,
        flip=config.flip,
        eval_every=config.eval_every,
        label_smoothing=config.label_smoothing,
    )
    lr = config.lr if config.lr is not None else recipe.lr * recipe.batch_size / recipe.lr_ref_batch
    return recipe.override(lr=lr)


def model_name(config: TrainConfig, recipe: Recipe) -> str:
    """``cifar_resnet20``, ``plain34`` ...: the network the config names; ``UsageError`` for a depth the family lacks."""
    depth = config.depth or (
        recipe.default_depth if config.family == recipe.family else (18 if config.family == "imagenet" else 20)
    )
    name = f"{'cifar_' if config.family == 'cifar' else ''}{'plain' if config.plain else 'resnet'}{depth}"
    resnet.parse_model_name(name)
    return name
