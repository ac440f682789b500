"""One way to open an artifact: a table from artifact kind to opener (docs/DESIGN.md §2).

``open_runner(artifact, provider, precision, profile)`` looks the kind up in ``OPENERS`` and returns a ``Runner``.
The export gate (``export.candidates.open_candidate``) and the server (``serve.engine.backends``) both open through
it, so what is gated is opened as it is served, and the TensorRT EP's options (``TrtOptions``) are made here only.
Adding a runtime = one opener + one row + its tests (tests/test_runtime_placement.py fails when an artifact kind
has no opener). Nothing is imported at module level beyond the standard library and this package's light modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from ..artifacts import ArtifactKind, artifact_kind
from ..card import ModelCard
from ..errors import UsageError
from .crops import TEN_CROPS
from .ort import TrtOptions, trt_cache_dir
from .runner import EngineRunner, OnnxRunner, Runner

Profile = tuple[int, int, int]  # a TensorRT batch profile: min, opt, max


def batch_profile(max_batch: int, shapes: Sequence[int] | None = None) -> Profile:
    """The TensorRT batch profile (min, opt, max) for batches up to ``max_batch``, worked out here only: for the
    engine ``export.trt`` builds, the TensorRT EP the gate opens and the one the server opens. ``shapes``: the batch
    sizes the server runs (None: any of 1..``max_batch``). opt is one ten-crop image (``TEN_CROPS``), or the
    nearest shape above it that runs."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, not {max_batch}")
    runs = sorted({*shapes, max_batch}) if shapes else list(range(1, max_batch + 1))
    opt = min(runs, key=lambda s: (s < TEN_CROPS, abs(s - TEN_CROPS)))
    return runs[0], opt, runs[-1]


def open_onnx(
    path: Path, provider: str, precision: str, profile: Profile | None, card: ModelCard | None = None, **opts: Any
) -> Runner:
    """A graph on ONNX Runtime's ``provider`` (cpu|cuda|tensorrt); on the TensorRT EP with the batch ``profile``,
    ``trt_fp16_enable`` when ``precision`` is fp16, ``trt_int8_enable`` for an INT8 graph."""
    trt = None
    if provider == "tensorrt":
        if card is None or profile is None:
            raise UsageError(f"{path.name}: the TensorRT EP needs the card and a batch profile")
        shape = (3, card.input_size, card.input_size)
        cache = trt_cache_dir(path, opts.get("trt_cache", ""))
        trt = TrtOptions(cache, "input", shape, profile, precision == "fp16", card.precision == "int8")
    threads, multiscale, dims = opts.get("threads", 0), opts.get("multiscale", "auto"), opts.get("dims")
    return OnnxRunner(path, card, provider, threads, trt, multiscale, dims)


def open_engine(
    path: Path, provider: str, precision: str, profile: Profile | None, card: ModelCard | None = None, **opts: Any
) -> Runner:
    """A ``.plan`` engine on TensorRT itself (its profile and precision were fixed when it was built)."""
    return EngineRunner(path, card, opts.get("multiscale", "auto"))


def open_checkpoint(
    path: Path, provider: str, precision: str, profile: Profile | None, card: ModelCard | None = None, **opts: Any
) -> Runner:
    """Our ``.pt`` checkpoint on PyTorch (CUDA when present) in ``precision`` (fp32, or bf16 / fp16 autocast)."""
    from .torch_runner import TorchRunner

    return TorchRunner.from_checkpoint(path, precision, opts.get("threads", 0), opts.get("multiscale", "auto"))


OPENERS: dict[str, Callable[..., Runner]] = {
    "onnx": open_onnx,
    "engine": open_engine,
    "checkpoint": open_checkpoint,
}
KINDS: tuple[str, ...] = get_args(ArtifactKind)


def open_runner(
    artifact: str | Path,
    provider: str = "cpu",
    precision: str = "fp32",
    profile: Profile | None = None,
    kind: str | None = None,
    **opts: Any,
) -> Runner:
    """Open ``artifact`` with the opener of its kind (``OPENERS``). ``provider``: ONNX Runtime's ``cpu|cuda|
    tensorrt`` for a graph (ignored by engines and checkpoints); ``precision``: what to compute in where the
    runtime chooses (TensorRT EP fp16, PyTorch autocast); ``profile``: the TensorRT batch profile. ``opts``:
    ``card``, ``threads``, ``multiscale``, ``dims``, ``trt_cache``. ``kind``: for a staged file whose name does not
    say it (the gate's hidden ``.model.onnx.XXXX.tmp``), else from the name."""
    path = Path(artifact)
    kind = kind or artifact_kind(path)
    opener = OPENERS.get(kind)
    if opener is None:  # pragma: no cover - tests/test_runtime_placement.py keeps the table complete
        raise UsageError(f"{path.name}: no opener for artifact kind {kind!r}")
    return opener(path, provider, precision, profile, **opts)
