"""Run a TensorRT engine (``*.plan``) from Python, for the export parity gate and the server.

Stable interface (export/ and serve/ both rely on it)::

    ok, reason = tensorrt_available()          # (True, "TensorRT 10.x on <GPU>") or (False, why not)
    runner = TensorRTRunner("model.plan")      # deserialises the engine, one execution context
    logits = runner.run(x)                     # x: float32 [N, 3, H, W], min_batch <= N <= max_batch
    runner.min_batch, runner.max_batch         # the optimisation profile's batch range
    runner.input_name, runner.output_name, runner.input_shape  # ("input", "logits", (3, H, W))
    runner.close()                             # frees the context and the engine (also a context manager)

Buffers are torch CUDA tensors (``data_ptr()`` goes to ``set_tensor_address``), so there is no pycuda dependency.
The engine is run with ``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3`` on a torch CUDA stream.
``run`` is not thread-safe: one runner serves one caller at a time (the server's batching queue does that).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingComponentError, UserError

MIN_TENSORRT_MAJOR = 10


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
    from .artifacts import check_engine_host, read_sidecar

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
    """One deserialised engine with one execution context; ``run`` maps float32 NCHW crops to float32 logits."""

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
        lo, _opt, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.input_shape = tuple(int(d) for d in hi[1:])
        self._in_dtype = _torch_dtype(torch, trt, self.engine.get_tensor_dtype(self.input_name))
        self._out_dtype = _torch_dtype(torch, trt, self.engine.get_tensor_dtype(self.output_name))
        self.context = self.engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self.device)
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        """float32 ``[N, 3, H, W]`` (``min_batch <= N <= max_batch``) -> float32 logits ``[N, C]``."""
        torch = self._torch
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input must be [N, {', '.join(map(str, self.input_shape))}], got {list(x.shape)}")
        n = x.shape[0]
        if not self.min_batch <= n <= self.max_batch:
            raise ValueError(f"batch {n} is outside the engine's profile [{self.min_batch}, {self.max_batch}]")
        with self._lock, torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            inp = torch.from_numpy(x).to(self.device, non_blocking=False).to(self._in_dtype).contiguous()
            if not self.context.set_input_shape(self.input_name, tuple(inp.shape)):
                raise RuntimeError(f"TensorRT refused input shape {tuple(inp.shape)}")
            out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
            out = torch.empty(out_shape, dtype=self._out_dtype, device=self.device)
            self.context.set_tensor_address(self.input_name, inp.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            self._stream.synchronize()
            return out.float().cpu().numpy()

    def close(self) -> None:
        """Release the execution context and the engine (GPU memory)."""
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
