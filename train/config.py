"""``TrainConfig``: everything a training run is told. The command line is generated from it; code can build one::

    from train.config import TrainConfig
    from train.loop import train_main

    train_main(TrainConfig(family="cifar", dataset="digits", depth=8, max_iters=100, out="runs/r8"))  # 0 when done

Each field's metadata (help, choices, the parser of its value, its group) is the single source of the
``train.cifar`` / ``train.imagenet`` options (``train.cli``), as ``serve.settings.Settings`` is for the server.
``None`` means "the recipe's value" for every recipe override (``train/recipes.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import resnet
from resnet import UsageError
from resnet.dataclass_cli import option
from resnet.runtime.crops import FIXED_CROPS
from resnet.runtime.kinds import TORCH_PRECISIONS

from .recipes import RECIPES, Recipe, cifar_recipe_for_depth

# Option groups of ``--help``, in order; each field names its own.
DATA = "data and network"
RECIPE = "recipe overrides (default: the recipe's value)"
RUN = "run folder"
SPEED = "speed and reproducibility"
GROUPS = (DATA, RECIPE, RUN, SPEED)


def milestones_arg(text: str) -> tuple[int, ...]:
    """``32000,48000`` -> ``(32000, 48000)``; positive iterations only."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"milestones must be comma-separated iterations, not {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("milestones must be positive iterations")
    return values


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return v


def nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, not {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, not {text!r}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return v


def _opt(
    default: Any,
    group: str,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
) -> Any:
    """A field that is also a command-line option (``resnet.dataclass_cli``): ``x_y`` is ``--x-y``."""
    return option(default, help, parse=parse, choices=choices, group=group, metavar=metavar)


@dataclass(frozen=True)
class TrainConfig:
    """One training run's settings; field names are the command line's options (``--max-iters`` -> max_iters)."""

    # "cifar" (6n+2 networks, train.cifar) or "imagenet" (18..152, train.imagenet): the command, not an option
    family: str = field(default="cifar", metadata={"choices": ("cifar", "imagenet")})
    # data and network
    dataset: str = _opt(  # the command line's default is its family's dataset (train.cli)
        "digits",
        DATA,
        "imagenet: ImageFolder DIR/train, DIR/val; cifar: cifar-10-batches-py; "
        "digits: scikit-learn's bundled handwritten digits (no download)",
        choices=tuple(sorted(RECIPES)),
    )
    data: str | None = _opt(None, DATA, "dataset folder (not needed for --dataset digits)", metavar="DIR")
    depth: int | None = _opt(None, DATA, "network depth ({depths}); default: the recipe's", parse=int)
    plain: bool = _opt(False, DATA, "the paper's plain (no shortcut) counterpart")
    shortcut: str | None = _opt(
        None,
        DATA,
        "shortcut option: A zero-pad identity, B projection on change, C all projections "
        "(default: A for CIFAR nets, B for ImageNet nets)",
        parse=str.upper,
        choices=("A", "B", "C"),
    )
    variant: str = _opt(
        "v1.5",
        DATA,
        "bottleneck stride in the first 1x1 (v1, paper) or the 3x3 (v1.5, torchvision)",
        choices=("v1", "v1.5"),
    )
    zero_init_residual: bool = _opt(False, DATA, "zero-init the last BN of each block")
    input_size: int | None = _opt(
        None,
        DATA,
        "ImageFolder crop size (default 224; the resize range [256, 480] scales with it)",
        parse=positive_int,
    )
    train_limit: int | None = _opt(
        None,
        DATA,
        "train on the first N images of the training split only (smoke tests, learning curves)",
        parse=positive_int,
    )
    val_size: int | None = _opt(
        None,
        DATA,
        "images held out of the training split for validation (CIFAR: 5000; digits: 144)",
        parse=nonneg_int,
    )
    # recipe overrides
    batch_size: int | None = _opt(None, RECIPE, "global mini-batch, split over ranks", parse=positive_int)
    lr: float | None = _opt(
        None,
        RECIPE,
        "learning rate; default: the recipe's, scaled linearly with the global batch",
        parse=positive_float,
    )
    momentum: float | None = _opt(None, RECIPE, "SGD momentum", parse=float)
    weight_decay: float | None = _opt(None, RECIPE, "L2 weight decay", parse=float)
    max_iters: int | None = _opt(None, RECIPE, "iterations to train", parse=positive_int)
    milestones: tuple[int, ...] | None = _opt(
        None, RECIPE, "iterations where lr /= 10, e.g. 32000,48000", parse=milestones_arg
    )
    plateau: bool | None = _opt(None, RECIPE, "divide lr by 10 when validation error plateaus (ImageNet default)")
    warmup_lr: float | None = _opt(
        None,
        RECIPE,
        "warm up at this lr until training error < 80%% (default 0.01 for CIFAR depth >= 110)",
        parse=positive_float,
    )
    flip: bool | None = _opt(None, RECIPE, "random horizontal flips")
    eval_every: int | None = _opt(None, RECIPE, "iterations between validations (0: each epoch)", parse=nonneg_int)
    label_smoothing: float | None = _opt(None, RECIPE, "label smoothing (paper: 0)", parse=float)
    # run folder
    out: str | None = _opt(None, RUN, "run folder (default: runs/<dataset>-<model>)", metavar="DIR")
    resume: str | None = _opt(
        None, RUN, "training state to resume from (default: <out>/last.pt when it exists)", metavar="PATH"
    )
    no_resume: bool = _opt(False, RUN, "start afresh even if <out>/last.pt exists")
    save_every: int = _opt(
        500, RUN, "write last.pt every N iterations (and at every epoch end); 0: epochs only", parse=nonneg_int
    )
    stop_at_iter: int | None = _opt(
        None,
        RUN,
        "save last.pt and exit after this iteration, as a preempted run would (job time slots)",
        parse=positive_int,
    )
    eval_crops: str = _opt(
        "ten",
        RUN,
        "final test evaluation crops (shared preprocessing); recorded in the card",
        choices=tuple(FIXED_CROPS),
    )
    # speed and reproducibility
    device: str = _opt("auto", SPEED, "auto: CUDA when present", choices=("auto", "cpu", "cuda"))
    amp: str = _opt(
        "auto",
        SPEED,
        "mixed precision; auto: bf16 (or fp16 + GradScaler) on GPU; on CPU whichever of fp32 and bf16 trains "
        "faster in a few timed steps of this network at this batch shape on this machine (logged; kept on resume)",
        choices=("auto", "off", *(p for p in TORCH_PRECISIONS if p != "fp32")),  # off: fp32
    )
    channels_last: bool | None = _opt(
        None, SPEED, "channels_last memory format (default: on for GPU, and on CPU with bf16: measured 1.2x there)"
    )
    compile: bool = _opt(False, SPEED, "torch.compile the model")
    sync_bn: bool = _opt(False, SPEED, "SyncBatchNorm across ranks (GPU only)")
    workers: int | None = _opt(
        None,
        SPEED,
        "DataLoader worker processes (default: 0 for in-memory data, min(8, CPUs) for folders)",
        parse=nonneg_int,
    )
    threads: int | None = _opt(None, SPEED, "intra-op CPU threads (torch.set_num_threads)", parse=positive_int)
    seed: int = _opt(0, SPEED, "random seed (init, sampling, augmentation)", parse=int)
    deterministic: bool = _opt(False, SPEED, "deterministic algorithms only (bitwise repeatable on CPU; slower on GPU)")
    log_every: int = _opt(20, SPEED, "iterations between log lines", parse=positive_int)
    progress: str = _opt(
        "auto", SPEED, "tqdm bar on a terminal (auto) or plain lines", choices=("auto", "bar", "lines")
    )
    no_tensorboard: bool = _opt(False, SPEED, "do not write TensorBoard scalars")

    def __post_init__(self) -> None:
        if self.dataset not in RECIPES:
            raise UsageError(f"unknown dataset {self.dataset!r} (known: {', '.join(sorted(RECIPES))})")
        if self.shortcut is not None and self.shortcut not in ("A", "B", "C"):
            raise UsageError(f"shortcut must be A, B or C, not {self.shortcut!r}")
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("choices")
            if allowed and f.name != "shortcut" and getattr(self, f.name) not in allowed:
                raise UsageError(f"{f.name} must be one of {', '.join(allowed)}, not {getattr(self, f.name)!r}")

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
