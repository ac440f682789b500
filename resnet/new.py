"""``python -m resnet.new ARCH -o model.pt``: build a network (or wrap a torchvision state dict) as our checkpoint.

Prints the model's card summary, parameter count and multiply-adds. With ``--from-state-dict`` the weights of a
plain torchvision ``resnet50-*.pth`` become a checkpoint with a card that every later stage can read.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from .card import make_card
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import run_cli
from .flops import count_multiply_adds, count_parameters
from .models import SHORTCUTS, VARIANTS
from .registry import create_model, list_models


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet.new", description=__doc__.splitlines()[0])
    parser.add_argument("arch", help=f"network name: {', '.join(list_models())} (CIFAR: any 6n+2 depth)")
    parser.add_argument("-o", "--output", required=True, help="checkpoint path to write (atomically)")
    parser.add_argument("--num-classes", type=int, help="output classes (default 1000 ImageNet, 10 CIFAR)")
    parser.add_argument("--variant", choices=VARIANTS, default="v1.5", help="bottleneck stride placement")
    parser.add_argument("--shortcut", choices=SHORTCUTS, type=str.upper, help="option A, B or C")
    parser.add_argument("--from-state-dict", metavar="PTH", help="weights from a plain torchvision state dict")
    parser.add_argument("--seed", type=int, default=0, help="seed of the He initialisation")
    args = parser.parse_args(argv)

    if args.from_state_dict:
        model, card = load_checkpoint(args.from_state_dict, arch=args.arch)
    else:
        torch.manual_seed(args.seed)
        model = create_model(args.arch, args.num_classes, variant=args.variant, shortcut=args.shortcut)
        card = make_card(
            args.arch,
            num_classes=args.num_classes,
            variant=args.variant,
            shortcut=args.shortcut,
            provenance={"args": vars(args), "dataset": None, "note": "untrained (He initialisation)"},
        )
    path = save_checkpoint(args.output, model, card)
    macs = count_multiply_adds(model, card.input_size)
    print(
        f"{card.name}: {card.family} {card.arch}-{card.depth} variant {card.variant} "
        f"shortcut {card.shortcut}, {card.num_classes} classes, input {card.input_size} "
        f"(resize {card.resize_size}), {count_parameters(model) / 1e6:.3f} M params, {macs / 1e9:.3f} GMACs"
    )
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m resnet.new``."""
    return run_cli(_main, argv, "resnet.new")


if __name__ == "__main__":
    raise SystemExit(main())
