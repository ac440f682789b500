"""ONNX Runtime sessions that run where they were asked to, or say why not.

``get_available_providers()`` lists what this onnxruntime build was compiled with, not what loads: a missing
``libnvinfer``/``libcudnn`` only shows when a session is made, and ONNX Runtime then quietly runs on the CPU. So each
execution provider (EP) is tried in its own session, ``session.get_providers()`` is compared with what was asked, and
ONNX Runtime's own messages from session creation (its Python warnings and its log) are kept as the reason.

A GPU session may not run part of the graph on the CPU either: its options carry ``session.disable_cpu_ep_fallback``
= ``1`` and its provider list leaves the CPU EP out, so a node that the GPU providers cannot take fails session
creation instead of quietly running on the CPU (``gpu_session_options``). The TensorRT EP needs ``libnvinfer.so.10``
loaded first (``preload_tensorrt``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import digest
from ..artifacts import ensure_writable
from ..card import ModelCard
from ..errors import CardError, CheckpointError, MissingComponentError, UserError
from ..onnx_card import CARD_KEY
from .kinds import EP_PROVIDERS as PROVIDERS
from .trt_ep import build_progress, engine_cache_key, placement

log = logging.getLogger("resnet.runtime")

AUTO_ORDER = ("tensorrt", "cuda", "cpu")  # fastest first; each one verified before it is kept

# Session config key that makes session creation fail when a node would be placed on the CPU EP
# (kOrtSessionOptionsDisableCPUEPFallback, include/onnxruntime/core/session/onnxruntime_session_options_config_keys.h;
# enforced in onnxruntime/core/session/inference_session.cc, which also refuses it when the CPU EP is listed
# explicitly: "Conflicting session configuration").
DISABLE_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
# How the CUDA EP picks cuDNN convolution algorithms (CUDA EP docs, "cudnn_conv_algo_search": EXHAUSTIVE, the
# default, benchmarks every algorithm for each new input shape; HEURISTIC asks cudnnGetConvolutionForwardAlgorithm_v7;
# DEFAULT always takes IMPLICIT_PRECOMP_GEMM). Multi-scale views bring a new height x width with nearly every photo,
# so EXHAUSTIVE would re-benchmark inside a request; HEURISTIC picks a good algorithm without running any, at the
# cost of the last few percent on the fixed S x S ten-crop shapes (which TensorRT serves fastest anyway).
CUDNN_CONV_ALGO_SEARCH = "HEURISTIC"
TENSORRT_WHEEL = "tensorrt-cu13"


class ProviderUnavailable(MissingComponentError):
    """The execution provider asked for did not load; the message carries ONNX Runtime's reason. Exit 4."""


@dataclass(frozen=True)
class TrtOptions:
    """What the TensorRT EP is told: caches beside the model, one profile covering every server batch, FP16 or not."""

    cache_dir: Path | None  # engine + timing cache folder; None = no caches (rebuild on every start)
    input_name: str
    input_shape: tuple[int, ...]  # (3, H, W)
    profile: tuple[int, int, int]  # batch min, opt, max
    fp16: bool
    # A QDQ (int8) graph: the TensorRT EP builds it in INT8 only with trt_int8_enable (TensorRT EP docs,
    # "trt_int8_enable"; its Q/DQ scales stand in for a calibration table, so none is given).
    int8: bool = False
    # The profile of a session for multi-scale views instead: ``resnet.multiscale.view_profile``'s (min, opt, max)
    # [N, 3, H, W] shapes (height and width span a range). None = batches of input_shape only.
    views: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None

    def provider_options(self) -> dict[str, str]:
        """Option names and shape format as in ONNX Runtime's TensorRT EP documentation: ``name:d0xd1x...`` per
        input (comma-separated between inputs), min/opt/max all given, values as strings."""
        shape = "x".join(str(d) for d in self.input_shape)
        lo, opt, hi = (f"{n}x{shape}" for n in self.profile)
        if self.views is not None:
            lo, opt, hi = ("x".join(str(d) for d in dims) for dims in self.views)
        opts = {
            "trt_fp16_enable": str(self.fp16),
            "trt_int8_enable": str(self.int8),
            "trt_profile_min_shapes": f"{self.input_name}:{lo}",
            "trt_profile_opt_shapes": f"{self.input_name}:{opt}",
            "trt_profile_max_shapes": f"{self.input_name}:{hi}",
        }
        if self.cache_dir is not None:
            keyed = str(self.cache_dir / engine_cache_key(f"{lo}-{opt}-{hi}"))
            opts |= {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": keyed,
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": keyed,
            }
        return opts


def tf32(ep: str) -> str:
    """Whether FP32 math may run in TF32 on ``ep``, as parity reports record it (issue 25: never a mislabel). The
    CUDA EP is told ``use_tf32=0`` (CUDA EP docs, "use_tf32", default 1); TensorRT builds with ``kTF32`` on by
    default (NvInfer.h ``BuilderFlag::kTF32``) and the TensorRT EP has no option to clear it."""
    if ep == "tensorrt":
        return "on in TensorRT's FP32 layers (the TensorRT EP cannot turn it off); off on the CUDA EP"
    return "off (use_tf32=0)" if ep == "cuda" else "n/a (CPU)"


def cpu_threads() -> int:
    """CPUs this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int) -> Any:
    """ONNX Runtime session options for serving: one batch at a time, all threads intra-op, no spinning."""
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
    return opts


def gpu_session_options(opts: Any) -> Any:
    """``opts`` for a GPU provider's session: no node may fall back to the CPU EP (session creation fails instead,
    with ONNX Runtime's reason), and the session's own warnings (e.g. about placement) count as reasons too."""
    opts.add_session_config_entry(DISABLE_CPU_FALLBACK, "1")
    opts.log_severity_level = 2
    return opts


def cuda_provider_options() -> dict[str, str]:
    """CUDA EP options (ONNX Runtime CUDA EP docs, "Configuration Options"): FP32 is FP32, not TF32 (``tf32``)."""
    return {"cudnn_conv_algo_search": CUDNN_CONV_ALGO_SEARCH, "use_tf32": "0"}


def provider_list(ep: str, trt: TrtOptions | None) -> list[Any]:
    """The providers an ``ep`` session is made with. A GPU list ends without the CPU EP: with CPU fallback disabled
    ONNX Runtime refuses a list that names it (inference_session.cc). The TensorRT EP hands what TensorRT cannot
    build to the CUDA EP (TensorRT EP docs: "TensorRT EP ... falls back to CUDA EP")."""
    if ep == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", cuda_provider_options())
    if ep == "cuda":
        return [cuda]
    return [("TensorrtExecutionProvider", trt.provider_options() if trt is not None else {}), cuda]


def preload_tensorrt() -> str | None:
    """Load TensorRT's ``libnvinfer.so.10`` into this process so that the TensorRT EP finds it; None when loaded,
    else why not, in one line.

    ONNX Runtime's TensorRT EP (``libonnxruntime_providers_tensorrt.so``) links ``libnvinfer.so.10`` and is
    dlopen'ed when a session asks for it; the ``tensorrt-cu13`` wheel keeps that library in site-packages
    (``tensorrt_libs/``), off the loader path. Importing ``tensorrt_libs`` (which ``import tensorrt`` does first)
    ``ctypes.CDLL``s every library in that folder (NVIDIA/TensorRT python/packaging/libs_wheel/tensorrt_libs/
    __init__.py), after which the dynamic loader resolves the EP's ``libnvinfer.so.10`` to the loaded copy by its
    soname. A system install on ``LD_LIBRARY_PATH`` works too (the last attempt).
    """
    import ctypes
    import importlib

    reasons = []
    for module in ("tensorrt_libs", "tensorrt"):
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or a wheel whose libraries fail to load
            reasons.append(f"import {module}: {type(e).__name__}: {_first_line(e)[:120]}")
            continue
        try:
            ctypes.CDLL("libnvinfer.so.10")
            return None
        except OSError as e:
            reasons.append(f"after import {module}, libnvinfer.so.10 still does not load ({_first_line(e)[:120]})")
    try:
        ctypes.CDLL("libnvinfer.so.10")
        return None
    except OSError as e:
        reasons.append(f"libnvinfer.so.10 is not on the loader path ({_first_line(e)[:120]})")
    return (
        "the TensorRT EP needs TensorRT's libnvinfer.so.10 and it cannot be loaded: "
        f'{"; ".join(reasons)}. Fix: pip install "{TENSORRT_WHEEL}" (resnet-stack[serve-gpu] pins it), or put a '
        "TensorRT 10 lib/ folder on LD_LIBRARY_PATH"
    )


def rss_mib() -> float:
    """This process's resident memory in MiB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0.0


def onnx_session_card(session: Any, path: Path) -> ModelCard:
    """The card from an open session's model metadata (no ``onnx`` package needed), checked against the card digest
    beside it; metadata that is not UTF-8 text (a flipped high bit) is a ``CheckpointError`` too."""
    try:
        meta = session.get_modelmeta().custom_metadata_map
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is corrupt: its metadata is not UTF-8 text (copy or export it again)") from None
    if CARD_KEY not in meta:
        raise CardError(f"{path} has no model card in its metadata: it was not exported by this project")
    recorded = digest.recorded(meta.get(digest.CARD_DIGEST_KEY), path, "model card")
    digest.check(path, recorded, digest.card_sha256(meta[CARD_KEY]) if recorded else "", what="model card")
    return ModelCard.from_json(meta[CARD_KEY])


def peek_onnx(path: Path) -> tuple[ModelCard, list[Any]]:
    """The card and the input's dimensions (ints, or names of symbolic ones) before a GPU session is made (they shape
    the TensorRT profiles): through the ``onnx`` package when installed, else from a plain CPU session's metadata
    (the ``[serve-gpu]`` install has no ``onnx``)."""
    try:
        import onnx
    except ImportError:
        session = make_session(path, "cpu", session_options(1), None)
        return onnx_session_card(session, path), list(session.get_inputs()[0].shape)
    from resnet.onnx_card import read_onnx_card

    card = read_onnx_card(path)  # validates the file and its card first
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in _dims_of(graph.input[0])]
    return card, dims


def _dims_of(value_info: Any) -> Any:
    return value_info.type.tensor_type.shape.dim


def conflicting_runtimes() -> str | None:
    """A warning when both the ``onnxruntime`` and ``onnxruntime-gpu`` distributions are installed, else None."""
    found = {}
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    if len(found) < 2:
        return None
    return (
        f"both onnxruntime {found['onnxruntime']} and onnxruntime-gpu {found['onnxruntime-gpu']} are installed: they "
        "ship the same `onnxruntime` module and the one installed last wins, so the GPU providers may be missing. "
        'Fix: pip uninstall -y onnxruntime onnxruntime-gpu && pip install "resnet-stack[serve-gpu]" (GPU) or '
        '"resnet-stack[serve]" (CPU)'
    )


def trt_cache_dir(model: Path, requested: str) -> Path | None:
    """The TensorRT EP cache folder (``requested``, or ``<model>.trt_cache`` beside the model), created and checked
    writable. A read-only model volume: ``$XDG_CACHE_HOME/resnet-stack/trt/<model>-<hash of its path>`` (default
    ``~/.cache``), logged; None with a warning when that cannot be written either (engines then rebuild)."""
    folder = Path(requested) if requested else model.with_name(model.name + ".trt_cache")
    try:
        ensure_writable(folder)
        return folder
    except UserError as e:
        if requested:
            log.warning("TensorRT cache folder is not usable (%s): engines will be rebuilt at every start", e)
            return None
        why = e
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = hashlib.sha256(str(model.resolve()).encode()).hexdigest()[:12]
    fallback = home / "resnet-stack" / "trt" / f"{model.name}-{tag}"
    try:
        ensure_writable(fallback)
    except UserError as e:
        log.warning(
            "TensorRT cache: neither %s (%s) nor %s (%s) is writable: engines rebuild", folder, why, fallback, e
        )
        return None
    log.info("TensorRT cache: %s is not writable (%s); caching in %s", folder, why, fallback)
    return fallback


@contextlib.contextmanager
def _ort_messages(ort: Any) -> Iterator[list[str]]:
    """Collect what ONNX Runtime says while a session is made: its Python warnings and its log (warning and up)."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hook = getattr(ort, "set_default_logger_callback", None)
        if hook is not None:  # onnxruntime >= 1.32: a Python callback for the default logger
            # warnings and up are reasons; the TensorRT EP's info lines say how the graph was placed (trt_ep.placement)
            keep = messages.append
            hook(lambda sev, cat, logid, where, msg: keep(msg) if sev >= 2 or "[TensorRT EP]" in msg else None, 1)
            try:
                yield messages
            finally:
                hook(None, 2)  # the platform sink again; its severity is not restored by this (ORT's docstring)
                ort.set_default_logger_severity(2)  # else the default logger stays at info: every run logs to stderr
        else:
            with _stderr_lines(messages):
                yield messages
    messages[:0] = [str(w.message) for w in caught]


@contextlib.contextmanager
def _stderr_lines(messages: list[str]) -> Iterator[None]:
    """Older onnxruntime: its C++ logger writes to file descriptor 2; capture that while the session is made."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            messages.extend(line for line in tmp.read().decode(errors="replace").splitlines() if line.strip())


def make_session(path: Path, ep: str, opts: Any, trt: TrtOptions | None) -> Any:
    """An ``InferenceSession`` whose first provider is ``PROVIDERS[ep]``; ``ProviderUnavailable`` with ONNX Runtime's
    reason when it cannot be made there or ends on another provider (e.g. the CPU).

    ``enable_fallback=0`` switches off the Python layer's own retry: on a failed session creation (or an EP failure
    in ``run``) ``InferenceSession`` otherwise prints the error and silently retries on CUDA + CPU
    (onnxruntime/python/onnxruntime_inference_collection.py, ``InferenceSession.__init__`` and ``Session.run``).
    """
    import onnxruntime as ort

    wanted = PROVIDERS[ep]
    if ep == "tensorrt":
        missing = preload_tensorrt()
        if missing is not None:
            raise ProviderUnavailable(f"{wanted}: {missing}")
    if ep != "cpu":
        opts = gpu_session_options(opts)
    building = build_progress(path, trt) if ep == "tensorrt" else contextlib.nullcontext()
    with _ort_messages(ort) as messages, building:
        try:
            session = ort.InferenceSession(
                str(path), sess_options=opts, providers=provider_list(ep, trt), enable_fallback=0
            )
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
            if ep != "cpu":
                first = _first_line(e)
                said = "; ".join(dict.fromkeys(m.strip() for m in messages if m.strip() and m.strip() not in first))
                raise ProviderUnavailable(
                    f"{wanted}: session creation failed ({_first_line(e)})"
                    + (f"; ONNX Runtime said: {said[:400]}" if said else "")
                ) from None
            raise UserError(f"{path}: ONNX Runtime cannot load it ({_first_line(e)})") from None
    used = session.get_providers()
    if ep == "tensorrt":
        session.placement = placement(messages)  # type: ignore[attr-defined]  # OnnxRunner.info reports it
        messages[:] = [m for m in messages if "[TensorRT EP]" not in m]
    if used[0] != wanted:
        reason = "; ".join(dict.fromkeys(m.strip() for m in messages if m.strip())) or "no message from ONNX Runtime"
        raise ProviderUnavailable(
            f"asked for {wanted}, ONNX Runtime {ort.__version__} loaded {used} (available in this build: "
            f"{ort.get_available_providers()}); ONNX Runtime said: {reason[:600]}"
        )
    return session


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
