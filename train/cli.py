"""The command line shared by ``train.imagenet`` and ``train.cifar``: every recipe number can be overridden."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from resnet import UsageError

from .recipes import RECIPES


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` (one line, exit 2) instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _milestones(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"milestones must be comma-separated iterations, not {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("milestones must be positive iterations")
    return values


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, not {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, not {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, not {text!r}")
    return v


def build_parser(prog: str, family: str, default_dataset: str) -> argparse.ArgumentParser:
    depths = "18, 34, 50, 101, 152" if family == "imagenet" else "any 6n+2: 20, 32, 44, 56, 110, 1202 ..."
    p = _Parser(
        prog=prog,
        description=f"Train a {family}-family ResNet with the paper's recipe (He et al. 2016). "
        "Recipe defaults per dataset are in train/recipes.py; every one can be overridden below.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data and network")
    g.add_argument(
        "--dataset",
        choices=sorted(RECIPES),
        default=default_dataset,
        help="imagenet: ImageFolder DIR/train, DIR/val; cifar: cifar-10-batches-py; "
        "digits: scikit-learn's bundled handwritten digits (no download)",
    )
    g.add_argument("--data", metavar="DIR", help="dataset folder (not needed for --dataset digits)")
    g.add_argument("--depth", type=int, default=None, help=f"network depth ({depths}); default: the recipe's")
    g.add_argument("--plain", action="store_true", help="the paper's plain (no shortcut) counterpart")
    g.add_argument(
        "--shortcut",
        choices=("A", "B", "C"),
        type=str.upper,
        default=None,
        help="shortcut option: A zero-pad identity, B projection on change, C all projections "
        "(default: A for CIFAR nets, B for ImageNet nets)",
    )
    g.add_argument(
        "--variant",
        choices=("v1", "v1.5"),
        default="v1.5",
        help="bottleneck stride in the first 1x1 (v1, paper) or the 3x3 (v1.5, torchvision)",
    )
    g.add_argument("--zero-init-residual", action="store_true", help="zero-init the last BN of each block")
    g.add_argument(
        "--input-size",
        type=_positive_int,
        default=None,
        help="ImageFolder crop size (default 224; the resize range [256, 480] scales with it)",
    )
    g.add_argument(
        "--train-limit",
        type=_positive_int,
        default=None,
        help="train on the first N images of the training split only (smoke tests, learning curves)",
    )
    g.add_argument(
        "--val-size",
        type=_nonneg_int,
        default=None,
        help="images held out of the training split for validation (CIFAR: 5000; digits: 144)",
    )
    g = p.add_argument_group("recipe overrides (default: the recipe's value)")
    g.add_argument("--batch-size", type=_positive_int, default=None, help="global mini-batch, split over ranks")
    g.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="learning rate; default: the recipe's, scaled linearly with the global batch",
    )
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay")
    g.add_argument("--max-iters", type=_positive_int, default=None, help="iterations to train")
    g.add_argument("--milestones", type=_milestones, default=None, help="iterations where lr /= 10, e.g. 32000,48000")
    g.add_argument(
        "--plateau",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="divide lr by 10 when validation error plateaus (ImageNet default)",
    )
    g.add_argument(
        "--warmup-lr",
        type=_positive_float,
        default=None,
        help="warm up at this lr until training error < 80%% (default 0.01 for CIFAR depth >= 110)",
    )
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips")
    g.add_argument(
        "--eval-every", type=_nonneg_int, default=None, help="iterations between validations (0: each epoch)"
    )
    g.add_argument("--label-smoothing", type=float, default=None, help="label smoothing (paper: 0)")
    g = p.add_argument_group("run folder")
    g.add_argument("--out", metavar="DIR", default=None, help="run folder (default: runs/<dataset>-<model>)")
    g.add_argument(
        "--resume",
        metavar="PATH",
        default=None,
        help="training state to resume from (default: <out>/last.pt when it exists)",
    )
    g.add_argument("--no-resume", action="store_true", help="start afresh even if <out>/last.pt exists")
    g.add_argument(
        "--save-every",
        type=_nonneg_int,
        default=500,
        help="write last.pt every N iterations (and at every epoch end); 0: epochs only",
    )
    g.add_argument(
        "--stop-at-iter",
        type=_positive_int,
        default=None,
        help="save last.pt and exit after this iteration, as a preempted run would (job time slots)",
    )
    g.add_argument(
        "--eval-crops",
        choices=("ten", "center"),
        default="ten",
        help="final test evaluation crops (shared preprocessing); recorded in the card",
    )
    g = p.add_argument_group("speed and reproducibility")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    g.add_argument(
        "--amp",
        choices=("auto", "off", "bf16", "fp16"),
        default="auto",
        help="mixed precision; auto: bf16 (or fp16 + GradScaler) on GPU; on CPU whichever of fp32 and bf16 trains "
        "faster in a few timed steps of this network at this batch shape on this machine (logged; kept on resume)",
    )
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format (default: on for GPU, and on CPU with bf16: measured 1.2x there)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across ranks (GPU only)")
    g.add_argument(
        "--workers",
        type=_nonneg_int,
        default=None,
        help="DataLoader worker processes (default: 0 for in-memory data, min(8, CPUs) for folders)",
    )
    g.add_argument("--threads", type=_positive_int, default=None, help="intra-op CPU threads (torch.set_num_threads)")
    g.add_argument("--seed", type=int, default=0, help="random seed (init, sampling, augmentation)")
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only (bitwise repeatable on CPU; slower on GPU)",
    )
    g.add_argument("--log-every", type=_positive_int, default=20, help="iterations between log lines")
    g.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        default="auto",
        help="tqdm bar on a terminal (auto) or plain lines",
    )
    g.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard scalars")
    return p


def parse_args(argv: Sequence[str] | None, prog: str, family: str, default_dataset: str) -> argparse.Namespace:
    args = build_parser(prog, family, default_dataset).parse_args(argv)
    args.family = family
    return args
