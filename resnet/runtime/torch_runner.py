"""``TorchRunner``: a PyTorch network served as is (a ``.pt`` checkpoint, or torchvision's named weights).

torch (and torchvision, for named weights) are imported only when such a backend is made: an ONNX model serves
without them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..card import ModelCard
from ..errors import MissingComponentError, UsageError
from ..multiscale import ANY_SIZE
from ..names import parse_torchvision_spec
from .device_feed import DeviceFeed, Fed, ImageBatch
from .kinds import Precision, Runtime
from .ort import cpu_threads

log = logging.getLogger("resnet.runtime.torch")


def passive_omp_waits() -> bool:
    """Ask torch's OpenMP threads to sleep, not spin, between parallel regions (``OMP_WAIT_POLICY=PASSIVE``, unless
    the environment sets it), as the ONNX Runtime sessions do (``session.intra_op.allow_spinning`` 0): in a server
    the decode threads need those cores between the network's layers. OpenMP reads it once, when torch loads;
    returns whether it was in time (torch not imported yet)."""
    if "torch" in sys.modules:
        return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True


class TorchRunner(Fed):
    """A PyTorch network on CUDA when available, else the CPU; channels_last; fp32, or bf16/fp16 (weights cast once
    on CUDA, autocast on the CPU).

    Built from an already loaded ``(model, card)``; ``from_checkpoint`` and ``from_torchvision`` load them. A feed
    (``resnet.runtime.device_feed.attach_feed``: the server attaches one on CUDA) makes it take resized uint8
    images and crops through ``stage`` / ``run_staged``.
    """

    kind: Runtime = "torch"
    profiles = None  # engines only
    report: str | None = None  # a checkpoint is its own reference: no parity report admits it

    def __init__(
        self, model: Any, card: ModelCard, precision: str = "fp32", threads: int = 0, multiscale: str = "auto"
    ) -> None:
        if not passive_omp_waits():
            log.info("torch was imported before the backend: its OpenMP threads keep their default wait policy")
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
            raise UsageError("--precision fp16 needs CUDA for a PyTorch model; on the CPU use bf16 or fp32")
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.precision: Precision = precision  # type: ignore[assignment]
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        # On CUDA the weights are cast once (no autocast on every call); the CPU keeps fp32 weights (+ bf16 autocast).
        self.weights_dtype = self.dtype if self.device.type == "cuda" else None
        if self.weights_dtype is not None:
            self.model = self.model.to(self.weights_dtype)
        self._own_feed: DeviceFeed | None = None  # for uint8 input when no feed is attached
        self.card = card
        self.name = f"torch:{self.device.type}:{precision}"
        self.provider = f"torch:{self.device.type}"
        self.max_batch = None
        self.min_batch = 1
        self.spatial = None if multiscale == "off" else ANY_SIZE  # our networks end in adaptive average pooling
        self.max_view_batch = None
        self.info = {"backend": f"torch-{self.device.type}", "torch": torch.__version__, "precision": precision}

    @classmethod
    def from_checkpoint(
        cls, path: Path, precision: str = "fp32", threads: int = 0, multiscale: str = "auto"
    ) -> TorchRunner:
        """Our ``.pt`` checkpoint (card inside) through ``resnet.load_checkpoint``."""
        try:
            passive_omp_waits()
            import torch  # noqa: F401

            from resnet import load_checkpoint
        except ImportError as e:
            raise MissingComponentError(
                f"serving the checkpoint {path.name} needs PyTorch, which is not installed here ({e.name}): "
                f'pip install "resnet-stack[train]", or export it and serve the ONNX file '
                f"(python -m export.onnx {path})"
            ) from None
        model, card = load_checkpoint(path)
        return cls(model, card, precision, threads, multiscale)

    @classmethod
    def from_torchvision(
        cls,
        spec: str,
        precision: str = "fp32",
        threads: int = 0,
        *,
        download: bool = False,
        check_hash: bool = True,
        multiscale: str = "auto",
    ) -> TorchRunner:
        """``torchvision:ARCH[:WEIGHTS]``: torchvision's named weights from the torch hub cache
        (``resnet.weights.load_named``; not cached and no ``download``: ``WeightsNotCachedError``, exit 4)."""
        arch, weights = parse_torchvision_spec(spec)
        try:
            passive_omp_waits()
            import torchvision  # noqa: F401

            from resnet.weights import load_named  # torch + torchvision: imported only for this kind of model
        except ImportError as e:
            raise MissingComponentError(
                f"serving {spec} needs PyTorch and torchvision, which are not installed here ({e.name}): "
                f'pip install "resnet-stack[train]"'
            ) from None
        model, card = load_named(arch, weights, download=download, check_hash=check_hash)
        return cls(model, card, precision, threads, multiscale)

    def feed_device(self) -> str | None:
        return str(self.device) if self.device.type == "cuda" else None

    def feed_dtype(self) -> Any:
        return self.weights_dtype

    def run(self, batch: np.ndarray | ImageBatch) -> np.ndarray:
        """float32 normalised crops; or uint8 crops, or an ``ImageBatch``, normalised on the device (through the
        attached feed, or one made for the call) -> logits."""
        torch = self.torch
        if isinstance(batch, ImageBatch) or batch.dtype == np.uint8 or self.feed is not None:
            if self.feed is None and self._own_feed is None:
                self._own_feed = DeviceFeed(self.card, self.device, self.weights_dtype)
            feed = self.feed or self._own_feed
            return self.run_device(feed.ready(feed.stage(batch)))
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self.device)
        return self.run_device(x.contiguous(memory_format=torch.channels_last))

    def run_device(self, x: Any) -> np.ndarray:
        """Normalised crops already on the device (a torch tensor) -> float32 logits on the host."""
        torch = self.torch
        autocast = self.dtype is not None and self.weights_dtype is None
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=autocast):
            if self.weights_dtype is not None and x.dtype != self.weights_dtype:
                x = x.to(self.weights_dtype)
            out = self.model(x)
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.model = None
