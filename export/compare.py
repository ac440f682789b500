"""``python -m export.compare GRAPH [GRAPH ...] [--images digits|samples|DIR]``: graphs side by side on this CPU.

Each ONNX graph of ours (FP32, FP16, INT8) runs in ONNX Runtime on the same images through the card's ten-crop,
one image (10 crops) per batch as the server runs it: labelled top-1 (where labels exist), top-1 agreement with
the first graph, and images per second, measured in turn in this one process. ``digits`` is the held-out split of
the bundled digits (the images ``export.quantize --calib digits`` does not calibrate on).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import resnet
from resnet import UsageError, UserError
from resnet.preprocess import crop_probabilities
from resnet.runtime.runner import OnnxRunner

from .calib import list_digits
from .candidates import check_same_model
from .images import ImageSet, image_set_from, list_folder, list_samples, spread
from .log import log


def load_images(source: str, card: Any, limit: int | None) -> ImageSet:
    if source == "digits":
        listing = list_digits("test", card)
    elif source == "samples":
        listing = list_samples()
    else:
        listing = list_folder(Path(source), card)
    # ten-crop accuracy and speed only: no multi-scale views to prepare
    return image_set_from(listing.subset(spread(len(listing.items), limit)), card, multiscale=0)


def measure(path: Path, images: ImageSet) -> dict[str, Any]:
    """Predictions and images/s of one graph over the image set (batch = one ten-crop image)."""
    candidate = OnnxRunner(path)
    try:
        per = images.crops_per_image
        candidate.run(images.crops[:per])  # warm-up
        start = time.perf_counter()
        logits = np.concatenate([candidate.run(images.crops[i : i + per]) for i in range(0, len(images.crops), per)])
        seconds = time.perf_counter() - start
    finally:
        candidate.close()
    top1 = crop_probabilities(logits, per).argmax(axis=1)
    return {"path": path, "card": candidate.card, "precision": candidate.precision, "top1": top1, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.compare", description=__doc__.split("\n")[0])
    p.add_argument("graphs", type=Path, nargs="+", metavar="GRAPH", help="ONNX graphs of one model")
    p.add_argument("--images", default="digits", help="digits (held-out split), samples, or a folder")
    p.add_argument("--limit", type=int, default=None, help="at most this many images")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    for g in args.graphs:
        if not g.is_file():
            raise UserError(f"no such file: {g}")
    first = OnnxRunner(args.graphs[0])
    first.close()
    images = load_images(args.images, first.card, args.limit)
    rows = [measure(g, images) for g in args.graphs]
    for r in rows[1:]:
        check_same_model(rows[0]["card"], r["card"], r["path"])
    n = len(images.files)
    log(f"{n} images from {images.source}, ten-crop, one image per batch, ONNX Runtime CPU, measured in turn:")
    log(f"{'graph':<28} {'precision':<9} {'top-1':>8} {'agree':>8} {'images/s':>9}")
    for r in rows:
        acc = f"{100.0 * np.mean(r['top1'] == images.labels):.2f}%" if images.labels is not None else "n/a"
        agree = f"{100.0 * np.mean(r['top1'] == rows[0]['top1']):.2f}%"
        log(f"{r['path'].name:<28} {r['precision']:<9} {acc:>8} {agree:>8} {n / r['seconds']:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(resnet.run_cli(main, sys.argv[1:], prog="export.compare"))
