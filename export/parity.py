"""``python -m export.parity REFERENCE CANDIDATE``: do the predictions stay the same on real images?

The reference is the checkpoint in PyTorch FP32 on the CPU; the candidate an ONNX file (ONNX Runtime, CPU; or
``--ep cuda|tensorrt`` [``--trt-fp16``] on the GPU provider that will serve it) or a TensorRT engine (``*.plan``,
GPU) -- see ``export.candidates``. A graph gated on a GPU provider gets its own report
(``model.onnx.ort-tensorrt-fp16.parity.json``), which is what lets the server serve that combination. Both see the same real images through the shared
ten-crop preprocessing (``export.images``): by default the bundled sample photos, or ``--images DIR`` (a flat folder,
or an ImageFolder whose folder names are the model's labels, which adds labelled top-1/top-5 accuracy of both).
The gate itself (batch sizes, metrics, thresholds, the report ``<candidate>.parity.json``) is ``export.gate``.

A candidate that fails (or cannot even run) is renamed to ``<candidate>.rejected`` (a TensorRT engine's sidecar to
``<plan>.json.rejected``) and the command exits 3; nothing is left under a name a server would load.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import resnet
from resnet import UserError, artifacts
from resnet.runtime.kinds import EP_PROVIDERS, Combination, graph_precision
from resnet.runtime.report import combination_report_path

from .candidates import Reference, check_same_model
from .gate import PRESETS, add_gate_arguments, fmt_thresholds, gate_candidate, summary_line, thresholds_from_args
from .images import load_image_set
from .log import log

__all__ = ["PRESETS", "build_parser", "detect_preset", "main"]


def detect_preset(candidate: Path, trt_fp16: bool = False) -> str:
    """The preset matching the candidate's precision: an engine's from its sidecar card (int8, else fp16), a graph's
    from its nodes and weights (Q/DQ nodes: int8, FP16 weights: fp16, else fp32; fp16 for an FP32 graph run with
    ``--trt-fp16``)."""
    if artifacts.artifact_kind(candidate) == "engine":
        try:
            return "int8" if artifacts.read_sidecar(candidate).card.precision == "int8" else "fp16"
        except UserError:
            return "fp16"  # opening the engine reports a bad or missing sidecar with a clear line
    try:
        import onnx

        proto = onnx.load(str(candidate), load_external_data=False)
    except Exception:
        return "fp32"  # the candidate's loader reports a bad file with a clear line
    precision = graph_precision(proto)
    if precision == "fp32" and trt_fp16:
        return "fp16"
    return precision if precision in PRESETS else "fp32"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.parity",
        description="Compare a candidate (ONNX or TensorRT engine) with its PyTorch FP32 reference on real images "
        "(ten-crop). Writes <candidate>.parity.json; a failed candidate is renamed to <candidate>.rejected. "
        "Exit codes: 0 passed, 1 failed to run, 2 bad usage, 3 gate failed.",
    )
    p.add_argument("reference", type=Path, help="the checkpoint (*.pt, or a torchvision state dict with --arch)")
    p.add_argument("candidate", type=Path, help="an ONNX file exported by this project, or a *.plan engine")
    p.add_argument("--arch", default=None, help="architecture of a plain torchvision state dict, e.g. resnet50")
    p.add_argument(
        "--preset",
        choices=("auto", *PRESETS),
        default="auto",
        help="threshold preset; auto: int8 for a graph with Q/DQ nodes or an INT8 engine, fp16 for another engine "
        "or a graph with FP16 weights, else fp32",
    )
    p.add_argument(
        "--thresholds",
        default=None,
        metavar="K=V,...",
        help="override preset thresholds, e.g. min_cosine=0.9995,max_top1_change=0.5 ("
        + "; ".join(f"{name}: {fmt_thresholds(t)}" for name, t in PRESETS.items())
        + ")",
    )
    p.add_argument(
        "--ep",
        choices=tuple(EP_PROVIDERS),
        default="cpu",
        help="ONNX Runtime execution provider to run a graph on (default cpu). cuda / tensorrt gate the published "
        "graph on that GPU provider, with no fallback to the CPU, and write its own report, which the server needs "
        "to serve that combination; the graph itself is neither published nor rejected by such a gate",
    )
    p.add_argument(
        "--trt-fp16",
        action="store_true",
        help="with --ep tensorrt: TensorRT builds the FP32 graph in FP16 (trt_fp16_enable), as the server would",
    )
    add_gate_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.candidate.is_file():
        raise UserError(f"no such file: {args.candidate}")
    preset = detect_preset(args.candidate, args.trt_fp16) if args.preset == "auto" else args.preset
    thresholds = thresholds_from_args(args, preset)
    artifacts.ensure_writable(args.candidate.parent)
    model, card = resnet.load_checkpoint(args.reference, arch=args.arch)
    engine = artifacts.artifact_kind(args.candidate) == "engine"
    cand_card = artifacts.read_card(args.candidate)
    check_same_model(card, cand_card, args.candidate)
    images = load_image_set(args.images, card, limit=args.limit)
    log(f"reference {args.reference} (PyTorch FP32, CPU) on {len(images.files)} images from {images.source}")
    reference = Reference.from_model(model, card, images, str(args.reference))
    # A published engine is opened through its sidecar, which is checked against this machine's TensorRT and GPU.
    card_arg = None if engine else cand_card
    report = gate_candidate(
        reference, args.candidate, images, thresholds, args.max_batch, card=card_arg, ep=args.ep, trt_fp16=args.trt_fp16
    )
    log(
        f"{args.candidate} ({preset.upper()} gate, {report['runtime']} on {report['provider']}): {summary_line(report)}"
    )
    log(f"report: {combination_report_path(args.candidate, Combination(**_combination_fields(report)))}")
    return 0


def _combination_fields(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("runtime", "provider", "precision")}


if __name__ == "__main__":
    raise SystemExit(resnet.run_cli(main, sys.argv[1:], prog="export.parity"))
