"""``python -m train.imagenet``: the ImageNet networks of Table 1 (18-152 layers) with the paper's recipe."""

from __future__ import annotations

from collections.abc import Sequence

from resnet import run_cli

from .cli import parse_args
from .distributed import exit_code
from .loop import train_main


def _main(argv: Sequence[str] | None) -> int:
    return train_main(parse_args(argv, "python -m train.imagenet", family="imagenet", default_dataset="imagenet"))


def main(argv: list[str] | None = None) -> int:
    """Train; one-line errors with the exit codes of docs/DESIGN.md §5."""
    return run_cli(_main, argv, prog="train.imagenet")


if __name__ == "__main__":
    raise SystemExit(exit_code(main()))  # a torchrun worker ends inside exit_code
