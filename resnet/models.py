"""The networks of the ResNet paper (He et al., CVPR 2016), in the spirit of torchvision's ``models/resnet.py``.

Two helpers (``conv3x3``, ``conv1x1``), the shortcut of option A, ``BasicBlock`` and ``Bottleneck``, then
``ResNet`` (the ImageNet family of Table 1) and ``CifarResNet`` (the 6n+2 family of Section 4.2). Plain nets are
the same modules built with ``residual=False``: same layers, no shortcut.

Shortcut options (Section 3.3 / Table 3):
  A: identity; where the shape changes, strided subsampling and zero-padded extra channels (no parameters).
  B: projection (1x1 conv + BN) only where the shape changes, identity elsewhere (torchvision's ``downsample``).
  C: projection on every block.

Variants of the downsampling bottleneck: ``"v1"`` puts the stride in the first 1x1 conv, as the paper does;
``"v1.5"`` puts it in the 3x3 conv, as torchvision does. For ``variant="v1.5"``, ``shortcut="B"`` the state-dict
keys and shapes equal torchvision's ``resnet18 ... resnet152``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .names import SHORTCUTS, VARIANTS


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding, no bias (BN follows every conv)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ShortcutA(nn.Module):
    """Option A: identity with strided subsampling and zero-padded extra channels; parameter-free."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError("option A shortcut cannot reduce channels")
        self.stride = stride
        self.extra_channels = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


def make_shortcut(
    shortcut: str, in_planes: int, out_planes: int, stride: int, norm_layer: Callable[[int], nn.Module]
) -> nn.Module | None:
    """The shortcut module of one block for option A, B or C (``None`` means plain identity)."""
    changes_shape = stride != 1 or in_planes != out_planes
    if shortcut == "C" or (shortcut == "B" and changes_shape):
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), norm_layer(out_planes))
    if shortcut == "A" and changes_shape:
        return ShortcutA(in_planes, out_planes, stride)
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut option {shortcut!r}; choose one of {', '.join(SHORTCUTS)}")
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR nets). ``residual=False`` gives the plain counterpart."""

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        residual: bool = True,
        variant: str = "v1.5",
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            if self.downsample is not None:
                identity = self.downsample(x)
            out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152). The stride sits in the 3x3 (v1.5) or first 1x1 (v1)."""

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
        residual: bool = True,
        variant: str = "v1.5",
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if variant == "v1" else (1, stride)
        self.conv1 = conv1x1(inplanes, planes, stride_1x1)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            if self.downsample is not None:
                identity = self.downsample(x)
            out = out + identity
        return self.relu(out)


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    """He (fan_out) init for convs, BN gamma 1 / beta 0; optionally zero each block's last BN gamma."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                nn.init.constant_(m.bn3.weight, 0)
            elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                nn.init.constant_(m.bn2.weight, 0)


class ResNet(nn.Module):
    """The ImageNet networks of Table 1: 7x7 stem, max-pool, four stages (conv2_x ... conv5_x), pool, fc."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int = 1000,
        residual: bool = True,
        shortcut: str = "B",
        variant: str = "v1.5",
        zero_init_residual: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.residual, self.shortcut, self.variant = residual, shortcut, variant
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_weights(self, zero_init_residual)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            block_stride = stride if i == 0 else 1
            out_planes = planes * block.expansion
            downsample = (
                make_shortcut(self.shortcut, self.inplanes, out_planes, block_stride, self._norm_layer)
                if self.residual
                else None
            )
            layers.append(
                block(self.inplanes, planes, block_stride, downsample, self._norm_layer, self.residual, self.variant)
            )
            self.inplanes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # conv1
        x = self.layer1(x)  # conv2_x
        x = self.layer2(x)  # conv3_x
        x = self.layer3(x)  # conv4_x
        x = self.layer4(x)  # conv5_x
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class CifarResNet(nn.Module):
    """The CIFAR-10 networks of Section 4.2: 3x3 stem, three stages of 2n layers on 16/32/64 filters, pool, fc."""

    def __init__(
        self,
        n: int,
        num_classes: int = 10,
        residual: bool = True,
        shortcut: str = "A",
        zero_init_residual: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if n < 1:
            raise ValueError("CIFAR ResNets need n >= 1 (depth 6n+2 >= 8)")
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.residual, self.shortcut = residual, shortcut
        self.inplanes = 16
        self.conv1 = conv3x3(3, 16)
        self.bn1 = self._norm_layer(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self, zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = []
        for i in range(blocks):
            block_stride = stride if i == 0 else 1
            downsample = (
                make_shortcut(self.shortcut, self.inplanes, planes, block_stride, self._norm_layer)
                if self.residual
                else None
            )
            layers.append(BasicBlock(self.inplanes, planes, block_stride, downsample, self._norm_layer, self.residual))
            self.inplanes = planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # 32x32, 16 filters
        x = self.layer1(x)  # 32x32, 16 filters, 2n layers
        x = self.layer2(x)  # 16x16, 32 filters, 2n layers
        x = self.layer3(x)  # 8x8, 64 filters, 2n layers
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)
