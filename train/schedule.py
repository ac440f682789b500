"""Learning-rate policy of the paper: fixed milestones (CIFAR), divide-on-plateau (ImageNet), 110-layer warm-up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class LRSchedule:
    """lr at iteration ``step`` = base x 0.1^(milestones passed + plateau drops), or ``warmup_lr`` while warming up.

    Warm-up (Section 4.2, ResNet-110): train at ``warmup_lr`` until the training error is below
    ``warmup_until_err`` percent (checked by ``observe_train_err``), at most ``warmup_max_iters`` iterations.
    Plateau: after ``patience`` validations without a better error, divide by 10.
    """

    def __init__(
        self,
        base_lr: float,
        milestones: Sequence[int] = (),
        plateau: bool = False,
        patience: int = 3,
        warmup_lr: float | None = None,
        warmup_until_err: float = 80.0,
        warmup_max_iters: int = 400,
        min_improvement: float = 0.01,
    ) -> None:
        self.base_lr = base_lr
        self.milestones = sorted(int(m) for m in milestones)
        self.plateau, self.patience, self.min_improvement = plateau, patience, min_improvement
        self.warmup_lr, self.warmup_until_err, self.warmup_max_iters = warmup_lr, warmup_until_err, warmup_max_iters
        self.warming = warmup_lr is not None
        self.plateau_drops = 0
        self.best_val = math.inf
        self.bad_evals = 0

    def lr_at(self, step: int) -> float:
        if self.warming and step < self.warmup_max_iters:
            return float(self.warmup_lr)  # type: ignore[arg-type]
        drops = sum(step >= m for m in self.milestones) + self.plateau_drops
        return self.base_lr * (0.1**drops)

    def observe_train_err(self, step: int, err: float) -> bool:
        """Feed the recent training error; returns True when the warm-up just ended."""
        if self.warming and (err < self.warmup_until_err or step >= self.warmup_max_iters):
            self.warming = False
            return True
        return False

    def observe_val_err(self, err: float) -> bool:
        """Feed a validation error; returns True when a plateau drop just happened."""
        if err < self.best_val - self.min_improvement:
            self.best_val, self.bad_evals = err, 0
            return False
        self.bad_evals += 1
        if self.plateau and self.bad_evals >= self.patience:
            self.plateau_drops += 1
            self.bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "warming": self.warming,
            "plateau_drops": self.plateau_drops,
            "best_val": self.best_val,
            "bad_evals": self.bad_evals,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warming = bool(state["warming"])
        self.plateau_drops = int(state["plateau_drops"])
        self.best_val = float(state["best_val"])
        self.bad_evals = int(state["bad_evals"])
