"""The paper's training recipes as data: one dataclass per dataset, each number citing where it comes from.

Iterations, not epochs, drive every schedule (the paper counts iterations); ``eval_every`` defaults to one epoch.
Any field can be overridden on the command line (``--lr``, ``--batch-size``, ``--milestones`` ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """Optimisation and augmentation settings of one training recipe."""

    dataset: str
    family: str  # "imagenet" or "cifar": which network family of the paper the recipe trains
    default_depth: int
    batch_size: int  # global batch, split evenly over the ranks
    lr: float  # learning rate at ``lr_ref_batch``; scaled linearly with the global batch (Goyal et al. 2017)
    lr_ref_batch: int
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_iters: int = 64_000
    milestones: tuple[int, ...] = ()  # iterations at which the lr is divided by 10
    plateau: bool = False  # divide by 10 when the validation error stops improving
    plateau_patience: int = 3  # evaluations without improvement before a plateau drop
    warmup_lr: float | None = None  # train at this lr until the training error falls below warmup_until_err
    warmup_until_err: float = 80.0
    warmup_max_iters: int = 400
    val_size: int = 0  # held out of the training split for validation (0: use the dataset's own val split)
    augment: str = "cifar"  # "cifar": pad 4 + random crop + flip; "imagenet": scale aug + crop + flip + lighting
    flip: bool = True
    eval_every: int = 0  # iterations between validations; 0 = once per epoch
    label_smoothing: float = 0.0
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def override(self, **changes: Any) -> Recipe:
        """A copy with the non-None ``changes`` applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# Section 3.4 "Implementation": SGD, mini-batch 256, lr 0.1 divided by 10 when the error plateaus, up to 60e4
# iterations, weight decay 0.0001, momentum 0.9, no dropout; scale augmentation [256, 480], 224 crop, flip,
# per-pixel mean subtraction, standard colour augmentation (Krizhevsky et al. 2012); 10-crop testing.
IMAGENET = Recipe(
    dataset="imagenet",
    family="imagenet",
    default_depth=50,
    batch_size=256,
    lr=0.1,
    lr_ref_batch=256,
    max_iters=600_000,
    plateau=True,
    plateau_patience=3,
    augment="imagenet",
    val_size=0,
    notes="He et al. 2016, Section 3.4",
)

# Section 4.2 "CIFAR-10 and Analysis": weight decay 0.0001, momentum 0.9, mini-batch 128, lr 0.1 divided by 10 at
# 32k and 48k iterations, terminated at 64k; 45k/5k train/val split; 4-pixel padding, random 32x32 crop, flip.
# For ResNet-110, 0.01 warms the training up until the training error is below 80% (about 400 iterations).
CIFAR = Recipe(
    dataset="cifar",
    family="cifar",
    default_depth=20,
    batch_size=128,
    lr=0.1,
    lr_ref_batch=128,
    max_iters=64_000,
    milestones=(32_000, 48_000),
    val_size=5_000,
    augment="cifar",
    notes="He et al. 2016, Section 4.2",
)

# Not in the paper: scikit-learn's 1,797 handwritten digits (1,437 train / 360 test, fixed split), a real dataset
# that ships with our dependencies so every command runs on a fresh laptop. The CIFAR recipe, shortened: ResNet-20
# reaches >= 97% held-out accuracy on 2 CPU cores in a few minutes (measured: bench/RESULTS.md).
DIGITS = Recipe(
    dataset="digits",
    family="cifar",
    default_depth=20,
    batch_size=64,
    lr=0.1,
    lr_ref_batch=64,
    max_iters=400,
    milestones=(240, 340),
    val_size=144,
    augment="cifar",
    notes="CIFAR recipe of Section 4.2, shortened for sklearn digits",
)

RECIPES: dict[str, Recipe] = {r.dataset: r for r in (IMAGENET, CIFAR, DIGITS)}


def cifar_recipe_for_depth(recipe: Recipe, depth: int) -> Recipe:
    """Section 4.2: the 110-layer net (and deeper) warms up at lr 0.01 until training error < 80%."""
    if recipe.family == "cifar" and depth >= 110 and recipe.warmup_lr is None:
        return replace(recipe, warmup_lr=recipe.lr / 10)
    return recipe
