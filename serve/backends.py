"""Inference backends behind one narrow interface: ``run(float32 [N, 3, H, W]) -> float32 logits [N, C]``.

- ``TensorRTBackend``: a ``.plan`` engine through ``resnet.trt_runtime.TensorRTRunner`` (card from ``.plan.json``).
- ``OnnxRuntimeBackend``: an ``.onnx``/``.fp16.onnx`` export; TensorRT EP, then CUDA EP, then CPU EP, whichever
  this machine's onnxruntime build offers (card from the ONNX metadata).
- ``TorchBackend``: a ``.pt`` checkpoint (card inside); CUDA when present, else CPU; fp32 unless asked otherwise.

``load_backend(path, choice)`` maps an artifact and a ``--backend`` choice to one of these and says why it chose.
The HTTP layer never imports onnxruntime, torch or TensorRT: only this module does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from resnet import MissingComponentError, UsageError, UserError
from resnet.artifacts import artifact_kind, read_sidecar
from resnet.card import ModelCard

log = logging.getLogger("serve.backends")


class Backend(Protocol):
    """What the batcher needs from an inference engine."""

    name: str  # e.g. "onnxruntime:CPUExecutionProvider"
    card: ModelCard
    max_batch: int | None  # the engine's hard limit (TensorRT profile), None when any batch works
    min_batch: int

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[N, 3, S, S]`` normalised crops -> float32 ``[N, num_classes]`` logits. Not thread-safe."""
        ...


def cpu_threads() -> int:
    """CPUs this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class OnnxRuntimeBackend:
    """An ONNX export in an ONNX Runtime session; input ``input``, output ``logits`` (DESIGN.md §2)."""

    def __init__(self, path: Path, card: ModelCard, providers: list[str], threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One batch runs at a time (the batcher serialises them), so all threads go to intra-op parallelism.
        # `python -m bench.serve_bench --thread-sweep` measures 1..all cores (bench/RESULTS.md): all cores wins.
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        # No busy-waiting after a run: in a server the decode threads and the event loop need those cores between
        # batches (ONNX Runtime threading docs; a bare session runs as fast either way).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
            raise UserError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
        used = self.session.get_providers()
        self.name = f"onnxruntime:{used[0]}"
        self.providers = used
        self.card = card
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        dim = self.session.get_inputs()[0].shape[0]
        self.max_batch = dim if isinstance(dim, int) and dim > 0 else None
        self.min_batch = self.max_batch or 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        return np.asarray(out, dtype=np.float32)


class TorchBackend:
    """A checkpoint on CUDA when available, else the CPU; channels_last; fp32 unless bf16/fp16 autocast is asked."""

    def __init__(self, path: Path, precision: str = "fp32", threads: int = 0) -> None:
        import torch

        from resnet import load_checkpoint

        model, card = load_checkpoint(path)
        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(threads or cpu_threads())
        if self.device.type == "cuda" and precision == "fp32":
            # TF32 convolutions would move probabilities past the 1e-4 parity with the offline fp32 pipeline.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if precision == "fp16" and self.device.type == "cpu":
            raise UsageError("--torch-precision fp16 needs CUDA; on the CPU use bf16 or fp32")
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.precision = precision
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.card = card
        self.name = f"torch:{self.device.type}:{precision}"
        self.max_batch = None
        self.min_batch = 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.model(x)
        return out.float().cpu().numpy()


class TensorRTBackend:
    """A serialised TensorRT engine via ``resnet.trt_runtime.TensorRTRunner``; its profile bounds the batch."""

    def __init__(self, path: Path) -> None:
        runtime = _trt_runtime()
        ok, reason = runtime.tensorrt_available()
        if not ok:
            raise MissingComponentError(f"cannot run {path}: TensorRT is not usable here ({reason})")
        self.card = read_sidecar(path).card
        self.runner = runtime.open_engine(path)  # refuses an engine built for another TensorRT or GPU (exit 4)
        self.name = "tensorrt"
        self.max_batch = int(self.runner.max_batch)
        self.min_batch = int(getattr(self.runner, "min_batch", 1))

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.runner.run(np.ascontiguousarray(batch, np.float32)), dtype=np.float32)


def _trt_runtime() -> Any:
    try:
        from resnet import trt_runtime
    except ImportError as e:
        raise MissingComponentError(f"TensorRT runtime support is not installed (resnet.trt_runtime: {e})") from None
    return trt_runtime


def tensorrt_status() -> tuple[bool, str]:
    """Whether a ``.plan`` can run here, and why not."""
    try:
        return _trt_runtime().tensorrt_available()
    except MissingComponentError as e:
        return False, str(e)


def ort_providers(require_tensorrt: bool = False) -> tuple[list[str], str]:
    """ONNX Runtime providers to use here, fastest first, and a sentence saying why."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if require_tensorrt and "TensorrtExecutionProvider" not in available:
        raise MissingComponentError(
            f"--backend tensorrt needs onnxruntime's TensorrtExecutionProvider; this build offers {available}"
        )
    why = (
        f"onnxruntime providers {chosen + ['CPUExecutionProvider']} (GPU EPs first)"
        if chosen
        else "onnxruntime on the CPU (no TensorRT/CUDA execution provider in this onnxruntime build; "
        "pip install onnxruntime-gpu on a GPU machine)"
    )
    return chosen + ["CPUExecutionProvider"], why


def load_backend(
    model: str | os.PathLike[str], choice: str = "auto", *, threads: int = 0, torch_precision: str = "fp32"
) -> Backend:
    """Load ``model`` with the backend ``choice`` (auto|tensorrt|onnxruntime|torch); log what was chosen and why."""
    path = Path(model)
    if not path.is_file():
        raise UserError(f"no such model file: {path}")
    kind = artifact_kind(path)
    backend: Backend
    if kind == "engine":
        if choice not in ("auto", "tensorrt"):
            raise UsageError(f"{path} is a TensorRT engine: only --backend tensorrt (or auto) can run it")
        backend, why = TensorRTBackend(path), "a .plan engine runs on TensorRT"
    elif kind == "onnx":
        if choice == "torch":
            raise UsageError(f"{path} is an ONNX export: use --backend onnxruntime or tensorrt (torch serves .pt)")
        from resnet.onnx_card import read_onnx_card

        card = read_onnx_card(path)
        providers, why = ort_providers(require_tensorrt=choice == "tensorrt")
        if choice == "tensorrt":
            providers = ["TensorrtExecutionProvider", "CPUExecutionProvider"]
            why = "--backend tensorrt on an ONNX file: onnxruntime's TensorRT execution provider"
        backend = OnnxRuntimeBackend(path, card, providers, threads)
    else:
        if choice in ("tensorrt", "onnxruntime"):
            raise UsageError(
                f"{path} is a checkpoint: --backend {choice} needs an export (python -m export.trt {path})"
            )
        backend = TorchBackend(path, torch_precision, threads)
        why = (
            f"a checkpoint runs on PyTorch ({backend.device.type}, {torch_precision}); an ONNX export of it serves "
            "faster on CPU (bench/RESULTS.md)"
        )
    log.info("backend %s for %s: %s", backend.name, path.name, why)
    return backend
