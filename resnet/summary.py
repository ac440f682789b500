"""``python -m resnet.summary``: parameters and multiply-adds of each network, measured, beside the paper's numbers.

ImageNet multiply-adds are those of Table 1 (the paper counts the v1 bottleneck, stride in the first 1x1);
CIFAR parameters are those of Table 6 (option A shortcuts, so the residual nets have no extra parameters).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import torch

from .errors import run_cli
from .flops import count_multiply_adds, count_parameters
from .registry import create_model

# Table 1: multiply-adds (x1e9) of the 224x224 ImageNet networks.
PAPER_IMAGENET_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
# Table 6: parameters (x1e6) of the CIFAR-10 ResNets, keyed by depth 6n+2.
PAPER_CIFAR_MPARAMS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}


def _measure(name: str, input_size: int, variant: str = "v1.5") -> tuple[int, int]:
    with torch.device("meta"):
        model = create_model(name, variant=variant)
    return count_parameters(model), count_multiply_adds(model, input_size)


def summary_rows(cifar_depths: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """One row per network: measured params and multiply-adds, the paper's figure, and the relative difference."""
    rows = []
    for depth, paper in PAPER_IMAGENET_GMACS.items():
        params, macs_v1 = _measure(f"resnet{depth}", 224, variant="v1")
        _, macs_v15 = _measure(f"resnet{depth}", 224, variant="v1.5")
        rows.append(
            {
                "model": f"resnet{depth}",
                "params_m": params / 1e6,
                "gmacs_v1": macs_v1 / 1e9,
                "gmacs_v1.5": macs_v15 / 1e9,
                "paper": paper,
                "paper_unit": "GMACs",
                "rel_diff": (macs_v1 / 1e9 - paper) / paper,
            }
        )
    for depth in cifar_depths or PAPER_CIFAR_MPARAMS:
        params, macs = _measure(f"cifar_resnet{depth}", 32)
        paper = PAPER_CIFAR_MPARAMS.get(depth)
        rows.append(
            {
                "model": f"cifar_resnet{depth}",
                "params_m": params / 1e6,
                "gmacs_v1": macs / 1e9,
                "gmacs_v1.5": macs / 1e9,
                "paper": paper,
                "paper_unit": "M params",
                "rel_diff": None if paper is None else (params / 1e6 - paper) / paper,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of ``summary_rows``."""
    lines = [
        f"{'model':<18}{'params (M)':>12}{'GMACs v1':>10}{'GMACs v1.5':>12}{'paper':>8}  {'unit':<9}{'diff':>7}",
        "-" * 78,
    ]
    for r in rows:
        paper = "" if r["paper"] is None else f"{r['paper']:g}"
        diff = "" if r["rel_diff"] is None else f"{100 * r['rel_diff']:+.1f}%"
        lines.append(
            f"{r['model']:<18}{r['params_m']:>12.3f}{r['gmacs_v1']:>10.3f}{r['gmacs_v1.5']:>12.3f}"
            f"{paper:>8}  {r['paper_unit']:<9}{diff:>7}"
        )
    return "\n".join(lines)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnet.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument(
        "--cifar-depths", type=int, nargs="+", metavar="D", help="CIFAR depths to list (default: the paper's)"
    )
    args = parser.parse_args(argv)
    rows = summary_rows(args.cifar_depths)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m resnet.summary``."""
    return run_cli(_main, argv, "resnet.summary")


if __name__ == "__main__":
    raise SystemExit(main())
