"""The command line shared by ``train.imagenet`` and ``train.cifar``, generated from ``TrainConfig``'s fields.

One option per field (``max_iters`` -> ``--max-iters``): help, choices, value parser and group come from the field's
metadata, the default from the field (``--dataset`` defaults to the command's own dataset). Booleans that default to
False are switches (``--plain``); ``bool | None`` ones are ``--flip`` / ``--no-flip``, None keeping the recipe's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence

from resnet import UsageError

from .config import GROUPS, TrainConfig

_NOT_OPTIONS = ("family",)  # which command runs (train.cifar / train.imagenet), not an option of it
_DEPTHS = {"imagenet": "18, 34, 50, 101, 152", "cifar": "any 6n+2: 20, 32, 44, 56, 110, 1202 ..."}


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def flag(name: str) -> str:
    """The option of field ``name``: ``max_iters`` -> ``--max-iters``."""
    return "--" + name.replace("_", "-")


def _add_option(
    group: argparse._ArgumentGroup, f: dataclasses.Field, kind: object, default: object, family: str
) -> None:
    meta = f.metadata
    help_text = meta["help"].replace("{depths}", _DEPTHS[family])
    if kind is bool:
        group.add_argument(flag(f.name), dest=f.name, action="store_true", help=help_text)
    elif kind == bool | None:
        group.add_argument(
            flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
        )
    else:
        group.add_argument(
            flag(f.name),
            dest=f.name,
            type=meta["parse"],
            choices=meta["choices"],
            default=default,
            metavar=meta["metavar"],
            help=help_text,
        )


def build_parser(prog: str, family: str, default_dataset: str) -> argparse.ArgumentParser:
    """The parser of ``train.<family>``: one option per ``TrainConfig`` field, in the fields' order and groups."""
    p = _Parser(
        prog=prog,
        description=f"Train a {family}-family ResNet with the paper's recipe (He et al. 2016). "
        "Recipe defaults per dataset are in train/recipes.py; every one can be overridden below.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    kinds = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_OPTIONS:
            continue
        default = default_dataset if f.name == "dataset" else f.default
        _add_option(groups[f.metadata["group"]], f, kinds[f.name], default, family)
    return p


def parse_args(argv: Sequence[str] | None, prog: str, family: str, default_dataset: str) -> TrainConfig:
    """The ``TrainConfig`` of a ``train.cifar`` / ``train.imagenet`` command line."""
    args = build_parser(prog, family, default_dataset).parse_args(argv)
    args.family = family
    return TrainConfig.from_namespace(args)
