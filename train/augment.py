"""Data augmentation: the paper's CIFAR recipe on whole batches, and its ImageNet recipe as torchvision transforms.

CIFAR (Section 4.2): pad 4 pixels on each side, take a random 32x32 crop of the padded image or its flip.
Batch augmentation runs on the training device and draws from a ``torch.Generator`` seeded by (seed, rank, step),
so the images of iteration ``k`` do not depend on how many times the run was stopped and resumed.
ImageNet (Section 3.4): shorter side uniform in [256, 480], random 224 crop, flip, per-channel normalisation and
AlexNet's PCA colour ("lighting") augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Eigen-decomposition of ImageNet's RGB covariance, as used for AlexNet's PCA lighting (Krizhevsky et al. 2012)
# and in fb.resnet.torch, the authors' public re-implementation.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def step_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends only on (seed, rank, step): exact replay after a resume."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1))
    return g


class BatchAugment:
    """uint8 ``[N, 3, H, W]`` batch -> float normalised batch, with pad-and-crop and flips (CIFAR recipe)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], pad: int = 4, flip: bool = True) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.pad, self.flip = pad, flip

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float in [0, 1] -> (x - mean) / std (what ``resnet.preprocess`` does)."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x.float() / 255.0 - mean) / std

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.pad:
            p = self.pad
            padded = F.pad(x, (p, p, p, p))  # zero padding of the uint8 image, like torchvision RandomCrop(padding=4)
            oy = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=gen.device).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=gen, device=gen.device).to(x.device)
            rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[batch, chan, rows, cols]
        if self.flip:
            flip = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return self.normalise(x)


class Lighting:
    """AlexNet-style PCA colour noise on a float ``[3, H, W]`` tensor in [0, 1] (before normalisation)."""

    def __init__(self, alphastd: float = 0.1) -> None:
        self.alphastd = alphastd
        self.eigval = torch.tensor(IMAGENET_PCA_EIGVAL)
        self.eigvec = torch.tensor(IMAGENET_PCA_EIGVEC)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = (self.eigvec * alpha * self.eigval).sum(dim=1)
        return img + rgb.view(3, 1, 1).to(img.dtype)

    def __repr__(self) -> str:
        return f"Lighting(alphastd={self.alphastd})"


def imagenet_train_transform(
    size: int = 224,
    resize_range: tuple[int, int] = (256, 480),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
):
    """Section 3.4: scale augmentation, random crop, flip, lighting, normalisation -> float ``[3, size, size]``."""
    from torchvision.transforms import v2

    from resnet.card import IMAGENET_MEAN, IMAGENET_STD

    return v2.Compose(
        [
            v2.RandomShortestSize(list(range(resize_range[0], resize_range[1] + 1)), antialias=True),
            v2.RandomCrop(size),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            Lighting(0.1),
            v2.Normalize(list(mean or IMAGENET_MEAN), list(std or IMAGENET_STD)),
        ]
    )
