"""Device-side preprocessing (docs/DESIGN.md §4, "The GPU path"): crops, mirrors and normalisation in torch.

The CPU path (``resnet.preprocess``) decodes, resizes, normalises the whole image in float32 and cuts the crops.
Here the host does only the decode and the resize: the resized image goes to the device as uint8 -- from pinned
memory with a non-blocking copy when the device is CUDA -- and the crops, the mirror and ``(x / 255 - mean) / std``
run there, in the same float32 operations in the same order, so the numbers are the CPU path's (tested on CPU
tensors: the same code path; on CUDA too when present). ``cut`` takes the server's ``ImageBatch`` (one copy for all
its images: 0.26 MB of uint8 for a 256 x 341 image, against 1.5 MB for its ten uint8 crops and 6 MB for float32
crops); ``resnet.runtime.device_feed`` stages it on a copy stream.

torch is imported only when a ``DevicePreprocess`` is made (the ONNX-only server never makes one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .preprocess import crop_boxes, fixed_protocol
from .runtime.crops import CropProtocol
from .runtime.device_feed import ImageBatch


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
        """A host array (uint8 or float32) -> the same tensor on the device: through pinned memory and a
        non-blocking copy on CUDA (the copy overlaps whatever the current stream runs; later work on that stream
        waits for it)."""
        torch = self.torch
        host = torch.from_numpy(array if array.flags.writeable else array.copy())
        if not self.on_cuda:
            return host
        pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        pinned.copy_(host)  # the one host copy, straight into page-locked memory
        return pinned.to(self.device, non_blocking=True)

    def cut(self, batch: ImageBatch) -> Any:
        """An ``ImageBatch`` -> its uint8 rows ``[size, 3, S, S]`` on the device: the images go over in one copy
        (one pinned buffer holding them all, 0.26 MB per 256 x 341 image against 1.5 MB for its ten uint8 crops),
        then each image's crops are cut there and its rows ``start:stop`` kept; zero rows pad to ``size``."""
        torch = self.torch
        arrays = [np.ascontiguousarray(rows.pixels, np.uint8) for rows, _, _ in batch.parts]
        if self.on_cuda:
            offsets = np.cumsum([0] + [a.size for a in arrays]).tolist()
            pinned = torch.empty(offsets[-1], dtype=torch.uint8, pin_memory=True)
            host = pinned.numpy()
            for o, a in zip(offsets, arrays):
                host[o : o + a.size] = a.reshape(-1)  # the one host copy of each image, into page-locked memory
            flat = pinned.to(self.device, non_blocking=True)
            images = [flat[o : o + a.size].view(a.shape) for o, a in zip(offsets, arrays)]
        else:
            images = [self.upload(a) for a in arrays]
        out = [self.crops(img, rows.protocol)[start:stop] for img, (rows, start, stop) in zip(images, batch.parts)]
        pad = batch.size - batch.rows
        if pad > 0:
            out.append(torch.zeros((pad, 3, self.size, self.size), dtype=torch.uint8, device=self.device))
        return torch.cat(out)

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
