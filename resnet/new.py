"""``python -m resnet.new ARCH -o model.pt``: build a network (fresh, named torchvision weights, or a state dict).

Prints the model's card summary, parameter count and multiply-adds. ``--weights IMAGENET1K_V2`` loads torchvision's
named weights from the torch hub cache (``--download`` fetches them when missing); ``--from-state-dict`` wraps a
plain torchvision ``resnet50-*.pth``. A fresh residual net zero-initialises the last BN of each block, so that its
untrained activations stay in range (an FP16 graph of a random ResNet-101 would overflow otherwise).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import nn

from .card import ModelCard, make_card
from .checkpoint import load_checkpoint, save_checkpoint
from .errors import UsageError, run_cli
from .flops import count_multiply_adds, count_parameters
from .models import SHORTCUTS, VARIANTS
from .registry import create_model, list_models, parse_model_name
from .weights import add_weights_arguments


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m resnet.new``."""
    parser = argparse.ArgumentParser(prog="python -m resnet.new", description=__doc__.splitlines()[0])
    parser.add_argument("arch", help=f"network name: {', '.join(list_models())} (CIFAR: any 6n+2 depth)")
    parser.add_argument("-o", "--output", required=True, help="checkpoint path to write (atomically)")
    parser.add_argument("--num-classes", type=int, help="output classes (default 1000 ImageNet, 10 CIFAR)")
    parser.add_argument("--variant", choices=VARIANTS, help="bottleneck stride placement (default v1.5)")
    parser.add_argument("--shortcut", choices=SHORTCUTS, type=str.upper, help="option A, B or C")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-state-dict", metavar="PTH", help="weights from a plain torchvision state dict")
    add_weights_arguments(parser, source)
    parser.add_argument("--seed", type=int, default=0, help="seed of the He initialisation")
    parser.add_argument(
        "--no-zero-init-residual",
        dest="zero_init_residual",
        action="store_false",
        help="fresh nets: keep the last BN of each residual block at gamma 1 (activations grow with depth)",
    )
    return parser


def _named(args: argparse.Namespace) -> tuple[nn.Module, ModelCard]:
    from .weights import load_named

    clash = [
        flag
        for flag, bad in (
            ("--num-classes", args.num_classes not in (None, 1000)),
            ("--variant", args.variant not in (None, "v1.5")),
            ("--shortcut", args.shortcut not in (None, "B")),
        )
        if bad
    ]
    if clash:
        raise UsageError(f"--weights fixes the network (1000 classes, v1.5, shortcut B); drop {', '.join(clash)}")
    return load_named(args.arch, args.weights, download=args.download, check_hash=args.check_hash)


def _fresh(args: argparse.Namespace) -> tuple[nn.Module, ModelCard]:
    zero_init = args.zero_init_residual and parse_model_name(args.arch).arch == "resnet"
    torch.manual_seed(args.seed)
    variant = args.variant or "v1.5"
    model = create_model(
        args.arch, args.num_classes, variant=variant, shortcut=args.shortcut, zero_init_residual=zero_init
    )
    init = "He initialisation" + (", last BN of each residual block zero (zero_init_residual)" if zero_init else "")
    card = make_card(
        args.arch,
        num_classes=args.num_classes,
        variant=variant,
        shortcut=args.shortcut,
        provenance={"args": vars(args), "dataset": None, "note": f"untrained ({init})"},
    )
    return model, card


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.download or not args.check_hash) and not args.weights:
        raise UsageError("--download and --no-check-hash go with --weights NAME")
    if args.weights:
        model, card = _named(args)
    elif args.from_state_dict:
        model, card = load_checkpoint(args.from_state_dict, arch=args.arch)
    else:
        model, card = _fresh(args)
    path = save_checkpoint(args.output, model, card)
    macs = count_multiply_adds(model, card.input_size)
    weights = f", weights {card.provenance['weights']}" if "weights" in card.provenance else ""
    print(
        f"{card.name}: {card.family} {card.arch}-{card.depth} variant {card.variant} "
        f"shortcut {card.shortcut}, {card.num_classes} classes, input {card.input_size} "
        f"(resize {card.resize_size}), {count_parameters(model) / 1e6:.3f} M params, {macs / 1e9:.3f} GMACs{weights}"
    )
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m resnet.new``."""
    return run_cli(_main, argv, "resnet.new")


if __name__ == "__main__":
    raise SystemExit(main())
