"""``python -m export.onnx CHECKPOINT``: FP32 ONNX with a dynamic batch, the model card inside, admitted by the gate.

Exporters: ``dynamo`` (``torch.onnx.export(..., dynamo=True)`` via torch.export + onnxscript; works for every
network of the paper: ImageNet 18-152, plain, shortcuts A/B/C, v1/v1.5, CIFAR) and ``torchscript`` (the legacy
tracer, opset 17), kept as the documented fallback. ``auto`` (default) tries dynamo and falls back to TorchScript
with one line saying why. Both trace with a batch of 2 so the batch dimension is never frozen, and both results are
checked: input ``input`` float32 ``[N, 3, S, S]``, output ``logits`` float32 ``[N, C]`` with N symbolic, the card in
``metadata_props``, ``onnx.checker`` clean.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import resnet
from resnet import UsageError, UserError, artifacts
from resnet.card import ModelCard
from resnet.onnx_card import set_onnx_card
from resnet.weights import add_source_arguments, load_model_source, source_base

from . import gate
from .candidates import Reference
from .images import load_image_set
from .log import log

EXPORTERS = ("auto", "dynamo", "torchscript")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
TORCHSCRIPT_OPSET = 17
TRACE_BATCH = 2  # >= 2, so neither exporter specialises the batch dimension to a constant
DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}  # of the input; the output's axis 0 is "batch" too
MIN_SIDE, MAX_SIDE = 8, 16384  # the spatial range torch.export is told (ONNX itself keeps the axes symbolic)


class ExportError(UserError):
    """The exporter failed or produced a graph that breaks the ONNX contract of docs/DESIGN.md §2."""


def _quiet() -> contextlib.ExitStack:
    """Silence the exporters' progress prints and deprecation warnings (our own log lines say what happens)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def _export_dynamo(model: nn.Module, example: torch.Tensor) -> Any:
    dims = {
        0: torch.export.Dim("batch", min=1, max=65536),
        2: torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE),
        3: torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE),
    }
    with _quiet():
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(dims,),
            optimize=True,
            verbose=False,
        )
    return program.model_proto


def _export_torchscript(model: nn.Module, example: torch.Tensor) -> Any:
    import onnx

    buf = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            model,
            (example,),
            buf,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: DYNAMIC_AXES, OUTPUT_NAME: {0: "batch"}},
            opset_version=TORCHSCRIPT_OPSET,
            do_constant_folding=True,
            verbose=False,
        )
    return onnx.load_from_string(buf.getvalue())


def export_model(model: nn.Module, card: ModelCard, exporter: str = "auto") -> tuple[Any, str]:
    """Export an eval-mode network to an ``onnx.ModelProto`` with the card; returns ``(proto, exporter used)``."""

    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    model = model.eval()
    size = card.input_size
    example = torch.randn(TRACE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    used = "dynamo" if exporter in ("auto", "dynamo") else "torchscript"
    try:
        proto = _export_dynamo(model, example) if used == "dynamo" else _export_torchscript(model, example)
    except Exception as e:  # exporters raise many types; the user sees one line, auto mode falls back
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if exporter != "auto":
            raise ExportError(f"the {used} exporter failed: {type(e).__name__}: {first}") from None
        log(f"dynamo exporter failed ({type(e).__name__}: {first}); falling back to the TorchScript exporter")
        used = "torchscript"
        try:
            proto = _export_torchscript(model, example)
        except Exception as e2:
            first = (str(e2).strip().splitlines() or [type(e2).__name__])[0][:200]
            raise ExportError(f"both exporters failed; torchscript: {type(e2).__name__}: {first}") from None
    seal(proto, card, "resnet-stack export.onnx", f"torch {torch.__version__} ({used})", "the exported graph")
    return proto, used


def seal(proto: Any, card: ModelCard, producer: str, version: str, what: str) -> None:
    """The last step of every graph we write: the card in metadata, producer fields, our I/O contract, onnx.checker."""
    import onnx

    set_onnx_card(proto, card)
    proto.producer_name = producer
    proto.producer_version = version
    check_contract(proto, card)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"onnx.checker rejected {what}: {str(e).splitlines()[0]}") from None


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_contract(proto: Any, card: ModelCard) -> None:
    """Names, types and shapes of docs/DESIGN.md §2.3: ``input`` float32 [N,3,H,W] -> ``logits`` float32 [N,C], N
    symbolic; H and W symbolic (any size: multi-scale) or both the card's input size (a fixed-size graph)."""
    import onnx

    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise ExportError(
            f"graph I/O is {[i.name for i in inputs]} -> {[o.name for o in graph.output]}, "
            f"expected ['{INPUT_NAME}'] -> ['{OUTPUT_NAME}']"
        )
    for vi in (inputs[0], graph.output[0]):
        if vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"graph {vi.name!r} is not float32")
    size, classes = card.input_size, card.num_classes
    din, dout = _dims(inputs[0]), _dims(graph.output[0])
    spatial_ok = all(isinstance(d, str) for d in din[2:]) or din[2:] == [size, size]
    if len(din) != 4 or din[1] != 3 or not spatial_ok or len(dout) != 2 or dout[1] != classes:
        raise ExportError(
            f"graph shapes {din} -> {dout}, expected [N, 3, H, W] (or [N, 3, {size}, {size}]) -> [N, {classes}]"
        )
    if not isinstance(din[0], str) or not isinstance(dout[0], str):
        raise ExportError(f"the batch dimension is frozen ({din[0]} -> {dout[0]}); it must be symbolic")


def save_proto(proto: Any, path: Path) -> None:
    """Serialise a ModelProto to ``path`` (a staging file); one-line error if it cannot be written."""
    artifacts.write_bytes_to(path, proto.SerializeToString())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.onnx",
        description="Export a checkpoint to FP32 ONNX (dynamic batch, model card inside) and gate it against "
        "PyTorch FP32 on real images. Exit codes: 0 ok, 1 failed, 2 bad usage, 3 parity gate failed.",
    )
    add_source_arguments(p)
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="output .onnx path (default: beside the checkpoint, model.pt -> model.onnx; for an architecture name "
        "with --weights, in the current folder: resnet50 -> ./resnet50.onnx)",
    )
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="auto",
        help="dynamo (torch.export + onnxscript), torchscript (legacy tracer), or auto: dynamo, "
        "falling back to torchscript if it fails (default)",
    )
    p.add_argument(
        "--no-gate",
        action="store_true",
        help="skip the parity gate (the file is still checked by onnx.checker); not for production",
    )
    gate.add_gate_arguments(p)
    gate.add_threshold_argument(p, "--thresholds", "fp32")
    return p


def source_name(source: Path | str, card: ModelCard, weights: str | None) -> str:
    """What the gate report names as the reference: the checkpoint, or the named weights."""
    return f"{card.name} with {card.provenance['weights']}" if weights else str(source)


def export_onnx(
    checkpoint: Path,
    out: Path | None = None,
    *,
    arch: str | None = None,
    exporter: str = "auto",
    images: Path | None = None,
    limit: int | None = None,
    max_batch: int | None = None,
    thresholds: gate.Thresholds | None = None,
    run_gate: bool = True,
    weights: str | None = None,
    download: bool = False,
    check_hash: bool = True,
) -> tuple[Path, dict[str, Any] | None]:
    """Export ``checkpoint`` to a gated FP32 graph at ``out`` (default beside it); returns it and its report.

    With ``weights`` the ``checkpoint`` argument is an architecture name built with torchvision's named weights
    (``resnet.weights.load_model_source``), and the default output is ``./<arch>.onnx``. A failed gate raises
    ``ParityError`` (exit 3) with the graph moved to ``<out>.rejected``; ``run_gate=False`` publishes the checked
    graph ungated (report None).
    """
    out = out or artifacts.layout_for(source_base(checkpoint, weights)).onnx
    if out.suffix != ".onnx":
        raise UsageError(f"output must end in .onnx, not {out.name}")
    artifacts.ensure_writable(out.parent)
    model, card = load_model_source(checkpoint, arch, weights, download=download, check_hash=check_hash)
    proto, used = export_model(model, card, exporter)
    if not run_gate:
        staged = artifacts.staging_path(out)
        try:
            save_proto(proto, staged)
            artifacts.publish(staged, out)
        finally:
            staged.unlink(missing_ok=True)
        log(f"wrote {out} ({used} exporter; parity gate skipped by --no-gate)")
        return out, None
    image_set = load_image_set(images, card, limit=limit)
    reference = Reference.from_model(model, card, image_set, source=source_name(checkpoint, card, weights))
    report = gate.stage_gate_publish(
        reference,
        out,
        lambda staged: save_proto(proto, staged),
        image_set,
        thresholds or gate.PRESETS["fp32"],
        max_batch,
    )
    log(f"wrote {out} ({used} exporter) · {gate.summary_line(report)}")
    return out, report


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    thresholds = gate.thresholds_from_args(args, "fp32")
    export_onnx(
        args.checkpoint,
        args.output,
        arch=args.arch,
        exporter=args.exporter,
        images=args.images,
        limit=args.limit,
        max_batch=args.max_batch,
        thresholds=thresholds,
        run_gate=not args.no_gate,
        weights=args.weights,
        download=args.download,
        check_hash=args.check_hash,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(resnet.run_cli(main, sys.argv[1:], prog="export.onnx"))
