"""Feeding a runner's device (docs/DESIGN.md §4, "The GPU path"): host batches -> normalised input on the device.

The server's batcher hands a device-fed runner either an ``ImageBatch`` (resized uint8 images whose crops, mirrors
and normalisation happen on the device: ``resnet.device_preprocess``) or an array (float32 views or crops, or uint8
crops). ``DeviceFeed.stage`` puts it on the device on a copy stream of its own and returns at once; ``ready``, on the
thread that runs the network, makes the network's stream wait for that copy. The batcher stages the next batch while
the last one runs, so on CUDA the copy and the crops overlap the previous batch's kernels.

``attach_feed(runner, mode)`` gives a runner its feed (``--device-preprocess auto|on|off``): ``auto`` when the
runner computes on a CUDA device and torch sees it (a checkpoint on CUDA; ONNX Runtime's CUDA/TensorRT providers,
through I/O binding; a TensorRT engine), ``on`` on whatever device the runner uses (the CPU: the same code path on
CPU tensors), ``off`` never. torch is imported only when a feed is made. A new feed is kept only if it agrees with
the host path on a probe image on this machine (``confirm_feed``, ``resnet.runtime.feed_check``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import MissingComponentError, ParityError
from .crops import CropProtocol

log = logging.getLogger("resnet.runtime.device_feed")

FeedMode = Literal["auto", "on", "off"]


@dataclass(frozen=True, eq=False)
class ImageRows:
    """One resized uint8 HWC image standing for its ``[k, 3, S, S]`` crops (``protocol``), which a device-fed
    runner cuts on its device. It answers ``len``, ``shape`` and ``dtype`` as that crop array would, so the batcher
    counts, groups and splits its rows like any other item's."""

    pixels: np.ndarray  # [H, W, 3] uint8, resized so that its shorter side is the card's resize size
    protocol: CropProtocol  # a fixed-crop protocol (ten or center)
    size: int  # S, the card's input size
    dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return int(self.protocol.crops or 1)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.size, self.size)


@dataclass(frozen=True)
class ImageBatch:
    """A batch of ``size`` rows: the rows ``start:stop`` of each image's crops, in order, then zero rows."""

    parts: Sequence[tuple[ImageRows, int, int]]
    size: int

    def __len__(self) -> int:
        return self.size

    @property
    def rows(self) -> int:
        """Rows that are crops (the rest are padding)."""
        return sum(stop - start for _, start, stop in self.parts)


@dataclass(frozen=True)
class Staged:
    """A batch on the device, normalised: ``x``, and the event recorded after its copy (None off CUDA)."""

    x: Any
    event: Any = None


class DeviceFeed:
    """Stages host batches on ``device`` as normalised ``dtype`` tensors, channels_last, on a copy stream."""

    def __init__(self, card: Any, device: Any, dtype: Any = None) -> None:
        import torch

        from ..device_preprocess import DevicePreprocess

        self.torch = torch
        self.pre = DevicePreprocess(card, device)
        self.device = self.pre.device
        self.dtype = dtype or torch.float32
        self.stream = torch.cuda.Stream(device=self.device) if self.on_cuda else None
        self.check: Any = None  # the load-time check against the host path (resnet.runtime.feed_check.FeedCheck)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def stage(self, batch: ImageBatch | np.ndarray) -> Staged:
        """Queue ``batch``'s copy and preprocessing on the copy stream and return without waiting for them."""
        if self.stream is None:
            return Staged(self._normalised(batch))
        torch = self.torch
        with torch.cuda.stream(self.stream):
            x = self._normalised(batch)
            event = torch.cuda.Event()
            event.record(self.stream)
        return Staged(x, event)

    def ready(self, staged: Staged) -> Any:
        """The staged tensor, for work queued on the calling thread's current stream after this call: that stream
        waits for the copy (on the device, the host does not block), and the tensor's memory stays the network's
        until that work is done (``record_stream``)."""
        if staged.event is None:
            return staged.x
        stream = self.torch.cuda.current_stream(self.device)
        stream.wait_event(staged.event)
        staged.x.record_stream(stream)
        return staged.x

    def _normalised(self, batch: ImageBatch | np.ndarray) -> Any:
        pre = self.pre
        if isinstance(batch, ImageBatch):
            return pre.normalise(pre.cut(batch), self.dtype)
        if batch.dtype == np.uint8:
            return pre.normalise(pre.upload(batch), self.dtype)
        x = pre.upload(np.ascontiguousarray(batch, np.float32))  # already normalised views or crops
        return x.to(self.dtype).contiguous(memory_format=self.torch.channels_last)


def attach_feed(runner: Any, mode: FeedMode = "auto") -> str:
    """Give ``runner`` a ``DeviceFeed`` as ``mode`` says (when it has a ``use_feed``); returns why, in words.

    ``auto``: when the runner computes on CUDA (``runner.feed_device()``: "cuda:0", or None off a GPU) and a torch
    that sees that GPU is installed to feed it (ONNX Runtime's CUDA build beside a CPU-only torch keeps the host
    path, and says so). ``on``: on that device, or the CPU (``MissingComponentError`` when torch is missing or
    cannot reach the device). ``off``: never. Either way the feed must pass ``confirm_feed`` first.
    """
    if mode == "off" or not hasattr(runner, "use_feed"):
        return "preprocessing on the host (--device-preprocess off)" if mode == "off" else "host preprocessing"
    device = runner.feed_device()
    if device is None and mode == "auto":
        return "preprocessing on the host (the model does not run on a GPU)"
    try:
        import torch
    except ImportError:
        if mode == "on":
            raise MissingComponentError(
                "--device-preprocess on needs PyTorch, which is not installed here: pip install torch"
            ) from None
        return "preprocessing on the host (PyTorch is not installed to feed the GPU)"
    device = torch.device(device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        why = f"the model runs on {device}, but this PyTorch ({torch.__version__}) has no CUDA to feed it"
        if mode == "on":
            raise MissingComponentError(f"--device-preprocess on: {why} (install a CUDA build of torch)")
        return f"preprocessing on the host ({why})"
    runner.use_feed(DeviceFeed(runner.card, device, runner.feed_dtype()))
    return confirm_feed(runner, mode)


def confirm_feed(runner: Any, mode: FeedMode) -> str:
    """Keep ``runner``'s new feed only if it agrees with the host path on this machine
    (``resnet.runtime.feed_check``). Disagreeing, or failing: ``auto`` detaches it (the host path serves, with a
    warning); ``on`` raises ``ParityError`` (exit 3). Returns why, in words."""
    from .feed_check import check_feed

    feed = runner.feed
    try:
        check = check_feed(runner)
        problem = None if check.passed else f"disagree with the host path: {check.describe()}"
    except Exception as e:  # a path that fails here would fail every request
        problem = f"failed on a probe image ({type(e).__name__}: {str(e)[:300]})"
    if problem is None:
        feed.check = check
        return (
            f"crops, mirrors and normalisation on {feed.device} (the next batch copied while the last one runs); "
            f"checked at load: {check.describe()}"
        )
    runner.use_feed(None)
    why = f"crops cut and normalised on {feed.device} {problem}"
    if mode == "on":
        raise ParityError(f"--device-preprocess on: {why}; serve with --device-preprocess off, and please report it")
    log.warning("preprocessing on the host: %s; please report it", why)
    return f"preprocessing on the host (the {why})"


class Fed:
    """What a runner gains from a feed (mixed into the runners): ``stage`` and ``run_staged``, the batcher's two
    steps, and ``device_side``. Without a feed, ``stage`` passes the host batch through and ``run_staged`` is
    ``run``. The runner supplies ``run_device(x)`` (normalised input already on its device, queued after the
    calling thread's current stream), ``feed_device()`` and, if not float32, ``feed_dtype()``."""

    feed: DeviceFeed | None = None

    @property
    def device_side(self) -> bool:
        """Whether preprocessing ends on the runner's device (a feed is attached)."""
        return self.feed is not None

    def use_feed(self, feed: DeviceFeed | None) -> None:
        self.feed = feed

    @contextlib.contextmanager
    def host_path(self) -> Iterator[None]:
        """Run as if no feed were attached (the reference of the load-time check)."""
        feed, self.feed = self.feed, None
        try:
            yield
        finally:
            self.feed = feed

    def feed_dtype(self) -> Any:
        """The dtype the network takes on its device (None: float32)."""
        return None

    def stage(self, batch: Any) -> Any:
        """Step one (the batcher's staging thread): the batch on its way to the device."""
        return self.feed.stage(batch) if self.feed is not None else batch

    def run_staged(self, staged: Any) -> np.ndarray:
        """Step two (the batcher's backend thread): logits of a staged batch."""
        if self.feed is None:
            return self.run(staged)  # type: ignore[attr-defined]
        return self.run_device(self.feed.ready(staged))  # type: ignore[attr-defined]


def feeds_gpu(runner: Any) -> bool:
    """Whether ``runner`` is fed on a CUDA device (its largest batch is then measured, ``serve.engine.shapes``)."""
    feed = getattr(runner, "feed", None)
    return feed is not None and feed.on_cuda


def ort_run_device(session: Any, x: Any) -> np.ndarray:
    """Run an ONNX Runtime session on a contiguous torch tensor where it lies, by I/O binding its memory
    (``bind_input(name, device_type, device_id, element_type, shape, buffer_ptr)``, ONNX Runtime's API summary,
    "IOBinding"): on CUDA the CUDA/TensorRT providers read the device crops with no host round trip. The first
    output comes back to the host as numpy."""
    import torch

    x = x.contiguous()
    if x.is_cuda:  # ONNX Runtime runs on its own stream: torch's queued copies and kernels must be done first
        torch.cuda.current_stream(x.device).synchronize()
    element = {torch.float32: np.float32, torch.float16: np.float16}[x.dtype]
    binding = session.io_binding()
    index = x.device.index or 0
    name = session.get_inputs()[0].name
    binding.bind_input(name, x.device.type, index, element, tuple(x.shape), x.data_ptr())
    binding.bind_output(session.get_outputs()[0].name)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]
