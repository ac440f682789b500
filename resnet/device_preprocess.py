"""Device-side preprocessing (docs/DESIGN.md §4, "The GPU path"): crops, mirrors and normalisation in torch.

The CPU path (``resnet.preprocess``) decodes, resizes, normalises the whole image in float32 and cuts the crops.
Here the host does only the decode and the resize: the resized image (or its uint8 crops) goes to the device as
uint8 -- from pinned memory with a non-blocking copy when the device is CUDA -- and the crops, the mirror and
``(x / 255 - mean) / std`` run there, in the same float32 operations in the same order, so the numbers are the
CPU path's (tested on CPU tensors: the same code path; on CUDA too when present). ``batch`` moves the resized image
alone (0.26 MB of uint8 for 256 x 341 x 3); the server's batcher, whose unit is the crop, queues uint8 crops
(``host_crops``: 1.5 MB per ten-crop image of 224, a quarter of the 6 MB of float32 crops) that the runner
normalises on the device.

torch is imported only when a ``DevicePreprocess`` is made (the ONNX-only server never makes one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .preprocess import crop_boxes, fixed_protocol
from .runtime.crops import CropProtocol


class DevicePreprocess:
    """uint8 images or crops on the host -> normalised crops on ``device`` (torch), equal to ``resnet.preprocess``."""

    def __init__(self, card: Mapping[str, Any] | Any, device: Any = "cpu") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.size = int(card.input_size)
        self.mean = torch.tensor(card.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(card.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def upload(self, array: np.ndarray) -> Any:
        """A host uint8 array -> the same tensor on the device: through pinned memory and a non-blocking copy on
        CUDA (the copy overlaps whatever the current stream runs; later work on that stream waits for it)."""
        torch = self.torch
        if not self.on_cuda:
            return torch.from_numpy(array if array.flags.writeable else array.copy())
        pinned = torch.empty(array.shape, dtype=torch.uint8, pin_memory=True)
        pinned.numpy()[...] = array  # the one host copy, straight into page-locked memory
        return pinned.to(self.device, non_blocking=True)

    def normalise(self, u8: Any, dtype: Any = None) -> Any:
        """uint8 ``[N, 3, H, W]`` -> ``(x / 255 - mean) / std`` in float32 (then ``dtype`` if given), channels_last."""
        torch = self.torch
        x = (u8.to(torch.float32) / 255.0 - self.mean) / self.std
        if dtype is not None and dtype != torch.float32:
            x = x.to(dtype)
        return x.contiguous(memory_format=torch.channels_last)

    def crops(self, image: Any, protocol: str | CropProtocol = "ten") -> Any:
        """One resized image, uint8 ``[3, H, W]`` (or HWC with 3 channels last) on the device -> its uint8 crops
        ``[k, 3, S, S]`` in ``resnet.preprocess``'s order (the boxes, then the same boxes on the mirror)."""
        p = fixed_protocol(protocol)
        if image.ndim == 3 and image.shape[-1] == 3 and image.shape[0] != 3:
            image = image.permute(2, 0, 1)
        h, w, s = int(image.shape[1]), int(image.shape[2]), self.size
        boxes = crop_boxes(w, h, s, p)
        views = [image[:, y : y + s, x : x + s] for x, y in boxes]
        if p.crops is not None and p.crops > len(boxes):
            mirrored = self.torch.flip(image, dims=[2])
            views += [mirrored[:, y : y + s, x : x + s] for x, y in boxes]
        return self.torch.stack(views)

    def batch(self, images: Sequence[np.ndarray], protocol: str | CropProtocol = "ten", dtype: Any = None) -> Any:
        """Resized uint8 HWC host images -> their normalised crops ``[N * k, 3, S, S]`` on the device, image-major."""
        crops = [self.crops(self.upload(img), protocol) for img in images]
        return self.normalise(self.torch.cat(crops), dtype)

    def host_crops(self, image: np.ndarray, protocol: str | CropProtocol = "ten") -> np.ndarray:
        """``host_crops`` at this card's input size."""
        return host_crops(image, self.size, protocol)


def host_crops(image: np.ndarray, size: int, protocol: str | CropProtocol = "ten") -> np.ndarray:
    """One resized uint8 HWC host image -> its uint8 crops ``[k, 3, S, S]`` on the host (slices, no arithmetic):
    what the server's batcher queues for a device-side runner, which normalises them there (``normalise``)."""
    p = fixed_protocol(protocol)
    chw = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    h, w = chw.shape[1], chw.shape[2]
    boxes = crop_boxes(w, h, size, p)
    out = np.empty((p.crops or 1, 3, size, size), dtype=np.uint8)
    for i, (x, y) in enumerate(boxes):
        out[i] = chw[:, y : y + size, x : x + size]
    if len(out) > len(boxes):
        mirrored = chw[:, :, ::-1]
        for i, (x, y) in enumerate(boxes):
            out[len(boxes) + i] = mirrored[:, y : y + size, x : x + size]
    return out


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
