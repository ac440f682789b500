"""What the gate compares: the PyTorch FP32 reference and a candidate, run by ``resnet.runtime`` as it is served.

The reference is the checkpoint in PyTorch FP32 on the CPU (TF32 and reduced-precision matmul off). A candidate is
a ``resnet.runtime.runner.Runner``: an ONNX graph on an ONNX Runtime execution provider (the CPU by default; the
CUDA or TensorRT EP with ``--ep``) or a TensorRT engine (``*.plan``, on the GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet import UsageError, UserError, artifacts
from resnet.artifacts import DEFAULT_MAX_BATCH, ArtifactKind
from resnet.card import ModelCard
from resnet.runtime.kinds import graph_precision, not_offered
from resnet.runtime.openers import batch_profile, open_runner
from resnet.runtime.runner import OnnxRunner, Runner

from .images import ImageSet
from .log import progress

REFERENCE_BATCH = 50  # the reference's batch size does not matter for its result, only for its speed
__all__ = ["Reference", "check_same_model", "graph_precision", "open_candidate"]


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
        graph = OnnxRunner(path, card)
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


def open_candidate(
    path: Path,
    kind: ArtifactKind,
    card: ModelCard | None = None,
    *,
    ep: str = "cpu",
    trt_fp16: bool = False,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Runner:
    """The ``resnet.runtime`` runner that gates the candidate at ``path``, on the runtime and provider that will
    serve it: an engine on TensorRT, a graph on ONNX Runtime's ``ep`` (``cpu``, ``cuda`` or ``tensorrt``; the
    TensorRT EP with ``trt_fp16_enable`` when ``trt_fp16``, with the server's batch profile up to ``max_batch``).
    ``card`` None: read from the artifact (a published engine's sidecar is checked against this machine)."""
    if kind == "engine":
        if ep != "cpu" or trt_fp16:
            raise UsageError(f"{path.name} is a TensorRT engine: it runs on TensorRT itself (no --ep / --trt-fp16)")
        return open_runner(path, kind=kind, card=card)
    if kind != "onnx":
        raise UsageError(f"{path.name}: only an ONNX graph or a TensorRT engine can be a candidate")
    if trt_fp16 and ep != "tensorrt":
        raise UsageError("--trt-fp16 is a TensorRT EP setting: use it with --ep tensorrt")
    if ep != "cpu":
        card = card if card is not None else artifacts.read_card(path)
        why_not = not_offered(ep, card)
        if why_not:
            raise UsageError(f"{path.name} is not run on --ep {ep}: {why_not}")
    profile = batch_profile(max_batch)  # as export.trt builds engines and the server opens the TensorRT EP
    return open_runner(path, ep, "fp16" if trt_fp16 else "fp32", profile, kind, card=card)


def check_same_model(reference: ModelCard, candidate: ModelCard, where: Path) -> None:
    """The candidate must have been made from the reference's network (same classes, sizes and normalisation)."""
    keys = ("num_classes", "labels", "input_size", "resize_size", "mean", "std")
    diff = [k for k in keys if getattr(reference, k) != getattr(candidate, k)]
    if diff:
        fields = ", ".join(diff)
        raise UserError(f"{where}: its model card differs from the reference's in {fields}; not the same model")
