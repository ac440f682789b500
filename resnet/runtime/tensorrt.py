"""Run a TensorRT engine (``*.plan``) from Python, for the export parity gate and the server (``resnet.runtime``).

Stable interface (export/ and serve/ both rely on it)::

    ok, reason = tensorrt_available()          # (True, "TensorRT 10.x on <GPU>") or (False, why not)
    runner = open_engine("model.plan")         # the sidecar checked against this machine first (exit 4 if not)
    runner = TensorRTRunner("model.plan")      # deserialises the engine, one execution context per profile
    logits = runner.run(x)                     # x: float32 [N, 3, H, W] inside one of the engine's profiles
    runner.min_batch, runner.max_batch         # profile 0's batch range (the ten-crop path)
    runner.input_name, runner.output_name, runner.input_shape  # ("input", "logits", (3, S, S)) of profile 0
    runner.spatial                             # (min, max) height/width of a multi-scale profile, or None
    runner.profiles                            # every profile's (min, opt, max) input shapes, as plain tuples
    runner.close()                             # frees the contexts and the engine (also a context manager)

Buffers are torch CUDA tensors (``data_ptr()`` goes to ``set_tensor_address``), so there is no pycuda dependency.
The engine is run with ``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3`` on a torch CUDA stream.
``run`` picks the first profile whose range holds the input's shape (``choose_profile``) and runs it on that
profile's own execution context. ``run`` is serialised by a lock: one runner serves one caller at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingComponentError, UserError

MIN_TENSORRT_MAJOR = 10

Shape = tuple[int, ...]
Profile = tuple[Shape, Shape, Shape]  # (min, opt, max) input shape of one optimisation profile


def choose_profile(profiles: Sequence[Profile], shape: Sequence[int]) -> int | None:
    """Index of the first profile whose [min, max] range holds ``shape`` in every dimension, or None."""
    shape = tuple(int(d) for d in shape)
    for i, (lo, _opt, hi) in enumerate(profiles):
        if len(lo) == len(shape) and all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
            return i
    return None


def spatial_range(profiles: Sequence[Profile]) -> tuple[int, int] | None:
    """``(min, max)`` that both height and width may take in the first profile with a spatial range (not a fixed
    S x S), or None when every profile has a fixed size. ``min(h, w) >= min and max(h, w) <= max`` then runs."""
    for lo, _opt, hi in profiles:
        if len(lo) == 4 and (lo[2], lo[3]) != (hi[2], hi[3]):
            return max(lo[2], lo[3]), min(hi[2], hi[3])
    return None


def describe_profiles(profiles: Sequence[Profile]) -> str:
    """``[1..64]x3x224x224, [1..8]x3x[224..1280]x[224..1280]``: the shapes an engine takes, for error messages."""

    def dim(a: int, b: int) -> str:
        return str(a) if a == b else f"[{a}..{b}]"

    return ", ".join("x".join(dim(a, b) for a, b in zip(lo, hi)) for lo, _opt, hi in profiles)


def tensorrt_version() -> str | None:
    """The installed ``tensorrt`` package's version, or None when it is not importable."""
    try:
        import tensorrt as trt
    except Exception:  # ImportError, or a broken install that fails to load its shared libraries
        return None
    return str(trt.__version__)


def installed_tensorrt() -> str | None:
    """The version of the installed TensorRT wheel from its distribution metadata (no import, no GPU), or None."""
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def same_release(a: str, b: str) -> bool:
    """Whether two TensorRT version strings name the same release (first three components: 10.16.1 == 10.16.1.11)."""
    return str(a).split(".")[:3] == str(b).split(".")[:3]


def tensorrt_available() -> tuple[bool, str]:
    """Whether engines can be built and run here: ``(True, "TensorRT 10.8 on NVIDIA H100")`` or ``(False, why)``."""
    try:
        import torch
    except ImportError:
        return False, (
            'torch is not installed (the engine runner keeps its buffers in torch CUDA tensors: pip install "torch==2.14.1")'
        )
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    try:
        import tensorrt as trt
    except Exception as e:
        return False, f"the tensorrt package is not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    major = _major(trt.__version__)
    if major < MIN_TENSORRT_MAJOR:
        return False, f"TensorRT {trt.__version__} is too old (need {MIN_TENSORRT_MAJOR}.x or newer)"
    return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}"


def engine_host() -> tuple[str, str]:
    """``(TensorRT version, compute capability "M.m" of GPU 0)``: what an engine must have been built for."""
    import tensorrt as trt
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return str(trt.__version__), f"{major}.{minor}"


def open_engine(plan_path: str | os.PathLike[str]) -> TensorRTRunner:
    """A runner for one of our engines after its sidecar is validated and checked against this machine (exit 4 with
    the rebuild command when it was built by another TensorRT version or for another GPU architecture)."""
    from ..artifacts import check_engine_host, read_sidecar

    sidecar = read_sidecar(plan_path)
    installed = installed_tensorrt()
    if installed is not None and not same_release(installed, sidecar.tensorrt):
        check_engine_host(plan_path, sidecar, installed, sidecar.compute_capability)  # refuses: another TensorRT
    ok, reason = tensorrt_available()
    if not ok:
        raise MissingComponentError(f"cannot run a TensorRT engine here: {reason}")
    check_engine_host(plan_path, sidecar, *engine_host())
    return TensorRTRunner(plan_path)


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


class TensorRTRunner:
    """One deserialised engine, one execution context per profile; ``run`` maps float32 NCHW input to logits."""

    def __init__(self, plan_path: str | os.PathLike[str], device: int = 0) -> None:
        ok, reason = tensorrt_available()
        if not ok:
            raise MissingComponentError(f"cannot run a TensorRT engine here: {reason}")
        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        path = Path(plan_path)
        if not path.is_file():
            raise UserError(f"no such engine file: {path}")
        self.path = path
        self.device = torch.device("cuda", device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"{path} could not be deserialised: built by another TensorRT version ({trt.__version__} here) "
                "or for another GPU, or corrupt"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{path}: expected one input and one output tensor, found {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.profiles = self._read_profiles()
        (lo, _opt, hi) = self.profiles[0]
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.input_shape = tuple(int(d) for d in hi[1:])
        self.spatial = spatial_range(self.profiles)
        self._in_dtype = _torch_dtype(torch, trt, self.engine.get_tensor_dtype(self.input_name))
        self._out_dtype = _torch_dtype(torch, trt, self.engine.get_tensor_dtype(self.output_name))
        self._stream = torch.cuda.Stream(device=self.device)
        self.contexts = self._make_contexts()
        self.context = self.contexts[0]  # profile 0's context, under its old name
        self._lock = threading.Lock()

    def _read_profiles(self) -> list[Profile]:
        """Every optimisation profile's (min, opt, max) input shape.

        ``ICudaEngine.num_optimization_profiles`` and ``get_tensor_profile_shape(name, profile_index)`` (TensorRT
        Python API, ICudaEngine: https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-1001/api/python_api/infer/Core/Engine.html;
        binding docstrings in NVIDIA/TensorRT v10.8.0 python/docstrings/infer/pyCoreDoc.h).
        """
        profiles = []
        for i in range(int(self.engine.num_optimization_profiles)):
            shapes = self.engine.get_tensor_profile_shape(self.input_name, i)
            lo, opt, hi = (tuple(int(d) for d in dims) for dims in shapes)
            profiles.append((lo, opt, hi))
        if not profiles or len(profiles[0][0]) != 4:
            raise UserError(f"{self.path}: expected an NCHW input with an optimisation profile, got {profiles}")
        return profiles

    def _make_contexts(self) -> list[Any]:
        """One execution context per optimisation profile, each bound to its profile once.

        A new context starts on profile 0; ``set_optimization_profile_async(index, stream)`` binds it to another
        before any ``set_input_shape`` (NvInferRuntime.h / IExecutionContext::setOptimizationProfileAsync, TensorRT
        10.x: https://docs.nvidia.com/deeplearning/tensorrt/api/c_api/classnvinfer1_1_1_i_execution_context.html).
        The Python binding of ``set_optimization_profile_async`` raises ``RuntimeError`` ("Error in set
        optimization profile async.") when TensorRT refuses and otherwise returns True (NVIDIA/TensorRT
        python/src/infer/pyCore.cpp, ``context_set_optimization_profile_async``), so the error is caught, not tested
        as a return value. With several profiles each context is created with ``ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE``
        ("reallocate for a profile when it's selected"), so the ten-crop context does not also hold the activation
        memory of the multi-scale profile (STATIC, the default, allocates the maximum across all profiles):
        https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/RuntimeConfig.html
        """
        trt, torch = self._trt, self._torch
        several = len(self.profiles) > 1
        strategy = getattr(trt.ExecutionContextAllocationStrategy, "ON_PROFILE_CHANGE", None) if several else None
        contexts = []
        with torch.cuda.device(self.device):
            for i in range(len(self.profiles)):
                if strategy is not None:
                    ctx = self.engine.create_execution_context(strategy)
                else:
                    ctx = self.engine.create_execution_context()
                if ctx is None:
                    raise RuntimeError(
                        f"TensorRT could not create an execution context for profile {i} (out of memory?)"
                    )
                if i > 0:
                    try:
                        ctx.set_optimization_profile_async(i, self._stream.cuda_stream)
                    except RuntimeError as e:
                        raise RuntimeError(f"TensorRT refused optimisation profile {i}: {e}") from None
                contexts.append(ctx)
            self._stream.synchronize()  # the profile switches are done before the first enqueue
        return contexts

    def run(self, x: np.ndarray) -> np.ndarray:
        """float32 ``[N, 3, H, W]`` inside one of ``profiles`` -> float32 logits ``[N, C]``; ValueError otherwise."""
        torch = self._torch
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.run_device(torch.from_numpy(x).to(self.device))

    @property
    def input_dtype(self) -> Any:
        """The torch dtype of the engine's input tensor."""
        return self._in_dtype

    def run_device(self, x: Any) -> np.ndarray:
        """A torch tensor on this engine's GPU, queued on the caller's current stream (``resnet.runtime.device_feed``)
        -> float32 logits on the host. The engine's stream waits for the caller's stream (on the device), and the
        input's address is bound as is (``set_tensor_address``), contiguous NCHW in the engine's input type."""
        torch = self._torch
        index = choose_profile(self.profiles, tuple(x.shape))
        if index is None:
            raise ValueError(
                f"input shape {list(x.shape)} is outside the engine's profiles ({describe_profiles(self.profiles)})"
            )
        context = self.contexts[index]
        caller = torch.cuda.current_stream(self.device)
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            self._stream.wait_stream(caller)
            inp = x.to(self._in_dtype).contiguous()
            inp.record_stream(self._stream)
            if not context.set_input_shape(self.input_name, tuple(inp.shape)):
                raise RuntimeError(f"TensorRT refused input shape {tuple(inp.shape)} on profile {index}")
            out_shape = tuple(int(d) for d in context.get_tensor_shape(self.output_name))
            out = torch.empty(out_shape, dtype=self._out_dtype, device=self.device)
            context.set_tensor_address(self.input_name, inp.data_ptr())
            context.set_tensor_address(self.output_name, out.data_ptr())
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            self._stream.synchronize()
            return out.float().cpu().numpy()

    def close(self) -> None:
        """Release the execution contexts and the engine (GPU memory)."""
        self.contexts = []
        for attr in ("context", "engine"):
            if getattr(self, attr, None) is not None:
                setattr(self, attr, None)

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _torch_dtype(torch: Any, trt: Any, dtype: Any) -> Any:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise UserError(f"engine tensor type {dtype} is not supported by this runner")
    return table[dtype]
