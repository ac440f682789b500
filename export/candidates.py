"""What the gate compares: the PyTorch FP32 reference and a candidate (ONNX Runtime graph or TensorRT engine).

The reference is the checkpoint in PyTorch FP32 on the CPU (TF32 and reduced-precision matmul off). A candidate is
an ONNX file run by ONNX Runtime (CPU execution provider) or a TensorRT engine (``*.plan``, on the GPU); each has
``run(x) -> logits``, ``min_batch``/``max_batch``, ``spatial`` (the ``(min, max)`` input height/width it takes, or
None when only the card's S x S), ``precision``, ``info`` and ``close()``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet import UserError, artifacts
from resnet.card import ModelCard
from resnet.multiscale import ANY_SIZE

from .images import ImageSet
from .log import progress

REFERENCE_BATCH = 50  # the reference's batch size does not matter for its result, only for its speed
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def fp32_reference_settings() -> None:
    """The reference is true FP32: no TF32 on CUDA, highest matmul precision on every backend."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


@dataclass
class Reference:
    """PyTorch FP32 CPU logits for an image set, computed once and shared by every gate of a run."""

    card: ModelCard
    logits: np.ndarray
    info: dict[str, Any]
    view_logits: list[list[np.ndarray]] = field(default_factory=list)  # per image, per side (``ImageSet.views``)

    @classmethod
    def from_model(cls, model: Any, card: ModelCard, images: ImageSet, source: str) -> Reference:
        import torch

        fp32_reference_settings()
        model = model.eval().float().cpu()
        x = torch.from_numpy(images.crops)
        start = time.perf_counter()
        chunks = range(0, len(x), REFERENCE_BATCH)
        with torch.inference_mode():
            outs = [model(x[i : i + REFERENCE_BATCH]).numpy() for i in progress(chunks, "reference", len(chunks))]
            views = [
                [model(torch.from_numpy(v)).numpy().astype(np.float32) for v in per_side]
                for per_side in progress(images.views, "reference multi-scale", len(images.views))
            ]
        seconds = time.perf_counter() - start
        info = {
            "backend": "pytorch-fp32-cpu",
            "path": source,
            "torch": torch.__version__,
            "seconds": round(seconds, 3),
        }
        return cls(card, np.concatenate(outs).astype(np.float32), info, views)

    @classmethod
    def from_onnx(cls, path: Path, card: ModelCard, images: ImageSet) -> Reference:
        """An FP32 graph of ours run by ONNX Runtime, when no checkpoint is at hand (it passed its own FP32 gate)."""
        graph = OnnxCandidate(path, card)
        if graph.precision != "fp32":
            raise UserError(f"{path}: a {graph.precision} graph cannot be the FP32 reference; pass the FP32 graph")
        start = time.perf_counter()
        try:
            starts = range(0, len(images.crops), REFERENCE_BATCH)
            outs = [
                graph.run(images.crops[i : i + REFERENCE_BATCH]) for i in progress(starts, "reference", len(starts))
            ]
            views = [[graph.run(v) for v in per_side] for per_side in images.views] if graph.spatial else []
        finally:
            graph.close()
        info = {**graph.info, "backend": "onnxruntime-fp32-cpu", "seconds": round(time.perf_counter() - start, 3)}
        return cls(card, np.concatenate(outs), info, views)


def graph_precision(proto: Any) -> str:
    """``int8`` for a graph with Q/DQ nodes, ``fp16`` for one with FP16 weights, else ``fp32``."""
    import onnx

    if any(node.op_type in QDQ_OPS for node in proto.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16"
    return "fp32"


class OnnxCandidate:
    """An ONNX file with our card, run by ONNX Runtime on the CPU."""

    kind = "onnx"

    def __init__(self, path: Path, card: ModelCard | None = None) -> None:
        import onnx
        import onnxruntime as ort

        from resnet.onnx_card import read_onnx_card

        self.card = card if card is not None else read_onnx_card(path)
        try:
            proto = onnx.load(str(path))
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # a corrupt or unrunnable graph: one line
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            raise UserError(f"{path}: ONNX Runtime cannot load it ({why})") from None
        self.precision = graph_precision(proto)
        self.input_name = self.session.get_inputs()[0].name
        self.min_batch, self.max_batch = 1, None
        shape = self.session.get_inputs()[0].shape
        self.spatial = ANY_SIZE if len(shape) == 4 and not any(isinstance(d, int) for d in shape[2:]) else None
        self.info = {
            "backend": "onnxruntime-cpu",
            "path": str(path),
            "onnxruntime": ort.__version__,
            "providers": self.session.get_providers(),
            "precision": self.precision,
        }

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)

    def close(self) -> None:
        self.session = None


class EngineCandidate:
    """A TensorRT engine (``*.plan``) run through ``resnet.trt_runtime.TensorRTRunner``; card from its sidecar."""

    kind = "plan"

    def __init__(self, path: Path, card: ModelCard | None = None) -> None:
        from resnet.trt_runtime import TensorRTRunner, open_engine, tensorrt_version

        if card is None:  # a published engine: its sidecar must match this machine
            self.card = artifacts.read_sidecar(path).card
            self.runner = open_engine(path)
        else:  # a staged candidate being gated (its sidecar is written only when it passes)
            self.card = card
            self.runner = TensorRTRunner(path)
        self.min_batch, self.max_batch = self.runner.min_batch, self.runner.max_batch
        self.spatial = getattr(self.runner, "spatial", None)  # the engine profile's (min, max) side, if not fixed
        self.profiles = getattr(self.runner, "profiles", None)  # every profile's (min, opt, max) input shape
        self.precision = "int8" if self.card.precision == "int8" else "fp16"
        self.info = {
            "backend": "tensorrt",
            "path": str(path),
            "tensorrt": tensorrt_version(),
            "precision": self.precision,
            "profile": {"min": self.min_batch, "max": self.max_batch},
            **({"spatial": list(self.spatial)} if self.spatial else {}),
        }

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.runner.run(x)

    def close(self) -> None:
        self.runner.close()


def open_candidate(path: Path, kind: str, card: ModelCard | None = None) -> OnnxCandidate | EngineCandidate:
    if kind == "engine":
        return EngineCandidate(path, card)
    return OnnxCandidate(path, card)


def check_same_model(reference: ModelCard, candidate: ModelCard, where: Path) -> None:
    """The candidate must have been made from the reference's network (same classes, sizes and normalisation)."""
    keys = ("num_classes", "labels", "input_size", "resize_size", "mean", "std")
    diff = [k for k in keys if getattr(reference, k) != getattr(candidate, k)]
    if diff:
        fields = ", ".join(diff)
        raise UserError(f"{where}: its model card differs from the reference's in {fields}; not the same model")
