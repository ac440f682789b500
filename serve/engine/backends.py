"""The server's backends: which ``resnet.runtime`` runner serves an artifact, and which parity report admits it.

- a ``.plan`` engine: ``EngineRunner`` on TensorRT (card from ``.plan.json``; an engine whose sidecar, TensorRT
  release or GPU does not fit is refused with the rebuild command, exit 4).
- an ``.onnx``/``.fp16.onnx``/``.int8.onnx`` export: ``OnnxRunner`` on one verified ONNX Runtime execution provider;
  ``auto`` tries the TensorRT EP, then CUDA, then the CPU.
- a ``.pt`` checkpoint or ``torchvision:ARCH[:WEIGHTS]``: ``TorchRunner`` (CUDA when present, else CPU).

Admitted = served: a GPU combination (runtime + provider + precision) is chosen only when a passing parity report of
exactly that combination lies beside the artifact (``resnet.runtime.report.admitting_report``): TensorRT-EP FP16 on
``model.onnx`` needs ``model.onnx.ort-tensorrt-fp16.parity.json``, an engine its ``model.plan.parity.json``. The CPU
combination of a graph serves as before. The backend's ``report`` names the report it relied on (``/readyz``).
Nothing here imports torch, onnx or TensorRT at module level: an ONNX model serves without them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from resnet import MissingComponentError, UsageError, UserError
from resnet.artifacts import DEFAULT_MAX_BATCH, artifact_kind
from resnet.card import ModelCard
from resnet.names import is_torchvision_spec, parse_torchvision_spec
from resnet.runtime.device_feed import FeedMode, attach_feed
from resnet.runtime.kinds import ep_combinations, int8_target, not_offered
from resnet.runtime.openers import batch_profile, open_runner
from resnet.runtime.ort import (
    AUTO_ORDER,
    PROVIDERS,
    ProviderUnavailable,
    conflicting_runtimes,
    peek_onnx,
)
from resnet.runtime.report import admitting_report
from resnet.runtime.runner import MULTISCALE_FIXED, REEXPORT, Runner
from resnet.runtime.torch_runner import TorchRunner

log = logging.getLogger("serve.engine.backends")

__all__ = ["MULTISCALE_FIXED", "REEXPORT", "load_backend", "load_backend_for", "trt_profile"]


def tensorrt_status() -> tuple[bool, str]:
    """Whether a ``.plan`` can run here, and why not."""
    from resnet.runtime.tensorrt import tensorrt_available

    return tensorrt_available()


def engine_backend(path: Path, multiscale: str) -> tuple[Runner, str]:
    """A published engine on TensorRT (its sidecar checked against this machine first), admitted by its own passing
    parity report."""
    backend = open_runner(path, multiscale=multiscale)
    report, why_not = admitting_report(path, backend.combination)
    if report is None:
        backend.close()
        raise MissingComponentError(f"{path.name} is not admitted for serving: {why_not}")
    backend.report = str(report.path)
    return backend, f"a .plan engine runs on TensorRT (admitted by {report.path.name})"


def onnx_backend(
    path: Path, choice: str, threads: int, profile: tuple[int, int, int], trt_cache: str, multiscale: str = "auto"
) -> tuple[Runner, str]:
    """An ONNX Runtime backend on the execution provider ``choice`` asks for, verified and admitted; ``auto`` /
    ``onnxruntime`` try TensorRT, then CUDA, then the CPU and say why the faster ones were passed over."""
    import onnxruntime as ort

    from resnet.onnx_card import check_onnx_file

    check_onnx_file(path)  # its graph against the digest beside its card: a corrupted file is refused here
    available = ort.get_available_providers()
    explicit = choice in ("tensorrt", "cuda")
    order = [choice] if explicit else [ep for ep in AUTO_ORDER if PROVIDERS[ep] in available or ep == "cpu"]
    skipped = [f"{PROVIDERS[ep]}: not in this onnxruntime build" for ep in AUTO_ORDER if ep not in order]
    card, dims = peek_onnx(path) if order[0] != "cpu" else (None, None)
    for ep in order:
        try:
            backend, admitted = _onnx_on(path, ep, card, dims, threads, profile, trt_cache, multiscale)
        except ProviderUnavailable as e:
            if explicit:
                raise ProviderUnavailable(f"--backend {choice} cannot run {path.name} here: {e}") from None
            log.warning("backend %s unavailable: %s", PROVIDERS[ep], e)
            skipped.append(f"{PROVIDERS[ep]}: {e}")
            continue
        why = f"onnxruntime on {backend.provider} ({backend.precision}); {admitted}"
        return backend, why + (f"; passed over: {' | '.join(skipped)}" if skipped else "")
    raise AssertionError("unreachable: the CPU provider is always tried last")  # pragma: no cover


def _onnx_on(
    path: Path,
    ep: str,
    card: ModelCard | None,
    dims: list[Any] | None,
    threads: int,
    profile: tuple[int, int, int],
    trt_cache: str,
    multiscale: str,
) -> tuple[Runner, str]:
    """The graph on ``ep`` in the first combination a passing report admits (``ProviderUnavailable`` when none
    does, or the session cannot be made there)."""
    if ep == "cpu":
        backend = open_runner(path, "cpu", threads=threads, multiscale=multiscale)
        report, why_not = admitting_report(path, backend.combination)
        if why_not:  # the CPU serves a graph as it always has; its report only names what admitted it
            log.warning("%s: %s; serving it on the CPU as before", path.name, why_not)
        backend.report = str(report.path) if report is not None else None
        return backend, (f"admitted by {report.path.name}" if report else "no parity report beside it (CPU serving)")
    assert card is not None
    why_not = not_offered(ep, card)
    if why_not:
        raise ProviderUnavailable(f"{path.name} is not offered to {ep}: {why_not}")
    refusals = []
    for combination, fp16 in ep_combinations(ep, card.precision, int8_target(card)):
        report, why_not = admitting_report(path, combination)
        if report is None:
            refusals.append(why_not)
            continue
        opts = {"card": card, "threads": threads, "multiscale": multiscale, "dims": dims, "trt_cache": trt_cache}
        backend = open_runner(path, ep, "fp16" if fp16 else "fp32", profile, **opts)
        if backend.combination != combination:  # the runner computes in another precision than the report ran
            raise ProviderUnavailable(f"ran {backend.combination.describe()}, admitted {combination.describe()}")
        backend.report = str(report.path)
        why = f"admitted by {report.path.name}"
        if ep == "tensorrt":
            why += f"; TensorRT profile {profile}, cache {backend.info['trt_options'].get('trt_engine_cache_path')}"
        return backend, why
    raise ProviderUnavailable("not admitted: " + "; ".join(refusals))


def trt_profile(settings: Any) -> tuple[int, int, int]:
    """The TensorRT batch profile (min, opt, max) covering every batch shape the server will run, so none rebuilds."""
    from .shapes import batch_shapes

    sizes = settings.parsed_batch_sizes()
    # as ClassifyService does for an engine without a batch limit: max-batch (default 64) is always one of them
    max_batch = settings.max_batch or DEFAULT_MAX_BATCH
    return batch_profile(max_batch, batch_shapes(max_batch, sizes, 1))


def load_backend_for(
    settings: Any, model: str | None = None, choice: str | None = None, precision: str = "fp32"
) -> Runner:
    """``load_backend`` with everything the server settings say (batch profile, TensorRT cache); ``model`` and
    ``choice`` default to the settings', ``precision`` is the PyTorch math for a checkpoint (an argument, not a
    setting: ``serve.engine.precision`` works it out from ``--precision``)."""
    return load_backend(
        model or settings.model,
        choice or settings.backend,
        threads=settings.threads,
        torch_precision=precision,
        profile=trt_profile(settings),
        trt_cache=getattr(settings, "trt_cache", ""),
        download_weights=getattr(settings, "download_weights", False),
        check_hash=getattr(settings, "check_hash", True),
        multiscale=getattr(settings, "multiscale", "auto"),
        device_preprocess=getattr(settings, "device_preprocess", "auto"),
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
    device_preprocess: FeedMode = "auto",
) -> Runner:
    """Load ``model`` with the backend ``choice`` (auto|tensorrt|cuda|onnxruntime|torch); log what runs and why.

    ``model`` is an artifact path or ``torchvision:ARCH[:WEIGHTS]`` (PyTorch only; ``download_weights`` and
    ``check_hash`` as in ``resnet.weights.load_named``). ``multiscale`` (auto|on|off): whether it is made to take
    multi-scale views too (``spatial``), when it can. ``device_preprocess``: ``attach_feed``'s mode.
    """
    if is_torchvision_spec(str(model)):
        backend: Runner = _torchvision_backend(
            str(model), choice, torch_precision, threads, download_weights, check_hash, multiscale
        )
    else:
        backend = _artifact_backend(Path(model), choice, threads, torch_precision, profile, trt_cache, multiscale)
    try:
        log.info("%s: %s", backend.name, attach_feed(backend, device_preprocess))
    except BaseException:
        backend.close()
        raise
    return backend


def _artifact_backend(
    path: Path,
    choice: str,
    threads: int,
    torch_precision: str,
    profile: tuple[int, int, int],
    trt_cache: str,
    multiscale: str,
) -> Runner:
    """``load_backend`` for an artifact file."""
    if not path.is_file():
        raise UserError(f"no such model file: {path}")
    conflict = conflicting_runtimes()
    if conflict:
        log.warning("%s", conflict)
    kind = artifact_kind(path)
    backend: Runner
    if kind == "engine":
        if choice not in ("auto", "tensorrt"):
            raise UsageError(f"{path} is a TensorRT engine: only --backend tensorrt (or auto) can run it")
        backend, why = engine_backend(path, multiscale)
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
        backend = open_runner(path, precision=torch_precision, threads=threads, multiscale=multiscale)
        why = (
            f"a checkpoint runs on PyTorch ({backend.provider}, {torch_precision}); an ONNX export of it serves "
            "faster on CPU (bench/RESULTS.md)"
        )
    log.info(
        "backend %s (provider %s, %s) for %s: %s", backend.name, backend.provider, backend.precision, path.name, why
    )
    return backend


def _torchvision_backend(
    spec: str, choice: str, precision: str, threads: int, download: bool, check_hash: bool, multiscale: str
) -> TorchRunner:
    """``torchvision:ARCH[:WEIGHTS]`` on PyTorch; other backends need an export first."""
    arch, weights = parse_torchvision_spec(spec)
    if choice in ("tensorrt", "cuda", "onnxruntime"):
        raise UsageError(
            f"{spec} runs on PyTorch only: --backend {choice} needs an export first "
            f"(python -m export.onnx {arch} --weights {weights}, then serve {arch}.onnx)"
        )
    backend = TorchRunner.from_torchvision(
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
