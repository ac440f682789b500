"""INT8 (ONNX Runtime static QDQ) against FP32, side by side in one run: ``python -m bench.quantize_bench``.

1. A trained digits model (``--digits model.pt``, e.g. ``demo_out/run/model.pt`` from ``make demo``): for each
   target layout (``cpu``: uint8 asymmetric activations, int32 biases; ``tensorrt``: symmetric int8, float biases,
   TensorRT's Q/DQ placement) and calibration method (minmax, entropy, percentile), calibrated on the training
   digits, measured on the held-out digits: top-1 agreement with FP32, labelled top-1 of both, logit cosine min,
   and ONNX Runtime time per ten-crop (batch 10). Picks the defaults of ``export.quantize``.
2. ResNet-50 (random init, BN statistics from the sample photos; agreement only, no labels): FP32 vs the INT8
   graph of each target, ONNX Runtime CPU latency for one ten-crop (batch 10), calibrated on half the photos,
   compared on the others: whether the TensorRT-ready graph can also serve the CPU.

Prints Markdown tables for bench/RESULTS.md. Other jobs may share the CPU: the ratios within one run are what count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import resnet
from bench.export_bench import calibrated_model
from export import calib
from export.candidates import Reference
from export.gate import PRESETS, evaluate
from export.onnx import export_model
from export.quantize import METHODS, TARGETS, quantize_graph
from resnet.runtime.runner import OnnxRunner


def ten_crop_ms(candidate: OnnxRunner, x: np.ndarray, repeats: int) -> float:
    """Median ms of one batch-10 run (one ten-crop image) after a warm-up."""
    batch = x[:10]
    candidate.run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        candidate.run(batch)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def _save(proto: Any, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def digits_rows(checkpoint: Path, count: int, repeats: int, folder: Path) -> list[dict[str, Any]]:
    model, card = resnet.load_checkpoint(checkpoint)
    calibration, images = calib.prepare("digits", card, count, None, None)
    reference = Reference.from_model(model, card, images, str(checkpoint))
    proto, _ = export_model(model, card)
    fp32 = OnnxRunner(_save(proto, folder / "fp32.onnx"))
    fp32_ms = ten_crop_ms(fp32, images.crops, repeats)
    base = evaluate(reference, fp32, images, PRESETS["fp32"], 10)["metrics"]
    rows = [{"graph": "fp32", "ms": fp32_ms, "top1": base["accuracy"]["candidate"]["top1"], "agree": 100.0}]
    for target in TARGETS:
        for method in METHODS:
            start = time.perf_counter()
            q, _ = quantize_graph(proto, card, calibration, method, target)
            seconds = time.perf_counter() - start
            cand = OnnxRunner(_save(q, folder / f"{target}-{method}.onnx"))
            m = evaluate(reference, cand, images, PRESETS["int8"], 10)["metrics"]
            rows.append(
                {
                    "graph": f"int8 {target} {method}",
                    "ms": ten_crop_ms(cand, images.crops, repeats),
                    "top1": m["accuracy"]["candidate"]["top1"],
                    "agree": m["top1_agreement"],
                    "cos_min": m["cosine_min"],
                    "quantize_s": seconds,
                }
            )
    print(f"\ndigits: {checkpoint} ({card.arch}{card.depth}), calibrated on {calibration.count} training digits, ")
    print(f"measured on {len(images.files)} held-out digits (ten-crop); FP32 labelled top-1 {rows[0]['top1']:.2f}%\n")
    print("| graph | held-out top-1 | top-1 agreement | cosine min | ms / ten-crop | vs fp32 | quantize s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        cos, qs = r.get("cos_min"), r.get("quantize_s")
        print(
            f"| {r['graph']} | {r['top1']:.2f}% | {r['agree']:.2f}% | {'-' if cos is None else f'{cos:.4f}'} "
            f"| {r['ms']:.2f} | {fp32_ms / r['ms']:.2f}x | {'-' if qs is None else f'{qs:.1f}'} |"
        )
    return rows


def resnet50_rows(method: str, repeats: int, folder: Path) -> None:
    model, card = calibrated_model("resnet50")
    calibration, images = calib.prepare("samples", card, None, None, None)
    reference = Reference.from_model(model, card, images, "resnet50 (random init, BN calibrated)")
    proto, _ = export_model(model, card)
    graphs = {"fp32": OnnxRunner(_save(proto, folder / "r50.onnx"))}
    for target in TARGETS:
        q, _ = quantize_graph(proto, card, calibration, method, target)
        graphs[f"int8 {target}"] = OnnxRunner(_save(q, folder / f"r50.int8.{target}.onnx"))
    ms = {name: [] for name in graphs}
    for _ in range(3):  # interleaved rounds, so that load on a shared machine hits every graph alike
        for name, cand in graphs.items():
            ms[name].append(ten_crop_ms(cand, images.crops, max(1, repeats // 3)))
    best = {name: min(v) for name, v in ms.items()}
    print(f"\nResNet-50, random weights (agreement only), {method}, calibrated on {calibration.count} photos, ")
    print(f"compared on {len(images.files)} other photos (ten-crop); ms = best of 3 interleaved medians\n")
    print("| graph | ms / ten-crop (batch 10) | speed-up | top-1 agreement | cosine min |")
    print("|---|---|---|---|---|")
    for name, cand in graphs.items():
        if name == "fp32":
            print(f"| fp32 | {best[name]:.1f} | 1.00x | - | - |")
            continue
        m = evaluate(reference, cand, images, PRESETS["int8"], 10)["metrics"]
        speed = best["fp32"] / best[name]
        print(f"| {name} | {best[name]:.1f} | {speed:.2f}x | {m['top1_agreement']:.1f}% | {m['cosine_min']:.4f} |")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quantize_bench", description=__doc__)
    p.add_argument("--digits", type=Path, default=None, help="a trained digits checkpoint (skip part 1 without it)")
    p.add_argument("--count", type=int, default=50, help="calibration images for the digits sweep (default 50)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per graph (median; default 20)")
    p.add_argument("--no-resnet50", action="store_true", help="skip part 2")
    p.add_argument("--method", choices=METHODS, default="minmax", help="ResNet-50 calibration method")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="quantize-bench-") as tmp:
        if args.digits is not None:
            digits_rows(args.digits, args.count, args.repeats, Path(tmp))
        if not args.no_resnet50:
            resnet50_rows(args.method, args.repeats, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
