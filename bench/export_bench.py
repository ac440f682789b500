"""Export time and parity figures for ResNet-18/50: ``python -m bench.export_bench [--models resnet18 resnet50]``.

For each network (torchvision-compatible, random init with BatchNorm statistics calibrated on the sample photos so
the logits are in their usual range): export time with both exporters, FP16 conversion time, the FP32 and FP16
parity figures on the bundled sample photos (ten-crop, batch 10/1/max), and ONNX Runtime CPU time per batch of 10
beside PyTorch eager FP32, measured side by side in this one run. Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import resnet
from export.candidates import Reference
from export.fp16 import convert_fp16
from export.gate import PRESETS, evaluate
from export.images import load_image_set
from export.onnx import export_model
from resnet.runtime.runner import OnnxRunner
from resnet.samples import sample_photo_paths


def calibrated_model(name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A torchvision-compatible network with BN running statistics from one train-mode pass over the photos."""
    torch.manual_seed(0)
    model = resnet.create_model(name)
    card = resnet.make_card(name, provenance={"note": "random init, BN calibrated on sample photos"})
    x = torch.from_numpy(np.concatenate([resnet.preprocess(p, card, crops="center") for p in sample_photo_paths()]))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval(), card


def _median_time(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, max_batch: int, repeats: int, folder: Path) -> dict[str, Any]:
    model, card = calibrated_model(name)
    images = load_image_set(None, card)
    reference = Reference.from_model(model, card, images, f"{name} (calibrated random init)")
    row: dict[str, Any] = {"model": name, "images": len(images.files)}
    for exporter in ("dynamo", "torchscript"):
        start = time.perf_counter()
        proto, _ = export_model(model, card, exporter)
        row[f"export_{exporter}_s"] = time.perf_counter() - start
    proto, _ = export_model(model, card, "dynamo")
    start = time.perf_counter()
    proto16 = convert_fp16(proto, card)
    row["fp16_convert_s"] = time.perf_counter() - start
    sessions = {}
    for tag, p, preset in (("fp32", proto, "fp32"), ("fp16", proto16, "fp16")):
        path = folder / f"{name}.{tag}.onnx"
        path.write_bytes(p.SerializeToString())
        cand = OnnxRunner(path)
        result = evaluate(reference, cand, images, PRESETS[preset], max_batch)
        m = result["metrics"]
        row[tag] = {
            "passed": result["passed"],
            "top1": m["top1_agreement"],
            "top5": m["top5_agreement"],
            "cos_min": min(e["cosine_min"] for e in result["batch_sizes"].values()),
            "max_abs": m["max_abs"],
            "rel_l2": m["rel_l2"],
            "size_mb": path.stat().st_size / 1e6,
        }
        sessions[tag] = cand
    x10 = images.crops[:10]
    with torch.inference_mode():
        row["torch_b10_s"] = _median_time(lambda: model(torch.from_numpy(x10)), repeats)
    for tag, cand in sessions.items():
        row[f"ort_{tag}_b10_s"] = _median_time(lambda c=cand: c.run(x10), repeats)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | export dynamo s | export torchscript s | FP16 convert s | graph | size MB | top-1 agr. | "
        "top-5 agr. | cosine min | max-abs | rel-L2 | gate |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        for tag in ("fp32", "fp16"):
            g = r[tag]
            lines.append(
                f"| {r['model']} | {r['export_dynamo_s']:.1f} | {r['export_torchscript_s']:.1f} | "
                f"{r['fp16_convert_s']:.1f} | {tag.upper()} | {g['size_mb']:.1f} | {g['top1']:.1f}% | "
                f"{g['top5']:.1f}% | {g['cos_min']:.6f} | {g['max_abs']:.2e} | {g['rel_l2']:.2e} | "
                f"{'pass' if g['passed'] else 'FAIL'} |"
            )
    lines += ["", "| model | torch eager FP32, batch 10 | ORT CPU FP32 | ORT CPU FP16 graph |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['torch_b10_s']:.3f} s | {r['ort_fp32_b10_s']:.3f} s | {r['ort_fp16_b10_s']:.3f} s |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.export_bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "resnet50"], help="networks to export (default: 18, 50)")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch the gates check (default 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per latency figure (median; default 5)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_model(name, args.max_batch, args.repeats, Path(tmp)) for name in args.models]
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f}")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
