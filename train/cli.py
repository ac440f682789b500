"""The command line shared by ``train.imagenet`` and ``train.cifar``, generated from ``TrainConfig``'s fields.

One option per field (``max_iters`` -> ``--max-iters``) by ``resnet.dataclass_cli``, the generator ``serve`` uses too:
help, choices, value parser and group come from the field's metadata, the default from the field (``--dataset``
defaults to the command's own dataset). Booleans that default to False are switches (``--plain``); ``bool | None``
ones are ``--flip`` / ``--no-flip``, None keeping the recipe's value.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from resnet.dataclass_cli import UsageParser, add_options, flag

from .config import GROUPS, TrainConfig

__all__ = ["build_parser", "flag", "parse_args"]
_NOT_OPTIONS = ("family",)  # which command runs (train.cifar / train.imagenet), not an option of it
_DEPTHS = {"imagenet": "18, 34, 50, 101, 152", "cifar": "any 6n+2: 20, 32, 44, 56, 110, 1202 ..."}


_Parser = UsageParser  # train.evaluate, .plot and .analyze build theirs on it


def build_parser(prog: str, family: str, default_dataset: str) -> argparse.ArgumentParser:
    """The parser of ``train.<family>``: one option per ``TrainConfig`` field, in the fields' order and groups."""
    p = _Parser(
        prog=prog,
        description=f"Train a {family}-family ResNet with the paper's recipe (He et al. 2016). "
        "Recipe defaults per dataset are in train/recipes.py; every one can be overridden below.",
    )
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    add_options(
        p,
        TrainConfig,
        skip=_NOT_OPTIONS,
        defaults={"dataset": default_dataset},
        groups=groups,
        help_format=lambda text: text.replace("{depths}", _DEPTHS[family]),
    )
    return p


def parse_args(argv: Sequence[str] | None, prog: str, family: str, default_dataset: str) -> TrainConfig:
    """The ``TrainConfig`` of a ``train.cifar`` / ``train.imagenet`` command line."""
    args = build_parser(prog, family, default_dataset).parse_args(argv)
    args.family = family
    return TrainConfig.from_namespace(args)
