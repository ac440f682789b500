"""Build a TensorRT engine from our ONNX graphs, chosen by the installed TensorRT version.

- TensorRT 11+: networks are always strongly typed and ``BuilderFlag.FP16`` no longer exists, so the engine is
  built from the FP16 graph (``*.fp16.onnx``): every tensor keeps the type the graph gives it.
- TensorRT 10: by default the FP32 graph with ``BuilderFlag.FP16`` (TensorRT picks FP16 kernels where it likes);
  ``strongly_typed=True`` builds from the FP16 graph with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` instead.

One optimisation profile on the batch dimension: min 1, opt 10 (one ten-crop image), max N. A timing cache file is
loaded before and saved (atomically) after each build, so rebuilding the same network is fast; a cache from another
GPU or TensorRT version is not applied (warning) and a new one replaces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet import UserError
from resnet.atomic import atomic_write

from .log import log

OPT_BATCH = 10  # one ten-crop image


class EngineBuildError(UserError):
    """TensorRT could not parse the graph or build the engine."""


@dataclass
class EngineBuild:
    """A serialised engine and how it was made (goes into the ``*.plan.json`` sidecar)."""

    plan: bytes
    tensorrt: str
    mode: str
    source: str
    profile: dict[str, int]
    seconds: float
    timing_cache: str
    timing_cache_reused: bool
    extra: dict[str, Any] = field(default_factory=dict)


def choose_mode(trt_version: str, strongly_typed: bool | None) -> bool:
    """True: strongly typed from the FP16 graph; False: FP32 graph + FP16 builder flag (TensorRT 10 only)."""
    major = int(str(trt_version).split(".")[0])
    if major >= 11:
        return True
    return bool(strongly_typed)


def build_engine(
    fp32_onnx: Path,
    fp16_onnx: Path,
    input_size: int,
    max_batch: int,
    timing_cache: Path,
    strongly_typed: bool | None = None,
    input_name: str = "input",
) -> EngineBuild:
    """Parse, configure and build; returns the serialised engine. ``EngineBuildError`` with one line on failure."""
    import tensorrt as trt

    typed = choose_mode(trt.__version__, strongly_typed)
    major = int(trt.__version__.split(".")[0])
    source = fp16_onnx if typed else fp32_onnx
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if typed and major < 11:  # 11.x is strongly typed by default (the flag is gone or a no-op there)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {source.name}: {errors[:300]}")
    config = builder.create_builder_config()
    if not typed:
        config.set_flag(trt.BuilderFlag.FP16)
    lo, opt, hi = 1, min(OPT_BATCH, max_batch), max_batch
    shape = (3, input_size, input_size)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (lo, *shape), (opt, *shape), (hi, *shape))
    config.add_optimization_profile(profile)
    cache, reused = attach_timing_cache(config, timing_cache, trt.__version__)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build an engine from {source.name} (log above)")
    save_timing_cache(cache, timing_cache)
    mode = "strongly typed network from the FP16 graph" if typed else "FP32 graph with BuilderFlag.FP16 (weakly typed)"
    return EngineBuild(
        plan=bytes(memoryview(serialized)),
        tensorrt=trt.__version__,
        mode=mode,
        source=source.name,
        profile={"min": lo, "opt": opt, "max": hi},
        seconds=round(seconds, 2),
        timing_cache=str(timing_cache),
        timing_cache_reused=reused,
    )


def attach_timing_cache(config: Any, path: Path, trt_version: str) -> tuple[Any | None, bool]:
    """Load the timing cache file into the builder ``config``: ``(the cache that was set, reused)``.

    ``IBuilderConfig.set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache from another GPU or
    TensorRT version (TensorRT docs): then warn, and build with a new empty cache instead. ``(None, False)`` when
    TensorRT refuses even that: the build runs without a timing cache and nothing is saved afterwards.
    """
    data = path.read_bytes() if path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # a corrupt file: TensorRT may raise rather than return None
            cache = None
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache, True
        log(
            f"warning: timing cache {path} does not apply here (made by another TensorRT than {trt_version} or "
            "for another GPU, or unreadable): building without it; a new one replaces it after the build"
        )
    fresh = config.create_timing_cache(b"")
    if fresh is not None and config.set_timing_cache(fresh, ignore_mismatch=False):
        return fresh, False
    log(f"warning: TensorRT {trt_version} refused a new timing cache: building without one")
    return None, False


def save_timing_cache(cache: Any | None, path: Path) -> None:
    """Write the cache that was set on the builder (atomically); nothing when none was set."""
    if cache is not None:
        atomic_write(path, bytes(memoryview(cache.serialize())))


def gpu_description() -> dict[str, Any]:
    """Name, compute capability and CUDA version of the GPU the engine is built for."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "memory_gib": round(props.total_memory / 2**30, 1),
    }
