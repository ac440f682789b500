"""``python -m export.trt CHECKPOINT``: FP32 ONNX -> FP16 ONNX -> TensorRT engine, each admitted by a parity gate.

1. FP32 ONNX (``export.onnx``), gated against PyTorch FP32 (FP32 thresholds).
2. FP16 graph (``export.fp16``), gated on the CPU through ONNX Runtime (FP16 thresholds).
3. With ``--int8``: the INT8 QDQ graph laid out for TensorRT (``export.quantize --target tensorrt``:
   ``model.int8.trt.onnx``, symmetric int8, float biases), calibrated on ``--calib``, checked against TensorRT's ONNX
   rules (``export.trt_rules``: a graph that breaks them exits 1 with the reason, before anything is written or
   built) and gated on other images on the CPU (INT8 thresholds). The CPU-tuned ``model.int8.onnx`` is
   ``export.quantize``'s (default ``--target cpu``).
4. TensorRT engine (``export.engine``): built, run through ``resnet.runtime.tensorrt.TensorRTRunner`` on the same images
   and gated (FP16 thresholds); then ``model.plan`` + ``model.plan.json`` (card, TensorRT version, GPU, profile,
   build mode, the parity report). With ``--int8`` also ``model.int8.plan`` (+ ``.json``): a strongly typed engine
   from ``model.int8.trt.onnx`` (explicit quantization), gated with the INT8 thresholds. Without a CUDA device or the
   ``tensorrt`` package, the graphs are still made, one line says the engine step was skipped and why, and the
   exit code is 0 (4 with ``--require-engine``). With ``--multiscale`` each engine gets a second optimisation
   profile for the paper's multi-scale views (``export.engine.engine_profiles``), its gate also runs the multi-scale
   protocol, and the sidecar records that profile under ``multiscale``.

The PyTorch reference runs once and serves all three gates. A failed gate exits 3 and leaves the candidate only as
``*.rejected`` (see ``resnet.artifacts``).
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
from resnet.digest import bytes_sha256
from resnet.multiscale import VIEW_MAX_ASPECT, VIEW_MAX_BATCH
from resnet.runtime.tensorrt import tensorrt_available
from resnet.weights import add_source_arguments, load_model_source, source_base

from . import calib, gate, quantize
from .candidates import Reference
from .engine import build_engine, engine_profiles, gpu_description, multiscale_record
from .fp16 import convert_fp16
from .images import ImageSet, load_image_set
from .log import log
from .onnx import EXPORTERS, export_model, save_proto, source_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.trt",
        description="Export a checkpoint to FP32 ONNX, an FP16 graph and (with CUDA + TensorRT) a TensorRT engine, "
        "each admitted by an accuracy-parity gate on real images. Exit codes: 0 ok (engine step may be skipped), "
        "1 failed, 2 bad usage, 3 a parity gate failed, 4 --require-engine but no CUDA/TensorRT.",
    )
    add_source_arguments(p)
    p.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=None,
        help="folder for the artifacts (default: beside the checkpoint; for an architecture name with --weights, "
        "the current folder: resnet50 -> ./resnet50.onnx, ./resnet50.fp16.onnx, ./resnet50.plan)",
    )
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
        "--int8",
        action="store_true",
        help="also make the TensorRT-ready INT8 QDQ graph (model.int8.trt.onnx: checked against TensorRT's ONNX "
        "rules, then gated) and, on a GPU, an INT8 TensorRT engine from it (model.int8.plan)",
    )
    quantize.add_calib_arguments(p, prefix="--int8: ")
    gate.add_threshold_argument(p, "--int8-thresholds", "int8")
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
        "--multiscale",
        action="store_true",
        help="give each engine a second optimisation profile for the paper's multi-scale test (whole image at "
        f"every side: height and width each in [smallest side, {VIEW_MAX_ASPECT:g} x largest side], batch up to "
        f"{VIEW_MAX_BATCH}); the ten-crop profile is unchanged. Costs build time and GPU memory for that profile",
    )
    p.add_argument(
        "--strongly-typed",
        action="store_true",
        help="TensorRT 10.0-10.11: build a strongly typed network from the FP16 graph instead of the FP32 graph "
        "with the FP16 flag (TensorRT 10.12 and later always do this: the FP16 flag is deprecated there)",
    )
    return p


def int8_plan(layout: artifacts.Layout) -> Path:
    """The INT8 engine beside the FP16 one: ``model.int8.plan`` (sidecar ``model.int8.plan.json``)."""
    return layout.folder / f"{layout.stem}.int8.plan"


def _stage(name: str) -> float:
    log(f"== {name}")
    return time.perf_counter()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_batch < 1:
        raise UsageError("--max-batch must be >= 1")
    fp32_t = gate.thresholds_from_args(args, "fp32", "fp32_thresholds")
    fp16_t = gate.thresholds_from_args(args, "fp16", "fp16_thresholds")
    int8_t = gate.thresholds_from_args(args, "int8", "int8_thresholds")
    layout = artifacts.layout_for(source_base(args.checkpoint, args.weights), args.output_dir)
    model, card = load_model_source(
        args.checkpoint, args.arch, args.weights, download=args.download, check_hash=args.check_hash
    )
    images = load_image_set(args.images, card, limit=args.limit)
    int8_inputs = calib.prepare(args.calib, card, args.calib_count, args.images, args.limit) if args.int8 else None
    log(
        f"{card.name} ({card.family} {card.arch}{card.depth}, {card.num_classes} classes, "
        f"{card.input_size}px); gates use {len(images.files)} images from {images.source}, ten-crop"
    )
    reference = Reference.from_model(model, card, images, source_name(args.checkpoint, card, args.weights))
    steps = 4 if args.int8 else 3

    t0 = _stage(f"1/{steps} FP32 ONNX")
    proto, used = export_model(model, card, args.exporter)
    _gate(reference, proto, layout.onnx, images, fp32_t, args.max_batch, f"{used} exporter", t0)

    t0 = _stage(f"2/{steps} FP16 graph")
    proto16 = convert_fp16(proto, card)
    _gate(reference, proto16, layout.fp16, images, fp16_t, args.max_batch, "onnxconverter-common float16", t0)

    int8_rung = None
    if int8_inputs is not None:
        t0 = _stage(f"3/{steps} INT8 graph")
        int8_path = quantize.graph_path(layout, "tensorrt")
        int8_rung = _int8_graph(args, model, card, proto, int8_path, int8_inputs, int8_t, t0)

    _stage(f"{steps}/{steps} TensorRT engine")
    ok, reason = tensorrt_available()
    if not ok:
        if args.require_engine:
            raise MissingComponentError(f"engine step required but impossible: {reason}")
        graphs = "FP32, FP16 and INT8 graphs" if args.int8 else "FP32 and FP16 graphs"
        note = (
            " (--multiscale shapes the engine's profiles; the graphs take any size already)" if args.multiscale else ""
        )
        log(f"engine step skipped: {reason}; the {graphs} above are done and gated{note}")
        return 0
    _engine(args, layout, card, reference, images, fp16_t)
    if int8_rung is not None:
        _engine(args, layout, *int8_rung, int8=True)
    return 0


def _int8_graph(
    args: argparse.Namespace,
    model: Any,
    card: ModelCard,
    proto: Any,
    final: Path,
    inputs: tuple[calib.Calibration, ImageSet],
    thresholds: gate.Thresholds,
    t0: float,
) -> tuple[ModelCard, Reference, ImageSet, gate.Thresholds]:
    """The INT8 QDQ graph laid out for TensorRT, checked against TensorRT's ONNX rules (``quantize_graph`` raises
    ``TrtRulesError`` before anything is written), then gated on images kept from calibration."""
    calibration, images = inputs
    log(f"calibrating on {calibration.count} images from {calibration.source}; gate on {len(images.files)} others")
    proto8, card8 = quantize.quantize_graph(proto, card, calibration, args.method, "tensorrt")
    log("  keeps TensorRT's ONNX rules (INT8 Q/DQ only, zero points 0, no INT32 DequantizeLinear)")
    reference = Reference.from_model(model, card, images, source_name(args.checkpoint, card, args.weights))
    how = "onnxruntime quantize_static, QDQ for TensorRT"
    _gate(reference, proto8, final, images, thresholds, args.max_batch, how, t0)
    return card8, reference, images, thresholds


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
    *,
    int8: bool = False,
) -> None:
    """Build the FP16 engine (or, ``int8``, the INT8 engine from the QDQ graph), gate it, write it + its sidecar."""
    t0 = time.perf_counter()
    precision = "int8" if int8 else "fp16"
    plan = int8_plan(layout) if int8 else layout.plan
    profiles = engine_profiles(card, args.max_batch, args.multiscale)
    build = build_engine(
        layout.onnx,
        layout.fp16,
        profiles,
        args.timing_cache or layout.timing_cache,
        strongly_typed=args.strongly_typed or None,
        int8_onnx=quantize.graph_path(layout, "tensorrt") if int8 else None,
    )
    multiscale = multiscale_record(card, profiles)
    views = f" + multi-scale profile {multiscale}" if multiscale else ""
    log(
        f"built with TensorRT {build.tensorrt}: {build.mode}, profile {build.profile}{views}, {build.seconds} s "
        f"(timing cache {'reused' if build.timing_cache_reused else 'new'}: {build.timing_cache})"
    )
    gpu = gpu_description()

    def write_sidecar(report: dict[str, Any]) -> None:
        sidecar = artifacts.EngineSidecar(
            card=card.replace(precision=precision),
            tensorrt=build.tensorrt,
            gpu_name=gpu["name"],
            compute_capability=gpu["compute_capability"],
            profile=build.profile,
            precision=precision,
            build={
                "mode": build.mode,
                "source_onnx": build.source,
                "seconds": build.seconds,
                "timing_cache": build.timing_cache,
                "cuda": gpu.get("cuda"),
            },
            parity=report,
            multiscale=multiscale,
            plan_sha256=bytes_sha256(build.plan),  # checked by artifacts.read_sidecar at every load
        )
        artifacts.write_sidecar(plan, sidecar)

    report = gate.stage_gate_publish(
        reference,
        plan,
        lambda staged: artifacts.write_bytes_to(staged, build.plan),
        images,
        thresholds,
        args.max_batch,
        card=card,
        on_pass=write_sidecar,
    )
    sidecar_name = artifacts.sidecar_path(plan).name
    log(f"wrote {plan} + {sidecar_name} ({gpu['name']}, {time.perf_counter() - t0:.1f} s)")
    log(f"  {gate.summary_line(report)}")


if __name__ == "__main__":
    raise SystemExit(resnet.run_cli(main, sys.argv[1:], prog="export.trt"))
