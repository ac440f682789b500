"""Inference backends behind one narrow interface: ``run(float32 [N, 3, H, W]) -> float32 logits [N, C]``.

- ``TensorRTBackend``: a ``.plan`` engine through ``resnet.trt_runtime`` (card from ``.plan.json``; an engine whose
  sidecar, TensorRT release or GPU does not fit is refused with the rebuild command, exit 4).
- ``OnnxRuntimeBackend``: an ``.onnx``/``.fp16.onnx`` export on one ONNX Runtime execution provider that is verified
  after the session is made (serve.ort_session); ``auto`` tries TensorRT, then CUDA, then the CPU.
- ``TorchBackend``: a ``.pt`` checkpoint (card inside), or ``torchvision:ARCH[:WEIGHTS]`` (torchvision's named
  weights from the torch hub cache, ``resnet.weights``); CUDA when present, else CPU; fp32 unless asked otherwise.
  Without torch installed: exit 4 naming the extra to install or the export to run.

Each backend says what runs it: ``kind`` (onnxruntime|tensorrt|torch), ``provider`` (as its runtime names it) and
``precision``. ``load_backend(path, choice)`` maps an artifact and a ``--backend`` choice to one of these and logs
why. Nothing here imports torch, onnx or TensorRT at module level: an ONNX model serves without them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from resnet import CardError, MissingComponentError, UsageError, UserError
from resnet.artifacts import DEFAULT_MAX_BATCH, artifact_kind, read_sidecar, report_path
from resnet.card import ModelCard
from resnet.names import is_torchvision_spec, parse_torchvision_spec
from resnet.onnx_card import CARD_KEY

from .ort_session import (
    AUTO_ORDER,
    PROVIDERS,
    ProviderUnavailable,
    TrtOptions,
    conflicting_runtimes,
    make_session,
    trt_cache_dir,
)

log = logging.getLogger("serve.backends")
OPT_BATCH = 10  # one ten-crop image: the TensorRT profile's optimum when the server runs that size


class Backend(Protocol):
    """What the batcher needs from an inference engine."""

    name: str  # e.g. "onnxruntime:CPUExecutionProvider"
    kind: str  # onnxruntime | tensorrt | torch
    provider: str  # what runs it, as its runtime names it: "CPUExecutionProvider", "TensorRT", "torch:cuda"
    precision: str  # fp32 | fp16 | int8 | bf16
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
    """An ONNX export in an ONNX Runtime session on one verified execution provider; input ``input``, output
    ``logits`` (docs/DESIGN.md §2)."""

    kind = "onnxruntime"

    def __init__(
        self, path: Path, card: ModelCard | None, ep: str = "cpu", threads: int = 0, trt: TrtOptions | None = None
    ) -> None:
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
        self.session = make_session(path, ep, opts, trt)
        self.provider = self.session.get_providers()[0]
        self.name = f"onnxruntime:{self.provider}"
        self.providers = self.session.get_providers()
        self.card = card if card is not None else onnx_session_card(self.session, path)
        fp16_graph = self.card.precision == "fp16"
        self.precision = "fp16" if fp16_graph or (ep == "tensorrt" and trt is not None and trt.fp16) else "fp32"
        if self.card.precision == "int8":  # a QDQ graph computes in int8 whichever provider runs it
            self.precision = "int8"
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        dim = self.session.get_inputs()[0].shape[0]
        self.max_batch = dim if isinstance(dim, int) and dim > 0 else None
        self.min_batch = self.max_batch or 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        return np.asarray(out, dtype=np.float32)


def onnx_session_card(session: Any, path: Path) -> ModelCard:
    """The card from an open session's model metadata (no ``onnx`` package needed)."""
    meta = session.get_modelmeta().custom_metadata_map
    if CARD_KEY not in meta:
        raise CardError(f"{path} has no model card in its metadata: it was not exported by this project")
    return ModelCard.from_json(meta[CARD_KEY])


class TorchBackend:
    """A PyTorch network on CUDA when available, else the CPU; channels_last; fp32 unless bf16/fp16 autocast is asked.

    Built from an already loaded ``(model, card)``; ``from_checkpoint`` and ``from_torchvision`` load them.
    """

    kind = "torch"

    def __init__(self, model: Any, card: ModelCard, precision: str = "fp32", threads: int = 0) -> None:
        import torch

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
        self.provider = f"torch:{self.device.type}"
        self.max_batch = None
        self.min_batch = 1

    @classmethod
    def from_checkpoint(cls, path: Path, precision: str = "fp32", threads: int = 0) -> TorchBackend:
        """Our ``.pt`` checkpoint (card inside) through ``resnet.load_checkpoint``."""
        try:
            import torch  # noqa: F401

            from resnet import load_checkpoint
        except ImportError as e:
            raise MissingComponentError(
                f"serving the checkpoint {path.name} needs PyTorch, which is not installed here ({e.name}): "
                f'pip install "resnet-stack[train]", or export it and serve the ONNX file '
                f"(python -m export.onnx {path})"
            ) from None
        model, card = load_checkpoint(path)
        return cls(model, card, precision, threads)

    @classmethod
    def from_torchvision(
        cls, spec: str, precision: str = "fp32", threads: int = 0, *, download: bool = False, check_hash: bool = True
    ) -> TorchBackend:
        """``torchvision:ARCH[:WEIGHTS]``: torchvision's named weights from the torch hub cache
        (``resnet.weights.load_named``; not cached and no ``download``: ``WeightsNotCachedError``, exit 4)."""
        arch, weights = parse_torchvision_spec(spec)
        try:
            import torchvision  # noqa: F401

            from resnet.weights import load_named  # torch + torchvision: imported only for this kind of model
        except ImportError as e:
            raise MissingComponentError(
                f"serving {spec} needs PyTorch and torchvision, which are not installed here ({e.name}): "
                f'pip install "resnet-stack[train]"'
            ) from None
        model, card = load_named(arch, weights, download=download, check_hash=check_hash)
        return cls(model, card, precision, threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.model(x)
        return out.float().cpu().numpy()


class TensorRTBackend:
    """A serialised TensorRT engine via ``resnet.trt_runtime.TensorRTRunner``; its profile bounds the batch."""

    kind = "tensorrt"
    provider = "TensorRT"

    def __init__(self, path: Path) -> None:
        runtime = _trt_runtime()
        sidecar = read_sidecar(path)  # refuses a sidecar of another format or version (exit 4)
        self.card, self.precision = sidecar.card, sidecar.precision
        # refuses an engine built by another TensorRT or for another GPU, or a machine without TensorRT (exit 4)
        self.runner = runtime.open_engine(path)
        self.name = "tensorrt"
        self.max_batch = int(self.runner.max_batch)
        self.min_batch = int(getattr(self.runner, "min_batch", 1))
        # (min, max) height/width of the engine's multi-scale profile (export.trt --multiscale), None without one
        self.spatial = getattr(self.runner, "spatial", None)

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


def peek_onnx_card(path: Path) -> ModelCard:
    """The card before a GPU session is made (its input size shapes the TensorRT profile): through the ``onnx``
    package when installed, else from a plain CPU session's metadata (the ``[serve-gpu]`` install has no ``onnx``)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return OnnxRuntimeBackend(path, None, "cpu", threads=1).card
    from resnet.onnx_card import read_onnx_card

    return read_onnx_card(path)


def fp16_parity_passed(model: Path) -> bool:
    """Whether the FP16 variant of ``model`` passed its parity gate (``<stem>.fp16.onnx.parity.json``)."""
    name = model.name
    fp16 = model if name.endswith(".fp16.onnx") else model.with_name(name.removesuffix(".onnx") + ".fp16.onnx")
    try:
        report = json.loads(report_path(fp16).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("passed") is True


def onnx_backend(
    path: Path, choice: str, threads: int, profile: tuple[int, int, int], trt_cache: str
) -> tuple[OnnxRuntimeBackend, str]:
    """An ONNX Runtime backend on the execution provider ``choice`` asks for, verified; ``auto``/``onnxruntime`` try
    TensorRT, then CUDA, then the CPU and say why the faster ones were passed over."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    explicit = choice in ("tensorrt", "cuda")
    order = [choice] if explicit else [ep for ep in AUTO_ORDER if PROVIDERS[ep] in available or ep == "cpu"]
    skipped = [f"{PROVIDERS[ep]}: not in this onnxruntime build" for ep in AUTO_ORDER if ep not in order]
    card = peek_onnx_card(path) if order[0] != "cpu" else None
    for ep in order:
        trt = None
        if ep == "tensorrt" and card is not None:
            fp16 = card.precision == "fp16" or fp16_parity_passed(path)
            shape = (3, card.input_size, card.input_size)
            trt = TrtOptions(trt_cache_dir(path, trt_cache), "input", shape, profile, fp16)
        try:
            backend = OnnxRuntimeBackend(path, card, ep, threads, trt)
        except ProviderUnavailable as e:
            if explicit:
                raise ProviderUnavailable(f"--backend {choice} cannot run {path.name} here: {e}") from None
            log.warning("backend %s unavailable: %s", PROVIDERS[ep], e)
            skipped.append(f"{PROVIDERS[ep]}: {e}")
            continue
        why = f"onnxruntime on {backend.provider} ({backend.precision})"
        if trt is not None:
            why += f"; TensorRT profile {profile}, cache {trt.cache_dir}"
        return backend, why + (f"; passed over: {' | '.join(skipped)}" if skipped else "")
    raise AssertionError("unreachable: the CPU provider is always tried last")  # pragma: no cover


def trt_profile(settings: Any) -> tuple[int, int, int]:
    """The TensorRT batch profile (min, opt, max) covering every batch shape the server will run, so none rebuilds."""
    from .batcher import batch_shapes

    sizes = settings.parsed_batch_sizes()
    # as ClassifyService does for an engine without a batch limit: max-batch (default 64) is always one of them
    shapes = batch_shapes(settings.max_batch or DEFAULT_MAX_BATCH, sizes, 1)
    opt = min(shapes, key=lambda s: (s < OPT_BATCH, abs(s - OPT_BATCH)))
    return shapes[0], opt, shapes[-1]


def load_backend_for(settings: Any) -> Backend:
    """``load_backend`` with everything the server settings say (batch profile, TensorRT cache)."""
    return load_backend(
        settings.model,
        settings.backend,
        threads=settings.threads,
        torch_precision=settings.torch_precision,
        profile=trt_profile(settings),
        trt_cache=getattr(settings, "trt_cache", ""),
        download_weights=getattr(settings, "download_weights", False),
        check_hash=getattr(settings, "check_hash", True),
    )


def load_backend(
    model: str | os.PathLike[str],
    choice: str = "auto",
    *,
    threads: int = 0,
    torch_precision: str = "fp32",
    profile: tuple[int, int, int] = (1, 10, DEFAULT_MAX_BATCH),
    trt_cache: str = "",
    download_weights: bool = False,
    check_hash: bool = True,
) -> Backend:
    """Load ``model`` with the backend ``choice`` (auto|tensorrt|cuda|onnxruntime|torch); log what runs and why.

    ``model`` is an artifact path or ``torchvision:ARCH[:WEIGHTS]`` (PyTorch only; ``download_weights`` and
    ``check_hash`` as in ``resnet.weights.load_named``).
    """
    if is_torchvision_spec(str(model)):
        return _torchvision_backend(str(model), choice, torch_precision, threads, download_weights, check_hash)
    path = Path(model)
    if not path.is_file():
        raise UserError(f"no such model file: {path}")
    conflict = conflicting_runtimes()
    if conflict:
        log.warning("%s", conflict)
    kind = artifact_kind(path)
    backend: Backend
    if kind == "engine":
        if choice not in ("auto", "tensorrt"):
            raise UsageError(f"{path} is a TensorRT engine: only --backend tensorrt (or auto) can run it")
        backend, why = TensorRTBackend(path), "a .plan engine runs on TensorRT"
    elif kind == "onnx":
        if choice == "torch":
            raise UsageError(
                f"{path} is an ONNX export: use --backend onnxruntime, cuda or tensorrt (torch serves .pt)"
            )
        backend, why = onnx_backend(path, choice, threads, profile, trt_cache)
    else:
        if choice in ("tensorrt", "cuda", "onnxruntime"):
            raise UsageError(
                f"{path} is a checkpoint: --backend {choice} needs an export (python -m export.onnx {path})"
            )
        backend = TorchBackend.from_checkpoint(path, torch_precision, threads)
        why = (
            f"a checkpoint runs on PyTorch ({backend.device.type}, {torch_precision}); an ONNX export of it serves "
            "faster on CPU (bench/RESULTS.md)"
        )
    log.info(
        "backend %s (provider %s, %s) for %s: %s", backend.name, backend.provider, backend.precision, path.name, why
    )
    return backend


def _torchvision_backend(
    spec: str, choice: str, precision: str, threads: int, download: bool, check_hash: bool
) -> TorchBackend:
    """``torchvision:ARCH[:WEIGHTS]`` on PyTorch; other backends need an export first."""
    arch, weights = parse_torchvision_spec(spec)
    if choice in ("tensorrt", "cuda", "onnxruntime"):
        raise UsageError(
            f"{spec} runs on PyTorch only: --backend {choice} needs an export first "
            f"(python -m export.onnx {arch} --weights {weights}, then serve {arch}.onnx)"
        )
    backend = TorchBackend.from_torchvision(spec, precision, threads, download=download, check_hash=check_hash)
    log.info(
        "backend %s (provider %s, %s) for %s: torchvision's named weights %s run on PyTorch",
        backend.name,
        backend.provider,
        backend.precision,
        spec,
        backend.card.provenance.get("weights"),
    )
    return backend
