"""``python -m export.quantize CHECKPOINT_OR_ONNX``: a static INT8 graph (``*.int8.onnx``), admitted by the INT8 gate.

ONNX Runtime's static quantization (``onnxruntime.quantization``): ``quant_pre_process`` (shape inference and graph
optimisation), then ``quantize_static`` in QDQ format (QuantizeLinear/DequantizeLinear pairs around FP32 ops, which
ONNX Runtime fuses into integer kernels and TensorRT builds explicit-quantization INT8 engines from), per-channel
symmetric int8 weights, activations calibrated on real images through the card's ten-crop preprocessing
(``export.calib``). The card inside says ``precision: "int8"`` and records the calibration in its provenance.

Two layouts (``--target``, ``TARGETS``): ``cpu`` (default, ``model.int8.onnx``) is tuned for ONNX Runtime on the
CPU (uint8 asymmetric activations, int32 biases); ``tensorrt`` (``model.int8.trt.onnx``, what ``export.trt --int8``
builds its engine from) has symmetric int8 activations, float biases and Q/DQ only where TensorRT fuses them, and is
checked against TensorRT's ONNX rules (``export.trt_rules``) before it is gated.

The gate uses the ``int8`` preset on images disjoint from the calibration images, against the PyTorch FP32 reference
(or, given an FP32 ONNX graph, that graph in ONNX Runtime). A failed gate exits 3 and leaves ``*.rejected``; a bad
calibration source exits 1/2 with one line before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import resnet
from resnet import UsageError, UserError, artifacts
from resnet.card import ModelCard
from resnet.weights import add_weights_arguments, load_model_source, source_base

from . import calib, gate, trt_rules
from .candidates import Reference, graph_precision
from .log import log
from .onnx import ExportError, seal

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "minmax"  # measured on this project's models: see bench/RESULTS.md
CALIB_CHUNK = 8  # at most this many ten-crop batches are held at once; ranges/histograms merge chunk by chunk


@dataclass(frozen=True)
class Target:
    """How the INT8 graph is laid out for the runtime that will run it (``--target``)."""

    name: str
    activations: str  # "uint8" (asymmetric) or "int8" (symmetric, zero point 0)
    quantize_bias: bool  # biases as int32 DequantizeLinear (ONNX Runtime's integer kernels) or left in float
    op_types: tuple[str, ...] | None  # ops whose inputs get Q/DQ (None: ONNX Runtime's default list)
    no_output_qdq: tuple[str, ...]  # ops whose outputs get no Q/DQ of their own


TARGETS = {
    # ONNX Runtime on the CPU: asymmetric uint8 activations and int32 biases let it fuse every DQ -> Conv -> Q into
    # one u8 x s8 integer convolution (bench/RESULTS.md: 2.3-2.9x FP32 on x86; symmetric int8 was slower than FP32).
    "cpu": Target("cpu", "uint8", True, None, ()),
    # TensorRT (engine or ONNX Runtime's TensorRT EP): symmetric int8 everywhere, biases in float (TensorRT's parser
    # takes no UINT8 and no INT32 DequantizeLinear: export/trt_rules.py), Q/DQ on the inputs of the weighted ops
    # and on the skip input of each residual Add, never on their outputs (fuse_residual_adds), as TensorRT's Q/DQ
    # placement advice says: TensorRT then fuses Conv + bias + residual Add + ReLU into one INT8 kernel (TensorRT
    # developer guide, "Explicit Quantization", Q/DQ layer placement). ONNX Runtime's quantize_static
    # extra_options QuantizeBias and OpTypesToExcludeOutputQuantization: onnxruntime/quantization/quantize.py.
    "tensorrt": Target("tensorrt", "int8", False, ("Conv", "Gemm", "Add"), ("Conv", "Gemm", "Add")),
}
DEFAULT_TARGET = "cpu"


def calib_stride(batches: int, most: int = CALIB_CHUNK) -> int:
    """The largest chunk of at most ``most`` batches that divides ``batches`` (ONNX Runtime's
    ``CalibStridedMinMax`` needs the total to be a multiple of the stride)."""
    return max(d for d in range(1, min(most, batches) + 1) if batches % d == 0)


def _calibration_reader(calibration: calib.Calibration, input_name: str) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over the calibration crops, one ten-crop per batch.

    It has ``__len__`` and ``set_range``, so ``quantize_static`` with ``CalibStridedMinMax`` feeds it chunk by chunk
    and the calibrator merges each chunk's ranges (min/max) or histograms (entropy, percentile) into the last:
    every image counts and only one chunk's outputs are held. (``CalibMaxIntermediateOutputs`` is not used: ONNX
    Runtime 1.32's ``MinMaxCalibrater.collect_data`` clears what it collected at that count without merging it,
    onnxruntime/quantization/calibrate.py; ORT issue #18893.)"""
    from onnxruntime.quantization import CalibrationDataReader

    class CropReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._all = list(calibration.batches())
            self._batches = iter(self._all)

        def __len__(self) -> int:
            return len(self._all)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._batches = iter(self._all[start_index:end_index])

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return CropReader()


@contextlib.contextmanager
def _quiet() -> Any:
    """ONNX Runtime's quantization tools print and log progress; our own lines say what happens."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def quantize_graph(
    fp32: Any, card: ModelCard, calibration: calib.Calibration, method: str, target: str = DEFAULT_TARGET
) -> tuple[Any, ModelCard]:
    """FP32 ``onnx.ModelProto`` -> INT8 QDQ ModelProto (card sealed inside) and its card, laid out for ``target``
    (``TARGETS``). A ``tensorrt`` graph that breaks TensorRT's Q/DQ rules is ``TrtRulesError`` here, before any
    file is written."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}
    methods["percentile"] = CalibrationMethod.Percentile
    how_to = TARGETS[target]
    act = QuantType.QInt8 if how_to.activations == "int8" else QuantType.QUInt8
    extra: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": how_to.activations == "int8"}
    extra |= {"QuantizeBias": how_to.quantize_bias, "OpTypesToExcludeOutputQuantization": list(how_to.no_output_qdq)}
    extra["CalibStridedMinMax"] = calib_stride(calibration.count)
    with tempfile.TemporaryDirectory(prefix="export-quantize-") as tmp:
        src, pre, out = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32.SerializeToString())
        try:
            with _quiet():
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                quantize_static(
                    str(pre),
                    str(out),
                    _calibration_reader(calibration, "input"),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=act,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[method],
                    op_types_to_quantize=list(how_to.op_types) if how_to.op_types else None,
                    extra_options=extra,
                )
        except Exception as e:  # the quantiser raises many types for graphs it cannot handle
            raise ExportError(f"INT8 quantization failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        proto = onnx.load(str(out))
    if target == "tensorrt":
        fuse_residual_adds(proto)
        trt_rules.require_trt_ready(proto, "the INT8 graph for TensorRT")
    how = {"source": calibration.source, "count": calibration.count, "crops": "ten", "method": method}
    how |= {"activations": how_to.activations, "weights": "int8 per-channel symmetric", "format": "QDQ"}
    how |= {"target": target, "bias": "int32" if how_to.quantize_bias else "float"}
    card = card.replace(precision="int8").with_provenance(calibration=how)
    seal(
        proto, card, "resnet-stack export.quantize", f"onnxruntime {ort.__version__} quantize_static", "the INT8 graph"
    )
    return proto, card


def fuse_residual_adds(proto: Any) -> int:
    """Let TensorRT fuse each residual Add into the convolution before it: drop the Q/DQ pair between a Conv's
    output and the Add it feeds (one input per Add, the first that comes straight from a Conv); the other input, the
    skip connection, keeps its Q/DQ. TensorRT developer guide, Q/DQ placement: "quantize the residual input in
    skip connections", and an element-wise addition that follows a weighted layer is fused into it (the
    ResNetV1QDQCase of NVIDIA's TensorFlow quantization toolkit, ``remove_partial_input_qdq`` in Model Optimizer's
    ``modelopt.onnx.quantization.qdq_utils``). Returns how many Q/DQ pairs were removed; the graph is edited in place."""
    graph = proto.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    dropped: list[Any] = []
    for add in [n for n in graph.node if n.op_type == "Add"]:
        for k, name in enumerate(add.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            conv = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            if conv is None or conv.op_type != "Conv":
                continue
            if [c.name for c in consumers[q.output[0]]] != [dq.name] or len(consumers[name]) != 1 or name in outputs:
                continue  # the pair is shared with another consumer: it stays
            add.input[k] = q.input[0]
            dropped += [q, dq]
            break
    for node in dropped:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    return len(dropped) // 2


def load_source(
    path: Path, arch: str | None, weights: str | None = None, *, download: bool = False, check_hash: bool = True
) -> tuple[Any, ModelCard, Any]:
    """``(model or None, card, FP32 ModelProto)`` from a checkpoint or an architecture name with ``weights``
    (exported here), or an FP32 ONNX graph of ours."""
    from .onnx import export_model

    if weights:  # torchvision's named weights: resnet.weights.load_model_source checks the combination
        model, card = load_model_source(path, arch, weights, download=download, check_hash=check_hash)
        return model, card, export_model(model, card)[0]
    if download or not check_hash:
        raise UsageError("--download and --no-check-hash go with --weights NAME")
    kind = artifacts.artifact_kind(path)
    if kind == "engine":
        raise UsageError(f"{path}: a TensorRT engine cannot be quantized; pass the checkpoint or its FP32 .onnx")
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    if kind == "onnx":
        import onnx

        from resnet.onnx_card import read_onnx_card

        card = read_onnx_card(path)
        try:
            proto = onnx.load(str(path))
        except Exception as e:
            raise UserError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
        if graph_precision(proto) != "fp32":
            raise UsageError(f"{path} is already a {graph_precision(proto)} graph; pass the FP32 graph or checkpoint")
        return None, card, proto
    model, card = load_model_source(path, arch, download=download, check_hash=check_hash)
    proto, _ = export_model(model, card)
    return model, card, proto


def add_calib_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--calib``, ``--calib-count`` and ``--method``, shared by export.quantize and export.trt --int8."""
    p.add_argument(
        "--calib",
        default="samples",
        metavar="SOURCE",
        help=f"{prefix}calibration images: a folder, an ImageFolder, 'digits' (bundled training digits) or "
        "'samples' (bundled photos; default)",
    )
    p.add_argument(
        "--calib-count",
        type=int,
        default=None,
        metavar="N",
        help=f"{prefix}calibrate on at most N images, spread over the source (default {calib.DEFAULT_CALIB_COUNT})",
    )
    p.add_argument(
        "--method", choices=METHODS, default=DEFAULT_METHOD, help=f"{prefix}calibration method (default %(default)s)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.quantize",
        description="Quantize a checkpoint or FP32 ONNX graph to a static INT8 QDQ graph (ONNX Runtime), calibrated "
        "on real images, and gate it against FP32 on other images. Exit codes: 0 ok, 1 failed, 2 bad usage, "
        "3 parity gate failed.",
    )
    p.add_argument(
        "source",
        type=Path,
        metavar="SOURCE",
        help="our checkpoint (*.pt), our FP32 .onnx, or an architecture name with --weights (e.g. resnet50)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="output path (default: beside the input, model.int8.onnx, or model.int8.trt.onnx for --target tensorrt; "
        "for an architecture name with --weights, in the current folder: resnet50 -> ./resnet50.int8.onnx)",
    )
    p.add_argument("--arch", default=None, help="architecture of a plain torchvision state dict, e.g. resnet50")
    add_weights_arguments(p)
    add_calib_arguments(p)
    p.add_argument(
        "--target",
        choices=tuple(TARGETS),
        default=DEFAULT_TARGET,
        help="the runtime the graph is laid out for: cpu (ONNX Runtime on the CPU: uint8 asymmetric activations, "
        "int32 biases; model.int8.onnx) or tensorrt (symmetric int8, float biases, Q/DQ where TensorRT fuses them, "
        "checked against TensorRT's ONNX rules; model.int8.trt.onnx); default %(default)s",
    )
    gate.add_gate_arguments(
        p, images_default="the held-out digits for --calib digits, else the photos; never a calibration image"
    )
    gate.add_threshold_argument(p, "--thresholds", "int8")
    return p


def graph_path(layout: artifacts.Layout, target: str) -> Path:
    """Where the INT8 graph for ``target`` goes: ``model.int8.onnx`` (cpu) or ``model.int8.trt.onnx`` (tensorrt)."""
    return layout.int8 if target == "cpu" else layout.int8_tensorrt


def output_path(source: Path, output: Path | None, weights: str | None = None, target: str = DEFAULT_TARGET) -> Path:
    out = output or graph_path(artifacts.layout_for(source_base(source, weights)), target)
    if out.suffix != ".onnx":
        raise UsageError(f"output must end in .onnx, not {out.name}")
    artifacts.ensure_writable(out.parent)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    thresholds = gate.thresholds_from_args(args, "int8")
    out = output_path(args.source, args.output, args.weights, args.target)
    model, card, fp32 = load_source(
        args.source, args.arch, args.weights, download=args.download, check_hash=args.check_hash
    )
    calibration, images = calib.prepare(args.calib, card, args.calib_count, args.images, args.limit)
    log(
        f"calibrating on {calibration.count} images from {calibration.source} ({args.method}, for {args.target}: "
        f"{TARGETS[args.target].activations} activations); gate on {len(images.files)} other images from "
        f"{images.source}"
    )
    t0 = time.perf_counter()
    proto, int8_card = quantize_graph(fp32, card, calibration, args.method, args.target)
    log(f"quantized in {time.perf_counter() - t0:.1f} s")
    if model is not None:
        reference = Reference.from_model(model, card, images, str(args.source))
    else:
        reference = Reference.from_onnx(args.source, card, images)
    report = gate.stage_gate_publish(
        reference,
        out,
        lambda staged: artifacts.write_bytes_to(staged, proto.SerializeToString()),
        images,
        thresholds,
        args.max_batch,
        card=int8_card,
    )
    log(f"wrote {out} (INT8 QDQ for {args.target}) · {gate.summary_line(report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(resnet.run_cli(main, sys.argv[1:], prog="export.quantize"))
