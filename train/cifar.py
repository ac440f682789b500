"""``python -m train.cifar``: the CIFAR-10 networks of Section 4.2 (6n+2 layers) with the paper's recipe."""

from __future__ import annotations

from collections.abc import Sequence

from resnet import run_cli

from .cli import parse_args
from .distributed import exit_code
from .loop import train_main


def _main(argv: Sequence[str] | None) -> int:
    return train_main(parse_args(argv, "python -m train.cifar", family="cifar", default_dataset="cifar"))


def main(argv: list[str] | None = None) -> int:
    """Train; one-line errors with the exit codes of docs/DESIGN.md §5."""
    return run_cli(_main, argv, prog="train.cifar")


if __name__ == "__main__":
    raise SystemExit(exit_code(main()))  # a torchrun worker ends inside exit_code
