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

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from resnet import MissingComponentError, UsageError, UserError
from resnet.artifacts import DEFAULT_MAX_BATCH, artifact_kind, read_sidecar, report_path
from resnet.card import ModelCard
from resnet.multiscale import ANY_SIZE, view_profile
from resnet.names import is_torchvision_spec, parse_torchvision_spec

from .ort_session import (
    AUTO_ORDER,
    PROVIDERS,
    ProviderUnavailable,
    TrtOptions,
    conflicting_runtimes,
    make_session,
    onnx_session_card,
    peek_onnx,
    rss_mib,
    session_options,
    trt_cache_dir,
)
from .torch_backend import TorchBackend

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
    # (min_side, max_side) that height and width may each take (multi-scale views); None = only the card's S x S
    spatial: tuple[int, int] | None
    max_view_batch: int | None  # most rows of one batch of multi-scale views (a TensorRT view profile), else None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[N, 3, H, W]`` normalised crops or views -> float32 ``[N, num_classes]`` logits. Not
        thread-safe. H, W: the card's S x S, or any sides within ``spatial``."""
        ...


class OnnxRuntimeBackend:
    """An ONNX export in an ONNX Runtime session on one verified execution provider; input ``input``, output
    ``logits`` (docs/DESIGN.md §2).

    A graph whose height and width are symbolic gets two sessions when multi-scale is on: one with those dimensions
    pinned to the card's S x S (``add_free_dimension_override_by_name``: as fast as a fixed-size graph; a plain
    dynamic session ran ResNet-50 ten-crop batches slower, bench/RESULTS.md) for ten/centre crops, and a plain one
    for multi-scale views. ``run`` picks by the batch's height and width. Multi-scale off: the pinned one only.
    """

    kind = "onnxruntime"

    def __init__(
        self,
        path: Path,
        card: ModelCard | None,
        ep: str = "cpu",
        threads: int = 0,
        trt: TrtOptions | None = None,
        multiscale: str = "auto",
        dims: list[Any] | None = None,
    ) -> None:
        plain = None
        if dims is None:  # learn the input's shape from a plain session (kept for multi-scale views if wanted)
            plain = make_session(path, ep, session_options(threads), trt)
            dims = list(plain.get_inputs()[0].shape)
        names = [d for d in dims[2:4] if not isinstance(d, int)]
        any_size = len(names) == 2
        if multiscale == "on" and not any_size:
            raise UsageError(f"--multiscale on: {path.name} {MULTISCALE_FIXED} ({REEXPORT})")
        if any_size and all(isinstance(n, str) and n for n in names):
            opts = session_options(threads)
            for name in dict.fromkeys(names):
                opts.add_free_dimension_override_by_name(name, _input_size(card, plain, path))
            first = rss_mib()
            self.session = make_session(path, ep, opts, trt)
        else:
            first = rss_mib()
            self.session = plain if plain is not None else make_session(path, ep, session_options(threads), trt)
        self.card = card if card is not None else onnx_session_card(self.session, path)
        self.multi_session: Any = None
        self.spatial: tuple[int, int] | None = None
        self.max_view_batch: int | None = None
        if any_size and multiscale != "off":
            spatial_trt = None
            if trt is not None:  # its own cache folder: its engines are built for another profile
                views_cache = (
                    trt_cache_dir(trt.cache_dir / "views", str(trt.cache_dir / "views")) if trt.cache_dir else None
                )
                spatial_trt = dataclasses.replace(trt, cache_dir=views_cache, views=view_profile(self.card))
            if plain is None:
                first = rss_mib()
                plain = make_session(path, ep, session_options(threads), spatial_trt)
            self.multi_session = plain
            if spatial_trt is not None and spatial_trt.views is not None:
                lo, _opt, hi = spatial_trt.views
                self.spatial, self.max_view_batch = (lo[2], hi[2]), hi[0]
            else:
                self.spatial = ANY_SIZE
            if plain is self.session:  # unnamed dynamic dimensions cannot be pinned: one session for both
                log.info("multi-scale on: %s takes any size; one session (its H, W have no names to pin)", path.name)
            else:
                log.info(
                    "multi-scale on: %s takes any height and width; views run in a second, plain session beside the "
                    "S x S one (height and width pinned, as fast as a fixed-size graph): %+.0f MiB resident for it",
                    path.name,
                    rss_mib() - first,
                )
        elif any_size:
            log.info("multi-scale off (--multiscale off): one session, height and width pinned to the card's size")
        self.provider = self.session.get_providers()[0]
        self.name = f"onnxruntime:{self.provider}"
        self.providers = self.session.get_providers()
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
        size = self.card.input_size
        square = batch.shape[2] == size and batch.shape[3] == size
        session = self.session if square or self.multi_session is None else self.multi_session
        out = session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        return np.asarray(out, dtype=np.float32)


MULTISCALE_FIXED = "takes only its card's S x S input, not any height and width"
REEXPORT = (
    "re-export it: python -m export.onnx model.pt makes a graph that takes any size; for a .plan, "
    "python -m export.trt model.pt --multiscale"
)


def _input_size(card: ModelCard | None, plain: Any, path: Path) -> int:
    """The card's input size, from ``card`` or the plain session's metadata."""
    return (card if card is not None else onnx_session_card(plain, path)).input_size


class TensorRTBackend:
    """A serialised TensorRT engine via ``resnet.trt_runtime.TensorRTRunner``; its profile bounds the batch."""

    kind = "tensorrt"
    provider = "TensorRT"

    def __init__(self, path: Path, multiscale: str = "auto") -> None:
        runtime = _trt_runtime()
        sidecar = read_sidecar(path)  # refuses a sidecar of another format or version (exit 4)
        self.card, self.precision = sidecar.card, sidecar.precision
        # refuses an engine built by another TensorRT or for another GPU, or a machine without TensorRT (exit 4)
        self.runner = runtime.open_engine(path)
        self.name = "tensorrt"
        self.max_batch = int(self.runner.max_batch)
        self.min_batch = int(getattr(self.runner, "min_batch", 1))
        # (min_side, max_side) of an engine built with a multi-scale profile (export.trt --multiscale), else None
        spatial = getattr(self.runner, "spatial", None)
        if multiscale == "on" and spatial is None:
            raise UsageError(f"--multiscale on: {path.name} {MULTISCALE_FIXED} ({REEXPORT})")
        self.spatial = None if multiscale == "off" or spatial is None else (int(spatial[0]), int(spatial[1]))
        profiles = getattr(self.runner, "profiles", None) or []
        # the multi-scale profile's batch maximum (export.trt --multiscale: profile 1)
        self.max_view_batch = int(profiles[1][2][0]) if self.spatial is not None and len(profiles) > 1 else None

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
    path: Path, choice: str, threads: int, profile: tuple[int, int, int], trt_cache: str, multiscale: str = "auto"
) -> tuple[OnnxRuntimeBackend, str]:
    """An ONNX Runtime backend on the execution provider ``choice`` asks for, verified; ``auto``/``onnxruntime`` try
    TensorRT, then CUDA, then the CPU and say why the faster ones were passed over."""
    import onnxruntime as ort

    from resnet.onnx_card import check_onnx_file

    check_onnx_file(path)  # its graph against the digest beside its card: a corrupted file is refused here
    available = ort.get_available_providers()
    explicit = choice in ("tensorrt", "cuda")
    order = [choice] if explicit else [ep for ep in AUTO_ORDER if PROVIDERS[ep] in available or ep == "cpu"]
    skipped = [f"{PROVIDERS[ep]}: not in this onnxruntime build" for ep in AUTO_ORDER if ep not in order]
    card, dims = peek_onnx(path) if order[0] != "cpu" else (None, None)
    for ep in order:
        trt = None
        if ep == "tensorrt" and card is not None:
            fp16 = card.precision == "fp16" or fp16_parity_passed(path)
            shape = (3, card.input_size, card.input_size)
            trt = TrtOptions(trt_cache_dir(path, trt_cache), "input", shape, profile, fp16)
        try:
            backend = OnnxRuntimeBackend(path, card, ep, threads, trt, multiscale, dims if ep != "cpu" else None)
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
        multiscale=getattr(settings, "multiscale", "auto"),
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
    multiscale: str = "auto",
) -> Backend:
    """Load ``model`` with the backend ``choice`` (auto|tensorrt|cuda|onnxruntime|torch); log what runs and why.

    ``model`` is an artifact path or ``torchvision:ARCH[:WEIGHTS]`` (PyTorch only; ``download_weights`` and
    ``check_hash`` as in ``resnet.weights.load_named``). ``multiscale`` (auto|on|off): whether it is made to take
    multi-scale views too (``spatial``), when it can.
    """
    if is_torchvision_spec(str(model)):
        return _torchvision_backend(
            str(model), choice, torch_precision, threads, download_weights, check_hash, multiscale
        )
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
        backend, why = TensorRTBackend(path, multiscale), "a .plan engine runs on TensorRT"
    elif kind == "onnx":
        if choice == "torch":
            raise UsageError(
                f"{path} is an ONNX export: use --backend onnxruntime, cuda or tensorrt (torch serves .pt)"
            )
        backend, why = onnx_backend(path, choice, threads, profile, trt_cache, multiscale)
    else:
        if choice in ("tensorrt", "cuda", "onnxruntime"):
            raise UsageError(
                f"{path} is a checkpoint: --backend {choice} needs an export (python -m export.onnx {path})"
            )
        backend = TorchBackend.from_checkpoint(path, torch_precision, threads, multiscale)
        why = (
            f"a checkpoint runs on PyTorch ({backend.device.type}, {torch_precision}); an ONNX export of it serves "
            "faster on CPU (bench/RESULTS.md)"
        )
    log.info(
        "backend %s (provider %s, %s) for %s: %s", backend.name, backend.provider, backend.precision, path.name, why
    )
    return backend


def _torchvision_backend(
    spec: str, choice: str, precision: str, threads: int, download: bool, check_hash: bool, multiscale: str
) -> TorchBackend:
    """``torchvision:ARCH[:WEIGHTS]`` on PyTorch; other backends need an export first."""
    arch, weights = parse_torchvision_spec(spec)
    if choice in ("tensorrt", "cuda", "onnxruntime"):
        raise UsageError(
            f"{spec} runs on PyTorch only: --backend {choice} needs an export first "
            f"(python -m export.onnx {arch} --weights {weights}, then serve {arch}.onnx)"
        )
    backend = TorchBackend.from_torchvision(
        spec, precision, threads, download=download, check_hash=check_hash, multiscale=multiscale
    )
    log.info(
        "backend %s (provider %s, %s) for %s: torchvision's named weights %s run on PyTorch",
        backend.name,
        backend.provider,
        backend.precision,
        spec,
        backend.card.provenance.get("weights"),
    )
    return backend
