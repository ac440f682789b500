"""``python -m train.evaluate CHECKPOINT --data DIR [--crops ten|center|multiscale|all]``: top-1/top-5 error.

Uses the shared preprocessing of ``resnet`` (docs/DESIGN.md §3), the same the server runs: resize, ten or centre crops,
card mean/std, scores = mean of the per-crop softmax; ``multiscale`` is the paper's fully-convolutional test
(``resnet.multiscale``: whole image at several shorter sides, plus flips); ``all`` prints the three side by side.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

import resnet
from resnet import UsageError
from resnet.runtime.crops import CROP_NAMES
from resnet.weights import add_source_arguments, load_model_source

from . import distributed as D
from .cli import _Parser
from .data import DataError, check_image_folder, find_cifar_folder
from .evaluation import (
    CropDataset,
    MultiScaleDataset,
    evaluate_crops,
    evaluate_multiscale,
    multiscale_protocol_name,
    protocol_name,
)


def _sides(text: str) -> tuple[int, ...]:
    try:
        sides = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if not sides or min(sides) < 8 or max(sides) > 4096:
        raise argparse.ArgumentTypeError(f"sides must be 8..4096 pixels, not {text!r}")
    return sides


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m train.evaluate",
        description=__doc__.splitlines()[0].strip("`"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_source_arguments(p, path=False)
    p.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="ImageFolder root (DIR/<class>/*, or DIR/val/<class>/*) or a cifar-10-batches-py folder",
    )
    p.add_argument(
        "--dataset",
        choices=("auto", "folder", "cifar", "digits"),
        default="auto",
        help="auto: digits without --data, else CIFAR batches when present, else an ImageFolder",
    )
    p.add_argument(
        "--crops",
        choices=(*CROP_NAMES, "all"),
        default="ten",
        help="ten or center crops, the paper's multi-scale test, or all three side by side",
    )
    p.add_argument(
        "--sides",
        type=_sides,
        default=None,
        help="multi-scale shorter sides, e.g. 224,256,384,480,640 (default: resnet.multiscale.multiscale_sides)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (x crops)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def evaluation_source(args: argparse.Namespace, card: dict) -> tuple[object, str]:
    """(images, description) for ``CropDataset``: in-memory arrays or (path, card index) pairs."""
    kind = args.dataset
    if kind == "auto":
        if args.data is None:
            kind = "digits"
        else:
            root = Path(args.data)
            has_cifar = (root / "data_batch_1").is_file() or (root / "cifar-10-batches-py").is_dir()
            kind = "cifar" if has_cifar else "folder"
    if kind == "digits":
        from resnet.samples import digits_images

        return digits_images("test"), "digits test split"
    if args.data is None:
        raise UsageError(f"--dataset {kind} needs --data DIR")
    if kind == "cifar":
        from .cifar_pickle import load_batch

        test = load_batch(find_cifar_folder(args.data) / "test_batch")
        return (test["data"].transpose(0, 2, 3, 1), test["labels"]), "CIFAR-10 test batch"
    root = Path(args.data)
    if (root / "val").is_dir():
        root = root / "val"
    classes = check_image_folder(root)
    index = resnet.folder_label_indices(classes, card.labels)
    if index is None:
        if len(classes) != card.num_classes:
            raise DataError(
                f"{root} has {len(classes)} class folders whose names are not the card's labels, "
                f"and the card has {card.num_classes} classes"
            )
        index = list(range(len(classes)))  # e.g. ImageNet wnid folders in sorted order = class index
    from torchvision.datasets import ImageFolder

    samples = [(p, index[y]) for p, y in ImageFolder(str(root)).samples]
    return samples, f"{root}"


def _evaluate(args: argparse.Namespace, model: torch.nn.Module, card, source, what: str, info) -> list[dict]:
    """One result per protocol asked for: ``{"crops", "protocol", "top1_err", "top5_err", "images"}``."""
    results = []
    for crops in ("center", "ten", "multiscale") if args.crops == "all" else (args.crops,):
        if crops == "multiscale":
            dataset = MultiScaleDataset(source, card, args.sides)
            res = evaluate_multiscale(model, dataset, info, batch_images=args.batch_size, workers=args.workers)
            protocol = multiscale_protocol_name(dataset.sides, res["images"], what)
        else:
            dataset = CropDataset(source, card, crops)
            res = evaluate_crops(model, dataset, info, batch_images=args.batch_size, workers=args.workers)
            protocol = protocol_name(crops, res["images"], what)
        results.append({"crops": crops, "protocol": protocol, **res})
    return results


def _print_table(card, results: list[dict], what: str) -> None:
    """The protocols side by side, as the paper's Table 3."""
    print(f"{card.name} on {what} ({results[0]['images']} images)")
    print(f"{'protocol':<40}  {'top-1 err':>9}  {'top-5 err':>9}")
    for r in results:
        name = r["protocol"].split(f", {what}")[0]
        print(f"{name:<40}  {r['top1_err']:>8.2f}%  {r['top5_err']:>8.2f}%")


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.sides is not None and args.crops not in ("multiscale", "all"):
        raise UsageError("--sides goes with --crops multiscale or all")
    model, card = load_model_source(
        args.checkpoint, args.arch, args.weights, download=args.download, check_hash=args.check_hash
    )
    source, what = evaluation_source(args, card)
    if args.limit:
        source = (
            (source[0][: args.limit], source[1][: args.limit]) if isinstance(source, tuple) else source[: args.limit]
        )
    info = D.init_distributed(args.device)
    try:
        model.to(info.device)
        results = _evaluate(args, model, card, source, what, info)
    finally:
        D.cleanup()
    if info.is_main:
        # what was evaluated: a checkpoint file, or an architecture with torchvision's named weights
        head = {"checkpoint": None if args.weights else str(args.checkpoint), "model": card.name}
        if args.weights:
            head["weights"] = card.provenance.get("weights")
        if args.json and args.crops == "all":
            print(json.dumps({**head, "results": results}))
        elif args.json:
            res = {k: v for k, v in results[0].items() if k != "crops"}
            print(json.dumps({**head, **res}))
        elif args.crops == "all":
            _print_table(card, results, what)
        else:
            res = results[0]
            print(
                f"{card.name}: top-1 err {res['top1_err']:.2f}%  top-5 err {res['top5_err']:.2f}%  ({res['protocol']})"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Evaluate; one-line errors with the exit codes of docs/DESIGN.md §5."""
    with torch.no_grad():  # not set_grad_enabled(False): a caller in the same process may train afterwards
        return resnet.run_cli(_main, argv, prog="train.evaluate")


if __name__ == "__main__":
    raise SystemExit(D.exit_code(main()))  # a torchrun worker ends inside exit_code
