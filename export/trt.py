"""``python -m export.trt CHECKPOINT``: FP32 ONNX -> FP16 ONNX -> TensorRT engine, each admitted by a parity gate.

1. FP32 ONNX (``export.onnx``), gated against PyTorch FP32 (FP32 thresholds).
2. FP16 graph (``export.fp16``), gated on the CPU through ONNX Runtime (FP16 thresholds).
3. TensorRT engine (``export.engine``): built, run through ``resnet.trt_runtime.TensorRTRunner`` on the same images
   and gated (FP16 thresholds); then ``model.plan`` + ``model.plan.json`` (card, TensorRT version, GPU, profile,
   build mode, the parity report). Without a CUDA device or the ``tensorrt`` package, steps 1-2 still run, one line
   says the engine step was skipped and why, and the exit code is 0 (4 with ``--require-engine``).

The PyTorch reference runs once and serves all three gates. A failed gate exits 3 and leaves the candidate only as
``*.rejected`` (see ``export.artifacts``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import resnet
from resnet import MissingComponentError, UsageError, artifacts
from resnet.artifacts import DEFAULT_MAX_BATCH
from resnet.card import ModelCard
from resnet.trt_runtime import tensorrt_available

from . import gate
from .candidates import Reference
from .fp16 import convert_fp16
from .images import ImageSet, load_image_set
from .log import log
from .onnx import EXPORTERS, export_model, save_proto


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.trt",
        description="Export a checkpoint to FP32 ONNX, an FP16 graph and (with CUDA + TensorRT) a TensorRT engine, "
        "each admitted by an accuracy-parity gate on real images. Exit codes: 0 ok (engine step may be skipped), "
        "1 failed, 2 bad usage, 3 a parity gate failed, 4 --require-engine but no CUDA/TensorRT.",
    )
    p.add_argument("checkpoint", type=Path, help="our checkpoint (*.pt), or a torchvision state dict with --arch")
    p.add_argument(
        "-o", "--output-dir", type=Path, default=None, help="folder for the artifacts (default: beside the checkpoint)"
    )
    p.add_argument("--arch", default=None, help="architecture of a plain torchvision state dict, e.g. resnet50")
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="auto",
        help="ONNX exporter: dynamo, torchscript, or auto (dynamo, falling back to torchscript)",
    )
    gate.add_gate_arguments(
        p,
        max_batch_default=DEFAULT_MAX_BATCH,
        max_batch_help=f"engine profile maximum and the largest batch every gate checks (default {DEFAULT_MAX_BATCH})",
    )
    gate.add_threshold_argument(p, "--fp32-thresholds", "fp32")
    gate.add_threshold_argument(p, "--fp16-thresholds", "fp16")
    p.add_argument(
        "--require-engine",
        action="store_true",
        help="exit 4 instead of 0 when the engine cannot be built here (no CUDA device or no tensorrt)",
    )
    p.add_argument(
        "--timing-cache",
        type=Path,
        default=None,
        help="TensorRT timing cache file, read before and updated after the build "
        "(default: <output-dir>/<stem>.timing.cache)",
    )
    p.add_argument(
        "--strongly-typed",
        action="store_true",
        help="TensorRT 10: build a strongly typed network from the FP16 graph instead of the FP32 graph "
        "with the FP16 flag (TensorRT 11 always does this)",
    )
    return p


def _stage(name: str) -> float:
    log(f"== {name}")
    return time.perf_counter()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_batch < 1:
        raise UsageError("--max-batch must be >= 1")
    fp32_t = gate.thresholds_from_args(args, "fp32", "fp32_thresholds")
    fp16_t = gate.thresholds_from_args(args, "fp16", "fp16_thresholds")
    layout = artifacts.layout_for(args.checkpoint, args.output_dir)
    model, card = resnet.load_checkpoint(args.checkpoint, arch=args.arch)
    images = load_image_set(args.images, card, limit=args.limit)
    log(
        f"{card.name} ({card.family} {card.arch}{card.depth}, {card.num_classes} classes, "
        f"{card.input_size}px); gates use {len(images.files)} images from {images.source}, ten-crop"
    )
    reference = Reference.from_model(model, card, images, str(args.checkpoint))

    t0 = _stage("1/3 FP32 ONNX")
    proto, used = export_model(model, card, args.exporter)
    _gate(reference, proto, layout.onnx, images, fp32_t, args.max_batch, f"{used} exporter", t0)

    t0 = _stage("2/3 FP16 graph")
    proto16 = convert_fp16(proto, card)
    _gate(reference, proto16, layout.fp16, images, fp16_t, args.max_batch, "onnxconverter-common float16", t0)

    _stage("3/3 TensorRT engine")
    ok, reason = tensorrt_available()
    if not ok:
        if args.require_engine:
            raise MissingComponentError(f"engine step required but impossible: {reason}")
        log(f"engine step skipped: {reason}; the FP32 and FP16 graphs above are done and gated")
        return 0
    _engine(args, layout, card, reference, images, fp16_t)
    return 0


def _gate(
    reference: Reference,
    proto: Any,
    final: Path,
    images: ImageSet,
    thresholds: gate.Thresholds,
    max_batch: int,
    how: str,
    t0: float,
) -> None:
    report = gate.stage_gate_publish(
        reference, final, lambda staged: save_proto(proto, staged), images, thresholds, max_batch
    )
    log(f"wrote {final} ({how}, {time.perf_counter() - t0:.1f} s)")
    log(f"  {gate.summary_line(report)}")


def _engine(
    args: argparse.Namespace,
    layout: artifacts.Layout,
    card: ModelCard,
    reference: Reference,
    images: ImageSet,
    thresholds: gate.Thresholds,
) -> None:
    from .engine import build_engine, gpu_description

    t0 = time.perf_counter()
    build = build_engine(
        layout.onnx,
        layout.fp16,
        card.input_size,
        args.max_batch,
        args.timing_cache or layout.timing_cache,
        strongly_typed=args.strongly_typed or None,
    )
    log(
        f"built with TensorRT {build.tensorrt}: {build.mode}, profile {build.profile}, {build.seconds} s "
        f"(timing cache {'reused' if build.timing_cache_reused else 'new'}: {build.timing_cache})"
    )
    gpu = gpu_description()

    def write_sidecar(report: dict[str, Any]) -> None:
        sidecar = artifacts.EngineSidecar(
            card=card.replace(precision="fp16"),
            tensorrt=build.tensorrt,
            gpu_name=gpu["name"],
            compute_capability=gpu["compute_capability"],
            profile=build.profile,
            precision="fp16",
            build={
                "mode": build.mode,
                "source_onnx": build.source,
                "seconds": build.seconds,
                "timing_cache": build.timing_cache,
                "cuda": gpu.get("cuda"),
            },
            parity=report,
        )
        artifacts.write_sidecar(layout.plan, sidecar)

    report = gate.stage_gate_publish(
        reference,
        layout.plan,
        lambda staged: artifacts.write_bytes_to(staged, build.plan),
        images,
        thresholds,
        args.max_batch,
        card=card,
        on_pass=write_sidecar,
    )
    log(f"wrote {layout.plan} + {layout.plan_sidecar.name} ({gpu['name']}, {time.perf_counter() - t0:.1f} s)")
    log(f"  {gate.summary_line(report)}")


if __name__ == "__main__":
    raise SystemExit(resnet.run_cli(main, sys.argv[1:], prog="export.trt"))
