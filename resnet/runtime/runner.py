"""The ``Runner`` type: what runs an artifact for the gate and the server, and its ONNX Runtime and TensorRT kinds.

- ``OnnxRunner``: an ``.onnx``/``.fp16.onnx``/``.int8.onnx`` graph on one verified ONNX Runtime execution provider
  (``resnet.runtime.ort``).
- ``EngineRunner``: a ``.plan`` engine on TensorRT (``resnet.runtime.tensorrt``; card from the ``.plan.json`` sidecar,
  or given while a staged engine is gated).
- ``resnet.runtime.torch_runner.TorchRunner``: a PyTorch network (torch imported only when one is made).

Each declares ``kind`` (a ``Runtime``), ``provider`` (as its runtime names it), ``precision``, ``card``, its batch
and size limits, ``info`` (what a parity report records), ``report`` (the parity report that admitted it, if any),
``run(x) -> logits`` and ``close()``. The three mix in ``resnet.runtime.device_feed.Fed``: with a feed attached they
take resized uint8 images and crops that are cut and normalised on their device, and run device tensors in place
(torch directly; ONNX Runtime by I/O binding; TensorRT by tensor address). Nothing here imports onnxruntime,
TensorRT or torch at module level.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..card import ModelCard
from ..errors import UsageError
from ..multiscale import ANY_SIZE, view_profile
from .device_feed import Fed, ort_run_device
from .kinds import ENGINE_PROVIDER, Combination, Precision, Runtime, ort_precision
from .ort import (
    CUDNN_CONV_ALGO_SEARCH,
    TrtOptions,
    make_session,
    onnx_session_card,
    peek_onnx,
    rss_mib,
    session_options,
    tf32,
    trt_cache_dir,
)

log = logging.getLogger("resnet.runtime")

Shape = tuple[int, ...]


class Runner(Protocol):
    """What the gate and the batcher need from an inference engine."""

    name: str  # e.g. "onnxruntime:CPUExecutionProvider"
    kind: Runtime
    provider: str  # what runs it, as its runtime names it: "CPUExecutionProvider", "TensorRT", "torch:cuda"
    precision: Precision
    card: ModelCard
    max_batch: int | None  # the engine's hard limit (TensorRT profile), None when any batch works
    min_batch: int
    # (min_side, max_side) that height and width may each take (multi-scale views); None = only the card's S x S
    spatial: tuple[int, int] | None
    max_view_batch: int | None  # most rows of one batch of multi-scale views (a TensorRT view profile), else None
    profiles: list[tuple[Shape, Shape, Shape]] | None  # an engine's (min, opt, max) input shapes; None otherwise
    info: dict[str, Any]  # what runs it, for parity reports and logs
    report: str | None  # the parity report that admitted this combination for serving; None when none was needed

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[N, 3, H, W]`` normalised crops or views -> float32 ``[N, num_classes]`` logits. Not
        thread-safe. H, W: the card's S x S, or any sides within ``spatial``."""
        ...

    def close(self) -> None:
        """Release the sessions or engine."""
        ...


def combination_of(runner: Runner) -> Combination:
    """The runtime + provider + precision that ``runner`` computes with."""
    return Combination(runner.kind, runner.provider, runner.precision)


class OnnxRunner(Fed):
    """An ONNX export in an ONNX Runtime session on one verified execution provider; input ``input``, output
    ``logits`` (docs/DESIGN.md §2).

    A graph whose height and width are symbolic gets two sessions when multi-scale is on: one with those dimensions
    pinned to the card's S x S (``add_free_dimension_override_by_name``: as fast as a fixed-size graph; a plain
    dynamic session ran ResNet-50 ten-crop batches slower, bench/RESULTS.md) for ten/centre crops, and a plain one
    for multi-scale views. ``run`` picks by the batch's height and width. Multi-scale off: the pinned one only.
    """

    kind: Runtime = "onnxruntime"
    profiles = None  # engines only
    report: str | None = None  # set by whoever admitted this combination (serve.engine.backends)

    def __init__(
        self,
        path: Path,
        card: ModelCard | None = None,
        ep: str = "cpu",
        threads: int = 0,
        trt: TrtOptions | None = None,
        multiscale: str = "auto",
        dims: list[Any] | None = None,
    ) -> None:
        plain = None
        if dims is None and ep == "cpu":  # learn the input's shape from a plain session (kept for views if wanted)
            plain = make_session(path, ep, session_options(threads), trt)
            dims = list(plain.get_inputs()[0].shape)
        elif dims is None:  # on a GPU, each session is made once with its own profile: learn the shape on the CPU
            peeked, dims = peek_onnx(path)
            card = card if card is not None else peeked
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
        trt_fp16 = ep == "tensorrt" and trt is not None and trt.fp16
        self.precision: Precision = ort_precision(self.card.precision, trt_fp16)
        self.info = self._info(path, ep, trt)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        dim = self.session.get_inputs()[0].shape[0]
        self.max_batch = dim if isinstance(dim, int) and dim > 0 else None
        self.min_batch = self.max_batch or 1
        self.ep = ep

    def _info(self, path: Path, ep: str, trt: TrtOptions | None) -> dict[str, Any]:
        """What a parity report records of this runner (provider, precision, TF32, TensorRT options, placement)."""
        import onnxruntime as ort

        return {
            "backend": f"onnxruntime-{ep}",
            "path": str(path),
            "onnxruntime": ort.__version__,
            "providers": self.providers,
            "precision": self.precision,
            "tf32": tf32(ep),
            **({"placement": getattr(self.session, "placement", "unknown")} if ep == "tensorrt" else {}),
            **({"trt_options": trt.provider_options()} if trt is not None else {}),
            **({"cudnn_conv_algo_search": CUDNN_CONV_ALGO_SEARCH} if ep == "cuda" else {}),
        }

    def _session_for(self, shape: Any) -> Any:
        """The S x S session for the card's crops, the plain one for multi-scale views (when there is one)."""
        size = self.card.input_size
        square = shape[2] == size and shape[3] == size
        return self.session if square or self.multi_session is None else self.multi_session

    def run(self, batch: Any) -> np.ndarray:
        if self.feed is not None:
            return self.run_staged(self.stage(batch))
        session = self._session_for(batch.shape)
        out = session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})[0]
        return np.asarray(out, dtype=np.float32)

    def feed_device(self) -> str | None:
        """The GPU the CUDA / TensorRT execution provider runs on (device 0, the providers' default)."""
        return "cuda:0" if self.ep in ("cuda", "tensorrt") else None

    def run_device(self, x: Any) -> np.ndarray:
        """Normalised float32 crops or views already on the device (a torch tensor), read in place by I/O binding."""
        return np.asarray(ort_run_device(self._session_for(tuple(x.shape)), x), dtype=np.float32)

    @property
    def combination(self) -> Combination:
        return Combination("onnxruntime", self.provider, self.precision)

    def close(self) -> None:
        self.session = self.multi_session = None


MULTISCALE_FIXED = "takes only its card's S x S input, not any height and width"
REEXPORT = (
    "re-export it: python -m export.onnx model.pt makes a graph that takes any size; for a .plan, "
    "python -m export.trt model.pt --multiscale"
)


def _input_size(card: ModelCard | None, plain: Any, path: Path) -> int:
    """The card's input size, from ``card`` or the plain session's metadata."""
    return (card if card is not None else onnx_session_card(plain, path)).input_size


class EngineRunner(Fed):
    """A serialised TensorRT engine through ``resnet.runtime.tensorrt.TensorRTRunner``; its profiles bound the batch
    and, for an engine built with a multi-scale profile (``export.trt --multiscale``), the views' sizes.

    ``card`` None: a published engine, opened through its sidecar, which is checked against this machine's TensorRT
    and GPU (exit 4 with the rebuild command). ``card`` given: a staged engine being gated (its sidecar is written
    only when it passes).
    """

    kind: Runtime = "tensorrt"
    provider = ENGINE_PROVIDER
    report: str | None = None

    def __init__(self, path: Path, card: ModelCard | None = None, multiscale: str = "auto") -> None:
        from ..artifacts import read_sidecar
        from .tensorrt import TensorRTRunner, open_engine, tensorrt_version

        if card is None:
            sidecar = read_sidecar(path)  # refuses a sidecar of another format or version (exit 4)
            self.card = sidecar.card
            # refuses an engine built by another TensorRT or for another GPU, or a machine without TensorRT (exit 4)
            self.runner = open_engine(path)
        else:
            self.card = card
            self.runner = TensorRTRunner(path)
        self.precision: Precision = "int8" if self.card.precision == "int8" else "fp16"
        self.name = "tensorrt"
        self.max_batch: int | None = int(self.runner.max_batch)
        self.min_batch = int(self.runner.min_batch)
        self.profiles: list[tuple[Shape, Shape, Shape]] | None = list(self.runner.profiles)
        spatial = self.runner.spatial  # (min_side, max_side) of a multi-scale profile, else None
        if multiscale == "on" and spatial is None:
            raise UsageError(f"--multiscale on: {path.name} {MULTISCALE_FIXED} ({REEXPORT})")
        self.spatial = None if multiscale == "off" or spatial is None else (int(spatial[0]), int(spatial[1]))
        # the multi-scale profile's batch maximum (export.trt --multiscale: profile 1)
        views = self.profiles[1:] if self.spatial is not None else []
        self.max_view_batch = int(views[0][2][0]) if views else None
        self.info: dict[str, Any] = {
            "backend": "tensorrt",
            "path": str(path),
            "tensorrt": tensorrt_version(),
            "precision": self.precision,
            "profile": {"min": self.min_batch, "max": self.max_batch},
            **({"spatial": list(self.spatial)} if self.spatial else {}),
        }

    def run(self, batch: Any) -> np.ndarray:
        if self.feed is not None:
            return self.run_staged(self.stage(batch))
        return np.asarray(self.runner.run(np.ascontiguousarray(batch, np.float32)), dtype=np.float32)

    def feed_device(self) -> str | None:
        return str(self.runner.device)

    def feed_dtype(self) -> Any:
        return self.runner.input_dtype

    def run_device(self, x: Any) -> np.ndarray:
        """Normalised crops or views already on the engine's GPU, bound by address (no host round trip)."""
        return np.asarray(self.runner.run_device(x), dtype=np.float32)

    @property
    def combination(self) -> Combination:
        return Combination("tensorrt", self.provider, self.precision)

    def close(self) -> None:
        self.runner.close()
