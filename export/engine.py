"""Build a TensorRT engine from our ONNX graphs, chosen by the installed TensorRT version.

- FP16 engine, TensorRT 10.12 and later (our pins: 10.16): a strongly typed network
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``) from the FP16 graph (``*.fp16.onnx``): every tensor keeps the
  type the graph gives it. The weak-typing APIs (``BuilderFlag.FP16``) are deprecated since 10.12 and gone in 11
  (TensorRT 10.12.0 release notes, "Weak typing APIs deprecated"; "Removed Python APIs and Replacements" in the
  10.x -> 11.x migration guide). The flag is set on 11 too, where it is accepted and ignored.
- FP16 engine, TensorRT 10.0-10.11: the FP32 graph with ``BuilderFlag.FP16`` (TensorRT picks FP16 kernels where it
  likes), or with ``strongly_typed=True`` the strongly typed FP16 graph as above.
- INT8 engine (``int8_onnx``): always a strongly typed network from the QDQ graph (explicit quantization: the Q/DQ
  nodes say what runs in INT8; "use explicit quantization with strong typing, precision-control build flags are not
  required and should not be specified": TensorRT developer guide, "Explicit Quantization"). The graph is checked
  against TensorRT's ONNX rules (``export.trt_rules``) before TensorRT is even imported.

Optimisation profiles (``engine_profiles``): profile 0 is the ten-crop path, batch min 1, opt 10 (one ten-crop
image), max N at the card's fixed S x S. With ``multiscale`` a second profile takes the paper's multi-scale views
(``resnet.multiscale.view_profile``): batch 1..``VIEW_MAX_BATCH``, height and width each in [smallest side, largest side x
``VIEW_MAX_ASPECT``]. A timing cache file is loaded before and saved (atomically) after each build, so rebuilding the
same network is fast; a cache from another GPU or TensorRT version is not applied (warning) and a new one replaces it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet import UserError
from resnet.atomic import atomic_write
from resnet.card import ModelCard
from resnet.multiscale import multiscale_sides, view_profile
from resnet.runtime.openers import batch_profile

from . import trt_rules
from .log import log

WEAK_TYPING_DEPRECATED = (10, 12)  # BuilderFlag.FP16 and the other weak-typing APIs: deprecated from this version
INT8_MODE = "strongly typed network from the INT8 QDQ graph (explicit quantization)"

Shape = tuple[int, int, int, int]


@dataclass(frozen=True)
class ProfileSpec:
    """One optimisation profile of the input tensor: ``[N, 3, H, W]`` shapes (TensorRT's min, opt and max)."""

    min: Shape
    opt: Shape
    max: Shape

    def shapes(self) -> tuple[Shape, Shape, Shape]:
        """``(min, opt, max)``: the plain tuple ``resnet.runtime.tensorrt`` reads back from an engine."""
        return self.min, self.opt, self.max


def engine_profiles(card: ModelCard, max_batch: int, multiscale: bool = False) -> list[ProfileSpec]:
    """The engine's optimisation profiles: ``[ten-crop]`` or ``[ten-crop, multi-scale]``.

    Ten-crop: batch 1..``max_batch`` (opt one ten-crop image, ``resnet.runtime.openers.batch_profile``) at the card's S x S, exactly as without multi-scale, so
    that path keeps its kernels. Multi-scale: ``resnet.multiscale.view_profile`` (batch 1..``VIEW_MAX_BATCH``, height and width
    each in ``[min(sides), ceil(max(sides) * VIEW_MAX_ASPECT)]``, opt a 4:3 view at the middle side), the same
    profile the server gives ONNX Runtime's TensorRT EP.
    """
    s = card.input_size
    lo, opt, hi = batch_profile(max_batch)  # the same profile the gate and the server give the TensorRT EP
    ten = ProfileSpec((lo, 3, s, s), (opt, 3, s, s), (hi, 3, s, s))
    if not multiscale:
        return [ten]
    views = ProfileSpec(*view_profile(card))
    return [ten, views]


def multiscale_record(card: ModelCard, profiles: list[ProfileSpec]) -> dict[str, Any] | None:
    """The sidecar's ``multiscale`` object for these profiles; None without a multi-scale profile."""
    if len(profiles) < 2:
        return None
    p = profiles[1]
    return {
        "batch": [p.min[0], p.opt[0], p.max[0]],
        "min_side": p.min[2],
        "max_side": p.max[2],
        "sides": list(multiscale_sides(card)),
    }


class EngineBuildError(UserError):
    """TensorRT could not parse the graph or build the engine."""


@dataclass
class EngineBuild:
    """A serialised engine and how it was made (goes into the ``*.plan.json`` sidecar)."""

    plan: bytes
    tensorrt: str
    mode: str
    source: str
    profile: dict[str, int]  # batch range of profile 0 (the ten-crop path)
    seconds: float
    timing_cache: str
    timing_cache_reused: bool
    extra: dict[str, Any] = field(default_factory=dict)
    profiles: list[tuple[Shape, Shape, Shape]] = field(default_factory=list)  # every profile, (min, opt, max)


def choose_mode(trt_version: str, strongly_typed: bool | None) -> bool:
    """True: strongly typed from the FP16 graph; False: FP32 graph + FP16 builder flag (TensorRT before 10.12 only,
    unless ``strongly_typed`` asks for the typed network there too)."""
    major, minor = (int(part) for part in (str(trt_version).split(".") + ["0"])[:2])
    if (major, minor) >= WEAK_TYPING_DEPRECATED:
        return True
    return bool(strongly_typed)


def build_engine(
    fp32_onnx: Path,
    fp16_onnx: Path,
    profiles: list[ProfileSpec],
    timing_cache: Path,
    strongly_typed: bool | None = None,
    input_name: str = "input",
    *,
    int8_onnx: Path | None = None,
) -> EngineBuild:
    """Parse, configure (one optimisation profile per ``profiles`` entry, in order) and build; returns the serialised
    engine. With ``int8_onnx`` the INT8 engine from that QDQ graph, refused (``TrtRulesError``) before TensorRT is
    imported when the graph breaks TensorRT's ONNX rules. ``EngineBuildError`` with one line on failure."""
    if int8_onnx is not None:
        trt_rules.require_trt_ready_file(int8_onnx)
    import tensorrt as trt

    typed = int8_onnx is not None or choose_mode(trt.__version__, strongly_typed)
    source = int8_onnx or (fp16_onnx if typed else fp32_onnx)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # NetworkDefinitionCreationFlag.STRONGLY_TYPED, passed as 1 << int(flag) to create_network: opt-in on 10.x;
    # 11.0 keeps it "for API compatibility but ignored" (TensorRT Python API, infer/Core/Builder.html, 10.x and 11.0)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {source.name}: {errors[:300]}")
    config = builder.create_builder_config()
    if not typed:
        config.set_flag(trt.BuilderFlag.FP16)
    add_profiles(builder, config, profiles, input_name)
    cache, reused = attach_timing_cache(config, timing_cache, trt.__version__)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build an engine from {source.name} (log above)")
    save_timing_cache(cache, timing_cache)
    mode = "strongly typed network from the FP16 graph" if typed else "FP32 graph with BuilderFlag.FP16 (weakly typed)"
    mode = INT8_MODE if int8_onnx is not None else mode
    return EngineBuild(
        plan=bytes(memoryview(serialized)),
        tensorrt=trt.__version__,
        mode=mode,
        source=source.name,
        profile={"min": profiles[0].min[0], "opt": profiles[0].opt[0], "max": profiles[0].max[0]},
        seconds=round(seconds, 2),
        timing_cache=str(timing_cache),
        timing_cache_reused=reused,
        profiles=[p.shapes() for p in profiles],
    )


def add_profiles(builder: Any, config: Any, profiles: list[ProfileSpec], input_name: str) -> None:
    """One ``IOptimizationProfile`` per spec, added in order, so profile ``i`` of the engine is ``profiles[i]``.

    TensorRT Python API, IOptimizationProfile (``set_shape(input, min, opt, max)``) and
    IBuilderConfig.add_optimization_profile (returns the profile's index, -1 when invalid):
    https://docs.nvidia.com/deeplearning/tensorrt/api/python_api/infer/Core/OptimizationProfile.html (10.x) and the
    binding docstrings in NVIDIA/TensorRT v10.8.0 python/docstrings/infer/pyCoreDoc.h
    """
    for i, spec in enumerate(profiles):
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, spec.min, spec.opt, spec.max)
        index = config.add_optimization_profile(profile)
        if index != i:
            raise EngineBuildError(f"TensorRT refused optimisation profile {i} {spec.shapes()} (index {index})")


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
